//! TLS to PostgreSQL, as libpq's `sslmode` and `sslrootcert` describe it, with rustls
//! (no OpenSSL): managed databases (RDS, Cloud SQL, Azure, Neon, Supabase) ask for
//! `sslmode=verify-full`. tokio-postgres itself knows only `disable`, `prefer` and
//! `require`, and does not check certificates: that is the connector's job, so the two
//! `verify-*` modes and `sslrootcert` are read here and taken out of the URL before
//! tokio-postgres parses the rest.
//!
//! The modes follow libpq (<https://www.postgresql.org/docs/current/libpq-ssl.html>,
//! table "SSL Mode Descriptions"):
//! - `disable`: plain TCP;
//! - `prefer` (the default): TLS when the server offers it, the certificate unchecked;
//! - `require`: TLS or no connection, the certificate unchecked, unless `sslrootcert`
//!   is given, when libpq checks the chain as `verify-ca` does (so do we);
//! - `verify-ca`: TLS, the chain checked against `sslrootcert` (or the system's roots);
//! - `verify-full`: `verify-ca` and the certificate's names must match the host.
//!
//! `sslrootcert=system` (libpq 16) means the system's roots, and like libpq it implies
//! `verify-full` unless a mode is named.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode as WireMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, all five of the values freshet accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// Where the roots that check the server's chain come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    /// The system's store (`rustls-native-certs`: the same store reqwest trusts).
    System,
    /// A PEM file (`sslrootcert=PATH`).
    File(String),
}

/// A journal URL read: the connection settings tokio-postgres understands, and the
/// connector that does what `sslmode` asks.
pub struct Connection {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    pub mode: SslMode,
}

/// Why a journal URL cannot be used. Never contains the URL's password.
pub type UrlError = String;

/// Reads `url` (a `postgres://` URL or libpq's `key=value` string): its TLS settings here,
/// the rest by tokio-postgres.
pub fn connection(url: &str) -> Result<Connection, UrlError> {
    let (rest, mode, roots) = take_tls_settings(url)?;
    let mut config: tokio_postgres::Config =
        rest.parse().map_err(|error: tokio_postgres::Error| {
            hide_password(
                url,
                format!("not a PostgreSQL URL (postgres://USER@HOST:PORT/DB): {error}"),
            )
        })?;
    // libpq: `sslrootcert=system` implies `verify-full` unless a mode is named; a root
    // file with `require` checks the chain as `verify-ca` does.
    let mode = match (mode, &roots) {
        (None, Some(Roots::System)) => SslMode::VerifyFull,
        (Some(SslMode::Require), Some(_)) => SslMode::VerifyCa,
        (mode, _) => mode.unwrap_or(SslMode::Prefer),
    };
    config.ssl_mode(match mode {
        SslMode::Disable => WireMode::Disable,
        SslMode::Prefer => WireMode::Prefer,
        _ => WireMode::Require,
    });
    let tls = connector(mode, roots.unwrap_or(Roots::System))?;
    Ok(Connection { config, tls, mode })
}

/// Splits `sslmode` and `sslrootcert` off `url`, which tokio-postgres is given without
/// them (it rejects `verify-ca` and does not know `sslrootcert`).
fn take_tls_settings(url: &str) -> Result<(String, Option<SslMode>, Option<Roots>), UrlError> {
    let mut mode = None;
    let mut roots = None;
    let mut take = |key: &str, value: &str| -> Result<bool, UrlError> {
        match key {
            "sslmode" => {
                mode = Some(SslMode::parse(value).ok_or_else(|| {
                    format!(
                        "sslmode {value:?} is not one of disable, prefer, require, verify-ca, verify-full"
                    )
                })?);
                Ok(true)
            }
            "sslrootcert" => {
                roots = Some(if value == "system" {
                    Roots::System
                } else {
                    Roots::File(value.to_string())
                });
                Ok(true)
            }
            _ => Ok(false),
        }
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let mut parsed = url::Url::parse(url).map_err(|error| {
            hide_password(
                url,
                format!("not a PostgreSQL URL (postgres://USER@HOST:PORT/DB): {error}"),
            )
        })?;
        let mut kept = Vec::new();
        for (key, value) in parsed.query_pairs() {
            if !take(&key, &value)? {
                kept.push((key.into_owned(), value.into_owned()));
            }
        }
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
        Ok((parsed.to_string(), mode, roots))
    } else {
        // libpq's `key=value` form; values with spaces would be quoted, which these
        // two settings (a mode, a path) need not be.
        let mut kept = Vec::new();
        for word in url.split_whitespace() {
            match word.split_once('=') {
                Some((key, value)) if take(key.trim(), value.trim())? => {}
                _ => kept.push(word),
            }
        }
        Ok((kept.join(" "), mode, roots))
    }
}

