//! The HTTP listener: accepts connections and serves the routes on each, under the limits
//! of docs/behaviour.md section 11, so that clients that hold connections open cannot lock others
//! out.
//!
//! - A connection must send a complete request head within [`HEAD_TIMEOUT`] of its
//!   first byte (or of being accepted); slowloris clients are closed.
//! - A keep-alive connection with no request in flight is closed after [`IDLE_TIMEOUT`].
//! - At most `max_connections` are open at once, fewer when the file limit is lower.
//!   When the cap is reached, or `accept` runs out of file descriptors, the connection
//!   that has been idle longest (no request in flight) is closed to make room, the way
//!   nginx reuses idle connections, so a new client is served even while an attacker
//!   holds every slot.
//!
//! warp's own `serve` has none of these, so each connection is served by hyper directly,
//! with the routes as a `warp::service`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::Service;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a client may take to send a complete request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a keep-alive connection may sit with no request before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// File descriptors kept for everything but client connections: the journal, the HTTP
/// client's pool to Mode, Tableau and Slack, the rules watcher, logs.
const RESERVED_FDS: u64 = 128;
/// How often the timeouts are enforced.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Raises this process's soft limit on open files to the hard limit (docs/behaviour.md section 11)
/// and returns the soft limit now in force.
pub fn raise_file_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Ok(limit.rlim_cur)
}

/// The cap on open connections: the configured one, or what the file limit leaves room
/// for after `RESERVED_FDS`, whichever is lower.
pub fn connection_cap(configured: usize, file_limit: u64) -> usize {
    let room = file_limit.saturating_sub(RESERVED_FDS).max(1);
    configured.min(usize::try_from(room).unwrap_or(usize::MAX))
}

/// Milliseconds since the listener started: one cheap clock for every connection.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// No time recorded (a `head_started` of a connection that is not sending a head).
const NEVER: u64 = u64::MAX;

/// What the listener knows of one open connection.
struct Connection {
    /// Requests whose handler is running (a request in flight is never closed).
    in_flight: AtomicUsize,
    /// When it was accepted or last answered a request.
    last_done: AtomicU64,
    /// When the first byte of the request head now being received arrived ([`NEVER`]
    /// while no head is being received).
    head_started: AtomicU64,
    /// When the request in flight began, while its body is still arriving ([`NEVER`]
    /// otherwise). Its signature cannot be checked before the whole body is in, so this is
    /// a request nobody has vouched for yet: the first to go when every slot is taken.
    receiving_since: AtomicU64,
    /// Closes the connection at once.
    close: CancellationToken,
}

impl Connection {
    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }
}

/// The open connections.
struct Registry {
    clock: Clock,
    open: Mutex<HashMap<u64, Arc<Connection>>>,
    next_id: AtomicU64,
    /// Woken whenever a connection ends.
    ended: tokio::sync::Notify,
}

