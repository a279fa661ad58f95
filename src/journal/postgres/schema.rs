//! The PostgreSQL schema, as ordered migrations applied at start under an advisory lock
//! (instances starting together apply each once), tracked in `freshet_schema`.
//!
//! It mirrors the SQLite schema (ARCHITECTURE.md, "The journal"): times are integer milliseconds
//! from the database's clock, so every instance orders by one clock; `locked_by` names the
//! instance holding a job's lease, and stays as "who ran it" once the job ends.

use super::session::Typed;

use super::{backend, Role, Shared};
use crate::journal::JournalError;

/// The database clock, in milliseconds. `clock_timestamp()`, not `now()`: `now()` is the
/// start of the transaction, and a claim must compare leases with the present.
pub const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// The key of the advisory lock that serializes migrations.
pub const MIGRATION_LOCK: i64 = 0x0066_7265_7368_6574; // "freshet"
/// The advisory lock one instance prunes under, batch by batch; the others skip.
pub const PRUNE_LOCK: i64 = MIGRATION_LOCK + 1;

/// The channel instances NOTIFY on when they queue work; the payload is the queue.
pub const WORK_CHANNEL: &str = "freshet_work";

/// Each entry moves the schema one version forward; never edit an entry once released.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE events (
    id            TEXT PRIMARY KEY,
    source        TEXT NOT NULL,
    type          TEXT NOT NULL,
    received_at   TEXT NOT NULL,
    received_ms   BIGINT NOT NULL,
    chain_depth   INTEGER NOT NULL DEFAULT 0,
    status        TEXT NOT NULL,
    body          TEXT NOT NULL,
    -- the instance that journaled it
    instance      TEXT
);
CREATE INDEX events_received ON events (received_ms);

CREATE TABLE jobs (
    id            BIGSERIAL PRIMARY KEY,
    queue         TEXT NOT NULL,
    kind          TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    rule          TEXT,
    job_key       TEXT NOT NULL UNIQUE,
    coalesce_key  TEXT,
    payload       TEXT NOT NULL,
    status        TEXT NOT NULL,
    attempt       INTEGER NOT NULL DEFAULT 0,
    max_attempts  INTEGER NOT NULL,
    scheduled_at  BIGINT NOT NULL,
    lease_until   BIGINT,
    locked_by     TEXT,
    errors        JSONB NOT NULL DEFAULT '[]',
    last_error    TEXT,
    result        TEXT,
    created_at    BIGINT NOT NULL,
    finished_at   BIGINT
);
CREATE INDEX jobs_event ON jobs (event_id);
-- Claims read only open jobs, in the order they are due (River's and Oban's shape).
CREATE INDEX jobs_open ON jobs (queue, scheduled_at, id)
    WHERE status IN ('pending', 'retrying', 'running');
CREATE UNIQUE INDEX jobs_coalesce ON jobs (coalesce_key)
    WHERE coalesce_key IS NOT NULL AND status IN ('pending', 'retrying');

CREATE TABLE rule_runs (
    event_id      TEXT NOT NULL,
    rule          TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    actions       INTEGER NOT NULL,
    error         TEXT,
    PRIMARY KEY (event_id, rule)
);

CREATE TABLE alerts (
    name             TEXT PRIMARY KEY,
    state            TEXT NOT NULL,
    version          BIGINT NOT NULL,
    since_ms         BIGINT NOT NULL,
    last_notified_ms BIGINT,
    event_id         TEXT NOT NULL
);
"#,
    // Running jobs, by lease end: reaping expired leases and finding the next lease to
    // end read only these, not every open job of the queue (as in the SQLite journal).
    r#"
CREATE INDEX jobs_running ON jobs (queue, lease_until) WHERE status = 'running';
"#,
    // A job that would be open again while an identical call is pending ends `merged`,
    // naming that call, instead of breaking `jobs_coalesce` (docs/behaviour.md section 6).
    r#"
ALTER TABLE jobs ADD COLUMN merged_into BIGINT;
"#,
    // Room on each page of events for the row's next version: marking an event evaluated
    // (its status) then stays on its page, a HOT update that touches no index and logs only
    // the changed middle of the row, instead of a new copy of the body elsewhere.
    r#"
ALTER TABLE events SET (fillfactor = 80);
"#,
    // Deadlines and schedules (docs/behaviour.md section 14): each due time is judged once,
    // the row's last_due_ms moving forward under a compare-and-set, whichever instance
    // gets there first.
    r#"
CREATE TABLE clocks (
    name             TEXT PRIMARY KEY,
    last_due_ms      BIGINT NOT NULL,
    last_check_in_ms BIGINT,
    missed_due_ms    BIGINT
);
"#,
    // Muted alerts (`freshet alerts --mute`), and a transition made while muted.
    r#"
