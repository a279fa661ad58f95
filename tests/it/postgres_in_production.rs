//! docs/behaviour.md section 12 on real PostgreSQL: TLS with a certificate from a CA made
//! at test time (`.ci/postgres.sh`), PgBouncer in transaction mode in front of it, an
//! instance paused past its lease, and a death that is told.

use crate::support::fake::FakeSlack;
use crate::support::{
    dbt_completed, eventually, fresh_postgres, postgres_rows, send_dbt, Daemon, Setup,
};

const SECRET: &str = "production-true-secret-1";
const POST_EACH: &str = r#"if event.source == "dbt" { slack_post(`event ${event.id}`); }"#;

fn setup(slack: &FakeSlack, url: &str) -> Setup {
    setup_with(slack, url, "lease_seconds = 3", 5)
}

/// An instance on the journal at `url` (`T_DB`) with `journal_keys` besides the URL, that
/// posts each dbt event to the fake Slack, with `max_attempts` per action.
fn setup_with(slack: &FakeSlack, url: &str, journal_keys: &str, max_attempts: u32) -> Setup {
    let setup = Setup {
        journal_keys: format!("url = {{ env = \"T_DB\" }}\n{journal_keys}"),
        ..Setup::dbt(SECRET, max_attempts, 50, 200)
    };
    slack
        .configure(setup)
        .env("T_DB", url)
        .rule("post.rhai", POST_EACH)
}

/// The test server's CA (`.ci/postgres.sh` makes it); None where no server was started
/// (then `fresh_postgres` has already said the test is skipped).
fn test_ca() -> String {
    std::env::var("FRESHET_TEST_PG_CA").expect("FRESHET_TEST_PG_CA: .ci/postgres.sh sets it")
}

/// Whether every connection freshet holds to `url`'s database is encrypted (and there is one).
async fn freshet_connections_encrypted(url: &str) -> (usize, usize) {
    let database = url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let rows = postgres_rows(
        url.split('?').next().unwrap(),
        &format!(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name = 'freshet' AND a.datname = '{database}'"
        ),
    )
    .await;
    let all: i64 = rows[0].get(0);
    let encrypted: i64 = rows[0].get(1);
    (all as usize, encrypted as usize)
}

/// `sslmode=require` and `verify-full` (with the test CA): webhooks are journaled and acted
/// on, over connections the server lists as encrypted.
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
#[tokio::test]
async fn webhooks_are_journaled_over_tls_with_require_and_verify_full() {
    let url = fresh_postgres().await;
    let ca = test_ca();
    for (n, tls) in [
        "sslmode=require".to_string(),
        format!("sslmode=verify-full&sslrootcert={ca}"),
    ]
    .iter()
    .enumerate()
    {
        let slack = FakeSlack::start().await;
        let tls_url = format!("{url}?{tls}");
        let daemon = Daemon::start(setup(&slack, &tls_url));
        let answer = send_dbt(
            &daemon,
            SECRET,
            dbt_completed(&format!("wev_tls{n}"), "x", "Success"),
        )
        .await;
        assert_eq!(answer["duplicate"], false, "{tls}: {answer}");
        eventually(&daemon, "the post", || {
            (!slack.posts().is_empty()).then_some(())
        })
        .await;
        let (all, encrypted) = freshet_connections_encrypted(&url).await;
        assert!(
            all > 0 && encrypted == all,
            "{tls}: {encrypted} of {all} connections encrypted"
        );
        // The commands read over TLS too.
        let events = daemon.cli_ok(&["events"]);
        assert!(events.contains(&format!("wev_tls{n}")), "{events}");
    }
}

