//! Measurements that need a running daemon and a fake service, for `bench/run`:
//! start-to-ready, idle RSS, webhook -> first request at a fake Tableau (p50/p99), rule
//! reload latency, and RSS after 100,000 events. Loopback only, bounded in count and time.
//!
//! Usage: harness PATH_TO_FRESHET   (prints one `key value` line per figure)

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use warp::Filter;

const SECRET: &str = "bench-harness-secret";
const E2E_EVENTS: usize = 1000;
const FOOTPRINT_EVENTS: usize = 100_000;

/// Arrival time of the first lookup for each workbook name at the fake Tableau.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// A minimal Tableau: sign-in, a lookup that knows every name, and refresh.
async fn fake_tableau(arrivals: Arrivals) -> std::net::SocketAddr {
    let route = warp::path::full()
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .map(move |path: warp::path::FullPath, query: String| {
            let path = path.as_str();
            if path.ends_with("/auth/signin") {
                return warp::reply::json(
                    &serde_json::json!({"credentials": {"token": "t", "site": {"id": "s"}}}),
                );
            }
            if let Some(name) = query
                .split('&')
                .find_map(|p| p.strip_prefix("filter=name:eq:"))
            {
                let name = percent_encoding::percent_decode_str(name)
                    .decode_utf8_lossy()
                    .to_string();
                arrivals
                    .lock()
                    .unwrap()
                    .entry(name.clone())
                    .or_insert_with(Instant::now);
                return warp::reply::json(&serde_json::json!({
                    "pagination": {"pageNumber": "1", "pageSize": "100", "totalAvailable": "1"},
                    "workbooks": {"workbook": [{"id": format!("id-{name}"), "name": name}]}}));
            }
            warp::reply::json(&serde_json::json!({"job": {"id": "j"}}))
        });
    let (addr, server) = warp::serve(route).bind_ephemeral(([127, 0, 0, 1], 0));
    tokio::spawn(server);
    addr
}

fn body(event_id: &str, run_id: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "accountId": 1, "webhooksID": "wsu_1", "eventId": event_id, "timestamp": "2026-11-25T10:00:00Z",
        "eventType": "job.run.completed", "webhookName": "bench",
        "data": {"jobId": "302451", "jobName": "nightly finance", "runId": run_id.to_string(), "environmentId": "1",
                 "environmentName": "Production", "projectName": "p", "projectId": "1", "runStatus": "Success",
                 "runStatusCode": 10, "runStatusMessage": "None", "runReason": "", "runStartedAt": "2026-11-25T09:00:00Z",
                 "runFinishedAt": "2026-11-25T10:00:00Z"}
    }))
    .unwrap()
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Webhooks answered 200 so far (each a new event).
static POSTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

