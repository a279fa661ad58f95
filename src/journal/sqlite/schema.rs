//! The SQLite schema, as ordered migrations applied at open (tracked in `user_version`).
//!
//! Times are integer milliseconds since the Unix epoch, taken from SQLite's own clock
//! (`NOW_MS`) so that one clock orders everything (ARCHITECTURE.md, "The journal").

use rusqlite::Connection;

use super::write_transaction;
use crate::journal::JournalError;

/// The database clock, in milliseconds.
pub(super) const NOW_MS: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

/// Each entry moves the schema one version forward; never edit an entry once released.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE events (
    id            TEXT PRIMARY KEY,
    source        TEXT NOT NULL,
    type          TEXT NOT NULL,
    received_at   TEXT NOT NULL,
    received_ms   INTEGER NOT NULL,
    chain_depth   INTEGER NOT NULL DEFAULT 0,
    -- received -> (enriching) -> evaluated
    status        TEXT NOT NULL,
    body          TEXT NOT NULL
);
CREATE INDEX events_received ON events(received_ms);

CREATE TABLE jobs (
    id            INTEGER PRIMARY KEY,
    -- evaluate | enrich | action
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
    scheduled_at  INTEGER NOT NULL,
    lease_until   INTEGER,
    errors        TEXT NOT NULL DEFAULT '[]',
    last_error    TEXT,
    -- what a successful call answered (a Mode run token, a Tableau job id)
    result        TEXT,
    created_at    INTEGER NOT NULL,
    finished_at   INTEGER
);
CREATE INDEX jobs_due ON jobs(queue, status, scheduled_at);
CREATE INDEX jobs_event ON jobs(event_id);
-- Coalescing: at most one not-yet-started job per identical call. Running jobs are left out
-- on purpose: a refresh asked for while one runs must still run afterwards.
CREATE UNIQUE INDEX jobs_coalesce ON jobs(coalesce_key)
    WHERE coalesce_key IS NOT NULL AND status IN ('pending', 'retrying');

CREATE TABLE rule_runs (
    event_id      TEXT NOT NULL,
    rule          TEXT NOT NULL,
    -- fired | error
    outcome       TEXT NOT NULL,
    actions       INTEGER NOT NULL,
    error         TEXT,
    PRIMARY KEY (event_id, rule)
);

CREATE TABLE alerts (
    name             TEXT PRIMARY KEY,
    -- ok | firing
    state            TEXT NOT NULL,
    version          INTEGER NOT NULL,
    since_ms         INTEGER NOT NULL,
    last_notified_ms INTEGER,
    event_id         TEXT NOT NULL
);
"#,
    // Claims and backlog counts read only open jobs. `jobs_due` held every job ever queued
    // (until pruned), so a claim walked the whole history of its queue; this index holds
    // only open jobs, in the order they are due, and a job leaves it when it finishes.
    // A query uses it when its WHERE repeats the index's `status IN (...)` term verbatim.
    r#"
DROP INDEX jobs_due;
CREATE INDEX jobs_open ON jobs(queue, scheduled_at)
    WHERE status IN ('pending', 'retrying', 'running');
"#,
    // One row that `/healthz` writes when the last commit failed, to learn whether the
    // journal takes commits again.
    r#"
CREATE TABLE health (
    id          INTEGER PRIMARY KEY,
    checked_ms  INTEGER NOT NULL
);
"#,
    // Event bodies are written compressed from now on (a BLOB; `sqlite/body.rs`). Nothing
    // to change in the tables, which read both forms; the version moves so that an older
    // freshet, which reads only text, refuses the journal instead of failing on new rows.
    "-- event bodies may be zstd BLOBs",
    // Running jobs, by lease end. Reaping expired leases and finding the next lease to
    // end read only these; through `jobs_open` they walked every open job of the queue,
    // so each claim cost as much as the backlog was long (64,000 pending evaluations
    // after ten seconds of load drained at 2,600 a second).
    r#"
