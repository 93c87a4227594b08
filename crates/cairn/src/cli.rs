//! The command line, as clap parses it. Values are parsed into cairn's types here, at
//! the edge, so a bad name or id is refused with a message before anything runs.

use clap::{Args, Parser, Subcommand};

use cairn_types::{ErrorCode, EventId, EventType, Position, Reason, StreamId, StreamType};

/// cairn: an event-sourced, multi-tenant backend in one binary.
///
/// With no configuration, data lives in ./cairn-data/cairn.db (SQLite). Point
/// --database-url (or CAIRN_DATABASE_URL) at PostgreSQL to share one database between
/// several cairn processes.
#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// The database: sqlite://PATH (the embedded default) or postgres://USER@HOST/DB.
    #[arg(
        long,
        global = true,
        env = "CAIRN_DATABASE_URL",
        default_value_t = cairn_log::default_url(),
        hide_env_values = true
    )]
    pub database_url: String,

    /// The personal-data key file: it unwraps every person's data key. By default
    /// pii.key beside the SQLite database (cairn-data/pii.key with PostgreSQL), made on
    /// first start. Every process sharing a database needs the same key; CAIRN_PII_KEY
    /// may hold the key itself instead.
    #[arg(long, global = true, env = "CAIRN_PII_KEY_FILE", value_name = "FILE")]
    pub pii_key: Option<std::path::PathBuf>,

    /// More log output on stderr (-v: info, -vv: debug). CAIRN_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Export spans by OTLP over HTTP to this collector (its base URL; /v1/traces is
    /// appended). Without it, the standard OTEL_EXPORTER_OTLP_ENDPOINT and
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT variables turn export on; with none of them,
    /// nothing is exported.
    #[arg(long, global = true, value_name = "URL", value_parser = parse_otlp_endpoint)]
    pub otlp_endpoint: Option<String>,

    #[command(flatten)]
    pub runtime: Runtime,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Append, list, show and retry events.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Rebuild every projection from the log; with --verify, compare instead.
    Replay(ReplayArgs),
    /// Check the log's tamper-evidence hash chain.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The state of the log: its head, failed events by code.
    Status(JsonFlag),
    /// Measure throughput and latency.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Bootstrap a sample organization end to end and show what happened.
    Demo(JsonFlag),
    /// List, show, run, pause and resume workflows.
    #[command(subcommand)]
    Workflows(WorkflowsCommand),
    /// List, pause and resume handler routes.
    #[command(subcommand)]
    Handlers(HandlersCommand),
    /// Streams held behind a failed event or a paused route.
    #[command(subcommand)]
    Streams(StreamsCommand),
    /// Organization commands.
    #[command(subcommand)]
    Org(OrgCommand),
    /// Invitation commands.
    #[command(subcommand)]
    Invitations(InvitationsCommand),
    /// People of an organization: their roles, and their access withdrawn and given
    /// back.
    #[command(subcommand)]
    Users(UsersCommand),
    /// People whose data cairn keeps: where they stand, and erasure at their request.
    #[command(subcommand)]
    Subjects(SubjectsCommand),
    /// The personal-data key.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Serve the HTTP API, with the workflow engine in the same process.
    Serve(Box<ServeArgs>),
    /// Mint a development bearer token.
    Token(TokenArgs),
    /// The OpenAPI and AsyncAPI contracts.
    #[command(subcommand)]
    Contracts(ContractsCommand),
    /// One request's whole path as a timeline: its HTTP request, events, handlers,
    /// workflow steps, emails and realtime deliveries, with the time each took.
    /// Exits 1 when a hop failed.
    Trace(TraceArgs),
    /// Ask a running server whether its whole chain works: it runs its integration
    /// probe and reports each hop and every alert. Exits 1 when degraded or failing.
    Health(HealthArgs),
    /// Import the seed stack's event store (its domain_events table on PostgreSQL)
    /// into a fresh cairn database, or resume an import. The imported log starts with
    /// a signed checkpoint. Exits 1 when a seed event could not be mapped (each is
    /// listed with its reason), 2 when the source is not the seed's event store.
    Import(ImportArgs),
    /// Copy the running database to a new file. SQLite: one consistent snapshot, the
    /// copy's hash chain checked, and with --checkpoint-dir a checkpoint of the head it
    /// copied. PostgreSQL: with --checkpoint-dir a checkpoint of the live head, then a
    /// plain-text dump by pg_dump (which must be on the PATH or in PG_BIN).
    Backup(BackupArgs),
    /// Bring a backup back as the database --database-url names (stop `cairn serve`
    /// first), and record the restore for `audit verify`. SQLite: replaces the file
    /// (a database that holds events only with --force). PostgreSQL: loads the dump
    /// with psql, in one transaction, into a database with no cairn tables. Refuses a
    /// file that is not a cairn backup and a backup from a newer release; nothing is
    /// overwritten or loaded when it refuses.
    Restore(RestoreArgs),
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The file the copy is written to (on PostgreSQL, an SQL file); it must not
    /// exist.
    #[arg(long, value_name = "FILE")]
    pub out: std::path::PathBuf,
    /// Sign a checkpoint of the head the copy holds and add it to this directory (the
    /// one `audit verify --checkpoint-dir` reads).
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// The signing key file from `cairn audit keygen`. Without it, the key is read from
    /// the CAIRN_AUDIT_KEY environment variable.
    #[arg(long, value_name = "FILE", requires = "checkpoint_dir")]
    pub key: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file from `cairn backup --out`.
    #[arg(long, value_name = "FILE")]
    pub from: std::path::PathBuf,
    /// Replace an SQLite database that already holds events.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The seed's PostgreSQL database, read and never written.
    #[arg(
        long,
        value_name = "URL",
        env = "CAIRN_IMPORT_FROM",
        hide_env_values = true
    )]
    pub from: String,
    /// The key that signs the imported log's checkpoints (from `cairn audit keygen`).
    /// Without it, the key is read from the CAIRN_AUDIT_KEY environment variable.
    #[arg(long, value_name = "FILE")]
    pub audit_key: Option<std::path::PathBuf>,
    /// The directory the checkpoints are added to (created if missing).
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: std::path::PathBuf,
    /// Seed events per unit of work: each unit appends its events and moves the
    /// import's cursor in one transaction. Past about a thousand, a unit's appends
    /// take longer per event.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
    /// Fault injection for crash tests: the import stops after this many events were
    /// imported, between two units of work.
    #[arg(long, env = "CAIRN_FAULT_PAUSE_AFTER_IMPORTED", hide = true)]
    pub fault_pause_after_imported: Option<u64>,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The server's base URL.
    #[arg(long, env = "CAIRN_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The request's correlation id (its response's x-correlation-id header, or the
    /// correlation_id of its problem document).
    #[arg(value_parser = cairn_types::CorrelationId::parse)]
    pub correlation_id: cairn_types::CorrelationId,
    #[command(flatten)]
    pub json: JsonFlag,
}

