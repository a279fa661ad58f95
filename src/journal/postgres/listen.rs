//! `LISTEN` for work queued by other instances: a notification only shortens a stage's
//! poll, so one lost across a reconnect costs at most a poll interval.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::schema::WORK_CHANNEL;
use super::Shared;
use crate::journal::Queue;

/// `LISTEN`s for work queued by any instance and wakes this one's stages. Reconnects
/// when the connection drops; a lost notification only delays work to the next poll.
pub(super) async fn listen(shared: Arc<Shared>, stop: CancellationToken) {
    use futures_util::future::poll_fn;
    loop {
        if let Ok((client, mut connection)) = shared.config.connect(shared.tls.clone()).await {
            let (tx, mut notes) = tokio::sync::mpsc::unbounded_channel::<String>();
            // Polling for messages also drives the connection (the LISTEN below).
            let driver = tokio::spawn(async move {
                while let Some(Ok(message)) = poll_fn(|cx| connection.poll_message(cx)).await {
                    if let tokio_postgres::AsyncMessage::Notification(note) = message {
                        if tx.send(note.payload().to_string()).is_err() {
                            return;
                        }
                    }
                }
            });
            if client
                .batch_execute(&format!("LISTEN {WORK_CHANNEL}"))
                .await
                .is_ok()
            {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => {
                            driver.abort();
                            return;
                        }
                        note = notes.recv() => {
                            let Some(queue) = note else { break };
                            let waker = shared.waker.lock().unwrap_or_else(|p| p.into_inner()).clone();
                            if let (Some(waker), Some(queue)) = (waker, Queue::parse(&queue).ok()) {
                                waker(queue);
                            }
                        }
                    }
                }
            }
            driver.abort();
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// At most one `NOTIFY` per queue per this long from one instance: a `NOTIFY` takes a
/// lock that serializes committing transactions database-wide, so one per commit made
/// intake queue behind it; a wake 50 ms late costs nothing (polling is the truth).
pub(super) const NOTIFY_EVERY: Duration = Duration::from_millis(50);

/// Sends the wakes sessions owe the other instances (`session::Notifier`): the first at
/// once, then at most one per queue per [`NOTIFY_EVERY`], each after the commit it
/// reports. A failed one is dropped: the others' polls find the work.
pub(super) async fn notifier(
    shared: Arc<Shared>,
    mut owed: tokio::sync::mpsc::UnboundedReceiver<Queue>,
    stop: CancellationToken,
) {
    use super::session::Typed;
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            queue = owed.recv() => match queue {
                Some(queue) => queue,
                None => return,
            },
        };
        let mut queues = vec![first];
        while let Ok(queue) = owed.try_recv() {
            if !queues.contains(&queue) {
                queues.push(queue);
            }
        }
        let names: Vec<String> = queues.iter().map(|q| q.as_str().to_string()).collect();
        let sent = async {
            let client = shared.client().await?;
            client
                .exec(
                    "SELECT pg_notify($1, queue) FROM unnest($2::text[]) AS queue",
                    &[&WORK_CHANNEL, &names],
                )
                .await
                .map_err(super::backend)
        };
        if let Err(error) = sent.await {
            tracing::debug!(error = %error, "Cannot notify the other instances; they poll.");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(NOTIFY_EVERY) => {}
        }
    }
}