ALTER TABLE alerts ADD COLUMN muted_until_ms BIGINT;
ALTER TABLE alerts ADD COLUMN mute_reason TEXT;
ALTER TABLE alerts ADD COLUMN unposted BOOLEAN NOT NULL DEFAULT FALSE;
"#,
    // The console's overview counts a day's events by source from the index alone. The
    // source never changes, so marking an event evaluated stays a HOT update.
    r#"
DROP INDEX events_received;
CREATE INDEX events_received ON events (received_ms, source);
"#,
    // When the current attempt of a job started (set by each claim, copied into a failed
    // attempt's entry in `errors`): the console shows each attempt's start and duration.
    r#"
ALTER TABLE jobs ADD COLUMN started_at BIGINT;
"#,
    // Indexes for the console's reads that intake never writes: the jobs `freshet actions`
    // lists (actions, and stage jobs that failed) by status and id (with their schedule, so
    // that the overview skips the dead ones of earlier days in the index), and actions by
    // creation. Without them
    // a journal of 1,000,000 events (and as many evaluate jobs) read every job for the
    // overview's action counts and for `/actions?status=dead`.
    r#"
CREATE INDEX jobs_listed ON jobs (status, id, scheduled_at)
    WHERE queue = 'action' OR status = 'dead' OR status = 'retrying';
CREATE INDEX jobs_action_created ON jobs (created_at, status) WHERE queue = 'action';
"#,
];

/// The tables freshet keeps, `freshet_schema` (the version) first.
const TABLES: [&str; 6] = [
    "freshet_schema",
    "events",
    "jobs",
    "rule_runs",
    "alerts",
    "clocks",
];

/// Brings the schema up to date, instances taking turns under the advisory lock. The
/// tables live in the journal's own schema (`Shared::schema`, every connection's search
/// path): it is made if missing, and a journal an older freshet kept in `public` is moved
/// there first, whole, in the same transaction. A command only reads the version, so a
/// role that can only read works for it.
pub(super) async fn migrate(shared: &Shared, role: Role) -> Result<(), JournalError> {
    let mut client = shared.client().await?;
    let known = MIGRATIONS.len() as i32;
    if role == Role::Command {
        let version = version_in(&client, &shared.schema).await?;
        if version > known {
            return Err(newer(version, known));
        }
        if version < known {
            return Err(JournalError::Refused(
                "the PostgreSQL journal is not set up yet (or is older than this freshet): `freshet serve` creates and migrates its tables".into(),
            ));
        }
        return Ok(());
    }
    let tx = client.transaction().await.map_err(backend)?;
    // Instances starting together take turns; each sees the version the last one left.
    tx.exec("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(backend)?;
    let schema = &shared.schema;
    tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
        .await
        .map_err(backend)?;
    adopt_from_public(&tx, schema).await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS freshet_schema (version INTEGER NOT NULL)")
        .await
        .map_err(backend)?;
    let version = version_in(&tx, schema).await?;
    if version > known {
        return Err(newer(version, known));
    }
    for migration in &MIGRATIONS[version as usize..] {
        tx.batch_execute(migration).await.map_err(backend)?;
    }
    tx.exec("DELETE FROM freshet_schema", &[])
        .await
        .map_err(backend)?;
    tx.exec(
        "INSERT INTO freshet_schema (version) VALUES ($1)",
        &[&known],
    )
    .await
    .map_err(backend)?;
    tx.commit().await.map_err(backend)
}

fn newer(version: i32, known: i32) -> JournalError {
    JournalError::Corrupt(format!(
        "the journal has schema version {version}, newer than this freshet knows ({known})"
    ))
}

/// The journal's schema version in `schema` (0: none there yet).
async fn version_in(client: &impl Typed, schema: &str) -> Result<i32, JournalError> {
    let exists = client
        .row_opt(
            "SELECT 1 FROM information_schema.tables
             WHERE table_schema = $1 AND table_name = 'freshet_schema'",
            &[&schema],
        )
        .await
        .map_err(backend)?
        .is_some();
    if !exists {
        return Ok(0);
    }
    Ok(client
        .row_opt(
            &format!("SELECT version FROM \"{schema}\".freshet_schema"),
            &[],
        )
        .await
        .map_err(backend)?
        .map(|row| row.get(0))
        .unwrap_or(0))
}

/// Moves a journal that an older freshet kept in `public` into `schema`, when `schema`
/// has none yet: its tables (with their indexes and sequences) change schema, their rows
/// stay. Tables in `public` that freshet did not make are not touched.
async fn adopt_from_public(tx: &super::session::Tx<'_>, schema: &str) -> Result<(), JournalError> {
    if schema == "public"
        || version_in(tx, schema).await? > 0
        || version_in(tx, "public").await? == 0
    {
        return Ok(());
    }
    for table in TABLES {
        tx.batch_execute(&format!(
            "ALTER TABLE IF EXISTS public.{table} SET SCHEMA \"{schema}\""
        ))
        .await
        .map_err(backend)?;
    }
    tracing::warn!(
        schema,
        "Moved the journal's tables from the public schema into its own."
    );
    Ok(())
}
