//! The HTTP server: connections accepted, limited and timed out, and shut down within a
//! deadline.
//!
//! Every connection is registered from its accept until its socket closes, upgraded
//! WebSockets included, with what it is doing: nothing (idle), receiving a header,
//! waiting for a request's body, working on a request, or sending its answer. Each state
//! the client controls has an allowance:
//!
//! - `header_timeout`: a new connection until its first byte, and any request's header
//!   from its first byte until it is complete. A header that does not arrive in time is
//!   answered `408` with a problem document first (through a second handle on the
//!   socket, as hyper has let go of it); a connection that sent nothing is just closed.
//! - `idle_timeout`: a keep-alive connection between requests.
//! - `body_timeout`: a request's whole body, from the end of its header. A body that
//!   does not arrive in time is answered `408` and the connection closed.
//! - `send_timeout`: a write the client does not take (a response it does not read, a
//!   subscription it stopped reading): the connection is closed.
//!
//! At `max_connections`, a new connection makes room by closing the connection that
//! has waited on its client the longest: idle, or waiting for a body or for its client
//! to read. When no connection waits on its client (each works on a request, or is a
//! live subscription), the new one is answered `503` and closed. Live subscriptions are
//! bounded below the connection cap by the application (see [`crate::capacity`]), so
//! requests always have connections of their own; a client that opens as many sockets
//! as it can never takes the server's file descriptors, and `/health/ready` still
//! answers.
//!
//! HTTP/1.1 manners: pipelined requests are answered in order, even when the client has
//! shut its sending side after them; an answer given before the request's body arrived
//! waits briefly for the body (so that the connection can serve the next request) and
//! otherwise says `Connection: close`, as every answer does when the server is about
//! to close. An event stream whose client hangs up ends at once.
//!
//! On shutdown the listener closes, every connection finishes its request in flight,
//! and whatever is still open after `shutdown_grace` is dropped.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

/// The largest request header the application reads, in bytes; a larger one is
/// answered `431` with a problem document (hyper itself refuses past four times this, with no body).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The most of an unread request body the server reads after answering, so that the
/// connection can carry the next request; past it, the connection is closed.
const DRAIN_LIMIT: usize = 64 * 1024;

/// The longest the server waits for an unread request body after answering.
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// How the server treats connections.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// How long a new connection may take to send its first byte, and a request's
    /// header to arrive once it has started.
    pub header_timeout: Duration,
    /// How long a keep-alive connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// How long a request's whole body may take to arrive after its header.
    pub body_timeout: Duration,
    /// How long a write may wait for the client to take it.
    pub send_timeout: Duration,
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
            body_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
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

/// Milliseconds since the server started: when connections changed state.
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }
}

/// When a state of a connection began, on the [`Clock`]; nothing while it is off.
struct Since(AtomicU64);

impl Since {
    /// The mark of a state that is off: a time that never comes.
    const OFF: u64 = u64::MAX;

    fn off() -> Since {
        Since(AtomicU64::new(Since::OFF))
    }

    fn now(clock: Clock) -> Since {
        Since(AtomicU64::new(clock.now()))
    }

    fn get(&self) -> Option<u64> {
        let since = self.0.load(Ordering::Acquire);
        (since != Since::OFF).then_some(since)
    }