impl Registry {
    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Connection>>> {
        // Every critical section is a few map operations; a panic cannot leave the map
        // half-changed, so a poisoned lock is still sound.
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn add(&self) -> (u64, Arc<Connection>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now = self.clock.now();
        let connection = Arc::new(Connection {
            in_flight: AtomicUsize::new(0),
            last_done: AtomicU64::new(now),
            // A new connection owes its first request head from now.
            head_started: AtomicU64::new(now),
            receiving_since: AtomicU64::new(NEVER),
            close: CancellationToken::new(),
        });
        self.open().insert(id, Arc::clone(&connection));
        (id, connection)
    }

    fn remove(&self, id: u64) {
        self.open().remove(&id);
        self.ended.notify_waiters();
    }

    fn len(&self) -> usize {
        self.open().len()
    }

    /// Makes room for one more connection, closing, in this order: the keep-alive
    /// connection idle longest; else the one whose request body has been arriving
    /// longest (slow bodies are how unauthenticated clients hold slots; a request whose
    /// body is in is answered within moments); else the one that has owed its request
    /// head longest (a client just accepted, its head still to come, goes last). None when
    /// every connection has a request past its body.
    fn evict_one(&self) -> Option<Evicted> {
        let open = self.open();
        let waiting = || {
            open.values()
                .filter(|c| c.is_idle() && !c.close.is_cancelled())
        };
        let idle = waiting()
            .filter(|c| c.head_started.load(Ordering::Acquire) == NEVER)
            .min_by_key(|c| c.last_done.load(Ordering::Acquire))
            .map(|c| (c, Evicted::Idle));
        let slow_body = || {
            open.values()
                .filter(|c| !c.close.is_cancelled())
                .filter(|c| c.receiving_since.load(Ordering::Acquire) != NEVER)
                .min_by_key(|c| c.receiving_since.load(Ordering::Acquire))
                .map(|c| (c, Evicted::SlowBody))
        };
        let owes_head = || {
            waiting()
                .min_by_key(|c| c.head_started.load(Ordering::Acquire))
                .map(|c| (c, Evicted::OwedHead))
        };
        let (connection, evicted) = idle.or_else(slow_body).or_else(owes_head)?;
        connection.close.cancel();
        Some(evicted)
    }

    /// Closes connections whose head is overdue or that have been idle too long.
    fn sweep(&self) -> usize {
        let now = self.clock.now();
        let head_limit = HEAD_TIMEOUT.as_millis() as u64;
        let idle_limit = IDLE_TIMEOUT.as_millis() as u64;
        let mut closed = 0;
        for connection in self.open().values() {
            if !connection.is_idle() || connection.close.is_cancelled() {
                continue;
            }
            let head_started = connection.head_started.load(Ordering::Acquire);
            let overdue = if head_started != NEVER {
                now.saturating_sub(head_started) > head_limit
            } else {
                now.saturating_sub(connection.last_done.load(Ordering::Acquire)) > idle_limit
            };
            if overdue {
                connection.close.cancel();
                closed += 1;
            }
        }
        closed
    }
}

/// The limits the listener enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once (after [`connection_cap`]).
    pub max_connections: usize,
}

/// Serves `service` (the routes, as `warp::service(..)`) on `listener` until `stop`; then
/// stops accepting, lets the requests in flight finish and closes idle connections.
/// Returns once every connection has ended.
pub async fn serve<S>(listener: TcpListener, service: S, limits: Limits, stop: CancellationToken)
where
    S: Service<Request, Response = hyper::Response<hyper::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let registry = Arc::new(Registry {
        clock: Clock(Instant::now()),
        open: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        ended: tokio::sync::Notify::new(),
    });
    let connections = TaskTracker::new();
    let sweeper = tokio::spawn({
        let registry = Arc::clone(&registry);
        let stop = stop.clone();
        async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let closed = registry.sweep();
                if closed > 0 {
                    tracing::debug!(connections = closed, "Closed idle or overdue connections.");
                }
            }
        }
    });
    let mut http = hyper::server::conn::Http::new();
    http.http1_only(true).http1_keep_alive(true);
    'accepting: loop {
        while registry.len() >= limits.max_connections {
            if !make_room(&registry, &stop).await {
                break 'accepting;
            }
        }
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) if out_of_descriptors(&error) => {
                tracing::warn!(error = %error, "Out of file descriptors; closing an idle connection.");
                if !make_room(&registry, &stop).await {
                    break;
                }
                continue;
            }
            // A connection reset before it was accepted, and the like: nothing to do.
            Err(error) => {
                tracing::debug!(error = %error, "A connection failed before it was accepted.");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (id, connection) = registry.add();
        let io = TrackedIo {
            inner: stream,
            connection: Arc::clone(&connection),
            clock: registry.clock,
        };
        let handler = RequestCounter {
            inner: service.clone(),
            connection: Arc::clone(&connection),
            clock: registry.clock,
        };
        let served = http.serve_connection(io, handler);
        let registry = Arc::clone(&registry);
        let stop = stop.clone();
        connections.spawn(async move {
            tokio::pin!(served);
            tokio::select! {
                result = &mut served => {
                    if let Err(error) = result {
                        tracing::debug!(error = %error, "Connection ended with an error.");
                    }
                }
                // Evicted or timed out: dropping the connection closes the socket.
                _ = connection.close.cancelled() => {}
                _ = stop.cancelled() => {
                    served.as_mut().graceful_shutdown();
                    let _ = served.await;
                }
            }
            registry.remove(id);
        });
    }
    sweeper.abort();
    connections.close();
    connections.wait().await;
}

/// Which connection [`Registry::evict_one`] closed.
enum Evicted {
    Idle,
    SlowBody,
    OwedHead,
}

