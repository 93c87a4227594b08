//! The server's connections over real sockets, on both backends: slow bodies and
//! responses nobody reads (issue 20, point 1), live subscriptions against the
//! connection cap (point 2), and HTTP/1.1 manners: idle keep-alive, early answers,
//! pipelining (point 6).
//!
//! Each test serves the app with `cairn_http::serve` on port 0, every allowance long
//! but the one it exercises, so that what it sees is that allowance at work.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use cairn_http::capacity::Bounds;
use cairn_http::server::ServeOptions;
use cairn_policy::Role;
use cairn_testkit::{TestDb, backend_test};
use cairn_types::OrgId;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::common::{Server, platform_admin, server, server_with, token, user};

/// Options whose allowances are all a minute: a test shortens the one it exercises.
fn patient() -> ServeOptions {
    ServeOptions {
        header_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        body_timeout: Duration::from_secs(60),
        send_timeout: Duration::from_secs(60),
        max_connections: 64,
        shutdown_grace: Duration::from_secs(1),
    }
}

/// Serves the app as `cairn serve` does, on a loopback port, until the test ends.
async fn serve(server: &Server, options: ServeOptions) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    server.state.set_base_url(format!("http://{address}"));
    tokio::spawn(cairn_http::serve(
        listener,
        server.app.clone(),
        options,
        std::future::pending(),
    ));
    Ok(address)
}

/// One HTTP response as it came over the socket.
struct Answer {
    status: u16,
    /// Names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The problem document's code.
    fn code(&self) -> String {
        self.json()
            .ok()
            .and_then(|problem| problem["code"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// A raw HTTP/1.1 client connection.
struct Conn {
    socket: TcpStream,
    buffer: Vec<u8>,
}

impl Conn {
    async fn open(address: SocketAddr) -> anyhow::Result<Conn> {
        Ok(Conn {
            socket: TcpStream::connect(address).await?,
            buffer: Vec::new(),
        })
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) -> anyhow::Result<()> {
        self.socket.write_all(bytes.as_ref()).await?;
        Ok(())
    }

    /// Reads more into the buffer; fails at the end of the stream or after 10 s.
    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0_u8; 16 * 1024];
        let read = tokio::time::timeout(Duration::from_secs(10), self.socket.read(&mut chunk))
            .await
            .context("nothing from the server within 10 s")??;
        anyhow::ensure!(read > 0, "the server closed the connection");
        self.buffer.extend_from_slice(&chunk[..read]);
        Ok(())
    }

    /// The next response's status and headers.
    async fn head(&mut self) -> anyhow::Result<(u16, Vec<(String, String)>)> {
        let end = loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buffer[..end]).into_owned();
        self.buffer.drain(..end + 4);
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("no status line: {head:?}"))?;
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        Ok((status, headers))
    }

    /// Takes `n` bytes of the stream.
    async fn take(&mut self, n: usize) -> anyhow::Result<Vec<u8>> {
        while self.buffer.len() < n {
            self.fill().await?;
        }
        Ok(self.buffer.drain(..n).collect())
    }

    /// Takes one line of the stream, without its CRLF.
    async fn line(&mut self) -> anyhow::Result<String> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buffer[..end]).into_owned();
                self.buffer.drain(..end + 2);
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    /// The next whole response (with a `Content-Length` or chunked body).
    async fn response(&mut self) -> anyhow::Result<Answer> {
        let (status, headers) = self.head().await?;
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        if let Some(length) = answer.header("content-length") {
            let length: usize = length.parse()?;
            answer.body = self.take(length).await?;
        } else if answer.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = usize::from_str_radix(self.line().await?.trim(), 16)?;
                let chunk = self.take(size).await?;
                self.line().await?;
                if size == 0 {
                    break;
                }
                answer.body.extend_from_slice(&chunk);
            }
        }
        Ok(answer)
    }

    /// Whether the server closes the connection within `within`; what it sends
    /// meanwhile is read and dropped.
    async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut chunk = [0_u8; 16 * 1024];
        loop {
            match tokio::time::timeout_at(deadline, self.socket.read(&mut chunk)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }
}