/// `verify-full` against a certificate made for another host is refused, saying why, and
/// no error shows the URL's password.
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
#[tokio::test]
async fn verify_full_refuses_a_certificate_for_another_host_without_showing_the_password() {
    let url = fresh_postgres().await;
    let ca = test_ca();
    let slack = FakeSlack::start().await;
    let daemon = Daemon::start(setup(
        &slack,
        &format!("{url}?sslmode=verify-full&sslrootcert={ca}"),
    ));
    // The same server, reached at 127.0.0.1 under a name its certificate does not carry.
    let rest = url.strip_prefix("postgres://freshet@127.0.0.1:").unwrap();
    let (port, database) = rest.split_once('/').unwrap();
    let password = "pw-never-shown-8c1f";
    let wrong = format!(
        "postgres://freshet:{password}@db.elsewhere.test:{port}/{database}?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={ca}"
    );
    let output = daemon.cli_with_env(&["events"], &[("T_DB", &wrong)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("certificate not valid for name"),
        "{stderr}"
    );
    assert!(stderr.contains("db.elsewhere.test"), "{stderr}");
    assert!(!stderr.contains(password), "{stderr}");
    // With verify-ca the chain is enough: the same URL reads the journal.
    let chain_only = wrong.replace("verify-full", "verify-ca");
    let output = daemon.cli_with_env(&["events"], &[("T_DB", &chain_only)]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // A URL that does not parse: the reason, never the password.
    let broken = format!(
        "postgres://freshet:{password}@127.0.0.1:{port}/{database}?sslmode=verify-everything"
    );
    let output = daemon.cli_with_env(&["check"], &[("T_DB", &broken)]);
    let stdout = String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains("verify-everything") && stdout.contains("journal.url"),
        "{stdout}"
    );
    assert!(!stdout.contains(password), "{stdout}");
}

/// Polls the database until `sql`'s first row's first column (a count) reaches `least`.
async fn until_count(url: &str, sql: &str, least: i64) -> i64 {
    for _ in 0..800 {
        let n: i64 = postgres_rows(url, sql).await[0].get(0);
        if n >= least {
            return n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("never {least} rows: {sql}");
}

/// docs/behaviour.md section 12 (every death is told): an action whose instance dies
/// during its last attempt ends dead, taken over by another instance, with its
/// `freshet.action.failed` event, a metric and a log line; its errors name the instance
/// that lost the lease.
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
#[tokio::test]
async fn an_action_whose_instance_died_on_its_last_attempt_ends_dead_and_is_told() {
    let url = fresh_postgres().await;
    let slack = FakeSlack::start().await;
    slack.state.lock().unwrap().delay_ms = 20_000;
    let one_attempt = |slack: &FakeSlack| {
        setup_with(slack, &url, "lease_seconds = 3", 1).rule(
            "told.rhai",
            r#"if event.type == "freshet.action.failed" { log(`told: ${event.error}`); }"#,
        )
    };
    let mut a = Daemon::start(one_attempt(&slack));
    let dying = a.instance_name();
    send_dbt(
        &a,
        SECRET,
        dbt_completed("wev_last_attempt", "x", "Success"),
    )
    .await;
    // The post is in flight (the fake Slack holds it): the instance dies with it.
    until_count(
        &url,
        &format!("SELECT count(*) FROM jobs WHERE queue = 'action' AND status = 'running' AND locked_by = '{dying}'"),
        1,
    )
    .await;
    eventually(&a, "the post reached Slack", || {
        (!slack.posts().is_empty()).then_some(())
    })
    .await;
    a.kill();

    let b = Daemon::start(one_attempt(&slack));
    let listing = eventually(&b, "the action dead", || {
        let listing = b.cli_ok(&["actions", "--json"]);
        listing.contains(r#""status":"dead""#).then_some(listing)
    })
    .await;
    assert!(
        listing.contains(&format!("interrupted: instance {dying} lost its lease")),
        "{listing}"
    );
    eventually(&b, "the failure event evaluated", || {
        (b.log().contains("told: interrupted: instance")).then_some(())
    })
    .await;
    let events = b.cli_ok(&["events"]);
    assert!(events.contains("freshet.action.failed"), "{events}");
    let metrics = b.get_text("/metrics").await;
    assert!(
        metrics.contains(r#"freshet_actions_total{kind="slack_post",outcome="dead"} 1"#),
        "{metrics}"
    );
    assert!(b.log().contains("Action is dead"), "{}", b.log());
    // It was not made again: the one post is the one in flight when the instance died.
    assert_eq!(slack.posts().len(), 1);
}

/// docs/behaviour.md section 12 (no call without the lease): two instances, lease 5 s, a
/// slow Slack. One is paused (SIGSTOP) for 15 s while it holds running jobs, then
/// resumes: it makes no call for the jobs it had claimed (the other took them over), so
/// the posts are at most the events plus the calls already in flight at the pause.
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
#[tokio::test]
async fn an_instance_paused_past_its_lease_makes_no_call_for_the_jobs_it_held() {
    let url = fresh_postgres().await;
    const EVENTS: usize = 16;
    const DELAY_MS: u64 = 600;
    let slack = FakeSlack::start().await;
    slack.state.lock().unwrap().delay_ms = DELAY_MS;
    let five_seconds = |slack: &FakeSlack| setup_with(slack, &url, "lease_seconds = 5", 5);
    let a = Daemon::start(five_seconds(&slack));
    let paused = a.instance_name();
    // Every event through the instance to be paused, so that it claims most posts.
    for i in 0..EVENTS {
        send_dbt(
            &a,
            SECRET,
            dbt_completed(&format!("wev_pause{i}"), "x", "Success"),
        )
        .await;
    }
    let running_on_a = format!(
        "SELECT count(*) FROM jobs WHERE queue = 'action' AND status = 'running' AND locked_by = '{paused}'"
    );
    until_count(&url, &running_on_a, 3).await;
    // Only now the second instance: the first holds its claims when it is paused.
    let b = Daemon::start(five_seconds(&slack));
    let pause_at = std::time::Instant::now();
    a.signal("STOP");
    // What it holds while stopped: each of these ends, once it resumes, either dropped
    // without a call or (a call in flight) with its outcome discarded.
    let held: i64 = postgres_rows(&url, &running_on_a).await[0].get(0);
    tokio::time::sleep(std::time::Duration::from_secs(15)).await;
    a.signal("CONT");

    eventually(&b, "every event posted", || {
        let mut texts: Vec<String> = slack.posts().into_iter().map(|(_, text)| text).collect();
        texts.sort();
        texts.dedup();
        (texts.len() == EVENTS).then_some(())
    })
    .await;
    eventually(&b, "every job finished", || {
        let listing = b.cli_ok(&["actions", "--json"]);
        (listing.lines().count() == EVENTS
            && listing
                .lines()
                .all(|l| l.contains(r#""status":"succeeded""#)))
        .then_some(())
    })
    .await;
    // The resumed instance has dealt with every job it held: dropped without a call, or
    // (the one in flight) its late outcome discarded.
    eventually(&a, "the paused instance let go of its jobs", || {
        let log = a.log();
        let let_go = log.matches("dropping it without a call").count()
            + log.matches("outcome was not recorded").count();
        (let_go as i64 >= held).then_some(())
    })
    .await;
    let arrivals = slack.state.lock().unwrap().arrivals.clone();
    let in_flight = arrivals
        .iter()
        .filter(|at| {
            **at + std::time::Duration::from_millis(DELAY_MS) > pause_at
                && **at < pause_at + std::time::Duration::from_millis(200)
        })
        .count();
    let posts = slack.posts().len();
    assert!(
        posts <= EVENTS + in_flight,
        "{posts} posts for {EVENTS} events with {in_flight} in flight at the pause (it held {held} jobs)"
    );
}

/// `url`'s database reached through the test PgBouncer (transaction mode).
fn through_pgbouncer(url: &str) -> String {
    let bouncer = std::env::var("FRESHET_TEST_PGBOUNCER_URL").expect(
        "FRESHET_TEST_PGBOUNCER_URL: .ci/postgres.sh starts PgBouncer (apt-get install pgbouncer)",
    );
    let (bouncer_base, _) = bouncer.rsplit_once('/').unwrap();
    let (_, database) = url.rsplit_once('/').unwrap();
    format!("{bouncer_base}/{database}")
}

/// docs/behaviour.md section 12 (poolers): through PgBouncer in transaction mode, with
/// `journal.pooler = "transaction"`, webhooks are journaled and actions run, on two
/// instances, and the commands work; without the setting, PgBouncer refuses the
/// connection's settings and freshet says so.
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
#[tokio::test]
async fn through_pgbouncer_in_transaction_mode_webhooks_are_journaled_and_actions_run() {
    let url = fresh_postgres().await;
    let bounced = through_pgbouncer(&url);
    let slack = FakeSlack::start().await;
    let pooled = |slack: &FakeSlack| {
        setup_with(
            slack,
            &bounced,
            "lease_seconds = 3\npooler = \"transaction\"",
            5,
        )
    };
    let a = Daemon::start(pooled(&slack));
    let b = Daemon::start(pooled(&slack));
    for i in 0..20 {
        let daemon = if i % 2 == 0 { &a } else { &b };
        let answer = send_dbt(
            daemon,
            SECRET,
            dbt_completed(&format!("wev_bounced{i}"), "x", "Success"),
        )
        .await;
        assert_eq!(answer["duplicate"], false, "{answer}");
    }
    eventually(&a, "every post", || {
        (slack.posts().len() >= 20).then_some(())
    })
    .await;
    eventually(&a, "every job finished", || {
        let listing = a.cli_ok(&["actions", "--json"]);
        (listing.lines().count() == 20
            && listing
                .lines()
                .all(|l| l.contains(r#""status":"succeeded""#)))
        .then_some(())
    })
    .await;
    assert_eq!(slack.posts().len(), 20, "each once");
    let events = b.cli_ok(&["events", "--limit", "50"]);
    assert_eq!(events.matches("  dbt:wev_bounced").count(), 20, "{events}");
    let health = a.get_json("/healthz").await;
    assert_eq!(health["journal"], "ok", "{health}");
    // The rows are in freshet's schema, written through the pooler.
    let rows: i64 = postgres_rows(&url, "SELECT count(*) FROM events").await[0].get(0);
    assert_eq!(rows, 20);

    // Without `pooler`, the session settings go as a startup option PgBouncer refuses.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("freshet.toml");
    std::fs::write(
        &config,
        format!(
            "[journal]\nurl = {{ env = \"T_DB\" }}\n\n{}",
            "[dbt]\nwebhook_secrets = [\"x\"]\n"
        ),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_freshet"))
        .args(["events", "--config"])
        .arg(&config)
        .env("T_DB", &bounced)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("options"),
        "PgBouncer names what it refused: {stderr}"
    );
}

/// docs/behaviour.md section 17: a wrong password and a missing database are named as
/// such, with host and port and never the password; a second start's migrations ("already
/// exists, skipping") log no notice, and a command names the journal without the password.
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_problems_are_named_and_migration_notices_are_quiet() {
    let url = fresh_postgres().await;
    let with_password = std::env::var("FRESHET_TEST_PG_PASSWORD_URL")
        .expect("FRESHET_TEST_PG_PASSWORD_URL: .ci/postgres.sh makes a role with a password");
    let host_port = url
        .split('@')
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let slack = FakeSlack::start().await;
    let mut daemon = Daemon::start(setup(&slack, &url));
    daemon.stop();
    daemon.spawn();
    let log = daemon.log();
    assert!(!log.contains("already exists"), "{log}");
    assert!(!log.contains("NOTICE"), "{log}");

    // A command names the journal it reads: host, port and database, no user or password.
    let output = daemon.cli(&["events"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let database = url.rsplit('/').next().unwrap();
    assert!(
        stderr.contains(&format!(
            "journal: PostgreSQL {host_port}/{database} (journal.url)"
        )),
        "{stderr}"
    );

    let wrong = with_password.replace("freshet-pw-right", "freshet-pw-WRONG");
    let output = daemon.cli_with_env(&["events"], &[("T_DB", &wrong)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "PostgreSQL at {host_port}/freshet refused the password of user \"freshet_pw\""
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("freshet-pw-WRONG"), "{stderr}");

    let (base, _) = url.rsplit_once('/').unwrap();
    let missing = format!("{base}/no_such_database");
    let output = daemon.cli_with_env(&["events"], &[("T_DB", &missing)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "PostgreSQL at {host_port}/no_such_database: the database \"no_such_database\" does not exist"
        )),
        "{stderr}"
    );
}