/// How bearer tokens are verified. With none of these, the development secret kept in
/// the database (shared with `cairn token`) verifies HS256 tokens.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// An HS256 secret (at least 32 bytes) instead of the development secret.
    #[arg(long, env = "CAIRN_JWT_SECRET", hide_env_values = true, conflicts_with_all = ["jwt_public_key", "jwks"])]
    pub jwt_secret: Option<String>,
    /// Verify RS256 or ES256 tokens with this PEM public key (HS256 is then refused).
    #[arg(long, env = "CAIRN_JWT_PUBLIC_KEY", conflicts_with = "jwks")]
    pub jwt_public_key: Option<std::path::PathBuf>,
    /// Verify RS256 or ES256 tokens with the keys of this JWKS file, by `kid`.
    #[arg(long, env = "CAIRN_JWKS")]
    pub jwks: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address to listen on; port 0 picks a free port.
    #[arg(long, env = "CAIRN_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    /// How many workflow runs the in-process engine drives at once.
    #[arg(long, default_value_t = cairn_workflow::EngineConfig::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// How often the integration probe runs (0 for never; GET /health/integration
    /// still runs it on demand).
    #[arg(long, env = "CAIRN_PROBE_INTERVAL", default_value = "60s", value_parser = parse_duration_or_zero)]
    pub probe_interval: HumanDuration,
    /// A workflow run this long overdue is reported as stuck.
    #[arg(long, env = "CAIRN_STUCK_AFTER", default_value = "15m", value_parser = parse_duration)]
    pub stuck_after: HumanDuration,
    /// How long a new connection may take to send its first byte, and a request's
    /// header to arrive once it has started (408 past it).
    #[arg(long, env = "CAIRN_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: HumanDuration,
    /// How long a keep-alive connection may sit idle between requests.
    #[arg(long, env = "CAIRN_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: HumanDuration,
    /// How long a request's whole body may take to arrive after its header (408 past
    /// it, and the connection is closed).
    #[arg(long, env = "CAIRN_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: HumanDuration,
    /// How long a write may wait for the client to take it (a response or a
    /// subscription it does not read); past it the connection is closed.
    #[arg(long, env = "CAIRN_SEND_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub send_timeout: HumanDuration,
    /// The most connections open at once (by default three quarters of the open-file
    /// limit). At the limit, the connection idle the longest makes room.
    #[arg(long, env = "CAIRN_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// On SIGTERM or Ctrl-C, how long requests and workflow steps in flight may take
    /// to finish before they are dropped and the process exits (a dropped step runs
    /// again once its lease expires).
    #[arg(long, env = "CAIRN_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration_or_zero)]
    pub shutdown_grace: HumanDuration,
    /// The most live subscriptions (SSE and WebSocket) one principal may have open;
    /// past it, a subscribe is answered 429.
    #[arg(long, env = "CAIRN_MAX_SUBSCRIPTIONS", default_value_t = 100)]
    pub max_subscriptions: usize,
    /// The most live subscriptions open on this server in all, below
    /// --max-connections (by default three quarters of it: the rest is kept for
    /// requests); past it, a subscribe is answered 503.
    #[arg(long, env = "CAIRN_MAX_SUBSCRIPTIONS_TOTAL")]
    pub max_subscriptions_total: Option<usize>,
    /// The most live subscriptions one organization may hold (principals of no
    /// organization count as one); by default a quarter of
    /// --max-subscriptions-total. Past it, a subscribe is answered 429.
    #[arg(long, env = "CAIRN_MAX_SUBSCRIPTIONS_PER_ORGANIZATION")]
    pub max_subscriptions_per_organization: Option<usize>,
    /// Serve tokens signed with the development secret kept in the database even on an
    /// address other than loopback. Anyone who can read the database, or a backup of
    /// it, can then mint a platform administrator's token: use --jwt-secret, a public
    /// key or a JWKS instead wherever others can reach the server.
    #[arg(long, env = "CAIRN_DEV_TOKENS")]
    pub dev_tokens: bool,
    /// How long the access log's records (reads of personal data) are kept; older
    /// ones are pruned in the background, from the oldest end (0 keeps them forever).
    /// Six years by default. Pruning spans never touches them.
    #[arg(long, env = "CAIRN_ACCESS_RETENTION", default_value = "2190d", value_parser = parse_duration_or_zero)]
    pub access_retention: HumanDuration,
    /// How long request timelines (spans) are kept; older ones are pruned in the
    /// background (0 keeps them forever).
    #[arg(long, env = "CAIRN_SPAN_RETENTION", default_value = "7d", value_parser = parse_duration_or_zero)]
    pub span_retention: HumanDuration,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub audit: AuditScheduleArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("kind").required(true).args(["org", "service", "platform_admin"])))]