    /// The state starts now, unless it is already on.
    fn start(&self, clock: Clock) {
        if self.0.load(Ordering::Relaxed) == Since::OFF {
            let _ = self.0.compare_exchange(
                Since::OFF,
                clock.now(),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    /// The state starts again now.
    fn restart(&self, clock: Clock) {
        self.0.store(clock.now(), Ordering::Release);
    }

    fn end(&self) {
        if self.0.load(Ordering::Relaxed) != Since::OFF {
            self.0.store(Since::OFF, Ordering::Release);
        }
    }

    /// Whether the state has been on for longer than `allowance` at `now`.
    fn past(&self, allowance: Duration, now: u64) -> bool {
        self.get()
            .is_some_and(|since| u128::from(now.saturating_sub(since)) > allowance.as_millis())
    }
}

/// One open connection, as the server tracks it.
struct Tracked {
    /// Requests in flight, counting response bodies still being sent.
    busy: AtomicUsize,
    /// When it last went idle.
    idle_since: Since,
    /// Requests it has carried.
    served: AtomicUsize,
    /// Bytes read while nothing was in flight, since the last request ended: a
    /// request's header in the making when it is not zero.
    unanswered: AtomicU64,
    /// When the header in the making sent its first byte.
    header_since: Since,
    /// When the request in flight began waiting for more of its body.
    waiting_since: Since,
    /// When a write began waiting for the client to take it.
    stalled_since: Since,
    /// Whether the connection was handed to a WebSocket: hyper no longer serves it,
    /// and it is a live subscription, bounded by the application rather than evicted.
    upgraded: AtomicBool,
    /// Whether the response in flight is an event stream, which only the client's
    /// hang-up ends.
    streaming: AtomicBool,
    /// Told when an event stream starts, so that the connection watches for a hang-up.
    stream_started: tokio::sync::Notify,
    /// Closes it at once.
    kill: tokio::sync::Notify,
    /// Why the server closed it, once it did.
    closed_for: OnceLock<&'static str>,
    /// The socket, to shut an upgraded connection that no task of the server serves.
    socket: Weak<TcpStream>,
}

impl Tracked {
    fn new(clock: Clock, socket: &Arc<TcpStream>) -> Tracked {
        Tracked {
            busy: AtomicUsize::new(0),
            idle_since: Since::now(clock),
            served: AtomicUsize::new(0),
            unanswered: AtomicU64::new(0),
            header_since: Since::off(),
            waiting_since: Since::off(),
            stalled_since: Since::off(),
            upgraded: AtomicBool::new(false),
            streaming: AtomicBool::new(false),
            stream_started: tokio::sync::Notify::new(),
            kill: tokio::sync::Notify::new(),
            closed_for: OnceLock::new(),
            socket: Arc::downgrade(socket),
        }
    }

    fn idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0
    }

    /// Since when the connection has been waiting on its client, if it is: idle, or
    /// waiting for a body or for the client to read. Such a connection may be evicted
    /// to make room; one working on a request or upgraded may not.
    fn waiting_on_client_since(&self) -> Option<u64> {
        if self.upgraded.load(Ordering::Acquire) {
            return None;
        }
        if self.idle() {
            return self.idle_since.get();
        }
        match (self.waiting_since.get(), self.stalled_since.get()) {
            (Some(waiting), Some(stalled)) => Some(waiting.min(stalled)),
            (waiting, stalled) => waiting.or(stalled),
        }
    }

    /// Closes the connection for `reason`. An upgraded connection has no task of the
    /// server's left to tell, so its socket is shut: the WebSocket reads the end.
    fn close(&self, reason: &'static str) {
        let _ = self.closed_for.set(reason);
        self.kill.notify_one();
        if self.upgraded.load(Ordering::Acquire)
            && let Some(socket) = self.socket.upgrade()
        {
            let _ = socket2::SockRef::from(&*socket).shutdown(std::net::Shutdown::Both);
        }
        closed(reason);
    }
}

#[derive(Default)]
struct Registry {
    next: u64,
    open: HashMap<u64, Arc<Tracked>>,
}

type Shared = Arc<Mutex<Registry>>;

/// A connection's place in the registry and in `cairn_http_connections`, held by its
/// task and by its socket (which outlives the task once upgraded to a WebSocket): the
/// connection counts until both are gone.
struct Registration {
    registry: Shared,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut registry) = self.registry.lock() {
            registry.open.remove(&self.id);
        }
        cairn_observe::metrics().http_connections.dec();
    }
}

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
        let socket = Arc::new(stream);
        let tracked = Arc::new(Tracked::new(clock, &socket));
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
        let registration = Arc::new(Registration {
            registry: registry.clone(),
            id,
        });
        tokio::spawn(connection(
            socket,
            app.clone(),
            options,
            tracked,
            registration,
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
                tracked.close("shutdown");
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

/// Whether a new connection may open under `max`, closing the connection that has
/// waited on its client the longest if that makes room. With `max` 0, closes that one
/// regardless.
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
        .filter_map(|(id, t)| t.waiting_on_client_since().map(|since| (*id, since)))
        .min_by_key(|(_, since)| *since)
        .map(|(id, _)| id);
    // Out of the registry at once, so that it counts once and makes room now.
    match victim.and_then(|id| registry.open.remove(&id)) {
        Some(tracked) => {
            tracked.close("evicted");
            true
        }
        None => false,
    }
}

/// Closes connections that have waited on their client past its allowance, twice a
/// second. A body's allowance is kept by the body itself ([`RequestBody`]), so that its
/// request is answered.
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
            .filter_map(|(id, tracked)| {
                let expired = if tracked.stalled_since.past(options.send_timeout, now) {
                    Some("send_timeout")
                } else if tracked.upgraded.load(Ordering::Acquire) || !tracked.idle() {
                    None
                } else if tracked.unanswered.load(Ordering::Acquire) > 0 {
                    // A header has started: its own allowance, from its first byte.
                    tracked
                        .header_since
                        .past(options.header_timeout, now)
                        .then_some("header_timeout")
                } else if tracked.served.load(Ordering::Acquire) == 0 {
                    tracked
                        .idle_since
                        .past(options.header_timeout, now)
                        .then_some("header_timeout")
                } else {
                    tracked
                        .idle_since
                        .past(options.idle_timeout, now)
                        .then_some("idle_timeout")
                };
                expired.map(|reason| (*id, reason))
            })
            .collect();
        for (id, reason) in expired {
            if let Some(tracked) = registry.open.remove(&id) {
                tracked.close(reason);
            }
        }
    }
}