/// A `GET` of `path`, keeping the connection.
fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: cairn\r\n\r\n")
}

/// Answers `GET /health/ready` on a new connection.
async fn ready(address: SocketAddr) -> anyhow::Result<Answer> {
    let mut conn = Conn::open(address).await?;
    conn.send(get("/health/ready")).await?;
    conn.response().await
}

/// The header of a request whose body has `Content-Length: 4000`, and the first 11
/// bytes of that body.
fn slow_body(path: &str, content_type: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: cairn\r\nContent-Type: {content_type}\r\n\
         Content-Length: 4000\r\n\r\n{{\"token\": \""
    )
}

/// The three anonymous forms of issue 20 whose bodies were never timed out.
const SLOW_PATHS: [(&str, &str); 3] = [
    ("/v1/invitations/accept", "application/json"),
    ("/invitations/accept", "application/x-www-form-urlencoded"),
    ("/console/sign-in", "application/x-www-form-urlencoded"),
];

// Issue 20, point 1: a request whose header was complete and whose body was still
// arriving was never timed out.
backend_test!(
    a_body_that_stalls_is_answered_408_and_its_connection_closed,
    |t: TestDb| async move {
        let server = server(t).await?;
        let address = serve(
            &server,
            ServeOptions {
                body_timeout: Duration::from_secs(1),
                ..patient()
            },
        )
        .await?;
        for (path, content_type) in SLOW_PATHS {
            let mut conn = Conn::open(address).await?;
            conn.send(slow_body(path, content_type)).await?;
            let answer = conn.response().await.with_context(|| path.to_owned())?;
            assert_eq!(answer.header("connection"), Some("close"), "{path}");
            if path == "/console/sign-in" && answer.status != 408 {
                // The console may refuse a form before reading its body (a check of
                // where it came from): that is an early answer, and it closes too.
                assert!((400..500).contains(&answer.status), "{path}: {answer:?}");
            } else {
                assert_eq!(answer.status, 408, "{path}: {answer:?}");
                assert_eq!(
                    answer.header("content-type"),
                    Some("application/problem+json")
                );
                let problem = answer.json()?;
                assert_eq!(problem["code"], "request_timeout", "{path}");
                assert!(problem["correlation_id"].is_string(), "{path}");
                assert!(
                    problem["detail"]
                        .as_str()
                        .is_some_and(|detail| detail.contains("body did not arrive")),
                    "{path}: {problem}"
                );
            }
            assert!(
                conn.closed_within(Duration::from_secs(5)).await,
                "{path}: the connection stays open after the 408"
            );
        }
        Ok(())
    }
);

// Issue 20, point 1: 64 such requests held against `--max-connections 64` made every
// request, `/health/ready` included, answer 503.
backend_test!(
    slow_bodies_do_not_lock_other_clients_out,
    |t: TestDb| async move {
        let server = server(t).await?;
        let _engine = server.run_engine();
        let address = serve(
            &server,
            ServeOptions {
                max_connections: 16,
                ..patient()
            },
        )
        .await?;
        let mut slow = Vec::new();
        for i in 0..16 {
            let (path, content_type) = SLOW_PATHS[i % SLOW_PATHS.len()];
            let mut conn = Conn::open(address).await?;
            conn.send(slow_body(path, content_type)).await?;
            slow.push(conn);
        }
        // Let the server read every header and start waiting for the bodies.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for _ in 0..5 {
            let answer = ready(address).await?;
            assert_eq!(answer.status, 200, "{answer:?}");
        }
        // Room was made by closing connections waiting for their bodies.
        let mut closed = 0;
        for conn in &mut slow {
            closed += usize::from(conn.closed_within(Duration::from_millis(200)).await);
        }
        assert!(closed >= 1, "no slow connection was closed");
        Ok(())
    }
);