pub struct TokenArgs {
    /// A user token for this organization (with --role).
    #[arg(long, value_parser = cairn_types::OrgId::parse, requires = "role")]
    pub org: Option<cairn_types::OrgId>,
    /// The user's roles: admin, clinician, coordinator, viewer (repeat for several).
    #[arg(long, value_parser = cairn_policy::Role::parse, requires = "org")]
    pub role: Vec<cairn_policy::Role>,
    /// The user's id (a new one by default).
    #[arg(long, value_parser = cairn_types::UserId::parse, requires = "org")]
    pub user: Option<cairn_types::UserId>,
    /// A service account token with this name (with --scope).
    #[arg(long)]
    pub service: Option<String>,
    /// A service account's scopes (repeat for several): organizations:bootstrap,
    /// organizations:read, organizations:write, workflows:read, events:read,
    /// events:retry, events:subscribe, health:probe.
    #[arg(long, value_parser = parse_scope, requires = "service")]
    pub scope: Vec<cairn_policy::Scope>,
    /// A platform administrator token with this name.
    #[arg(long)]
    pub platform_admin: Option<String>,
    /// How long the token is valid.
    #[arg(long, default_value = "12h", value_parser = parse_duration)]
    pub ttl: HumanDuration,
    /// An HS256 secret instead of the development secret in the database.
    #[arg(long, env = "CAIRN_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

fn parse_scope(input: &str) -> Result<cairn_policy::Scope, String> {
    cairn_policy::Scope::parse(input).map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
pub enum ContractsCommand {
    /// Write openapi.json, asyncapi.json, the event schemas and TypeScript types.
    Export(ExportArgs),
    /// Read every stored event through its upcaster chain into the current version of
    /// its payload type; exit 1 naming the first that fails. Run it against a copy of
    /// production before deploying a build that changes a payload.
    CheckLog(CheckLogArgs),
}

#[derive(Debug, Args)]
pub struct CheckLogArgs {
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The directory to write (created if missing).
    #[arg(long, default_value = "contracts")]
    pub out: std::path::PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum WorkflowsCommand {
    /// List workflow runs, oldest first.
    List(WorkflowListArgs),
    /// Show one run with its steps.
    Show(WorkflowShowArgs),
    /// Run the workflow engine: until stopped (Ctrl-C), or with --until-idle until
    /// nothing is runnable now.
    Run(WorkflowRunArgs),
    /// Pause one run (it stops after the step in flight) or, with --kind, every run of
    /// a kind (new runs are recorded and wait).
    Pause(WorkflowPauseArgs),
    /// Resume a paused run, or with --kind a paused kind: it goes on where it stopped.
    Resume(WorkflowPauseArgs),
    /// Cancel a running run: it stops after the step in flight, undoes what it did and
    /// ends failed with the reason.
    Cancel(WorkflowControlArgs),
    /// Try a failed run that undid nothing again, from the step that failed.
    Retry(WorkflowControlArgs),
    /// The workflow kinds, their versions, and which are paused.
    Kinds(JsonFlag),
    /// Replay each unfinished run's recorded steps through its definition and report
    /// the runs that no longer fit (exit 1): a run of a version this build does not
    /// have, a step recorded where the definition asks for another, a decide that
    /// fails.
    Check(JsonFlag),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["id", "kind"])))]
pub struct WorkflowPauseArgs {
    /// The run's id.
    #[arg(value_parser = cairn_types::WorkflowId::parse)]
    pub id: Option<cairn_types::WorkflowId>,
    /// Every run of this kind instead (organization_bootstrap, invitation_delivery, …).
    #[arg(long)]
    pub kind: Option<String>,
    /// Why, for the record.
    #[arg(long, value_parser = parse_reason)]
    pub reason: Reason,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct WorkflowControlArgs {
    /// The run's id.
    #[arg(value_parser = cairn_types::WorkflowId::parse)]
    pub id: cairn_types::WorkflowId,
    /// Why, for the record.
    #[arg(long, value_parser = parse_reason)]
    pub reason: Reason,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct WorkflowListArgs {
    /// Only runs with this status: running, compensating, completed, failed,
    /// compensation_failed.
    #[arg(long, value_parser = cairn_workflow::RunStatus::parse)]
    pub status: Option<cairn_workflow::RunStatus>,
    /// Only runs of this kind (organization_bootstrap, invitation_delivery, …).
    #[arg(long)]
    pub kind: Option<String>,
    /// At most this many runs.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct WorkflowShowArgs {
    /// The run's id.
    #[arg(value_parser = cairn_types::WorkflowId::parse)]
    pub id: cairn_types::WorkflowId,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct WorkflowRunArgs {
    /// Stop once nothing is runnable now (runs asleep on a timer stay asleep).
    #[arg(long)]
    pub until_idle: bool,
    /// How many runs to drive at once.
    #[arg(long, default_value_t = cairn_workflow::EngineConfig::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
}

#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Bootstrap an organization from a JSON request (see README); prints the ids.
    Bootstrap(BootstrapArgs),
}

#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// The request: @FILE, - for standard input, or inline JSON.
    #[arg(long)]
    pub request: String,
    /// Run the workflow here until it finishes, instead of leaving it to a worker.
    #[arg(long)]
    pub wait: bool,
    /// Makes the command safe to repeat: a repeat returns the first response.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Subcommand)]
pub enum InvitationsCommand {
    /// Accept an invitation by the token from its email.
    Accept(AcceptArgs),
    /// Send a pending, expired or refused invitation to a corrected address: records
    /// the person's new address and mails the invitation there, with a new link.
    Address(AddressArgs),
}

#[derive(Debug, Args)]
pub struct AddressArgs {
    /// The invitation's id.
    pub id: cairn_types::InvitationId,
    /// The corrected email address.
    #[arg(long)]
    pub email: String,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct AcceptArgs {
    /// The token from the invitation link.
    pub token: String,
    #[command(flatten)]
    pub json: JsonFlag,
}

/// A duration such as 7d, 36h, 90m or 45s.
#[derive(Debug, Clone, Copy)]
pub struct HumanDuration(pub std::time::Duration);

/// An OTLP collector's base URL, without a trailing slash.
fn parse_otlp_endpoint(value: &str) -> Result<String, String> {
    let base = value.trim_end_matches('/');
    let rest = base
        .strip_prefix("http://")
        .or_else(|| base.strip_prefix("https://"))
        .ok_or_else(|| format!("expected an http:// or https:// URL, not {value:?}"))?;
    if rest.is_empty() {
        return Err(format!("{value:?} names no host"));
    }
    Ok(base.to_owned())
}

/// A duration, or 0 for "never".
fn parse_duration_or_zero(input: &str) -> Result<HumanDuration, String> {
    if input.trim() == "0" {
        return Ok(HumanDuration(std::time::Duration::ZERO));
    }
    parse_duration(input)
}

fn parse_duration(input: &str) -> Result<HumanDuration, String> {
    let input = input.trim();
    let split = input
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(input.len());
    let (number, unit) = input.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "{input:?} is not a duration: write a number and a unit, e.g. 7d, 36h, 90m or 45s"
        ));
    }
    // Only digits: a number that does not fit is too long, not malformed.
    let number: Option<u64> = number.parse().ok();
    let seconds = match unit {
        "d" => number.and_then(|number| number.checked_mul(86_400)),
        "h" => number.and_then(|number| number.checked_mul(3_600)),
        "m" => number.and_then(|number| number.checked_mul(60)),
        "s" | "" => number,
        other => {
            return Err(format!(
                "{other:?} is not a unit: use d, h, m or s (e.g. 7d)"
            ));
        }
    };
    let seconds = seconds
        .filter(|seconds| ends_by_year_9999(std::time::Duration::from_secs(*seconds)))
        .ok_or_else(|| {
            format!("{input:?} is too long: counted from now it ends after the year 9999")
        })?;
    if seconds == 0 {
        return Err("the duration must be above zero".to_owned());
    }
    Ok(HumanDuration(std::time::Duration::from_secs(seconds)))
}