async fn post(client: &reqwest::Client, url: &str, event_id: &str, run_id: usize) {
    let body = body(event_id, run_id);
    let response = client
        .post(url)
        .header("Authorization", sign(&body))
        .body(body)
        .send()
        .await
        .expect("post");
    assert!(response.status().is_success(), "{}", response.status());
    POSTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

#[tokio::main]
async fn main() {
    let freshet = std::env::args()
        .nth(1)
        .expect("usage: harness PATH_TO_FRESHET");
    // Absolute, since the daemon runs in its own temp dir.
    let freshet = std::fs::canonicalize(&freshet).expect("the freshet binary exists");
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(
        rules.join("refresh.rhai"),
        "if event.source == \"dbt\" { tableau_refresh(`wb-${event.run_id}`); }\n",
    )
    .unwrap();
    let arrivals: Arrivals = Arc::default();
    let tableau = fake_tableau(Arc::clone(&arrivals)).await;
    std::fs::write(
        dir.path().join("freshet.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[journal]\npath = \"journal.db\"\n[rules]\ndir = \"rules\"\n\
             [dbt]\nwebhook_secrets = [\"{SECRET}\"]\n\
             [tableau]\nserver = \"http://{tableau}\"\nsite = \"\"\napi_version = \"3.22\"\npat_name = \"b\"\npat_secret = \"b\"\n"
        ),
    )
    .unwrap();

    // Start-to-ready, through the same notify socket systemd would use.
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    let mut child: Child = Command::new(&freshet)
        .args(["serve", "--config"])
        .arg(dir.path().join("freshet.toml"))
        .current_dir(dir.path())
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "warn,freshet=info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut buffer = [0u8; 512];
    loop {
        let n = socket.recv(&mut buffer).expect("READY=1 within 30 s");
        if String::from_utf8_lossy(&buffer[..n]).contains("READY=1") {
            break;
        }
    }
    let ready = started.elapsed();
    let stderr = child.stderr.take().unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (reloaded_tx, reloaded_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut words = line.split_whitespace();
            if let Some(addr) = words.clone().find_map(|w| w.strip_prefix("addr=")) {
                let _ = addr_tx.send(addr.to_string());
            }
            if let Some(count) = words.find_map(|w| w.strip_prefix("rules_loaded=")) {
                let _ = reloaded_tx.send(count.parse::<usize>().unwrap_or(0));
            }
        }
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let url = format!("http://{addr}/webhooks/dbt");
    let pid = child.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("start_to_ready_ms {:.1}", ready.as_secs_f64() * 1000.0);
    println!("idle_rss_mib {:.1}", rss_kib(pid) as f64 / 1024.0);

    // End to end: webhook sent -> first request for its workbook at the fake Tableau.
    let client = reqwest::Client::new();
    let mut sent = HashMap::new();
    for i in 0..E2E_EVENTS {
        sent.insert(format!("wb-{i}"), Instant::now());
        post(&client, &url, &format!("wev_e2e_{i}"), i).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrivals.lock().unwrap().len() < E2E_EVENTS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut latencies: Vec<Duration> = {
        let arrived = arrivals.lock().unwrap();
        sent.iter()
            .filter_map(|(name, t0)| arrived.get(name).map(|t1| t1.duration_since(*t0)))
            .collect()
    };
    latencies.sort();
    println!("e2e_events {}", latencies.len());
    println!(
        "e2e_p50_ms {:.2}",
        percentile(&latencies, 0.50).as_secs_f64() * 1000.0
    );
    println!(
        "e2e_p99_ms {:.2}",
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0
    );

    // Reload: rule file written -> first event that sees the new version.
    let written = Instant::now();
    std::fs::write(
        rules.join("reload.rhai"),
        "if event.source == \"dbt\" { tableau_refresh(`reload-${event.run_id}`); }\n",
    )
    .unwrap();
    let took = until_fired(&arrivals, "reload-", written, &client, &url, 900_000).await;
    println!("reload_to_effect_ms {:.1}", took.as_secs_f64() * 1000.0);

    // Footprint under load: 100,000 events journaled and evaluated (no actions).
    std::fs::remove_file(rules.join("reload.rhai")).unwrap();
    std::fs::write(
        rules.join("refresh.rhai"),
        "if event.source == \"nothing\" { log(\"never\"); }\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let load_started = Instant::now();
    let concurrency = 32;
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = worker;
            while i < FOOTPRINT_EVENTS {
                post(&client, &url, &format!("wev_load_{i}"), i).await;
                i += concurrency;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let took = load_started.elapsed();
    println!("load_events {FOOTPRINT_EVENTS}");
    println!(
        "load_req_per_s {:.0}",
        FOOTPRINT_EVENTS as f64 / took.as_secs_f64()
    );
    println!("rss_after_100k_mib {:.1}", rss_kib(pid) as f64 / 1024.0);

    // One file changed among 1,000 -> the first event that sees it. The 999 others never
    // fire; their evaluation cost is in `cargo bench --bench rule_evaluation`.
    for i in 0..BULK_RULES - 1 {
        std::fs::write(
            rules.join(format!("bulk_{i:04}.rhai")),
            bulk_rule("never", i),
        )
        .unwrap();
    }
    while reloaded_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a reload")
        != BULK_RULES
    {}
    let written = Instant::now();
    std::fs::write(rules.join("bulk_0500.rhai"), bulk_rule("dbt", 500)).unwrap();
    let took = until_fired(&arrivals, "bulk-", written, &client, &url, 800_000).await;
    println!(
        "reload_one_of_1000_to_effect_ms {:.1}",
        took.as_secs_f64() * 1000.0
    );

    // Space: the journal file after a clean stop (the WAL checkpointed into it), per event
    // journaled, against the size of the webhook bodies.
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = child.wait();
    let events = POSTED.load(std::sync::atomic::Ordering::Relaxed);
    let bytes = std::fs::metadata(dir.path().join("journal.db"))
        .unwrap()
        .len() as f64;
    let body_bytes = body("wev_load_50000", 50_000).len() as f64;
    println!("journal_events {events}");
    println!("journal_bytes_per_event {:.0}", bytes / events as f64);
    println!("webhook_body_bytes {body_bytes:.0}");
    println!(
        "journal_bytes_per_body_byte {:.2}",
        bytes / events as f64 / body_bytes
    );
}

const BULK_RULES: usize = 1000;

/// Sends a webhook every 5 ms (run ids from `first_run`) until the fake Tableau sees a
/// workbook named `prefix...`; returns the time from `written` to that first request.
async fn until_fired(
    arrivals: &Arrivals,
    prefix: &str,
    written: Instant,
    client: &reqwest::Client,
    url: &str,
    first_run: usize,
) -> Duration {
    let mut n = 0usize;
    loop {
        let hit = arrivals
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, t)| *t)
            .min();
        if let Some(t) = hit {
            return t.duration_since(written);
        }
        assert!(
            written.elapsed() < Duration::from_secs(30),
            "no rule fired for {prefix}"
        );
        let run = first_run + n;
        post(client, url, &format!("wev_{prefix}{run}"), run).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A rule of about the examples' size that fires (a Tableau refresh named `bulk-...`) only
/// on events of `source`.
fn bulk_rule(source: &str, i: usize) -> String {
    format!(
        "// Bulk rule {i}: refresh a workbook when a matching job finishes.\n\
         if event.source == \"{source}\" && event.type == \"dbt.job.run.completed\" {{\n\
         \x20   let status = event.run_status;\n\
         \x20   if status == \"Success\" || status == \"success\" {{\n\
         \x20       tableau_refresh(`bulk-${{event.run_id}}`);\n\
         \x20   }} else {{\n\
         \x20       log(`job ${{event.job_id}} ended ${{status}}`);\n\
         \x20   }}\n\
         }}\n"
    )
}
