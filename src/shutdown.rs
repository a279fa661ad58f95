//! Signals: SIGTERM and SIGINT stop the daemon; SIGHUP reloads config secrets and rules
//! without stopping anything.

use tokio::signal::unix::{signal, SignalKind};

/// Waits for SIGTERM or SIGINT, calling `on_reload` for every SIGHUP in between.
pub async fn wait_for_stop(mut on_reload: impl FnMut()) {
    // Installing a handler only fails if the signal number is invalid, which these are not.
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut hangup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        tokio::select! {
            _ = terminate.recv() => { tracing::info!("SIGTERM received."); return; }
            _ = interrupt.recv() => { tracing::info!("SIGINT received."); return; }
            _ = hangup.recv() => { tracing::info!("SIGHUP received: reloading."); on_reload(); }
        }
    }
}