/// Whether `duration`, counted from now, ends by the year 9999. Durations are added to
/// the current time (an invitation's expiry, a lease, a deadline); past that year a
/// time can be neither counted by chrono nor written as RFC 3339, so such a setting
/// could only fail later, on every use.
fn ends_by_year_9999(duration: std::time::Duration) -> bool {
    use chrono::Datelike as _;
    chrono::Duration::from_std(duration)
        .ok()
        .and_then(|duration| chrono::Utc::now().checked_add_signed(duration))
        .is_some_and(|end| end.year() <= 9999)
}

/// A workflow lease in seconds: a finite number whose end, counted from now, can be
/// counted and stored (see [`ends_by_year_9999`]).
fn parse_lease_seconds(input: &str) -> Result<f64, String> {
    let seconds: f64 = input
        .trim()
        .parse()
        .map_err(|_| format!("{input:?} is not a number of seconds"))?;
    std::time::Duration::try_from_secs_f64(seconds.max(0.1))
        .ok()
        .filter(|lease| ends_by_year_9999(*lease))
        .map(|_| seconds)
        .ok_or_else(|| {
            format!(
                "{input:?} is not a lease: give a finite number of seconds, ending by the year 9999"
            )
        })
}

/// How the domain and its workflows run.
#[derive(Debug, Clone, Args)]
pub struct Runtime {
    /// Where mail goes: outbox:DIR writes .eml files; smtp://HOST:PORT (or smtps://)
    /// sends through a server.
    #[arg(
        long,
        global = true,
        env = "CAIRN_MAIL_URL",
        default_value = "outbox:cairn-data/outbox"
    )]
    pub mail_url: String,

    /// How long invitation links stay valid.
    #[arg(long, global = true, env = "CAIRN_INVITATION_TTL", default_value = "7d", value_parser = parse_duration)]
    pub invitation_ttl: HumanDuration,

    /// How long an invitation email keeps being retried while the mail server refuses
    /// for now (a 4xx reply, a refused or timed-out connection), with waits of up to
    /// 45 s; then its workflow run pauses, keeping what it did, until it is resumed
    /// (`cairn workflows resume`). A 5xx reply fails the send at once.
    #[arg(long, global = true, env = "CAIRN_MAIL_RETRY_FOR", default_value = "24h", value_parser = parse_duration)]
    pub mail_retry_for: HumanDuration,

    /// The address people reach cairn at, for links in emails.
    #[arg(
        long,
        global = true,
        env = "CAIRN_PUBLIC_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub public_url: String,

    /// Names this process's workflow engine in leases and event metadata.
    #[arg(long, global = true, env = "CAIRN_WORKER_ID")]
    pub worker_id: Option<String>,

    /// How long a workflow engine's claim on a run lasts, in seconds (default 30).
    #[arg(long, global = true, env = "CAIRN_WORKFLOW_LEASE", hide = true, value_parser = parse_lease_seconds)]
    pub workflow_lease_seconds: Option<f64>,

    /// Fault injection for crash tests: the engine stops after this many records.
    #[arg(
        long,
        global = true,
        env = "CAIRN_FAULT_PAUSE_AFTER_RECORDS",
        hide = true
    )]
    pub fault_pause_after_records: Option<u64>,

    /// Fault injection for crash tests: the engine stops after this many emails were
    /// handed over, before recording them.
    #[arg(
        long,
        global = true,
        env = "CAIRN_FAULT_PAUSE_AFTER_EFFECTS",
        hide = true
    )]
    pub fault_pause_after_effects: Option<u64>,
}

impl Runtime {
    /// The mail URL for output, with any password hidden.
    pub fn mail_display(&self) -> String {
        cairn_log::redact_url(&self.mail_url)
    }
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Give a person who accepted their invitation a new set of roles. A role taken
    /// away stops working at once; the organization keeps an active admin.
    Roles(RolesArgs),
    /// Deactivate a person: their tokens stop working until they are reactivated.
    Deactivate(DeactivateArgs),
    /// Reactivate a deactivated person: their tokens work again.
    Reactivate(UserArgs),
}