/// At the cap: closes a connection ([`Registry::evict_one`]), or waits for one to end.
/// False when the stop came first.
async fn make_room(registry: &Registry, stop: &CancellationToken) -> bool {
    let ended = registry.ended.notified();
    tokio::pin!(ended);
    ended.as_mut().enable();
    match registry.evict_one() {
        Some(Evicted::Idle) => {
            tracing::debug!("Connection cap reached; closed the connection idle longest.")
        }
        Some(Evicted::SlowBody) => tracing::debug!(
            "Connection cap reached with none idle; closed the one whose request body has been arriving longest."
        ),
        Some(Evicted::OwedHead) => tracing::debug!(
            "Connection cap reached with none idle; closed the one that has owed its request head longest."
        ),
        None => {}
    }
    // Every connection has a request in flight (each ends within the head or body
    // timeout), or one was just closed: either way, wait for one to end. The timeout only
    // bounds the wait when `accept` failed for want of descriptors that a connection of
    // ours did not hold.
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = &mut ended => true,
        _ = tokio::time::sleep(Duration::from_millis(100)) => true,
    }
}

fn out_of_descriptors(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The socket, noting when a request head starts to arrive.
struct TrackedIo {
    inner: TcpStream,
    connection: Arc<Connection>,
    clock: Clock,
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let connection = &self.connection;
        if buf.filled().len() > before
            && connection.is_idle()
            && connection.head_started.load(Ordering::Acquire) == NEVER
        {
            connection
                .head_started
                .store(self.clock.now(), Ordering::Release);
        }
        polled
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The routes, counting the requests in flight on the connection: from the moment the
/// head is parsed until the answer is ready.
struct RequestCounter<S> {
    inner: S,
    connection: Arc<Connection>,
    clock: Clock,
}

/// A request body that marks its connection as no longer receiving once it has all
/// arrived (or failed).
struct Receiving {
    body: hyper::Body,
    connection: Arc<Connection>,
}

impl futures_util::Stream for Receiving {
    type Item = Result<bytes::Bytes, hyper::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = hyper::body::HttpBody::poll_data(Pin::new(&mut self.body), cx);
        // The last chunk of a body of known length already says so, before the reader
        // polls for the end.
        let done = match &polled {
            Poll::Ready(Some(Ok(_))) => hyper::body::HttpBody::is_end_stream(&self.body),
            Poll::Ready(_) => true,
            Poll::Pending => false,
        };
        if done {
            self.connection
                .receiving_since
                .store(NEVER, Ordering::Release);
        }
        polled
    }
}

/// Ends a request's count when its handler finishes (or is dropped).
struct InFlight {
    connection: Arc<Connection>,
    clock: Clock,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.connection
            .receiving_since
            .store(NEVER, Ordering::Release);
        self.connection
            .last_done
            .store(self.clock.now(), Ordering::Release);
        self.connection.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

type Request = hyper::Request<hyper::Body>;
type Response = hyper::Response<hyper::Body>;

/// Whether `request` says its body's length twice, with `Content-Length` and
/// `Transfer-Encoding`. RFC 9112 section 6.1: such a message "ought to be handled as an
/// error", since a proxy in front may read the body by the other header and so smuggle a
/// second request past it; the connection must be closed after answering.
fn framed_twice(request: &Request) -> bool {
    let headers = request.headers();
    headers.contains_key(hyper::header::CONTENT_LENGTH)
        && headers.contains_key(hyper::header::TRANSFER_ENCODING)
}

/// The answer to a request framed twice: 400, and the connection closed after it.
fn refuse_framed_twice() -> Response {
    let mut answer = Response::new(hyper::Body::from(
        r#"{"error":"Content-Length and Transfer-Encoding together are refused"}"#,
    ));
    *answer.status_mut() = hyper::StatusCode::BAD_REQUEST;
    let headers = answer.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    answer
}

impl<S> Service<Request> for RequestCounter<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<S::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        self.connection.in_flight.fetch_add(1, Ordering::AcqRel);
        self.connection.head_started.store(NEVER, Ordering::Release);
        let guard = InFlight {
            connection: Arc::clone(&self.connection),
            clock: self.clock,
        };
        if framed_twice(&request) {
            return Box::pin(async move {
                drop(guard);
                Ok(refuse_framed_twice())
            });
        }
        let request = if hyper::body::HttpBody::is_end_stream(request.body()) {
            request
        } else {
            self.connection
                .receiving_since
                .store(self.clock.now(), Ordering::Release);
            request.map(|body| {
                hyper::Body::wrap_stream(Receiving {
                    body,
                    connection: Arc::clone(&self.connection),
                })
            })
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            drop(guard);
            answer
        })
    }
}

