//! Lease renewal: an instance extends the leases of the jobs it is working on while it
//! lives, so that only a dead or stalled instance's jobs are taken over.

use super::session::Typed;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::schema::NOW_MS;
use super::{backend, Shared};

/// Extends this instance's leases while it lives (every sixth of a lease, so that one
/// renewal can fail and the lease still stays well within the margin `lease_held` keeps),
/// so that only a dead or stalled instance's jobs are taken over. Each renewal is bounded
/// by a sixth of the lease: a renewer stuck on a slow database would otherwise keep
/// confirming nothing while the leases run out. A lease the database no longer shows as
/// ours (taken over while we were paused) is dropped here, so no call is made for it.
pub(super) async fn renew_leases(shared: Arc<Shared>, stop: CancellationToken) {
    let period = Duration::from_millis((shared.lease_ms / 6).max(100) as u64);
    // Rows another transaction has locked are skipped, not waited for, and reported as
    // still ours but not renewed (false). Waiting made a deadlock with the evaluate
    // stage: its batch's end locks its jobs in another order than this statement, and
    // each waited for a row the other had updated (seen in bench/postgres: PostgreSQL
    // aborted the evaluations after its one-second deadlock timeout, and the batch ran
    // again a lease later). The row is locked by this instance's own finish (which has
    // let the lease go already), an operator's `freshet retry` reading it, or a takeover
    // (then the next round finds it gone); none is a reason to drop the lease now.
    let sql = format!(
        "WITH mine AS (
             SELECT id FROM jobs
             WHERE id = ANY($3) AND locked_by = $1 AND status = 'running'
             FOR UPDATE SKIP LOCKED),
         renewed AS (
             UPDATE jobs SET lease_until = {NOW_MS} + $2
             FROM mine WHERE jobs.id = mine.id
             RETURNING jobs.id)
         SELECT id, true FROM renewed
         UNION ALL
         SELECT id, false FROM jobs
         WHERE id = ANY($3) AND locked_by = $1 AND status = 'running'
           AND id NOT IN (SELECT id FROM renewed)"
    );
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let held: Vec<i64> = shared.held().keys().copied().collect();
        if held.is_empty() {
            continue;
        }
        let sent = Instant::now();
        let renewed = async {
            let client = shared.client().await?;
            client
                .rows(&sql, &[&shared.instance, &shared.lease_ms, &held])
                .await
                .map_err(backend)
        };
        match tokio::time::timeout(period, renewed).await {
            Ok(Ok(rows)) => {
                let renewed: HashSet<i64> = rows
                    .iter()
                    .filter(|row| row.get::<_, bool>(1))
                    .map(|row| row.get(0))
                    .collect();
                let locked: HashSet<i64> = rows
                    .iter()
                    .filter(|row| !row.get::<_, bool>(1))
                    .map(|row| row.get(0))
                    .collect();
                let mut mine = shared.held();
                for id in &held {
                    if renewed.contains(id) {
                        // Still held (not finished meanwhile): confirmed as of `sent`.
                        if let Some(confirmed) = mine.get_mut(id) {
                            *confirmed = sent;
                        }
                    } else if locked.contains(id) {
                        // Ours, locked for now: confirmed as before, renewed next round.
                    } else if mine.remove(id).is_some() {
                        tracing::warn!(job_id = id, "Lost the lease of a job (another instance took it over); making no call for it.");
                    }
                }
            }
            Ok(Err(error)) => tracing::warn!(error = %error, "Cannot renew job leases."),
            Err(_) => tracing::warn!(
                timeout_ms = period.as_millis() as u64,
                "Renewing job leases took too long; giving up this round."
            ),
        }
    }
}