// Issue 20, point 1: a response the client does not read held its connection (busy,
// never evicted) for as long as the client liked.
backend_test!(
    a_response_the_client_does_not_read_is_given_up_after_the_send_timeout,
    |t: TestDb| async move {
        let server = server(t).await?;
        let address = serve(
            &server,
            ServeOptions {
                send_timeout: Duration::from_secs(1),
                ..patient()
            },
        )
        .await?;
        // A small receive window, and far more answers asked for than the socket holds.
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(4096)?;
        let mut conn = Conn {
            socket: socket.connect(address).await?,
            buffer: Vec::new(),
        };
        let requests = 64;
        conn.send(get("/v1/openapi.json").repeat(requests)).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        // The server gave up: what it sent before ends early.
        let mut answers = 0;
        while answers < requests {
            match conn.response().await {
                Ok(answer) => {
                    assert_eq!(answer.status, 200);
                    answers += 1;
                }
                Err(_) => break,
            }
        }
        assert!(
            answers < requests,
            "all {requests} answers were sent to a client that did not read for 3 s"
        );
        Ok(())
    }
);

/// Opens a subscription of `bearer` with `request`: the head of its stream (`101` for a
/// WebSocket, `200` for Server-Sent Events), or the whole refusal.
async fn subscribe(
    address: SocketAddr,
    request: String,
    opened: u16,
) -> anyhow::Result<(Conn, Answer)> {
    let mut conn = Conn::open(address).await?;
    conn.send(request).await?;
    let (status, headers) = conn.head().await?;
    let mut answer = Answer {
        status,
        headers,
        body: Vec::new(),
    };
    if status != opened
        && let Some(length) = answer.header("content-length")
    {
        let length: usize = length.parse()?;
        answer.body = conn.take(length).await?;
    }
    Ok((conn, answer))
}

/// Opens a WebSocket subscription of `bearer`.
async fn websocket(address: SocketAddr, bearer: &str) -> anyhow::Result<(Conn, Answer)> {
    let request = format!(
        "GET /v1/events/ws?heartbeat=300 HTTP/1.1\r\nHost: cairn\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {bearer}\r\n\r\n"
    );
    subscribe(address, request, 101).await
}

/// Opens a Server-Sent Events subscription of `bearer`.
async fn event_stream(address: SocketAddr, bearer: &str) -> anyhow::Result<(Conn, Answer)> {
    let request = format!(
        "GET /v1/events/stream?heartbeat=300 HTTP/1.1\r\nHost: cairn\r\n\
         Authorization: Bearer {bearer}\r\n\r\n"
    );
    subscribe(address, request, 200).await
}

// Issue 20, point 2: WebSocket connections left the registry when they upgraded: 87
// upgraded sockets against a cap of 64 read as one connection.
backend_test!(
    upgraded_websockets_count_against_the_connection_cap_until_they_close,
    |t: TestDb| async move {
        let server = server_with(
            t,
            cairn_http::Options {
                max_subscriptions: 100,
                subscription_bounds: Bounds {
                    total: 6,
                    per_organization: 100,
                },
                ..cairn_http::Options::default()
            },
        )
        .await?;
        let address = serve(
            &server,
            ServeOptions {
                max_connections: 8,
                ..patient()
            },
        )
        .await?;
        let admin = token(&platform_admin());
        let mut sockets = Vec::new();
        for _ in 0..6 {
            let (conn, answer) = websocket(address, &admin).await?;
            assert_eq!(answer.status, 101);
            sockets.push(conn);
        }
        // Six upgraded sockets and two keep-alive connections fill the eight places:
        // a third keep-alive connection makes room by closing one of the others.
        let mut kept = Vec::new();
        for _ in 0..3 {
            let mut conn = Conn::open(address).await?;
            conn.send(get("/health/live")).await?;
            assert_eq!(conn.response().await?.status, 200);
            kept.push(conn);
        }
        let [first, second, _] = kept.as_mut_slice() else {
            unreachable!("three connections")
        };
        let (first, second) = tokio::join!(
            first.closed_within(Duration::from_secs(3)),
            second.closed_within(Duration::from_secs(3))
        );
        assert!(
            first || second,
            "the upgraded sockets were not counted: nothing was evicted"
        );
        // The subscriptions' bound leaves the other places to requests.
        let (_, refused) = event_stream(address, &admin).await?;
        assert_eq!(refused.status, 503, "{refused:?}");
        assert_eq!(refused.code(), "subscriptions_at_capacity");
        assert!(refused.header("retry-after").is_some());
        let mut live = Conn::open(address).await?;
        live.send(get("/health/live")).await?;
        assert_eq!(live.response().await?.status, 200);

        // Closed sockets give their places and their seats back.
        drop(sockets);
        cairn_testkit::eventually("a seat is free again", Duration::from_secs(10), || async {
            Ok(websocket(address, &admin).await?.1.status == 101)
        })
        .await?;
        Ok(())
    }
);

