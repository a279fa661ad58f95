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
    let sql = format!(
        "UPDATE jobs SET lease_until = {NOW_MS} + $2
         WHERE id = ANY($3) AND locked_by = $1 AND status = 'running'
         RETURNING id"
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
                let renewed: HashSet<i64> = rows.iter().map(|row| row.get(0)).collect();
                let mut mine = shared.held();
                for id in &held {
                    if renewed.contains(id) {
                        // Still held (not finished meanwhile): confirmed as of `sent`.
                        if let Some(confirmed) = mine.get_mut(id) {
                            *confirmed = sent;
                        }
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
