//! The durable baseline for intake: what "committed before 200" costs at the least, and
//! nothing else. The same HMAC check and JSON parse as `servers/baseline.rs`; the `eventId`
//! de-duplicated in an in-memory set (a repeat answers `duplicate: true`); one writer
//! thread that drains everything queued, appends it to a log file in one `write`, calls
//! `fdatasync`, and only then lets those requests answer 200. `bench/run` measures
//! freshet against it in the same run (issue: performance).
//!
//! Usage: durable_baseline SECRET DIR  (listens on 127.0.0.1:0, prints `Listening. addr=...`)

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::oneshot;
use warp::http::StatusCode;
use warp::Filter;

/// A body to make durable, and who waits for it.
struct Pending {
    body: Bytes,
    done: oneshot::Sender<()>,
}

/// The writer: everything queued so far in one write and one fdatasync, then the answers.
fn write_log(file: std::fs::File, queued: mpsc::Receiver<Pending>) {
    let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
    while let Ok(first) = queued.recv() {
        let batch: Vec<Pending> = std::iter::once(first).chain(queued.try_iter()).collect();
        for pending in &batch {
            file.write_all(&(pending.body.len() as u32).to_le_bytes())
                .unwrap();
            file.write_all(&pending.body).unwrap();
        }
        file.flush().unwrap();
        // SAFETY: fdatasync on the file this thread owns.
        let synced = unsafe { libc::fdatasync(file.get_ref().as_raw_fd()) };
        assert_eq!(synced, 0, "fdatasync failed");
        for pending in batch {
            let _ = pending.done.send(());
        }
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let secret: &'static str = Box::leak(
        args.next()
            .expect("usage: durable_baseline SECRET DIR")
            .into_boxed_str(),
    );
    let dir = std::path::PathBuf::from(args.next().expect("usage: durable_baseline SECRET DIR"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))
        .expect("the log file");
    let (queue, queued) = mpsc::channel::<Pending>();
    std::thread::spawn(move || write_log(file, queued));
    let queue = Arc::new(Mutex::new(queue));
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();

    let route = warp::path!("webhooks" / "dbt")
        .and(warp::post())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::body::content_length_limit(262_144))
        .and(warp::body::bytes())
        .then(move |signature: Option<String>, body: Bytes| {
            let queue = Arc::clone(&queue);
            let seen = Arc::clone(&seen);
            async move {
                let verified = signature
                    .and_then(|s| hex::decode(s.trim()).ok())
                    .is_some_and(|expected| {
                        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
                            .expect("any key length");
                        mac.update(&body);
                        mac.verify_slice(&expected).is_ok()
                    });
                if !verified {
                    return reply("{\"error\":\"signature\"}".into(), StatusCode::UNAUTHORIZED);
                }
                let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
                    return reply("{\"error\":\"json\"}".into(), StatusCode::BAD_REQUEST);
                };
                let id = value
                    .get("eventId")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string();
                let new = seen.lock().unwrap().insert(id.clone());
                if new {
                    let (done, durable) = oneshot::channel();
                    queue
                        .lock()
                        .unwrap()
                        .send(Pending { body, done })
                        .expect("the writer runs");
                    durable.await.expect("the writer answers");
                }
                reply(
                    format!("{{\"event_id\":\"dbt:{id}\",\"duplicate\":{}}}", !new),
                    StatusCode::OK,
                )
            }
        });
    let (addr, server) = warp::serve(route).bind_ephemeral(([127, 0, 0, 1], 0));
    eprintln!("Listening. addr={addr}");
    server.await;
}

fn reply(body: String, status: StatusCode) -> warp::reply::WithStatus<String> {
    warp::reply::with_status(body, status)
}