/// `message` with the password in `url` (if any) replaced, whatever quoted it.
fn hide_password(url: &str, message: String) -> String {
    let password = url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_string))
        .or_else(|| {
            url.split_whitespace()
                .find_map(|w| w.strip_prefix("password=").map(str::to_string))
        });
    match password {
        Some(password) if !password.is_empty() => {
            let decoded = percent_encoding::percent_decode_str(&password)
                .decode_utf8_lossy()
                .into_owned();
            message.replace(&password, "***").replace(&decoded, "***")
        }
        _ => message,
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls connector for `mode`. `disable` gets one too: tokio-postgres never uses it.
fn connector(mode: SslMode, roots: Roots) -> Result<MakeRustlsConnect, UrlError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(Unchecked {
            provider: Arc::clone(&provider),
        }),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let store = root_store(&roots)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(store), Arc::clone(&provider))
                    .build()
                    .map_err(|error| format!("sslrootcert: {error}"))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly { webpki })
            }
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS: {error}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn root_store(roots: &Roots) -> Result<RootCertStore, UrlError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect())
                .map_err(|error| format!("sslrootcert {path}: {error}"))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("sslrootcert {path}: no certificate in it"));
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(
                    "no system root certificates found: name a CA file with sslrootcert=PATH"
                        .into(),
                );
            }
        }
    }
    Ok(store)
}

/// `prefer` and `require`: encrypted, the certificate not checked (libpq does the same;
/// these modes protect against eavesdropping, not a server in the middle). The
/// handshake's signatures are still verified, so the key exchange is sound.
#[derive(Debug)]
struct Unchecked {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the names need not match the
/// host. rustls's verifier checks the chain before the name, so a name error means
/// the chain held.
#[derive(Debug)]
struct ChainOnly {
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_are_taken_out_of_the_url() {
        let (rest, mode, roots) = take_tls_settings(
            "postgres://u:p@db.example:5432/freshet?sslmode=verify-full&sslrootcert=/etc/ca.pem&connect_timeout=5",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p@db.example:5432/freshet?connect_timeout=5"
        );
        assert_eq!(mode, Some(SslMode::VerifyFull));
        assert_eq!(roots, Some(Roots::File("/etc/ca.pem".into())));
        let (rest, mode, _) =
            take_tls_settings("host=db user=u sslmode=require dbname=freshet").unwrap();
        assert_eq!(rest, "host=db user=u dbname=freshet");
        assert_eq!(mode, Some(SslMode::Require));
    }

    #[test]
    fn modes_follow_libpq() {
        assert_eq!(
            connection("postgres://u@h/d").unwrap().mode,
            SslMode::Prefer
        );
        assert_eq!(
            connection("postgres://u@h/d?sslmode=disable").unwrap().mode,
            SslMode::Disable
        );
        // A missing root file is named, not ignored.
        let error =
            connection("postgres://u@h/d?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem")
                .err()
                .unwrap();
        assert!(error.contains("sslrootcert /nonexistent/ca.pem"), "{error}");
        let error = connection("postgres://u@h/d?sslmode=require&sslrootcert=/nonexistent/ca.pem")
            .err()
            .unwrap();
        assert!(
            error.contains("sslrootcert"),
            "require with a root file checks the chain: {error}"
        );
    }

    #[test]
    fn errors_never_show_the_password() {
        for url in [
            "postgres://freshet:s3cr%3Dt-pw@db:notaport/freshet",
            "postgres://freshet:s3cr%3Dt-pw@db/freshet?sslmode=verify-everything",
            "postgres://freshet:s3cr%3Dt-pw@db/freshet?nonsense=1",
            "host=db password=s3cr=t-pw sslmode=bogus",
            "host=db password=s3cr=t-pw port=x",
        ] {
            let error = connection(url).err().expect(url);
            assert!(!error.contains("s3cr"), "{url}: {error}");
        }
        let error = connection("postgres://u@h/d?sslmode=verify-everything")
            .err()
            .unwrap();
        assert!(
            error.contains("verify-everything") && error.contains("verify-full"),
            "{error}"
        );
    }
}
