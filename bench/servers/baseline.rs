//! The near-limit baseline for the intake hot path: a minimal warp server that only
//! verifies the dbt HMAC over the raw body and parses the JSON, then answers 200. No
//! journal, no event mapping. `bench/run` measures freshet against it in the same run.
//!
//! Usage: baseline SECRET  (listens on 127.0.0.1:0 and prints `Listening. addr=...`)

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use warp::http::StatusCode;
use warp::Filter;

#[tokio::main]
async fn main() {
    let secret: &'static str = Box::leak(
        std::env::args()
            .nth(1)
            .expect("usage: baseline SECRET")
            .into_boxed_str(),
    );
    let route = warp::path!("webhooks" / "dbt")
        .and(warp::post())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::body::content_length_limit(262_144))
        .and(warp::body::bytes())
        .map(move |signature: Option<String>, body: Bytes| {
            let verified = signature
                .and_then(|s| hex::decode(s.trim()).ok())
                .is_some_and(|expected| {
                    let mut mac =
                        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
                    mac.update(&body);
                    mac.verify_slice(&expected).is_ok()
                });
            if !verified {
                return warp::reply::with_status(
                    "{\"error\":\"signature\"}".to_string(),
                    StatusCode::UNAUTHORIZED,
                );
            }
            match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(value) => {
                    let id = value.get("eventId").and_then(|v| v.as_str()).unwrap_or("");
                    warp::reply::with_status(
                        format!("{{\"event_id\":\"dbt:{id}\",\"duplicate\":false}}"),
                        StatusCode::OK,
                    )
                }
                Err(_) => warp::reply::with_status(
                    "{\"error\":\"json\"}".to_string(),
                    StatusCode::BAD_REQUEST,
                ),
            }
        });
    let (addr, server) = warp::serve(route).bind_ephemeral(([127, 0, 0, 1], 0));
    eprintln!("Listening. addr={addr}");
    server.await;
}
