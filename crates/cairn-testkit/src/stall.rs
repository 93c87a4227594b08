//! An SMTP server that stalls where a test asks, as relays under load, firewalls that
//! drop silently and half-open connections do: it accepts the connection and never
//! greets, or takes a whole message and never answers its final `.`. Told to stall
//! nowhere, it speaks plain SMTP and keeps what it accepts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Where the server stalls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// Nowhere: every message is accepted.
    Nowhere,
    /// Before its greeting: the connection is accepted and nothing is ever said.
    Greeting,
    /// After the message: its final `.` is never answered (the message is not kept).
    FinalDot,
}

#[derive(Debug)]
struct State {
    stall: Mutex<Stall>,
    /// The Message-IDs of the messages accepted, in order.
    accepted: Mutex<Vec<String>>,
    /// Connections that reached a stall.
    stalled: AtomicUsize,
}

impl State {
    fn stall(&self) -> Stall {
        *self
            .stall
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running stalling SMTP server on loopback. Its connections, stalled ones
/// included, close when it is dropped.
#[derive(Debug)]
pub struct StallingSmtp {
    port: u16,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StallingSmtp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StallingSmtp {
    /// Starts a server on a free loopback port, stalling at `stall`.
    pub async fn start(stall: Stall) -> anyhow::Result<StallingSmtp> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State {
            stall: Mutex::new(stall),
            accepted: Mutex::default(),
            stalled: AtomicUsize::new(0),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            // The connections live in this set, so that aborting the server closes them.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            connections.spawn(converse(stream, shared.clone()));
                        }
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(StallingSmtp { port, state, task })
    }

    /// The server's URL, for `--mail-url`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Stalls somewhere else from the next decision on; connections already stalled
    /// stay so.
    pub fn set_stall(&self, stall: Stall) {
        *self
            .state
            .stall
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = stall;
    }

    /// The Message-IDs (without angle brackets) of the messages accepted, in order.
    pub fn accepted(&self) -> Vec<String> {
        self.state
            .accepted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// How many connections have reached a stall so far.
    pub fn stalled(&self) -> usize {
        self.state.stalled.load(Ordering::SeqCst)
    }

    /// Waits until `count` connections have reached a stall, for at most `within`.
    pub async fn wait_stalled(&self, count: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        while self.stalled() < count {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{} connections stalled within {within:?}, not {count}",
                self.stalled()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Waits until the server has accepted `count` messages, for at most `within`.
    pub async fn wait_accepted(&self, count: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        while self.accepted().len() < count {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{} messages accepted within {within:?}, not {count}",
                self.accepted().len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// Holds a stalled connection open until the server stops.
async fn stall_here(state: &State) -> std::io::Result<()> {
    state.stalled.fetch_add(1, Ordering::SeqCst);
    std::future::pending::<()>().await;
    Ok(())
}

async fn converse(stream: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    if state.stall() == Stall::Greeting {
        // The socket stays open, unread and silent.
        let _held = (read, write);
        return stall_here(&state).await;
    }
    let mut lines = BufReader::new(read);
    write.write_all(b"220 stalling.test ESMTP\r\n").await?;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let verb = line
            .get(..4)
            .map(str::to_ascii_uppercase)
            .unwrap_or_default();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-stalling.test\r\n250 8BITMIME\r\n",
            "HELO" | "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 2.0.0 OK\r\n",
            "QUIT" => {
                write.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            "DATA" => {
                write
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut message = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    message.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                if state.stall() == Stall::FinalDot {
                    return stall_here(&state).await;
                }
                let received = crate::smtp::parse(&message);
                state
                    .accepted
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(received.message_id);
                b"250 2.0.0 Queued\r\n"
            }
            _ => b"502 5.5.2 Command not recognized\r\n",
        };
        write.write_all(reply).await?;
    }
}