/// Answers a connection there is no room for, and closes it.
async fn refuse(stream: TcpStream) {
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
    stream: &TcpStream,
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
async fn connection(
    socket: Arc<TcpStream>,
    app: Router,
    options: ServeOptions,
    tracked: Arc<Tracked>,
    registration: Arc<Registration>,
    mut drain: tokio::sync::watch::Receiver<bool>,
    clock: Clock,
) {
    let _ = socket.set_nodelay(true);
    // The socket stays ours too, to answer a timed-out header after hyper has
    // dropped the connection, and to see an event stream's client hang up.
    let stream = Counted {
        inner: socket.clone(),
        tracked: tracked.clone(),
        clock,
        _registration: registration,
    };
    let handles = tracked.clone();
    let drain_seen = drain.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let app = app.clone();
        let guard = Busy::start(&handles, clock);
        let drain = drain_seen.clone();
        async move {
            let answer = answer(app, request, options, &guard, &drain).await;
            Ok::<_, std::convert::Infallible>(answer.map(|body| {
                Body::new(Guarded {
                    body,
                    _guard: guard,
                })
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        // The header's allowance is the reaper's, and no timer is given to hyper: its
        // own header timer would start when a keep-alive connection goes idle, and
        // cut `idle_timeout` short.
        .header_read_timeout(None)
        // A client may shut its sending side after its last request and still read
        // the answers: every request it sent is answered. An event stream's client
        // that hangs up is noticed below instead.
        .half_close(true)
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
    let mut watching_hang_up = false;
    let mut probe = [0_u8; 1];
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(error = %error, "an HTTP connection ended with an error");
                }
                break;
            }
            () = tracked.kill.notified() => break,
            _ = drain.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tracked.stream_started.notified() => {
                watching_hang_up = tracked.streaming.load(Ordering::Acquire);
            }
            peeked = socket.peek(&mut probe), if watching_hang_up => {
                watching_hang_up = false;
                // The end of the client's stream during an event stream is a client
                // gone (an event stream's client sends nothing more); bytes are a
                // request behind it, which hyper reads once the stream ends.
                let hung_up = matches!(peeked, Ok(0) | Err(_));
                if hung_up && tracked.streaming.load(Ordering::Acquire) {
                    break;
                }
            }
        }
    }
    // Before the connection goes: dropping it ends whatever was in flight. The reaper
    // timed a header out only with nothing in flight and bytes of a header read.
    let mid_header = tracked.closed_for.get() == Some(&"header_timeout")
        && tracked.idle()
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
}

/// The application's answer to one request, with the connection's manners: a body
/// that did not arrive in time is answered `408`; an answer given before the body
/// arrived waits briefly for it, or says `Connection: close`, as does every answer
/// while the server drains.
async fn answer(
    app: Router,
    request: Request<Incoming>,
    options: ServeOptions,
    guard: &Busy,
    draining: &tokio::sync::watch::Receiver<bool>,
) -> Response<Body> {
    let expects_continue = request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (parts, incoming) = request.into_parts();
    let body = RequestBody::new(incoming, guard, options.body_timeout);
    let progress = body.progress.clone();
    let response = match app
        .oneshot(Request::from_parts(parts, Body::new(body)))
        .await
    {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let tracked = &guard.tracked;
    let mut response = response;
    if progress.timed_out.load(Ordering::Acquire) {
        // The API answers `408` itself; a page or form that read the body its own way
        // may have answered anything.
        if response.status() != StatusCode::REQUEST_TIMEOUT {
            response = body_timed_out(&response, options.body_timeout);
        }
        closed("body_timeout");
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        tracked.upgraded.store(true, Ordering::Release);
        return response;
    }
    let mut keep_alive = !*draining.borrow();
    if !progress.finished.load(Ordering::Acquire) {
        // An early answer (a refusal before the body was read). A client that waits
        // for `100 Continue` is not asked for a body that nobody reads.
        let rest = progress.rest.lock().ok().and_then(|mut rest| rest.take());
        let drained = match rest {
            Some(rest) if !expects_continue => {
                read_rest(rest, guard, DRAIN_WAIT.min(options.body_timeout)).await
            }
            _ => false,
        };
        keep_alive &= drained;
    }
    if !keep_alive {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let event_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"));
    if event_stream {
        tracked.streaming.store(true, Ordering::Release);
        tracked.stream_started.notify_one();
    }
    response
}

/// Reads what the application left of a request's body, at most [`DRAIN_LIMIT`] bytes
/// within `wait`: whether it all came, so that the connection can carry on.
async fn read_rest(rest: Incoming, guard: &Busy, wait: Duration) -> bool {
    use http_body_util::BodyExt as _;
    let rest = RequestBody::new(rest, guard, wait);
    http_body_util::Limited::new(rest, DRAIN_LIMIT)
        .collect()
        .await
        .is_ok()
}

/// The `408` for a body that did not arrive within `allowance`, under the correlation
/// id the application gave the request.
fn body_timed_out(response: &Response<Body>, allowance: Duration) -> Response<Body> {
    let mut problem = crate::problem::Problem::new(
        crate::problem::ProblemCode::RequestTimeout,
        BodyTimedOut(allowance).to_string(),
    );
    let correlation = response.headers().get(crate::context::CORRELATION_HEADER);
    if let Some(id) = correlation
        .and_then(|value| value.to_str().ok())
        .and_then(|text| cairn_types::CorrelationId::parse(text).ok())
    {
        problem = problem.correlated(id);
    }
    let mut answer = axum::response::IntoResponse::into_response(problem);
    let headers = answer.headers_mut();
    for name in [crate::context::CORRELATION_HEADER, "traceparent"] {
        if let Some(value) = response.headers().get(name) {
            headers.insert(header::HeaderName::from_static(name), value.clone());
        }
    }
    answer
}

/// How a request's body went, as its [`RequestBody`] tells the server.
#[derive(Default)]
struct BodyProgress {
    /// Read to its end (or empty).
    finished: AtomicBool,
    /// Not all there within its allowance.
    timed_out: AtomicBool,
    /// What the application left unread, handed back when it let go of the body.
    rest: Mutex<Option<Incoming>>,
}

/// A request's body as the application reads it: within an allowance from the end of
/// the header, marking its connection as waiting on the client while more is due.
struct RequestBody {
    inner: Option<Incoming>,
    progress: Arc<BodyProgress>,
    tracked: Arc<Tracked>,
    clock: Clock,
    /// When the allowance runs out; set the first time the body has to wait, so that
    /// a body that never waits costs no timer.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    started: tokio::time::Instant,
    allowance: Duration,
}

impl RequestBody {
    fn new(inner: Incoming, guard: &Busy, allowance: Duration) -> RequestBody {
        let progress = Arc::new(BodyProgress::default());
        progress
            .finished
            .store(inner.is_end_stream(), Ordering::Release);
        RequestBody {
            inner: Some(inner),
            progress,
            tracked: guard.tracked.clone(),
            clock: guard.clock,
            deadline: None,
            started: tokio::time::Instant::now(),
            allowance,
        }
    }
}

/// A request's body did not arrive within its allowance (`ServeOptions::body_timeout`).
#[derive(Debug, thiserror::Error)]
#[error("the request's body did not arrive within {} s", .0.as_secs_f64())]
pub struct BodyTimedOut(Duration);

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Pending => {
                let deadline = this.deadline.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(this.started + this.allowance))
                });
                if deadline.as_mut().poll(cx).is_ready() {
                    this.progress.timed_out.store(true, Ordering::Release);
                    this.tracked.waiting_since.end();
                    return Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.allowance)))));
                }
                this.tracked.waiting_since.start(this.clock);
                Poll::Pending
            }
            Poll::Ready(frame) => {
                this.tracked.waiting_since.end();
                if frame.is_none() || inner.is_end_stream() {
                    this.progress.finished.store(true, Ordering::Release);
                }
                Poll::Ready(frame.map(|frame| frame.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| hyper::body::SizeHint::with_exact(0), Incoming::size_hint)
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.tracked.waiting_since.end();
        let unread = !self.progress.finished.load(Ordering::Acquire)
            && !self.progress.timed_out.load(Ordering::Acquire);
        if unread
            && let Some(inner) = self.inner.take()
            && let Ok(mut rest) = self.progress.rest.lock()
        {
            *rest = Some(inner);
        }
    }
}