/// Binds the listen address, with a message that says what to do when it cannot.
pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(addr).map_err(|error| {
        let hint = match error.kind() {
            io::ErrorKind::AddrInUse => {
                "the address is already in use: another freshet (or another program) listens there; stop it or set server.listen"
            }
            io::ErrorKind::PermissionDenied => {
                "permission denied: ports below 1024 need privileges; pick another port in server.listen"
            }
            io::ErrorKind::AddrNotAvailable => {
                "this machine has no such address; set server.listen to one of its addresses"
            }
            _ => "",
        };
        if hint.is_empty() {
            anyhow::anyhow!("cannot listen on {addr}: {error}")
        } else {
            anyhow::anyhow!("cannot listen on {addr}: {hint}")
        }
    })?;
    listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(listener)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_the_daemons_own_files() {
        assert_eq!(connection_cap(4096, 1024), 896);
        assert_eq!(connection_cap(4096, 1_048_576), 4096);
        assert_eq!(connection_cap(4096, 10), 1);
    }

    fn registry() -> Registry {
        Registry {
            clock: Clock(Instant::now()),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            ended: tokio::sync::Notify::new(),
        }
    }

    #[test]
    fn eviction_takes_idle_then_slow_bodies_then_owed_heads_and_never_a_served_request() {
        let registry = registry();
        let (_, busy) = registry.add();
        busy.in_flight.store(1, Ordering::Release);
        busy.last_done.store(0, Ordering::Release);
        let owing = |head_started: u64| {
            let (_, connection) = registry.add();
            connection
                .head_started
                .store(head_started, Ordering::Release);
            connection
        };
        let idle = |last_done: u64| {
            let connection = owing(NEVER);
            connection.last_done.store(last_done, Ordering::Release);
            connection
        };
        let receiving = |since: u64| {
            let connection = owing(NEVER);
            connection.in_flight.store(1, Ordering::Release);
            connection.receiving_since.store(since, Ordering::Release);
            connection
        };
        let (new_head, old_head) = (owing(30), owing(5));
        let (new_body, old_body) = (receiving(40), receiving(1));
        let (new_idle, old_idle) = (idle(20), idle(10));
        for (expected, kind) in [
            (&old_idle, "idle"),
            (&new_idle, "idle"),
            (&old_body, "body"),
            (&new_body, "body"),
            (&old_head, "idle"),
            (&new_head, "idle"),
        ] {
            let evicted = registry.evict_one().expect("a connection to close");
            assert!(expected.close.is_cancelled(), "expected the next {kind}");
            assert_eq!(matches!(evicted, Evicted::SlowBody), kind == "body");
        }
        assert!(
            registry.evict_one().is_none(),
            "only a request past its body is left"
        );
        assert!(!busy.close.is_cancelled());
    }

    #[test]
    fn overdue_heads_and_long_idle_connections_are_swept() {
        let registry = registry();
        let long = HEAD_TIMEOUT.as_millis() as u64 + IDLE_TIMEOUT.as_millis() as u64 + 10;
        // The clock starts "long" ago, so times near 0 are old.
        let registry = Registry {
            clock: Clock(Instant::now() - Duration::from_millis(long)),
            ..registry
        };
        let (_, slow_head) = registry.add();
        slow_head.head_started.store(0, Ordering::Release);
        let (_, idle) = registry.add();
        idle.head_started.store(NEVER, Ordering::Release);
        idle.last_done.store(0, Ordering::Release);
        let (_, fresh) = registry.add();
        fresh.head_started.store(NEVER, Ordering::Release);
        let (_, busy) = registry.add();
        busy.in_flight.store(1, Ordering::Release);
        busy.last_done.store(0, Ordering::Release);
        assert_eq!(registry.sweep(), 2);
        assert!(slow_head.close.is_cancelled() && idle.close.is_cancelled());
        assert!(!fresh.close.is_cancelled() && !busy.close.is_cancelled());
    }
}
