//! Signals: SIGTERM and SIGINT stop the daemon; SIGHUP reloads config secrets and rules
//! without stopping anything.
//!
//! The handlers are installed before anything else starts: until then SIGHUP's default
//! action ends the process, and systemd may send it (`ExecReload=`) as soon as the daemon
//! answers on its port or says READY=1. A signal that arrives during start-up is kept by
//! the handler and acted on once [`Signals::wait_for_stop`] runs.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// The daemon's installed signal handlers.
pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    /// Installs the handlers. Needs a running tokio runtime.
    pub fn install() -> Signals {
        // Installing a handler only fails if the signal number is invalid, which these
        // are not.
        Signals {
            terminate: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            interrupt: signal(SignalKind::interrupt()).expect("SIGINT handler"),
            hangup: signal(SignalKind::hangup()).expect("SIGHUP handler"),
        }
    }

    /// Waits for SIGTERM or SIGINT, calling `on_reload` for every SIGHUP in between.
    pub async fn wait_for_stop(mut self, mut on_reload: impl FnMut()) {
        loop {
            tokio::select! {
                _ = self.terminate.recv() => { tracing::info!("SIGTERM received."); return; }
                _ = self.interrupt.recv() => { tracing::info!("SIGINT received."); return; }
                _ = self.hangup.recv() => { tracing::info!("SIGHUP received: reloading."); on_reload(); }
            }
        }
    }
}
