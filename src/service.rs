//! systemd integration through `sd-notify`: READY=1 once the daemon can take webhooks,
//! WATCHDOG=1 pings while the runtime is alive, STOPPING=1 on the way out. Each call is a
//! no-op when not started by systemd (no `$NOTIFY_SOCKET`).

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// Tells systemd the listener is bound, the journal open and the rules loaded.
pub fn ready() {
    notify(&[
        NotifyState::Ready,
        NotifyState::Status("accepting webhooks"),
    ]);
}

/// Tells systemd the daemon is stopping.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// The watchdog interval, following sd_watchdog_enabled(3): `$WATCHDOG_USEC` set, and
/// `$WATCHDOG_PID` either unset or this process. (The crate's helper insists on the PID.)
fn watchdog_usec() -> Option<u64> {
    let usec: u64 = std::env::var("WATCHDOG_USEC")
        .ok()?
        .parse()
        .ok()
        .filter(|u| *u > 0)?;
    match std::env::var("WATCHDOG_PID") {
        Ok(pid) if pid.parse::<u32>().ok() != Some(std::process::id()) => None,
        _ => Some(usec),
    }
}

fn notify(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::warn!(error = %error, "Cannot notify systemd.");
    }
}

/// When systemd set a watchdog (`WatchdogSec=`), pings it at half the interval from a
/// runtime task, so a wedged runtime stops the pings and systemd restarts the daemon.
pub fn spawn_watchdog(stop: CancellationToken) {
    let Some(usec) = watchdog_usec() else { return };
    let period = Duration::from_micros(usec / 2).max(Duration::from_millis(10));
    tracing::info!(
        period_ms = period.as_millis() as u64,
        "systemd watchdog enabled."
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => notify(&[NotifyState::Watchdog]),
            }
        }
    });
}
