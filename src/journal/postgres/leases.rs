//! Lease renewal: an instance extends the leases of the jobs it is working on while it
//! lives, so that only a dead or stalled instance's jobs are taken over.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::schema::NOW_MS;
use super::{backend, Shared};

/// Extends this instance's leases while it lives (every third of a lease), so that only
/// a dead or stalled instance's jobs are taken over.
pub(super) async fn renew_leases(shared: Arc<Shared>, stop: CancellationToken) {
    let period = Duration::from_millis((shared.lease_ms / 3).max(100) as u64);
    let sql = format!(
        "UPDATE jobs SET lease_until = {NOW_MS} + $2
         WHERE id = ANY($3) AND locked_by = $1 AND status = 'running'"
    );
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let held: Vec<i64> = shared.held().iter().copied().collect();
        if held.is_empty() {
            continue;
        }
        let renewed = async {
            let client = shared.client().await?;
            client
                .execute(&sql, &[&shared.instance, &shared.lease_ms, &held])
                .await
                .map_err(backend)
        };
        if let Err(error) = renewed.await {
            tracing::warn!(error = %error, "Cannot renew job leases.");
        }
    }
}
