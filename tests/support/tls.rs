//! An https server for the tests, with a certificate made at start: it answers every
//! request with a redirect, to see what the client does with it. The daemon trusts the
//! certificate through `SSL_CERT_FILE` (read with the system's trust store).
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_rustls::rustls;

use super::fake::{Log, Seen};

/// A running https redirector: where it listens, the PEM file of its certificate, and
/// every request it got.
pub struct HttpsRedirect {
    pub addr: SocketAddr,
    pub cert_file: PathBuf,
    pub log: Log,
    _dir: tempfile::TempDir,
}

impl HttpsRedirect {
    pub fn base(&self) -> String {
        format!("https://{}", self.addr)
    }
}

/// Serves https on 127.0.0.1:0, answering each request `301 Location: location`.
pub async fn https_redirect(location: String) -> HttpsRedirect {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_file = dir.path().join("ca.pem");
    std::fs::write(&cert_file, certified.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Log = Arc::default();
    let seen_log = Arc::clone(&log);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let log = Arc::clone(&seen_log);
            let location = location.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |request: hyper::Request<hyper::Body>| {
                        let log = Arc::clone(&log);
                        let location = location.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = hyper::body::to_bytes(body).await.unwrap_or_default();
                            log.lock().unwrap().push(Seen {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_string(),
                                query: parts.uri.query().unwrap_or("").to_string(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).to_string(),
                                        )
                                    })
                                    .collect(),
                                body: body.to_vec(),
                            });
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(301)
                                    .header("location", location)
                                    .body(hyper::Body::empty())
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::Http::new()
                    .serve_connection(tls, service)
                    .await;
            });
        }
    });
    HttpsRedirect {
        addr,
        cert_file,
        log,
        _dir: dir,
    }
}
