//! The HTTP server: connections accepted, limited and timed out, and shut down within a
//! deadline.
//!
//! Every connection is registered with whether a request is in flight on it (a response
//! body still streaming counts). A connection with nothing in flight for longer than
//! its allowance is closed: `header_timeout` until its first request arrives (a client
//! that connects and sends nothing, or half a header), `idle_timeout` between requests
//! (keep-alive). hyper also closes a connection whose header takes longer than
//! `header_timeout` to arrive. A connection closed for a timeout in the middle of its
//! first request's header is answered `408` with a problem document first (through a second
//! handle on the socket, as hyper has let go of it); one that sent nothing is just
//! closed. At `max_connections`, a new connection makes room by
//! closing the connection idle the longest; when every connection is busy, the new one
//! is answered `503` and closed. So a client that opens as many sockets as it can never
//! takes the server's file descriptors, and `/health/ready` still answers.
//!
//! On shutdown the listener closes, every connection finishes its request in flight,
//! and whatever is still open after `shutdown_grace` is dropped.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower::ServiceExt as _;

/// The largest request header the application reads, in bytes; a larger one is
/// answered `431` with a problem document (hyper itself refuses past four times this, with no body).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// How the server treats connections.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// How long a new connection may take to send its first request's header.
    pub header_timeout: Duration,
    /// How long a keep-alive connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// The most connections open at once.
    pub max_connections: usize,
    /// How long shutdown waits for requests in flight before it drops them.
    pub shutdown_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: default_max_connections(),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Three quarters of this process's open-file limit (the rest is for the database,
/// files and the log), at least 64 and at most 16,384; 768 where the limit is unknown.
pub fn default_max_connections() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|line| line.starts_with("Max open files"))
                .and_then(|line| line.split_whitespace().nth(3))
                .and_then(|soft| soft.parse::<usize>().ok())
        });
    match soft {
        Some(soft) => (soft / 4 * 3).clamp(64, 16_384),
        None => 768,
    }
}

/// Milliseconds since the server started: when connections went idle.
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// One open connection, as the server tracks it.
#[derive(Clone)]
struct Tracked {
    /// Requests in flight, counting response bodies still being sent.
    busy: Arc<AtomicUsize>,
    /// When it last went idle (see [`Clock`]).
    idle_since: Arc<AtomicU64>,
    /// Requests it has carried.
    served: Arc<AtomicUsize>,
    /// Closes it at once.
    kill: Arc<tokio::sync::Notify>,
    /// Bytes read while nothing was in flight, since the last request ended: a
    /// request's header in the making when it is not zero.
    unanswered: Arc<AtomicU64>,
    /// Set when the reaper closed it for a timeout.
    timed_out: Arc<std::sync::atomic::AtomicBool>,
}

impl Tracked {
    fn new(clock: Clock) -> Tracked {
        Tracked {
            busy: Arc::new(AtomicUsize::new(0)),
            idle_since: Arc::new(AtomicU64::new(clock.now())),
            served: Arc::new(AtomicUsize::new(0)),
            kill: Arc::new(tokio::sync::Notify::new()),
            unanswered: Arc::new(AtomicU64::new(0)),
            timed_out: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    fn idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0
    }
}

#[derive(Default)]
struct Registry {
    next: u64,
    open: HashMap<u64, Tracked>,
}

type Shared = Arc<Mutex<Registry>>;

/// Counts a connection the server closed itself.
fn closed(reason: &'static str) {
    cairn_observe::metrics()
        .http_connections_closed
        .get_or_create(&cairn_observe::ReasonLabels {
            reason: reason.to_owned(),
        })
        .inc();
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains within the grace.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let clock = Clock(Instant::now());
    let registry: Shared = Arc::new(Mutex::new(Registry::default()));
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let reaper = tokio::spawn(reap(registry.clone(), options, clock));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, or the peer gave up before the accept:
                    // make room and carry on rather than spin or stop.
                    tracing::warn!(error = %error, "accepting a connection failed");
                    make_room(&registry, 0);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if !make_room(&registry, options.max_connections) {
            closed("refused");
            tokio::spawn(refuse(stream));
            continue;
        }
        let tracked = Tracked::new(clock);
        let id = {
            let Ok(mut registry) = registry.lock() else {
                continue;
            };
            registry.next += 1;
            let id = registry.next;
            registry.open.insert(id, tracked.clone());
            id
        };
        cairn_observe::metrics().http_connections.inc();
        tokio::spawn(connection(
            stream,
            app.clone(),
            options,
            tracked,
            registry.clone(),
            id,
            drain_rx.clone(),
            clock,
        ));
    }
    drop(listener);
    let _ = drain_tx.send(true);
    let deadline = Instant::now() + options.shutdown_grace;
    while open(&registry) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = match registry.lock() {
        Ok(mut registry) => {
            let left = registry.open.len();
            for (_, tracked) in registry.open.drain() {
                tracked.kill.notify_one();
                closed("shutdown");
            }
            left
        }
        Err(_) => 0,
    };
    if left > 0 {
        tracing::warn!(
            connections = left,
            grace = ?options.shutdown_grace,
            "connections still open after the shutdown grace were dropped"
        );
    }
    reaper.abort();
    Ok(())
}