#[derive(Debug, Args)]
pub struct RolesArgs {
    /// The person's user id.
    pub id: cairn_types::UserId,
    /// The whole new set: admin, clinician, coordinator, viewer (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub roles: Vec<String>,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct DeactivateArgs {
    /// The person's user id.
    pub id: cairn_types::UserId,
    /// Why (kept with the deactivation).
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct UserArgs {
    /// The person's user id.
    pub id: cairn_types::UserId,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Subcommand)]
pub enum SubjectsCommand {
    /// Erase a person at their request: destroys their data key, records the erasure
    /// (with no personal data) and empties their rows. Erasing again prints the first
    /// receipt.
    Erase(EraseArgs),
    /// Restrict a person now and erase them when a retention period ends: their name
    /// and address are shown to no one and nothing new about them is recorded; a run
    /// erases them at --erase-at. Restricting again prints the first receipt.
    Restrict(RestrictArgs),
    /// Where a person stands: active, restricted (until when) or erased (with the
    /// receipts).
    Show(SubjectArgs),
    /// Disclose what the log holds about a person, for a legal claim (GDPR art.
    /// 18(2)): every name and address of theirs, opened even while they are
    /// restricted. The disclosure is recorded in the access log, with its reason,
    /// before it is shown.
    Disclose(DiscloseArgs),
}

#[derive(Debug, Args)]
pub struct DiscloseArgs {
    /// The person's user id.
    pub id: cairn_types::UserId,
    /// The legal claim it is for (kept in the access log; never the person's own data).
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct RestrictArgs {
    /// The person's user id.
    pub id: cairn_types::UserId,
    /// Why (kept with the restriction and the erasure; never the person's own data).
    #[arg(long)]
    pub reason: String,
    /// When the retention period ends and they are erased: an RFC 3339 time
    /// (2032-12-31T00:00:00Z), a date (2032-12-31, midnight UTC), or a duration from
    /// now (2190d).
    #[arg(long, value_name = "TIME", value_parser = parse_until)]
    pub erase_at: chrono::DateTime<chrono::Utc>,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct EraseArgs {
    /// The person's user id.
    pub id: cairn_types::UserId,
    /// Why (kept with the erasure; never the person's own data).
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct SubjectArgs {
    /// The person's user id.
    pub id: cairn_types::UserId,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Re-wrap every person's data key under a new key (all or nothing), which becomes
    /// the database's current key; the old one is retired. Restart every process with
    /// the new key afterwards.
    Rotate(RotateArgs),
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The new key file; made (with a new random key) when it does not exist.
    #[arg(long, value_name = "FILE")]
    pub to: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON for programs instead of text for people.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Append one event to a stream and dispatch it; prints the stored event as JSON.
    Append(AppendArgs),
    /// List events, oldest first.
    List(ListArgs),
    /// Show one event, by id or position.
    Show(ShowArgs),
    /// Dispatch a failed event again (or every failed event) and record the outcome.
    Retry(RetryArgs),
    /// Mark a failed event as not to be applied, with a reason; the events of its
    /// stream held behind it apply.
    Skip(SkipArgs),
}

#[derive(Debug, Args)]
pub struct SkipArgs {
    /// The failed event's id or position.
    #[arg(value_parser = parse_event_ref)]
    pub event: EventRef,
    /// Why it is not to be applied, for the record.
    #[arg(long, value_parser = parse_reason)]
    pub reason: Reason,
    #[command(flatten)]
    pub json: JsonFlag,
}

fn parse_reason(input: &str) -> Result<Reason, String> {
    Reason::parse(input).map_err(|e| e.to_string())
}

/// `cairn handlers …`
#[derive(Debug, Subcommand)]
pub enum HandlersCommand {
    /// List the handler routes: their event types, whether a failure holds its
    /// stream, and what is paused.
    List(JsonFlag),
    /// Pause a handler route: its events are stored and held, not applied, until it
    /// is resumed.
    Pause(RouteArgs),
    /// Resume a paused handler route: the events it held apply, in order.
    Resume(RouteArgs),
}

#[derive(Debug, Args)]
pub struct RouteArgs {
    /// The stream type whose handlers to pause or resume (organization, user, …).
    #[arg(value_parser = StreamType::parse)]
    pub stream_type: StreamType,
    /// Only this event type of the stream type.
    #[arg(long, value_parser = EventType::parse)]
    pub event_type: Option<EventType>,
    /// Why, for the record.
    #[arg(long, value_parser = parse_reason)]
    pub reason: Reason,
    #[command(flatten)]
    pub json: JsonFlag,
}

/// `cairn streams …`
#[derive(Debug, Subcommand)]
pub enum StreamsCommand {
    /// Streams whose events wait behind a failed event or a paused route.
    Held(HeldArgs),
}

#[derive(Debug, Args)]
pub struct HeldArgs {
    /// At most this many streams.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct AppendArgs {
    /// The stream type, one level: organization, user, test, …
    #[arg(long, value_parser = StreamType::parse)]
    pub stream_type: StreamType,
    /// The stream (aggregate) id, a UUID.
    #[arg(long, value_parser = StreamId::parse)]
    pub stream_id: StreamId,
    /// The event type: levels joined by dots, words by underscores
    /// (organization.direct_care_settings_updated).
    #[arg(long = "type", value_name = "EVENT_TYPE", value_parser = EventType::parse)]
    pub event_type: EventType,
    /// The payload: JSON, @FILE to read it from a file, or - for standard input.
    #[arg(long)]
    pub data: String,
    /// Metadata JSON: correlation_id, causation_id, actor, org_id and free extras.
    #[arg(long)]
    pub metadata: Option<String>,
    /// Append only if the stream is at this version (0: the stream must not exist).
    #[arg(long)]
    pub expected_version: Option<i64>,
    /// Makes the append safe to repeat: a repeat returns the first result.
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long, value_parser = StreamId::parse)]
    pub stream_id: Option<StreamId>,
    #[arg(long, value_parser = StreamType::parse)]
    pub stream_type: Option<StreamType>,
    #[arg(long = "type", value_name = "EVENT_TYPE", value_parser = EventType::parse)]
    pub event_type: Option<EventType>,
    #[arg(long, value_parser = cairn_types::CorrelationId::parse)]
    pub correlation_id: Option<cairn_types::CorrelationId>,
    /// Only events whose processing failed.
    #[arg(long)]
    pub failed: bool,
    /// Only failed events with this code (P9001, …).
    #[arg(long, value_parser = parse_code)]
    pub code: Option<ErrorCode>,
    /// Include the integration probe's synthetic events (left out by default).
    #[arg(long)]
    pub probe: bool,
    /// Start after this position.
    #[arg(long, default_value_t = 0)]
    pub after: i64,
    /// At most this many events.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    #[command(flatten)]
    pub json: JsonFlag,
}

/// An event id or a position.
#[derive(Debug, Clone, Copy)]
pub enum EventRef {
    Id(EventId),
    Position(Position),
}

fn parse_event_ref(input: &str) -> Result<EventRef, String> {
    if let Ok(position) = input.parse::<i64>()
        && position > 0
    {
        return Ok(EventRef::Position(Position::new(position)));
    }
    EventId::parse(input).map(EventRef::Id).map_err(|_| {
        format!("{input:?} is neither an event id (a UUID) nor a position (a number above 0)")
    })
}

fn parse_code(input: &str) -> Result<ErrorCode, String> {
    input.parse::<ErrorCode>().map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The event's id or its position.
    #[arg(value_parser = parse_event_ref)]
    pub event: EventRef,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["event", "all_failed"])))]