CREATE INDEX jobs_running ON jobs(queue, lease_until) WHERE status = 'running';
"#,
    // `jobs_open` again, its condition spelled as equalities. SQLite checks a partial
    // index's condition on every insert into the table and on every update of a row in
    // it; `status IN (three values)` made each check build and drop a temporary B-tree
    // of the three values (`OpenEphemeral`), where two or three comparisons do. The
    // queries that read it repeat the new condition verbatim (`sqlite/sql.rs`).
    r#"
DROP INDEX jobs_open;
CREATE INDEX jobs_open ON jobs(queue, scheduled_at)
    WHERE status = 'pending' OR status = 'retrying' OR status = 'running';
"#,
    // A job that would be open again while an identical call is pending ends `merged`,
    // naming that call, instead of breaking `jobs_coalesce` (docs/behaviour.md section 6).
    r#"
ALTER TABLE jobs ADD COLUMN merged_into INTEGER;
"#,
    // Deadlines and schedules (docs/behaviour.md section 14): each due time is judged once,
    // the row's last_due_ms moving forward under a compare-and-set.
    r#"
CREATE TABLE clocks (
    name             TEXT PRIMARY KEY,
    last_due_ms      INTEGER NOT NULL,
    last_check_in_ms INTEGER,
    missed_due_ms    INTEGER
);
"#,
    // Muted alerts (`freshet alerts --mute`), and a transition made while muted.
    r#"
ALTER TABLE alerts ADD COLUMN muted_until_ms INTEGER;
ALTER TABLE alerts ADD COLUMN mute_reason TEXT;
ALTER TABLE alerts ADD COLUMN unposted INTEGER NOT NULL DEFAULT 0;
"#,
    // The console's overview counts a day's events by source from the index alone (the
    // source never changes, so intake and evaluation write the same index as before).
    r#"
DROP INDEX events_received;
CREATE INDEX events_received ON events(received_ms, source);
"#,
    // When the current attempt of a job started (set by each claim, copied into a failed
    // attempt's entry in `errors`): the console shows each attempt's start and duration.
    r#"
ALTER TABLE jobs ADD COLUMN started_at INTEGER;
"#,
    // Indexes for the console's reads that intake never writes: the jobs `freshet actions`
    // lists (actions, and stage jobs that failed) by status and id (with their schedule, so
    // that the overview skips the dead ones of earlier days in the index), and actions by
    // creation. Without them
    // a journal of 1,000,000 events (and as many evaluate jobs) read every job for the
    // overview's action counts and for `/actions?status=dead`.
    r#"
CREATE INDEX jobs_listed ON jobs(status, id, scheduled_at)
    WHERE queue = 'action' OR status = 'dead' OR status = 'retrying';
CREATE INDEX jobs_action_created ON jobs(created_at, status) WHERE queue = 'action';
"#,
];

/// Brings the schema up to date. An up-to-date journal (every open but the first after
/// an upgrade) is only read, so read-only CLI commands take no write lock. Otherwise the
/// version is read again inside one write transaction, so that two processes opening an
/// old journal together (the daemon and a CLI command) cannot both apply a migration.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), JournalError> {
    if schema_version(conn)? == MIGRATIONS.len() {
        return Ok(());
    }
    let tx = write_transaction(conn)?;
    let version = schema_version(&tx)?;
    for migration in &MIGRATIONS[version..] {
        tx.execute_batch(migration)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len())?;
    tx.commit()?;
    Ok(())
}

/// The journal's schema version, refusing one newer than this build knows.
fn schema_version(conn: &Connection) -> Result<usize, JournalError> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > MIGRATIONS.len() {
        return Err(JournalError::Corrupt(format!(
            "the journal has schema version {version}, newer than this freshet knows ({})",
            MIGRATIONS.len()
        )));
    }
    Ok(version)
}