fn open(registry: &Shared) -> usize {
    registry.lock().map_or(0, |r| r.open.len())
}

/// Whether a new connection may open under `max`, closing the connection idle the
/// longest if that makes room. With `max` 0, closes the longest-idle one regardless.
fn make_room(registry: &Shared, max: usize) -> bool {
    let Ok(mut registry) = registry.lock() else {
        return false;
    };
    if max > 0 && registry.open.len() < max {
        return true;
    }
    let victim = registry
        .open
        .iter()
        .filter(|(_, t)| t.idle())
        .min_by_key(|(_, t)| t.idle_since.load(Ordering::Acquire))
        .map(|(id, _)| *id);
    // Out of the registry at once, so that it counts once and makes room now.
    match victim.and_then(|id| registry.open.remove(&id)) {
        Some(tracked) => {
            tracked.kill.notify_one();
            closed("evicted");
            true
        }
        None => false,
    }
}

/// Closes connections idle past their allowance, twice a second.
async fn reap(registry: Shared, options: ServeOptions, clock: Clock) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = clock.now();
        let Ok(mut registry) = registry.lock() else {
            return;
        };
        let expired: Vec<(u64, &'static str)> = registry
            .open
            .iter()
            .filter(|(_, t)| t.idle())
            .filter_map(|(id, tracked)| {
                let (allowance, reason) = if tracked.served.load(Ordering::Acquire) == 0 {
                    (options.header_timeout, "header_timeout")
                } else {
                    (options.idle_timeout, "idle_timeout")
                };
                let idle = now.saturating_sub(tracked.idle_since.load(Ordering::Acquire));
                (u128::from(idle) > allowance.as_millis()).then_some((*id, reason))
            })
            .collect();
        for (id, reason) in expired {
            if let Some(tracked) = registry.open.remove(&id) {
                tracked.timed_out.store(true, Ordering::Release);
                tracked.kill.notify_one();
                closed(reason);
            }
        }
    }
}

/// Answers a connection there is no room for, and closes it.
async fn refuse(stream: tokio::net::TcpStream) {
    let problem = crate::problem::Problem::new(
        crate::problem::ProblemCode::Overloaded,
        "the server has as many connections open as it takes; try again shortly",
    );
    // No lingering here: at the connection limit, file descriptors are what is short.
    answer_and_close(&stream, &problem, "retry-after: 1\r\n", false).await;
}

/// Writes a problem document as the whole answer on a connection hyper does not
/// serve (any more), and closes it; a client that does not read loses it after 2 s.
/// With `linger`, what the client still sends is read (for a second at most) before
/// the close, so that the close does not reset the connection under the answer.
async fn answer_and_close(
    stream: &tokio::net::TcpStream,
    problem: &crate::problem::Problem,
    extra_headers: &str,
    linger: bool,
) {
    let body = serde_json::to_vec(problem).unwrap_or_default();
    let status = problem.code.status();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\n\
         {extra_headers}connection: close\r\ncontent-length: {}\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        write_all(stream, &[head.as_bytes(), &body].concat()).await?;
        shutdown_write(stream)
    })
    .await;
    if !linger {
        return;
    }
    // Closing with unread bytes from the client would reset the connection, and the
    // client could lose the answer: read what it still sends, for a second at most.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut sink = [0_u8; 4096];
        loop {
            stream.readable().await?;
            match stream.try_read(&mut sink) {
                Ok(0) => return Ok::<(), std::io::Error>(()),
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
        }
    })
    .await;
}