pub struct RetryArgs {
    /// The failed event's id or position.
    #[arg(value_parser = parse_event_ref)]
    pub event: Option<EventRef>,
    /// Retry every failed event (narrow with --code and --stream-type).
    #[arg(long)]
    pub all_failed: bool,
    /// With --all-failed: only events failed with this code.
    #[arg(long, requires = "all_failed", value_parser = parse_code)]
    pub code: Option<ErrorCode>,
    /// With --all-failed: only events of this stream type.
    #[arg(long, requires = "all_failed", value_parser = StreamType::parse)]
    pub stream_type: Option<StreamType>,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Rebuild into a shadow copy and compare with the live projections instead;
    /// exits 1 when any row differs.
    #[arg(long)]
    pub verify: bool,
    /// Rebuild from the events alone even where that undoes a safety-net write (by
    /// default replay stops and names those rows).
    #[arg(long, conflicts_with = "verify")]
    pub discard_safety_net: bool,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain; exits 1 naming the first bad position. With checkpoints,
    /// also prove the log still holds each signed head, unchanged and not truncated.
    Verify(AuditVerifyArgs),
    /// Sign the log's head with a key kept outside the database and write it to a file,
    /// after checking the chain (from the last checkpoint there, if any).
    Checkpoint(AuditCheckpointArgs),
    /// Create an Ed25519 key for signing checkpoints (FILE, owner-only) and its public
    /// key (FILE.pub).
    Keygen(AuditKeygenArgs),
    /// Print the access log's records of reads of one person's data: who read it,
    /// when, through what (api, console, feed, cli), what, and in which request.
    Access(AuditAccessArgs),
}

#[derive(Debug, Args)]
pub struct AuditAccessArgs {
    /// The person's user id.
    #[arg(long, value_parser = cairn_types::UserId::parse)]
    pub subject: cairn_types::UserId,
    /// Only reads from this time on: an RFC 3339 time (2026-01-31T09:00:00Z), a date
    /// (2026-01-31, midnight UTC), or a duration back from now (30d, 12h).
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// At most this many records, oldest first.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    #[command(flatten)]
    pub json: JsonFlag,
}

/// A time to start from: RFC 3339, a date (midnight UTC), or a duration back from now.
fn parse_since(input: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    parse_time(input, Direction::Back)
}

/// A time to come: RFC 3339, a date (midnight UTC), or a duration from now.
fn parse_until(input: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    parse_time(input, Direction::Ahead)
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    Back,
    Ahead,
}

fn parse_time(input: &str, direction: Direction) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let input = input.trim();
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(input) {
        return Ok(time.with_timezone(&chrono::Utc));
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(input, "%Y-%m-%d") {
        return Ok(date.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    if input.starts_with(|c: char| c.is_ascii_digit())
        && input.ends_with(|c: char| c.is_ascii_alphabetic())
    {
        let span = chrono::Duration::from_std(parse_duration(input)?.0).ok();
        let now = chrono::Utc::now();
        return match direction {
            Direction::Back => span
                .and_then(|back| now.checked_sub_signed(back))
                .ok_or_else(|| format!("{input:?} reaches back before any time cairn can count")),
            Direction::Ahead => span
                .and_then(|ahead| now.checked_add_signed(ahead))
                .ok_or_else(|| format!("{input:?} reaches past any time cairn can count")),
        };
    }
    let from_now = match direction {
        Direction::Back => "back from now (30d)",
        Direction::Ahead => "from now (2190d)",
    };
    Err(format!(
        "{input:?} is not a time: give an RFC 3339 time (2026-01-31T09:00:00Z), a date \
         (2026-01-31) or a duration {from_now}"
    ))
}

#[derive(Debug, Args)]
pub struct AuditVerifyArgs {
    /// A signed checkpoint the log must still hold (repeat for several).
    #[arg(long = "checkpoint", value_name = "FILE")]
    pub checkpoints: Vec<std::path::PathBuf>,
    /// Every checkpoint (*.json) in this directory.
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// Accept only checkpoints signed by this public key (a .pub file from `cairn audit
    /// keygen`); by default each checkpoint is verified with the key it names.
    #[arg(long, value_name = "FILE")]
    pub public_key: Option<std::path::PathBuf>,
    /// The checkpoint `cairn backup` signed of the backup this database was restored
    /// from. The log must hold it; checkpoints signed after it, past its position,
    /// are reported as beyond the restored log rather than as events removed. Not
    /// needed after `cairn restore`, which records the backup in the database.
    #[arg(long, value_name = "FILE")]
    pub backup_checkpoint: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["out", "dir"])))]