// Issue 20, point 2: two admins of one tenant with 32 subscriptions each, inside their
// own allowance, made a server with `--max-connections 64` answer 503 to everyone.
backend_test!(
    subscriptions_are_bounded_per_organization_and_in_all_below_the_connection_cap,
    |t: TestDb| async move {
        let server = server_with(
            t,
            cairn_http::Options {
                max_subscriptions: 100,
                subscription_bounds: Bounds {
                    total: 5,
                    per_organization: 3,
                },
                ..cairn_http::Options::default()
            },
        )
        .await?;
        let _engine = server.run_engine();
        let address = serve(
            &server,
            ServeOptions {
                max_connections: 16,
                ..patient()
            },
        )
        .await?;
        let (a, b) = (OrgId::new_v7(), OrgId::new_v7());
        let admins_of_a = [token(&user(a, Role::Admin)), token(&user(a, Role::Admin))];
        let mut held = Vec::new();
        let mut refusals = Vec::new();
        for i in 0..8 {
            let (conn, answer) = event_stream(address, &admins_of_a[i % 2]).await?;
            match answer.status {
                200 => held.push(conn),
                _ => refusals.push(answer),
            }
        }
        assert_eq!(held.len(), 3, "{refusals:?}");
        for refused in &refusals {
            assert_eq!(refused.status, 429);
            assert_eq!(refused.code(), "too_many_organization_subscriptions");
        }
        // Another tenant is not refused for A's subscriptions, up to the server's bound.
        let admin_of_b = token(&user(b, Role::Admin));
        for _ in 0..2 {
            let (conn, answer) = event_stream(address, &admin_of_b).await?;
            assert_eq!(answer.status, 200, "{answer:?}");
            held.push(conn);
        }
        let (_, refused) = websocket(address, &token(&platform_admin())).await?;
        assert_eq!(refused.status, 503, "{refused:?}");
        assert_eq!(refused.code(), "subscriptions_at_capacity");
        // Requests keep their connections.
        for _ in 0..5 {
            assert_eq!(ready(address).await?.status, 200);
        }
        Ok(())
    }
);

// Issue 20, point 6: hyper's header timer started when a keep-alive connection went
// idle, so `--idle-timeout` had no effect past `--header-timeout`.
backend_test!(
    an_idle_keep_alive_connection_has_the_idle_timeout_and_a_started_header_the_header_timeout,
    |t: TestDb| async move {
        let server = server(t).await?;
        let address = serve(
            &server,
            ServeOptions {
                header_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(30),
                ..patient()
            },
        )
        .await?;
        let mut conn = Conn::open(address).await?;
        conn.send(get("/health/live")).await?;
        assert_eq!(conn.response().await?.status, 200);
        // Idle for more than twice the header timeout: still open.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        conn.send(get("/health/live")).await?;
        assert_eq!(
            conn.response().await?.status,
            200,
            "the idle connection was closed before its idle timeout"
        );
        // Half of the next header: the header timeout applies, and answers 408 (an
        // idle timeout would close without a word).
        conn.send("GET /health/live HTTP/1.1\r\nHost: cai").await?;
        let answer = conn.response().await?;
        assert_eq!(answer.status, 408, "{answer:?}");
        assert_eq!(answer.code(), "request_timeout");
        assert!(conn.closed_within(Duration::from_secs(5)).await);
        Ok(())
    }
);

