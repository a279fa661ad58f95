//! Local fake servers for the services freshet talks to, built from the vendors' API
//! contracts (docs/ and the comments in `src/actions/` cite them). Each records every
//! request it gets, so tests can assert on exactly what was sent; each is strict (wrong
//! paths, methods, auth and bodies are refused as the real service refuses them) and
//! stateful where the real one is. One fake per file: [`dbt_cloud`], [`mode`], [`pagerduty`], [`tableau`], [`slack`], [`hex`], [`powerbi`];
//! this file holds the server, the request log and the canned replies they share.
#![allow(dead_code)]

mod dbt_cloud;
mod hex;
mod mode;
mod pagerduty;
mod powerbi;
mod slack;
mod tableau;

// A test binary that uses only some of the fakes (the outage test) leaves the others'
// re-exports unused.
#[allow(unused_imports)]
pub use dbt_cloud::*;
#[allow(unused_imports)]
pub use hex::*;
#[allow(unused_imports)]
pub use mode::*;
#[allow(unused_imports)]
pub use pagerduty::*;
#[allow(unused_imports)]
pub use powerbi::*;
#[allow(unused_imports)]
pub use slack::*;
#[allow(unused_imports)]
pub use tableau::*;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use warp::Filter;

use super::Setup;

/// One request as a fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

pub type Log = Arc<Mutex<Vec<Seen>>>;

/// A server that answers every request with 200 `{}` and records it: stands for a host
/// that must never be contacted.
pub async fn recorder() -> (SocketAddr, Log) {
    serve(|_| Reply::json(200, serde_json::json!({})))
}

/// A filter that extracts the whole request as a [`Seen`].
pub fn capture() -> impl Filter<Extract = (Seen,), Error = warp::Rejection> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .map(
            |method: warp::http::Method,
             path: warp::path::FullPath,
             query: String,
             headers: warp::http::HeaderMap,
             body: bytes::Bytes| Seen {
                method: method.to_string(),
                path: path.as_str().to_string(),
                query,
                headers: headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            String::from_utf8_lossy(v.as_bytes()).to_string(),
                        )
                    })
                    .collect(),
                body: body.to_vec(),
            },
        )
}

/// What a fake answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send the body in chunks with no Content-Length, as a streaming server does.
    pub chunked: bool,
    /// Answer only after this long (a slow service); the request has been taken by then.
    pub delay_ms: u64,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
            chunked: false,
            delay_ms: 0,
        }
    }
    pub fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.as_bytes().to_vec(),
            chunked: false,
            delay_ms: 0,
        }
    }
    /// `body`, sent in 64 KiB chunks without a Content-Length.
    pub fn streamed(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body,
            chunked: true,
            delay_ms: 0,
        }
    }
    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Canned failures: the next `n` requests whose path contains `path` get `reply`.
#[derive(Default)]
pub struct Faults(Vec<(String, usize, Reply)>);

impl Faults {
    pub fn add(&mut self, path: &str, n: usize, reply: Reply) {
        self.0.push((path.into(), n, reply));
    }
    fn take(&mut self, seen: &Seen) -> Option<Reply> {
        let entry = self
            .0
            .iter_mut()
            .find(|(path, n, _)| *n > 0 && seen.path.contains(path.as_str()))?;
        entry.1 -= 1;
        Some(entry.2.clone())
    }
    /// Removes every remaining canned failure: the service has healed.
    pub fn heal(&mut self) {
        self.0.clear();
    }
}

/// Serves `handler` on 127.0.0.1:0; every request is recorded in the returned log.
pub fn serve<F>(handler: F) -> (SocketAddr, Log)
where
    F: Fn(&Seen) -> Reply + Send + Sync + 'static,
{
    let log: Log = Arc::default();
    let seen_log = Arc::clone(&log);
    let handler = Arc::new(handler);
    let route = capture().then(move |request: Seen| {
        let reply = handler(&request);
        seen_log.lock().unwrap().push(request);
        async move {
            if reply.delay_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(reply.delay_ms)).await;
            }
            respond(reply)
        }
    });
    let (addr, server) = warp::serve(route).bind_ephemeral(([127, 0, 0, 1], 0));
    tokio::spawn(server);
    (addr, log)
}

fn respond(reply: Reply) -> warp::http::Response<warp::hyper::Body> {
    let mut response = warp::http::Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        response = response.header(name, value);
    }
    let body = if reply.chunked {
        let chunks: Vec<Result<Vec<u8>, std::convert::Infallible>> = reply
            .body
            .chunks(64 << 10)
            .map(|chunk| Ok(chunk.to_vec()))
            .collect();
        warp::hyper::Body::wrap_stream(futures_util::stream::iter(chunks))
    } else {
        warp::hyper::Body::from(reply.body)
    };
    response.body(body).unwrap()
}

/// A running fake service: where it listens, every request it saw, and its state, which
/// tests read and change (canned faults, content).
pub struct Fake<S> {
    pub addr: SocketAddr,
    pub log: Log,
    pub state: Arc<Mutex<S>>,
}

impl<S> Clone for Fake<S> {
    fn clone(&self) -> Self {
        Fake {
            addr: self.addr,
            log: Arc::clone(&self.log),
            state: Arc::clone(&self.state),
        }
    }
}

impl<S: Send + 'static> Fake<S> {
    /// Serves `handle` over `state` on 127.0.0.1:0.
    fn spawn(state: S, handle: fn(&mut S, &Seen) -> Reply) -> Fake<S> {
        let state = Arc::new(Mutex::new(state));
        let handler_state = Arc::clone(&state);
        let (addr, log) = serve(move |seen| handle(&mut handler_state.lock().unwrap(), seen));
        Fake { addr, log, state }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn basic_auth(user: &str, password: &str) -> String {
    use std::io::Write;
    let mut raw = Vec::new();
    write!(raw, "{user}:{password}").unwrap();
    format!("Basic {}", base64_encode(&raw))
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn percent_decode(text: &str) -> String {
    let text = text.replace('+', " ");
    percent_encoding::percent_decode_str(&text)
        .decode_utf8_lossy()
        .to_string()
}

fn query_params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}