pub struct AuditCheckpointArgs {
    /// The signing key file from `cairn audit keygen`. Without it, the key is read from
    /// the CAIRN_AUDIT_KEY environment variable (the file's contents).
    #[arg(long, value_name = "FILE")]
    pub key: Option<std::path::PathBuf>,
    /// Write the checkpoint to this file (replacing the checkpoint there, which the
    /// log must still hold).
    #[arg(long, value_name = "FILE")]
    pub out: Option<std::path::PathBuf>,
    /// Add the checkpoint to this directory as a new file (created if missing).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
    /// Rehash only the events after the newest checkpoint at --out or --dir (whose hash
    /// must still be at its position), not the whole chain: faster on a long log, but
    /// an edit made before that checkpoint is then found only by `cairn audit verify`.
    #[arg(long)]
    pub since_last: bool,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct AuditKeygenArgs {
    /// Where to write the secret key (never overwritten); the public key goes to
    /// FILE.pub.
    #[arg(long, value_name = "FILE")]
    pub out: std::path::PathBuf,
    #[command(flatten)]
    pub json: JsonFlag,
}

/// Scheduled checkpoints in `cairn serve`.
#[derive(Debug, Args)]
pub struct AuditScheduleArgs {
    /// Write a signed checkpoint of the log's head this often (off by default); needs
    /// --audit-checkpoint-dir, and --audit-key or CAIRN_AUDIT_KEY.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "audit_checkpoint_dir")]
    pub audit_checkpoint_every: Option<HumanDuration>,
    /// The key that signs scheduled checkpoints (from `cairn audit keygen`).
    #[arg(long, value_name = "FILE", requires = "audit_checkpoint_every")]
    pub audit_key: Option<std::path::PathBuf>,
    /// The directory scheduled checkpoints are added to.
    #[arg(long, value_name = "DIR", requires = "audit_checkpoint_every")]
    pub audit_checkpoint_dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Appends through the dispatcher (1, 8 and 64 writers, batches of 100) and replay.
    Append(BenchLogArgs),
    /// Bootstrap workflows per second, and the engine's overhead per step.
    Workflow(BenchAppendArgs),
    /// From a command's HTTP request to its event at SSE subscribers (1 and 100).
    Realtime(BenchRealtimeArgs),
    /// A cairn serve process under HTTP load: authenticated reads and commands,
    /// requests per second, p99, and the server's peak memory.
    Http(BenchHttpArgs),
    /// `cairn import` of generated seed events: the seed's schema in a schema of its
    /// own in --seed-url, filled, then imported into a fresh cairn database.
    Import(BenchImportArgs),
    /// Erasing a person: p50 and p99, for people mentioned by few and by many events.
    Erase(BenchEraseArgs),
}

#[derive(Debug, Args)]
pub struct BenchEraseArgs {
    /// Events that carry each person's name and address, one scenario per value.
    #[arg(long, value_delimiter = ',', default_values_t = [10_u64, 10_000])]
    pub mentions: Vec<u64>,
    /// People erased per scenario.
    #[arg(long, default_value_t = 50)]
    pub people: usize,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct BenchImportArgs {
    /// Seed events to generate and import.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// The PostgreSQL database the seed's event store is built in (in a schema of its
    /// own, removed afterwards).
    #[arg(long, value_name = "URL")]
    pub seed_url: String,
    /// Seed events per unit of work.
    #[arg(long, default_value_t = 500)]
    pub batch: u32,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct BenchHttpArgs {
    /// Connections sending authenticated reads.
    #[arg(long, default_value_t = 16)]
    pub read_connections: usize,
    /// Connections sending commands.
    #[arg(long, default_value_t = 64)]
    pub command_connections: usize,
    /// How many cairn serve processes share the database, one round each: a
    /// comma-separated list (PostgreSQL is how several processes share the work).
    #[arg(long, value_delimiter = ',', default_values_t = [1_usize])]
    pub processes: Vec<usize>,
    #[command(flatten)]
    pub common: BenchAppendArgs,
}

#[derive(Debug, Args)]
pub struct BenchRealtimeArgs {
    /// Subscribers following the feed, one scenario each: a comma-separated list
    /// (1 to 5,000 each).
    #[arg(long, value_delimiter = ',', default_values_t = [1_usize, 100])]
    pub subscribers: Vec<usize>,
    #[command(flatten)]
    pub common: BenchAppendArgs,
}

#[derive(Debug, Args)]
pub struct BenchLogArgs {
    /// Concurrent writers, one scenario each: a comma-separated list.
    #[arg(long, value_delimiter = ',', default_values_t = [1_usize, 8, 64])]
    pub writers: Vec<usize>,
    /// Events per append. Without it: single events for each writer count, then
    /// batches of 100 with one writer.
    #[arg(long)]
    pub batch: Option<usize>,
    /// How the log writer isolates units of work: savepoints or optimistic (the
    /// backend's default without it).
    #[arg(long)]
    pub mode: Option<cairn_log::WriteMode>,
    /// Skip the replay and check-log scenarios.
    #[arg(long)]
    pub no_replay: bool,
    /// Upcaster steps (0 to 3) every event goes through when replay and check-log
    /// read it: the events are written at version 1 of a payload that is now at
    /// version 1 + N.
    #[arg(long, default_value_t = 0)]
    pub upcasts: u32,
    /// Every event names a person (a typed payload with a user id): `plain` keeps the
    /// name in the clear, `sealed` seals it under the person's data key (one person per
    /// writer). Run both to see what sealing costs appends and replay.
    #[arg(long, value_enum)]
    pub personal: Option<PersonalMode>,
    #[command(flatten)]
    pub common: BenchAppendArgs,
}

/// Whether the benchmark's events name a person, in the clear or sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PersonalMode {
    Plain,
    Sealed,
}

#[derive(Debug, Args)]
pub struct BenchAppendArgs {
    /// How long each scenario runs, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn mail_urls_are_printed_without_their_password() {
        use clap::Parser as _;
        let cli = super::Cli::try_parse_from([
            "cairn",
            "--mail-url",
            "smtp://mailer:hunter2@mail.example.com:587",
            "status",
        ])
        .expect("parses");
        let shown = cli.runtime.mail_display();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("mail.example.com:587"), "{shown}");
    }