/// Writes all of `bytes` through a shared handle on a socket.
async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
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
fn shutdown_write(stream: &TcpStream) -> std::io::Result<()> {
    socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write)
}

/// The connection's socket as hyper (and, once upgraded, the WebSocket) sees it:
/// shared with the connection's task, which may still answer on it once hyper is done;
/// counting the bytes read while no request is in flight (a request's header, not its
/// body); noting when a write waits for the client; and holding the connection's
/// registration for as long as the socket lives.
struct Counted {
    inner: Arc<TcpStream>,
    tracked: Arc<Tracked>,
    clock: Clock,
    _registration: Arc<Registration>,
}

impl Counted {
    /// Runs one write, noting whether it had to wait for the client.
    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&TcpStream) -> std::io::Result<usize>,
    ) -> Poll<std::io::Result<usize>> {
        loop {
            match self.inner.poll_write_ready(cx) {
                Poll::Pending => {
                    self.tracked.stalled_since.start(self.clock);
                    return Poll::Pending;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Ready(Ok(())) => {}
            }
            match write(&self.inner) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                done => {
                    self.tracked.stalled_since.end();
                    return Poll::Ready(done);
                }
            }
        }
    }
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
                    if read > 0 && self.tracked.idle() {
                        let before = self
                            .tracked
                            .unanswered
                            .fetch_add(read as u64, Ordering::AcqRel);
                        if before == 0 {
                            self.tracked.header_since.start(self.clock);
                        }
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
        self.poll_write_with(cx, |socket| socket.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_with(cx, |socket| socket.try_write_vectored(bufs))
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
    tracked: Arc<Tracked>,
    clock: Clock,
}

impl Busy {
    fn start(tracked: &Arc<Tracked>, clock: Clock) -> Busy {
        tracked.busy.fetch_add(1, Ordering::AcqRel);
        tracked.unanswered.store(0, Ordering::Release);
        tracked.header_since.end();
        tracked.served.fetch_add(1, Ordering::AcqRel);
        Busy {
            tracked: tracked.clone(),
            clock,
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let tracked = &self.tracked;
        tracked.unanswered.store(0, Ordering::Release);
        tracked.header_since.end();
        tracked.waiting_since.end();
        tracked.streaming.store(false, Ordering::Release);
        tracked.idle_since.restart(self.clock);
        tracked.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection counted busy until it is sent.
struct Guarded {
    body: Body,
    _guard: Busy,
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
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
