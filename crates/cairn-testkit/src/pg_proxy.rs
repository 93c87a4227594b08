//! A PostgreSQL wire-protocol proxy that can hold back the server's answer to one
//! statement: for tests of what a client does when its caller gives up while an
//! answer is on its way.
//!
//! It passes bytes through unchanged, reading the client's side message by message
//! (after the start-up packets: a type byte and a length). Armed with a statement's
//! first words ([`HoldingProxy::hold_answer_to`]), it holds everything the server sends
//! on that connection from the moment it forwards a simple query (`Q`) that starts
//! with them, until [`HoldingProxy::release`].

use std::path::PathBuf;
use std::str::FromStr as _;
use std::sync::{Arc, Mutex};

use sqlx::postgres::PgConnectOptions;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The SSL and GSS encryption requests a client may send before its start-up packet.
const ENCRYPTION_REQUESTS: [u32; 2] = [80_877_103, 80_877_104];

/// Where the real server is.
#[derive(Debug, Clone)]
enum Upstream {
    Unix(PathBuf),
    Tcp(String),
}

/// The two halves of a connection to the server.
type Halves = (
    Box<dyn AsyncRead + Unpin + Send>,
    Box<dyn AsyncWrite + Unpin + Send>,
);

impl Upstream {
    async fn connect(&self) -> std::io::Result<Halves> {
        Ok(match self {
            Upstream::Unix(path) => {
                let (read, write) = tokio::net::UnixStream::connect(path).await?.into_split();
                (Box::new(read), Box::new(write))
            }
            Upstream::Tcp(address) => {
                let (read, write) = tokio::net::TcpStream::connect(address).await?.into_split();
                (Box::new(read), Box::new(write))
            }
        })
    }
}

#[derive(Debug, Default)]
struct Control {
    /// The start of the statement whose answer to hold, when armed.
    armed: Option<String>,
}

/// A running proxy; it stops when dropped.
#[derive(Debug)]
pub struct HoldingProxy {
    url: String,
    control: Arc<Mutex<Control>>,
    /// True while an answer is held.
    held: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for HoldingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl HoldingProxy {
    /// Starts a proxy on loopback in front of the server `url` names (a Unix socket
    /// directory in `host=`, or a TCP host).
    pub async fn start(url: &str) -> anyhow::Result<HoldingProxy> {
        let options = PgConnectOptions::from_str(url)?;
        let port = options.get_port();
        let upstream = match options.get_socket() {
            Some(dir) => Upstream::Unix(dir.join(format!(".s.PGSQL.{port}"))),
            None => Upstream::Tcp(format!("{}:{port}", options.get_host())),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let database = options.get_database().unwrap_or("postgres");
        let proxied = format!(
            "postgres://{}@{address}/{database}?sslmode=disable",
            options.get_username()
        );
        let control = Arc::new(Mutex::new(Control::default()));
        let (held, _) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(
            listener,
            upstream,
            control.clone(),
            held.clone(),
        ));
        Ok(HoldingProxy {
            url: proxied,
            control,
            held,
            accept,
        })
    }

    /// The URL to connect through the proxy.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Holds the server's answer to the next simple query that starts with `start`
    /// (compared without regard to case), on whichever connection sends it.
    pub fn hold_answer_to(&self, start: &str) {
        lock(&self.control).armed = Some(start.to_ascii_uppercase());
    }

    /// Resolves once an answer is being held.
    pub async fn holding(&self) {
        let mut held = self.held.subscribe();
        let _ = held.wait_for(|held| *held).await;
    }

    /// Lets the held answer (and everything after it) through.
    pub fn release(&self) {
        lock(&self.control).armed = None;
        self.held.send_replace(false);
    }
}

fn lock(control: &Mutex<Control>) -> std::sync::MutexGuard<'_, Control> {
    control
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn accept_loop(
    listener: TcpListener,
    upstream: Upstream,
    control: Arc<Mutex<Control>>,
    held: watch::Sender<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((client, _)) = listener.accept().await {
        let (upstream, control, held) = (upstream.clone(), control.clone(), held.clone());
        connections.spawn(async move {
            let Ok((server_read, server_write)) = upstream.connect().await else {
                return;
            };
            let (client_read, client_write) = client.into_split();
            relay(
                client_read,
                client_write,
                server_read,
                server_write,
                control,
                held,
            )
            .await;
        });
    }
}

/// Relays one connection both ways until either side closes.
async fn relay(
    client_read: impl AsyncRead + Unpin,
    client_write: impl AsyncWrite + Unpin,
    server_read: impl AsyncRead + Unpin,
    server_write: impl AsyncWrite + Unpin,
    control: Arc<Mutex<Control>>,
    held: watch::Sender<bool>,
) {
    // This connection's answers are held while `mine` is true.
    let (mine, _) = watch::channel(false);
    let mine = Arc::new(mine);
    let requests = requests(
        client_read,
        server_write,
        control,
        held.clone(),
        mine.clone(),
    );
    let answers = answers(server_read, client_write, held, mine);
    tokio::select! {
        _ = requests => {}
        _ = answers => {}
    }
}

/// Client to server, message by message; arms this connection's hold when the armed
/// statement goes by.
async fn requests(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    control: Arc<Mutex<Control>>,
    held: watch::Sender<bool>,
    mine: Arc<watch::Sender<bool>>,
) -> std::io::Result<()> {
    // Start-up packets: a length, then a code; the last one is the start-up message.
    loop {
        let length = from.read_u32().await?;
        let mut body = vec![0; usize::try_from(length.saturating_sub(4)).unwrap_or(0)];
        from.read_exact(&mut body).await?;
        to.write_u32(length).await?;
        to.write_all(&body).await?;
        to.flush().await?;
        let code = body
            .get(..4)
            .and_then(|code| code.try_into().ok())
            .map(u32::from_be_bytes);
        if !code.is_some_and(|code| ENCRYPTION_REQUESTS.contains(&code)) {
            break;
        }
    }
    loop {
        let kind = from.read_u8().await?;
        let length = from.read_u32().await?;
        let mut body = vec![0; usize::try_from(length.saturating_sub(4)).unwrap_or(0)];
        from.read_exact(&mut body).await?;
        if kind == b'Q' {
            let text = String::from_utf8_lossy(&body)
                .trim_start()
                .to_ascii_uppercase();
            let mut control = lock(&control);
            if let Some(start) = &control.armed
                && text.starts_with(start.as_str())
            {
                control.armed = None;
                mine.send_replace(true);
                held.send_replace(true);
            }
        }
        to.write_u8(kind).await?;
        to.write_u32(length).await?;
        to.write_all(&body).await?;
        to.flush().await?;
    }
}

/// Server to client, as it comes, except while this connection's answer is held.
async fn answers(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    held: watch::Sender<bool>,
    mine: Arc<watch::Sender<bool>>,
) -> std::io::Result<()> {
    let mut buffer = vec![0; 16 * 1024];
    let mut released = held.subscribe();
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            return Ok(());
        }
        if *mine.borrow() {
            let _ = released.wait_for(|held| !*held).await;
            mine.send_replace(false);
        }
        to.write_all(&buffer[..n]).await?;
        to.flush().await?;
    }
}
