//! `cairn serve` under hostile and careless traffic: sockets that send nothing, half a
//! header, a trickle of body, or sit idle; a shutdown with a stalled client; floods of
//! unrouted requests and invented methods; bodies and headers that cannot be read; a
//! feed resumed past the head; another tenant's correlation id; too many subscriptions,
//! and a WebSocket flood under a small file limit; development tokens on a public
//! address.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use cairn_testkit::{TestDb, backend_test};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::common::server::Server;
use crate::common::{assert_exit, bootstrap_request, cairn, outbox, stderr, token};

/// Whether the server closes this socket (a read sees the end, or an error) within
/// `within`.
async fn closed_by_server(socket: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0_u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

backend_test!(
    idle_and_half_sent_connections_are_closed_and_the_server_keeps_answering,
    |t: TestDb| async move {
        let (_outbox, mail) = outbox()?;
        let server = Server::start_with(
            t.url(),
            &mail,
            &[
                "--header-timeout",
                "1s",
                "--idle-timeout",
                "2s",
                "--max-connections",
                "40",
            ],
        )
        .await?;
        let address = format!("127.0.0.1:{}", server.port);

        // Silent sockets, half headers, and keep-alive connections left idle: far more
        // than the server takes.
        let mut silent = Vec::new();
        for _ in 0..60 {
            silent.push(TcpStream::connect(&address).await?);
        }
        let mut half = Vec::new();
        for _ in 0..20 {
            let mut socket = TcpStream::connect(&address).await?;
            socket
                .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await?;
            half.push(socket);
        }
        let mut idle = TcpStream::connect(&address).await?;
        idle.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        let mut answer = [0_u8; 512];
        let read = idle.read(&mut answer).await?;
        assert!(String::from_utf8_lossy(&answer[..read]).starts_with("HTTP/1.1 200"));

        // The server still answers, on a new connection, while all of those are held.
        for _ in 0..5 {
            let ready = reqwest::Client::new()
                .get(server.url("/health/ready"))
                .timeout(Duration::from_secs(5))
                .send()
                .await?;
            assert_eq!(ready.status(), 200);
        }

        // Every one of them is closed by the server: the allowances are 1 s and 2 s,
        // checked twice a second; 10 s leaves room for a loaded machine.
        for socket in silent.iter_mut().chain(half.iter_mut()) {
            assert!(
                closed_by_server(socket, Duration::from_secs(10)).await,
                "a held socket is still open"
            );
        }
        assert!(
            closed_by_server(&mut idle, Duration::from_secs(10)).await,
            "an idle keep-alive socket is still open"
        );

        let metrics = reqwest::get(server.url("/metrics")).await?.text().await?;
        let evicted = metrics
            .lines()
            .find(|l| l.starts_with("cairn_http_connections_closed_total{reason=\"evicted\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        // 81 connections held against a limit of 40: the idle ones made room.
        assert!(evicted >= 41, "{evicted} connections evicted");
        Ok(())
    }
);

/// Everything the server sends on a socket until it closes it (at most 5 s).
async fn until_closed(socket: &mut TcpStream) -> anyhow::Result<String> {
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut received))
        .await
        .context("the server did not close the socket")??;
    Ok(String::from_utf8_lossy(&received).into_owned())
}

backend_test!(
    a_header_that_times_out_is_answered_408_and_a_silent_socket_is_closed,
    |t: TestDb| async move {
        let (_outbox, mail) = outbox()?;
        let server = Server::start_with(
            t.url(),
            &mail,
            &["--header-timeout", "1s", "--idle-timeout", "2s"],
        )
        .await?;
        let address = format!("127.0.0.1:{}", server.port);
        let mut half = TcpStream::connect(&address).await?;
        half.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await?;
        let mut silent = TcpStream::connect(&address).await?;
        // A keep-alive connection that was answered, then sat idle.
        let mut answered = TcpStream::connect(&address).await?;
        answered
            .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;

        let answer = until_closed(&mut half).await?;
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .with_context(|| format!("no complete answer: {answer:?}"))?;
        assert!(head.starts_with("HTTP/1.1 408 "), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/problem+json"),
            "{head}"
        );
        let problem: Value = serde_json::from_str(body)?;
        assert_eq!(problem["code"], json!("request_timeout"), "{problem}");
        assert_eq!(problem["status"], json!(408));

        assert_eq!(
            until_closed(&mut silent).await?,
            "",
            "a socket that sent nothing is closed without an answer"
        );
        let said = until_closed(&mut answered).await?;
        assert!(said.starts_with("HTTP/1.1 200 "), "{said}");
        assert_eq!(
            said.matches("HTTP/1.1 ").count(),
            1,
            "an idle keep-alive connection is closed with nothing more: {said}"
        );
        // And the server goes on answering.
        let live = reqwest::get(server.url("/health/live")).await?;
        assert_eq!(live.status(), 200);
        Ok(())
    }
);

backend_test!(
    shutdown_drops_what_is_left_after_the_grace,
    |t: TestDb| async move {
        let (_outbox, mail) = outbox()?;
        let mut server = Server::start_with(
            t.url(),
            &mail,
            &[
                "--shutdown-grace",
                "1s",
                "--header-timeout",
                "60s",
                "--idle-timeout",
                "60s",
            ],
        )
        .await?;
        let admin = token(t.url(), &["--platform-admin", "ops"]).await?;
        // A client stuck in the middle of its header, and a subscriber that never reads.
        let mut half = TcpStream::connect(format!("127.0.0.1:{}", server.port)).await?;
        half.write_all(b"POST /v1/organizations HTTP/1.1\r\nHost: x\r\n")
            .await?;
        let mut subscriber = TcpStream::connect(format!("127.0.0.1:{}", server.port)).await?;
        subscriber
            .write_all(
                format!(
                    "GET /v1/events/stream?after=0 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pid = server.child.id().context("the server's pid")?;
        let started = Instant::now();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        assert!(status.success());
        let exited = tokio::time::timeout(Duration::from_secs(8), server.child.wait()).await;
        let exited = exited
            .context("cairn serve was still running 8 s after SIGTERM with a 1 s grace")??;
        assert!(exited.success(), "{exited:?}");
        assert!(started.elapsed() < Duration::from_secs(8));
        Ok(())
    }
);

/// How many spans the database holds.
async fn spans(t: &TestDb) -> anyhow::Result<i64> {
    let mut reader = t.db().reader().await?;
    let row = reader
        .conn()
        .fetch_one("SELECT COUNT(*) AS n FROM trace_spans", cairn_log::args![])
        .await?;
    Ok(row.get::<i64>("n")?)
}

backend_test!(
    unrouted_and_refused_requests_leave_no_span_and_invented_methods_no_label,
    |t: TestDb| async move {
        let (_outbox, mail) = outbox()?;
        let server = Server::start(t.url(), &mail).await?;
        let client = reqwest::Client::new();
        let before = spans(&t).await?;
        for i in 0..40 {
            client
                .get(server.url(&format!("/nothing/{i}")))
                .send()
                .await?;
            client.get(server.url("/v1/organizations")).send().await?;
            let method = reqwest::Method::from_bytes(format!("INVENTED{i}").as_bytes())?;
            client
                .request(method, server.url("/v1/organizations"))
                .send()
                .await?;
        }
        // The spans of this process's own requests are written in the background.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            spans(&t).await?,
            before,
            "anonymous refusals and unrouted requests are not stored"
        );
        let metrics = client
            .get(server.url("/metrics"))
            .send()
            .await?
            .text()
            .await?;
        assert!(
            !metrics.contains("INVENTED"),
            "an invented method became a label"
        );
        assert!(
            metrics.contains("method=\"other\""),
            "invented methods count as other"
        );
        Ok(())
    }
);

backend_test!(
    unreadable_bodies_and_oversized_headers_get_problem_documents,
    |t: TestDb| async move {
        let (_outbox, mail) = outbox()?;
        let server = Server::start(t.url(), &mail).await?;
        let admin = token(t.url(), &["--platform-admin", "ops"]).await?;
        let address = format!("127.0.0.1:{}", server.port);

        // A malformed chunked body is not "too large".
        let mut socket = TcpStream::connect(&address).await?;
        socket
            .write_all(
                format!(
                    "POST /v1/organizations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n\
                     Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("unreadable_body"), "{answer}");

        // A body over the limit is.
        let big = format!("{{\"x\": \"{}\"}}", "a".repeat(70_000));
        let response = server
            .http
            .post(server.url("/v1/organizations"))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body(big)
            .send()
            .await?;
        assert_eq!(response.status(), 413);

        // Headers past the limit get a problem document, with the request's id.
        let response = server
            .http
            .get(server.url("/v1/organizations"))
            .bearer_auth(&admin)
            .header("x-padding", "p".repeat(20_000))
            .send()
            .await?;
        assert_eq!(response.status(), 431);
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json")
        );
        let problem: Value = response.json().await?;
        assert_eq!(problem["code"], json!("headers_too_large"));
        assert!(problem["correlation_id"].is_string(), "{problem}");
        Ok(())
    }
);

backend_test!(
    a_feed_resumed_beyond_the_head_is_refused,
    |t: TestDb| async move {
        let (_outbox, mail) = outbox()?;
        let server = Server::start(t.url(), &mail).await?;
        let admin = token(t.url(), &["--platform-admin", "ops"]).await?;
        server
            .bootstrap(&admin, bootstrap_request("ahead-care"))
            .await?;
        let head: Value = server.get(&admin, "/v1/events?limit=200").await?;
        let head = head["items"]
            .as_array()
            .and_then(|items| items.last())
            .and_then(|e| e["position"].as_i64())
            .context("a head")?;
        let response = server
            .http
            .get(server.url("/v1/events/stream"))
            .bearer_auth(&admin)
            .header("last-event-id", (head + 1_000).to_string())
            .send()
            .await?;
        assert_eq!(response.status(), 400);
        let problem: Value = response.json().await?;
        assert_eq!(
            problem["errors"][0]["field"],
            json!("Last-Event-ID"),
            "{problem}"
        );
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("beyond the end of the log")),
            "{problem}"
        );
        // At the head itself, the feed opens.
        let response = server
            .http
            .get(server.url(&format!("/v1/events/stream?after={head}")))
            .bearer_auth(&admin)
            .send()
            .await?;
        assert_eq!(response.status(), 200);
        Ok(())
    }
);

backend_test!(
    another_tenants_correlation_id_is_not_honoured,
    |t: TestDb| async move {
        let (_outbox, mail) = outbox()?;
        let server = Server::start(t.url(), &mail).await?;
        let admin = token(t.url(), &["--platform-admin", "ops"]).await?;
        let a = server
            .bootstrap(&admin, bootstrap_request("care-a"))
            .await?;
        let b = server
            .bootstrap(&admin, bootstrap_request("care-b"))
            .await?;
        let (org_a, org_b) = (
            a["org_id"].as_str().context("a")?.to_owned(),
            b["org_id"].as_str().context("b")?.to_owned(),
        );
        let admin_a = token(t.url(), &["--org", &org_a, "--role", "admin"]).await?;
        let admin_b = token(t.url(), &["--org", &org_b, "--role", "admin"]).await?;
        let chosen = "01a22c70-0000-7000-8000-00000000abcd";

        // A uses the id first: it is A's.
        let response = server
            .http
            .put(server.url(&format!("/v1/organizations/{org_a}/direct-care-settings")))
            .bearer_auth(&admin_a)
            .header("x-correlation-id", chosen)
            .json(
                &json!({"visit_verification": true, "client_assignment": true, "max_caseload": 12}),
            )
            .send()
            .await?;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-correlation-id"], chosen);

        // B sends the same id, for a failing request too: it gets another.
        for body in [
            json!({"visit_verification": true, "client_assignment": true, "max_caseload": 13}),
            json!({"visit_verification": true, "client_assignment": true, "max_caseload": 9999}),
        ] {
            let response = server
                .http
                .put(server.url(&format!("/v1/organizations/{org_b}/direct-care-settings")))
                .bearer_auth(&admin_b)
                .header("x-correlation-id", chosen)
                .json(&body)
                .send()
                .await?;
            let used = response.headers()["x-correlation-id"].to_str()?.to_owned();
            assert_ne!(used, chosen, "B wrote into A's timeline");
        }
        // A's timeline holds only A's hops, and cairn trace finds no error in it.
        let timeline: Value = server.get(&admin, &format!("/v1/traces/{chosen}")).await?;
        assert_eq!(timeline["errors"], json!(0), "{timeline}");
        let text = timeline.to_string();
        assert!(
            !text.contains(&org_b),
            "B's hops are in A's timeline: {text}"
        );
        assert_exit(&cairn(t.url(), &["trace", chosen]).await, 0);

        // A's own id stays A's on A's next request.
        let response = server
            .http
            .get(server.url(&format!("/v1/organizations/{org_a}")))
            .bearer_auth(&admin_a)
            .header("x-correlation-id", chosen)
            .send()
            .await?;
        assert_eq!(response.headers()["x-correlation-id"], chosen);
        Ok(())
    }
);

backend_test!(
    one_principal_may_open_only_so_many_subscriptions,
    |t: TestDb| async move {
        let (_outbox, mail) = outbox()?;
        let server = Server::start_with(t.url(), &mail, &["--max-subscriptions", "2"]).await?;
        let admin = token(t.url(), &["--platform-admin", "ops"]).await?;
        let other = token(t.url(), &["--platform-admin", "other"]).await?;
        let open = |token: String| {
            let server_url = server.url("/v1/events/stream");
            let http = server.http.clone();
            async move { http.get(server_url).bearer_auth(token).send().await }
        };
        let first = open(admin.clone()).await?;
        let second = open(admin.clone()).await?;
        assert_eq!(
            (first.status().as_u16(), second.status().as_u16()),
            (200, 200)
        );
        let third = open(admin.clone()).await?;
        assert_eq!(third.status(), 429);
        let problem: Value = third.json().await?;
        assert_eq!(problem["code"], json!("too_many_subscriptions"));
        // Another principal is not affected, and a closed subscription frees its slot.
        assert_eq!(open(other).await?.status(), 200);
        drop(first);
        let mut again = None;
        for _ in 0..50 {
            let response = open(admin.clone()).await?;
            if response.status() == 200 {
                again = Some(response);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            again.is_some(),
            "a closed subscription's slot was not freed"
        );
        drop(second);
        Ok(())
    }
);

backend_test!(
    development_tokens_are_refused_on_a_public_address,
    |t: TestDb| async move {
        let output = cairn(
            t.url(),
            &["serve", "--addr", "0.0.0.0:0", "--probe-interval", "0"],
        )
        .await;
        assert_exit(&output, 2);
        assert!(
            stderr(&output).contains("--dev-tokens"),
            "{}",
            stderr(&output)
        );
        Ok(())
    }
);

/// What the server sends on a socket until it closes it (a reset included), or `None`
/// if it is still open after `within`.
async fn said_until_closed(socket: &mut TcpStream, within: Duration) -> Option<String> {
    let mut said = Vec::new();
    let mut buffer = [0_u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return Some(String::from_utf8_lossy(&said).into_owned()),
            Ok(Ok(read)) => said.extend_from_slice(&buffer[..read]),
            Err(_) => return None,
        }
    }
}

/// `GET /health/ready` on a new connection, within 5 s: its status.
async fn ready(server: &Server) -> anyhow::Result<u16> {
    let response = reqwest::Client::new()
        .get(server.url("/health/ready"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?;
    Ok(response.status().as_u16())
}

// Issue 20, point 1: 64 anonymous forms that send their header, `Content-Length: 4000`
// and 11 bytes of body made a server with `--max-connections 64` answer 503 to every
// request, `/health/ready` included, for as long as they stayed open.
backend_test!(
    slow_bodies_neither_lock_everyone_out_nor_stay_open,
    |t: TestDb| async move {
        let (_outbox, mail) = outbox()?;
        let server = Server::start_with(
            t.url(),
            &mail,
            &["--max-connections", "64", "--body-timeout", "2s"],
        )
        .await?;
        let address = format!("127.0.0.1:{}", server.port);
        let forms = [
            ("/v1/invitations/accept", "application/json"),
            ("/invitations/accept", "application/x-www-form-urlencoded"),
            ("/console/sign-in", "application/x-www-form-urlencoded"),
        ];
        let mut slow = Vec::new();
        for i in 0..64 {
            let (path, content_type) = forms[i % forms.len()];
            let mut socket = TcpStream::connect(&address).await?;
            socket
                .write_all(
                    format!(
                        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n\
                         Content-Length: 4000\r\n\r\n{{\"token\": \""
                    )
                    .as_bytes(),
                )
                .await?;
            slow.push(socket);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        for _ in 0..5 {
            assert_eq!(ready(&server).await?, 200);
        }
        // Every one of them is closed: evicted to make room, or answered 408 when its
        // body's two seconds ran out.
        let mut timed_out = 0;
        for socket in &mut slow {
            let said = said_until_closed(socket, Duration::from_secs(10))
                .await
                .context("a slow body's connection is still open")?;
            timed_out += usize::from(said.starts_with("HTTP/1.1 408 "));
        }
        assert!(timed_out > 0, "no slow body was answered 408");
        Ok(())
    }
);

// Issue 20, point 2: under `ulimit -n 256`, three principals' WebSockets (which left
// the connection count when they upgraded) exhausted the process's file descriptors,
// and health checks timed out.
backend_test!(
    a_websocket_flood_under_a_small_file_limit_leaves_room_for_requests,
    |t: TestDb| async move {
        let (_outbox, mail) = outbox()?;
        // 256 files: 192 connections at most by default, of which 144 may be live
        // subscriptions, 36 per organization.
        let server = Server::start_with_file_limit(t.url(), &mail, &[], 256).await?;
        let address = format!("127.0.0.1:{}", server.port);
        let mut tokens = Vec::new();
        for _ in 0..3 {
            let org = cairn_types::OrgId::new_v7().to_string();
            tokens.push(token(t.url(), &["--org", &org, "--role", "admin"]).await?);
        }
        let mut upgraded = Vec::new();
        let mut refused = std::collections::BTreeMap::<String, usize>::new();
        for i in 0..300 {
            let mut socket = TcpStream::connect(&address).await?;
            socket
                .write_all(
                    format!(
                        "GET /v1/events/ws?heartbeat=300 HTTP/1.1\r\nHost: x\r\n\
                         Upgrade: websocket\r\nConnection: Upgrade\r\n\
                         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                         Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {}\r\n\r\n",
                        tokens[i % tokens.len()]
                    )
                    .as_bytes(),
                )
                .await?;
            let mut head = [0_u8; 12];
            tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut head))
                .await
                .context("no answer to a WebSocket handshake within 5 s")??;
            let status = String::from_utf8_lossy(&head[9..12]).into_owned();
            if status == "101" {
                upgraded.push(socket);
            } else {
                *refused.entry(status).or_default() += 1;
            }
        }
        assert_eq!(
            upgraded.len(),
            3 * 36,
            "each organization holds its 36 subscriptions; refused: {refused:?}"
        );
        assert_eq!(refused.get("429"), Some(&(300 - 3 * 36)), "{refused:?}");
        for _ in 0..5 {
            assert_eq!(ready(&server).await?, 200);
        }
        // The upgraded sockets count as connections.
        let metrics = reqwest::get(server.url("/metrics")).await?.text().await?;
        let connections = metrics
            .lines()
            .find(|l| l.starts_with("cairn_http_connections "))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<f64>().ok())
            .context("cairn_http_connections in /metrics")?;
        assert!(
            connections >= upgraded.len() as f64,
            "{connections} connections counted with {} WebSockets open",
            upgraded.len()
        );
        Ok(())
    }
);