/// Serves one connection until it ends, is closed, or shutdown drains it.
#[allow(clippy::too_many_arguments)]
async fn connection(
    stream: tokio::net::TcpStream,
    app: Router,
    options: ServeOptions,
    tracked: Tracked,
    registry: Shared,
    id: u64,
    mut drain: tokio::sync::watch::Receiver<bool>,
    clock: Clock,
) {
    let _ = stream.set_nodelay(true);
    // The socket stays ours too, to answer a timed-out header after hyper has
    // dropped the connection.
    let socket = Arc::new(stream);
    let stream = Counted {
        inner: socket.clone(),
        busy: tracked.busy.clone(),
        unanswered: tracked.unanswered.clone(),
    };
    let handles = tracked.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let app = app.clone();
        let guard = Busy::start(&handles, clock);
        async move {
            let response = app.oneshot(request.map(Body::new)).await;
            response.map(|response| {
                response.map(|body| {
                    Body::new(Guarded {
                        body,
                        _guard: guard,
                    })
                })
            })
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .max_headers(100)
        .max_buf_size(MAX_HEADER_BYTES * 4);
    // Boxed, so that it can be dropped (and let go of the socket) before a late answer.
    let mut conn = Box::pin(
        builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades(),
    );
    let mut draining = *drain.borrow();
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    let mut timed_out = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    timed_out = error.is_timeout();
                    tracing::debug!(error = %error, "an HTTP connection ended with an error");
                }
                break;
            }
            () = tracked.kill.notified() => {
                timed_out = tracked.timed_out.load(Ordering::Acquire);
                break;
            }
            _ = drain.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    // Before the connection goes: dropping it ends whatever was in flight. Only a first
    // request's bytes are surely a header: after a request, hyper may still be reading
    // the rest of its body with nothing in flight.
    let mid_header = timed_out
        && tracked.idle()
        && tracked.served.load(Ordering::Acquire) == 0
        && tracked.unanswered.load(Ordering::Acquire) > 0;
    drop(conn);
    if mid_header {
        let problem = crate::problem::Problem::new(
            crate::problem::ProblemCode::RequestTimeout,
            format!(
                "the request's header did not arrive within {} s",
                options.header_timeout.as_secs_f64()
            ),
        );
        answer_and_close(&socket, &problem, "", true).await;
    }
    if let Ok(mut registry) = registry.lock() {
        registry.open.remove(&id);
    }
    cairn_observe::metrics().http_connections.dec();
}

/// Writes all of `bytes` through a shared handle on a socket.
async fn write_all(stream: &tokio::net::TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(written) => bytes = &bytes[written..],
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Ends the sending side of a socket: the client reads the end of the stream.
fn shutdown_write(stream: &tokio::net::TcpStream) -> std::io::Result<()> {
    socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write)
}

/// The connection's socket as hyper sees it: shared with the connection's task, which
/// may still answer on it once hyper is done, and counting the bytes read while no
/// request is in flight (a request's header, not its body).
struct Counted {
    inner: Arc<tokio::net::TcpStream>,
    busy: Arc<AtomicUsize>,
    unanswered: Arc<AtomicU64>,
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            std::task::ready!(self.inner.poll_read_ready(cx))?;
            match self.inner.try_read(buf.initialize_unfilled()) {
                Ok(read) => {
                    buf.advance(read);
                    if self.busy.load(Ordering::Acquire) == 0 {
                        self.unanswered.fetch_add(read as u64, Ordering::AcqRel);
                    }
                    return Poll::Ready(Ok(()));
                }
                // Readiness was cleared: poll it again, which registers the waker.
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.inner.poll_write_ready(cx))?;
            match self.inner.try_write(buf) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.inner.poll_write_ready(cx))?;
            match self.inner.try_write_vectored(bufs) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(shutdown_write(&self.inner))
    }
}

/// A request in flight on a connection, until its response body is sent.
struct Busy {
    tracked: Tracked,
    clock: Clock,
}

impl Busy {
    fn start(tracked: &Tracked, clock: Clock) -> Busy {
        tracked.busy.fetch_add(1, Ordering::AcqRel);
        tracked.unanswered.store(0, Ordering::Release);
        tracked.served.fetch_add(1, Ordering::AcqRel);
        Busy {
            tracked: tracked.clone(),
            clock,
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.tracked.unanswered.store(0, Ordering::Release);
        self.tracked
            .idle_since
            .store(self.clock.now(), Ordering::Release);
        self.tracked.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection counted busy until it is sent.
struct Guarded {
    body: Body,
    _guard: Busy,
}

impl hyper::body::Body for Guarded {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