// Issue 20, point 6: a 401 sent before the body arrived closed the connection without
// `Connection: close`, so the client's next request on it was lost.
backend_test!(
    an_answer_given_before_the_body_keeps_the_connection_or_says_it_closes,
    |t: TestDb| async move {
        let server = server(t).await?;
        let address = serve(&server, patient()).await?;
        let header = "POST /v1/organizations HTTP/1.1\r\nHost: cairn\r\n\
                      Authorization: Bearer not-a-token\r\nContent-Type: application/json\r\n\
                      Content-Length: 17\r\n\r\n";
        let body = "{\"name\": \"late\"}\n";

        // The body comes a moment after the answer: the connection carries on.
        let mut conn = Conn::open(address).await?;
        conn.send(header).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        conn.send(format!("{body}{}", get("/health/live"))).await?;
        let refused = conn.response().await?;
        assert_eq!(refused.status, 401, "{refused:?}");
        assert_ne!(refused.header("connection"), Some("close"));
        let next = conn.response().await?;
        assert_eq!(
            next.status, 200,
            "the next request on the connection was lost"
        );

        // The body never comes: the answer says the connection closes, and it does.
        let mut conn = Conn::open(address).await?;
        conn.send(header).await?;
        let refused = conn.response().await?;
        assert_eq!(refused.status, 401, "{refused:?}");
        assert_eq!(refused.header("connection"), Some("close"), "{refused:?}");
        assert!(conn.closed_within(Duration::from_secs(5)).await);
        Ok(())
    }
);

// Issue 20, point 6: of two or three pipelined requests, only the first was answered
// when the client shut its sending side after them (as `nc` does).
backend_test!(
    pipelined_requests_are_all_answered_in_order,
    |t: TestDb| async move {
        let server = server(t).await?;
        let _engine = server.run_engine();
        let address = serve(&server, patient()).await?;
        for shut_after_sending in [false, true] {
            let mut conn = Conn::open(address).await?;
            conn.send(
                [
                    get("/health/ready"),
                    get("/v1/openapi.json"),
                    get("/health/live"),
                ]
                .concat(),
            )
            .await?;
            if shut_after_sending {
                conn.socket.shutdown().await?;
            }
            let ready = conn.response().await?;
            assert_eq!(ready.json()?["status"], "ready", "{ready:?}");
            let openapi = conn.response().await?;
            assert_eq!(openapi.json()?["openapi"], "3.1.0");
            let live = conn.response().await?;
            assert_eq!(live.json()?["status"], "live", "{live:?}");
            if shut_after_sending {
                assert!(conn.closed_within(Duration::from_secs(5)).await);
            }
        }
        Ok(())
    }
);

// An event stream's client that hangs up ends the stream at once: its subscription's
// places are given back without waiting for a heartbeat to fail.
backend_test!(
    an_event_stream_whose_client_hangs_up_gives_its_seat_back,
    |t: TestDb| async move {
        let server = server_with(
            t,
            cairn_http::Options {
                max_subscriptions: 1,
                ..cairn_http::Options::default()
            },
        )
        .await?;
        let address = serve(&server, patient()).await?;
        let admin = token(&platform_admin());
        let (conn, answer) = event_stream(address, &admin).await?;
        assert_eq!(answer.status, 200);
        drop(conn);
        // The heartbeat is five minutes: only the hang-up can end the first stream.
        cairn_testkit::eventually(
            "the hung-up stream's slot is free",
            Duration::from_secs(10),
            || async { Ok(event_stream(address, &admin).await?.1.status == 200) },
        )
        .await?;
        Ok(())
    }
);
