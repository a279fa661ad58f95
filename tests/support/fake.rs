//! Local fake servers for the services freshet talks to, built from ../shared/api.
//! Each records every request it gets, so tests can assert on exactly what was sent.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use warp::Filter;

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
    let log: Log = Arc::default();
    let seen = Arc::clone(&log);
    let route = capture().map(move |request: Seen| {
        seen.lock().unwrap().push(request);
        warp::reply::json(&serde_json::json!({}))
    });
    let (addr, server) = warp::serve(route).bind_ephemeral(([127, 0, 0, 1], 0));
    tokio::spawn(server);
    (addr, log)
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
