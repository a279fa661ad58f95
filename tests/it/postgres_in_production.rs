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
    let setup = Setup {
        journal_keys: "url = { env = \"T_DB\" }\nlease_seconds = 3".into(),
        ..Setup::dbt(SECRET, 5, 50, 200)
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
#[tokio::test]
async fn webhooks_are_journaled_over_tls_with_require_and_verify_full() {
    let Some(url) = fresh_postgres().await else {
        return;
    };
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
#[tokio::test]
async fn verify_full_refuses_a_certificate_for_another_host_without_showing_the_password() {
    let Some(url) = fresh_postgres().await else {
        return;
    };
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