    #[test]
    fn durations_read_like_people_write_them() {
        let seconds = |input: &str| parse_duration(input).map(|d| d.0.as_secs());
        assert_eq!(seconds("7d"), Ok(604_800));
        assert_eq!(seconds("36h"), Ok(129_600));
        assert_eq!(seconds("90m"), Ok(5_400));
        assert_eq!(seconds("45"), Ok(45));
        assert!(
            seconds("7 days")
                .expect_err("unit")
                .contains("is not a unit")
        );
        assert!(
            seconds("d")
                .expect_err("number")
                .contains("is not a duration")
        );
        assert!(seconds("0s").is_err());
    }
}

/// Properties of the duration parser behind every duration setting: it never panics,
/// reads back what it is given, and refuses what cannot be counted with a message. To
/// run them at volume: `PROPTEST_CASES=100000 cargo test -p cairn --bin cairn duration_properties`.
#[cfg(test)]
mod duration_properties {
    use proptest::prelude::*;

    use super::{parse_duration, parse_duration_or_zero};

    fn config() -> ProptestConfig {
        // PROPTEST_CASES in the environment overrides the default count.
        ProptestConfig {
            cases: ProptestConfig::default().cases.max(512),
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    fn unit() -> impl Strategy<Value = (&'static str, u64)> {
        prop::sample::select(vec![
            ("d", 86_400),
            ("h", 3_600),
            ("m", 60),
            ("s", 1),
            ("", 1),
        ])
    }

    /// Text near a duration and anything at all.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            r"[ \t]{0,2}[0-9]{0,25}[dhmsDHMS xy.+\-]{0,3}[ \t\n]{0,2}",
            "[0-9]{1,4}(days|hours|min|sec|ms|µs)",
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn durations_read_back_what_was_written(
            number in 1_u64..=1_000_000,
            (unit, seconds) in unit(),
            padding in "[ \\t]{0,2}",
        ) {
            let text = format!("{padding}{number}{unit}{padding}");
            let parsed = parse_duration(&text).expect("a duration within the year 9999");
            prop_assert_eq!(parsed.0.as_secs(), number * seconds);
            prop_assert_eq!(parsed.0.subsec_nanos(), 0);
            let again = parse_duration_or_zero(&text).expect("the same duration");
            prop_assert_eq!(again.0, parsed.0);
            // Leading zeros change nothing.
            let padded = parse_duration(&format!("000{number}{unit}")).expect("a duration");
            prop_assert_eq!(padded.0, parsed.0);
        }

        #[test]
        fn any_text_is_a_duration_or_a_message(input in text()) {
            match parse_duration(&input) {
                Ok(duration) => {
                    let seconds = duration.0.as_secs();
                    prop_assert!(seconds > 0);
                    let trimmed = input.trim();
                    let digits = trimmed.trim_end_matches(['d', 'h', 'm', 's']);
                    prop_assert!(trimmed.len() - digits.len() <= 1, "{input:?}");
                    prop_assert!(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()), "{input:?}");
                    // The same count in seconds reads back the same.
                    let reread = parse_duration(&format!("{seconds}s")).expect("the same duration");
                    prop_assert_eq!(reread.0, duration.0);
                }
                Err(message) => {
                    prop_assert!(!message.is_empty());
                    prop_assert!(
                        message.contains("is not a duration")
                            || message.contains("is not a unit")
                            || message.contains("is too long")
                            || message.contains("must be above zero"),
                        "{message}"
                    );
                }
            }
            match parse_duration_or_zero(&input) {
                Ok(duration) if duration.0.is_zero() => prop_assert_eq!(input.trim(), "0"),
                Ok(duration) => prop_assert_eq!(Some(duration.0), parse_duration(&input).ok().map(|d| d.0)),
                Err(message) => prop_assert!(!message.is_empty()),
            }
        }

        #[test]
        fn overflow_is_refused_as_too_long(
            number in prop_oneof![
                (10_000_u64 * 366 * 86_400)..=u64::MAX,
                Just(u64::MAX),
            ],
            extra_digits in "[0-9]{0,6}",
            (unit, _) in unit(),
        ) {
            let text = format!("{number}{extra_digits}{unit}");
            let message = parse_duration(&text).expect_err("beyond the year 9999");
            prop_assert!(message.contains("is too long"), "{text}: {message}");
            prop_assert!(message.contains(&text), "{text}: {message}");
            prop_assert!(parse_duration_or_zero(&text).is_err());
        }

        #[test]
        fn zero_is_never_a_duration_but_may_mean_never(zeros in 1_usize..5, (unit, _) in unit()) {
            let text = format!("{}{unit}", "0".repeat(zeros));
            prop_assert!(parse_duration(&text).expect_err("zero").contains("above zero"));
            let never = parse_duration_or_zero(&text);
            prop_assert_eq!(never.is_ok(), text == "0");
        }
    }
}
