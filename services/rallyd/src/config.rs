//! `rallyd`'s configuration: flags with `RALLY_*` environment fallbacks, validated at start.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::RallydError;

/// A backend service `rallyd` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum)]
pub enum ServiceKind {
    /// Accounts and tokens (`rally.identity.v1.Identity`).
    Identity,
    /// Rooms and matchmaking (`rally.rooms.v1.Rooms`, `rally.rooms.v1.Matchmaking`).
    Rooms,
    /// The connection broker (`rally.broker.v1.Broker`).
    Broker,
    /// The UDP reflector and relay (not gRPC).
    Relay,
}

impl ServiceKind {
    /// The gRPC services this kind serves.
    pub fn grpc_names(self) -> &'static [&'static str] {
        match self {
            ServiceKind::Identity => &["rally.identity.v1.Identity"],
            ServiceKind::Rooms => &["rally.rooms.v1.Rooms", "rally.rooms.v1.Matchmaking"],
            ServiceKind::Broker => &["rally.broker.v1.Broker"],
            ServiceKind::Relay => &[],
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// `rallyd`'s configuration. Every flag has an environment variable; with none set, `rallyd`
/// runs every service on loopback with SQLite under `./rally-data`.
#[derive(Clone, Parser)]
#[command(
    name = "rallyd",
    version,
    about = "The Rally server: identity, rooms, matchmaking and the connection broker"
)]
pub struct Config {
    /// Address of the gRPC server.
    #[arg(long, env = "RALLY_LISTEN", default_value = "127.0.0.1:7370")]
    pub listen: SocketAddr,

    /// PEM certificate chain (leaf first) for gRPC over TLS 1.3. With it and `--tls-key-file`,
    /// every gRPC connection is TLS; the files are reloaded when they change or on SIGHUP (new
    /// connections get the new certificate, open ones keep going).
    #[arg(long, env = "RALLY_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of the TLS certificate (readable by its owner, or its group, only).
    #[arg(long, env = "RALLY_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// A second address serving only gRPC health checking (`grpc.health.v1.Health`), always in
    /// plaintext (health carries nothing secret): for Kubernetes' gRPC probes, which cannot
    /// speak TLS.
    #[arg(long, env = "RALLY_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,

    /// Most gRPC connections open at once; more are closed as they arrive.
    #[arg(long, env = "RALLY_MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,

    /// Most gRPC connections open at once from one client address (one IPv6 /64). Players
    /// behind one carrier-grade NAT share an address: keep it generous.
    #[arg(
        long,
        env = "RALLY_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 1024
    )]
    pub max_connections_per_address: usize,

    /// Serve plaintext gRPC on a non-loopback `--listen` address. Without TLS, the certificate
    /// fingerprints peers pin travel in clear, so anyone on the path can sit between two
    /// players: only for a private network or behind a proxy that terminates TLS.
    #[arg(long, env = "RALLY_ALLOW_PLAINTEXT", default_value_t = false)]
    pub allow_plaintext: bool,

    /// UDP addresses of the relay and reflector, comma-separated (at most 16). The first carries
    /// relay allocations. With several, a binding request may ask to be answered from another IP
    /// or another port (so that clients can classify their NAT, RFC 5780-style): give two IPs,
    /// one with two ports, e.g. `192.0.2.1:7371,198.51.100.1:7371,192.0.2.1:7372`. Use specific
    /// IPs: an unspecified one (`0.0.0.0`) never counts as another IP.
    #[arg(
        long,
        env = "RALLY_RELAY_LISTEN",
        value_delimiter = ',',
        default_value = "127.0.0.1:7371"
    )]
    pub relay_listen: Vec<SocketAddr>,

    /// Directory for the embedded database and the generated token-signing key.
    #[arg(long, env = "RALLY_DATA_DIR", default_value = "./rally-data")]
    pub data_dir: PathBuf,

    /// Database URL: `postgres://user:password@host/db` for Postgres, or `sqlite:path`.
    /// Default: SQLite at `<data-dir>/rally.db`.
    #[arg(long, env = "RALLY_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Most database connections to hold open (Postgres).
    #[arg(long, env = "RALLY_DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,

    /// Which services to run, comma-separated.
    #[arg(
        long,
        env = "RALLY_SERVICES",
        value_enum,
        value_delimiter = ',',
        default_value = "identity,rooms,broker,relay"
    )]
    pub services: Vec<ServiceKind>,

    /// PEM file of the Ed25519 private key that signs access tokens; only the identity service
    /// needs it. Default: `<data-dir>/token-signing-key.pem`, generated when the identity service
    /// runs and the file does not exist.
    #[arg(long, env = "RALLY_TOKEN_KEY_FILE")]
    pub token_key_file: Option<PathBuf>,

    /// File holding the secret that signs relay grants (shared by the broker and the relay).
    /// Default: `<data-dir>/relay-grant-secret`, generated when missing.
    #[arg(long, env = "RALLY_RELAY_SECRET_FILE")]
    pub relay_secret_file: Option<PathBuf>,

    /// Older relay grant secret files the relay still accepts (key rotation: sign with the new
    /// secret, keep verifying the old one until its grants expire); comma-separated.
    #[arg(long, env = "RALLY_RELAY_VERIFY_SECRET_FILES", value_delimiter = ',')]
    pub relay_verify_secret_files: Vec<PathBuf>,

    /// Most relay allocations held at once.
    #[arg(long, env = "RALLY_RELAY_MAX_ALLOCATIONS", default_value_t = 10_000)]
    pub relay_max_allocations: usize,

    /// Most relay allocations one user may be part of at once (the broker refuses more grants,
    /// the relay more allocations).
    #[arg(
        long,
        env = "RALLY_RELAY_MAX_ALLOCATIONS_PER_USER",
        default_value_t = 16
    )]
    pub relay_max_allocations_per_user: usize,

    /// Most payload bytes per second the relay forwards, all allocations together.
    #[arg(
        long,
        env = "RALLY_RELAY_MAX_TOTAL_BYTES_PER_SECOND",
        default_value_t = 125_000_000
    )]
    pub relay_max_total_bytes_per_second: u64,

    /// UDP addresses at which clients reach the relay, comma-separated: the first carries relay
    /// allocations, all are announced as reflectors. Default: every address this process's relay
    /// bound, in `--relay-listen` order (when it runs one; otherwise the broker offers no relay).
    #[arg(long, env = "RALLY_RELAY_PUBLIC_ADDRESSES", value_delimiter = ',')]
    pub relay_public_addresses: Vec<SocketAddr>,

    /// How long a relay grant is valid, in seconds.
    #[arg(long, env = "RALLY_RELAY_GRANT_TTL_SECS", default_value_t = 600)]
    pub relay_grant_ttl_secs: u64,

    /// Most bytes one relay allocation carries, both directions together.
    #[arg(long, env = "RALLY_RELAY_MAX_BYTES", default_value_t = 1 << 30)]
    pub relay_max_bytes: u64,

    /// Most bytes per second one relay allocation carries, both directions together.
    #[arg(long, env = "RALLY_RELAY_MAX_BYTES_PER_SECOND", default_value_t = 4 << 20)]
    pub relay_max_bytes_per_second: u32,

    /// How often broker clients must ping, in milliseconds; three silent intervals end an
    /// attachment.
    #[arg(long, env = "RALLY_BROKER_KEEPALIVE_MS", default_value_t = 10_000)]
    pub broker_keepalive_ms: u64,

    /// How long a user may stay detached from the broker before it leaves its room and loses its
    /// pairs, in milliseconds.
    #[arg(long, env = "RALLY_BROKER_DETACH_GRACE_MS", default_value_t = 30_000)]
    pub broker_detach_grace_ms: u64,

    /// How long a broker attachment outlives its access token's expiry without re-authenticating
    /// in band (a Reauthenticate with a fresh token), in milliseconds.
    #[arg(long, env = "RALLY_BROKER_REAUTH_GRACE_MS", default_value_t = 30_000)]
    pub broker_reauth_grace_ms: u64,

    /// Broker signals a user may send per second (sustained; Ping is not counted).
    #[arg(long, env = "RALLY_BROKER_SIGNALS_PER_SECOND", default_value_t = 20)]
    pub broker_signals_per_second: u32,

    /// Broker signals a user may send in a burst.
    #[arg(long, env = "RALLY_BROKER_SIGNAL_BURST", default_value_t = 60)]
    pub broker_signal_burst: u32,

    /// PEM files of Ed25519 public keys (or private ones) whose tokens are accepted,
    /// comma-separated: replicas without the identity service take the identity key's public
    /// half here (`openssl pkey -in token-signing-key.pem -pubout`); add the previous key's to
    /// rotate keys.
    #[arg(long, env = "RALLY_TOKEN_VERIFY_KEYS", value_delimiter = ',')]
    pub token_verify_keys: Vec<PathBuf>,

    /// How long access tokens are valid, in seconds.
    #[arg(long, env = "RALLY_ACCESS_TOKEN_TTL_SECS", default_value_t = 900)]
    pub access_token_ttl_secs: u64,

    /// How long refresh tokens are valid, in seconds.
    #[arg(long, env = "RALLY_REFRESH_TOKEN_TTL_SECS", default_value_t = 30 * 24 * 3600)]
    pub refresh_token_ttl_secs: u64,

    /// Sign-in attempts (register, login, device login) allowed per username per minute.
    #[arg(long, env = "RALLY_SIGNIN_PER_USERNAME_PER_MINUTE", default_value_t = NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN))]
    pub signin_per_username_per_minute: NonZeroU32,

    /// Sign-in attempts allowed per client IP address (per /64 for IPv6) per minute.
    #[arg(long, env = "RALLY_SIGNIN_PER_ADDRESS_PER_MINUTE", default_value_t = NonZeroU32::new(60).unwrap_or(NonZeroU32::MIN))]
    pub signin_per_address_per_minute: NonZeroU32,

    /// How long a client has to send a whole request once its call started, in milliseconds
    /// (every call but the broker's Attach stream, which has its own timeouts); a late call is
    /// answered `DEADLINE_EXCEEDED`.
    #[arg(long, env = "RALLY_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,

    /// Most sessions one user holds at once: a sign-in past it ends the user's oldest session.
    #[arg(long, env = "RALLY_MAX_SESSIONS_PER_USER", default_value_t = 32)]
    pub max_sessions_per_user: u32,

    /// Refresh calls allowed per client IP address (per /64 for IPv6) per minute, counted
    /// before the database is touched.
    #[arg(long, env = "RALLY_REFRESH_PER_ADDRESS_PER_MINUTE", default_value_t = NonZeroU32::new(60).unwrap_or(NonZeroU32::MIN))]
    pub refresh_per_address_per_minute: NonZeroU32,

    /// Refresh calls allowed per session (one refresh-token family) per minute.
    #[arg(long, env = "RALLY_REFRESH_PER_SESSION_PER_MINUTE", default_value_t = NonZeroU32::new(6).unwrap_or(NonZeroU32::MIN))]
    pub refresh_per_session_per_minute: NonZeroU32,

    /// Write calls (join, leave, kick, update room data, cancel, logout) allowed per user per
    /// minute, sustained.
    #[arg(long, env = "RALLY_WRITES_PER_USER_PER_MINUTE", default_value_t = NonZeroU32::new(600).unwrap_or(NonZeroU32::MIN))]
    pub writes_per_user_per_minute: NonZeroU32,

    /// Write calls one user may make at once after a quiet period.
    #[arg(long, env = "RALLY_WRITE_BURST", default_value_t = NonZeroU32::new(60).unwrap_or(NonZeroU32::MIN))]
    pub write_burst: NonZeroU32,

    /// Rooms and matchmaking tickets one user may create per minute, sustained (each is kept
    /// for the history retention after it ends).
    #[arg(long, env = "RALLY_CREATES_PER_USER_PER_MINUTE", default_value_t = NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN))]
    pub creates_per_user_per_minute: NonZeroU32,

    /// Rooms and tickets one user may create at once after a quiet period.
    #[arg(long, env = "RALLY_CREATE_BURST", default_value_t = NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN))]
    pub create_burst: NonZeroU32,

    /// Streams (Attach, WatchRoom, WatchTicket) one user may open per minute, sustained.
    #[arg(long, env = "RALLY_STREAMS_PER_USER_PER_MINUTE", default_value_t = NonZeroU32::new(60).unwrap_or(NonZeroU32::MIN))]
    pub streams_per_user_per_minute: NonZeroU32,

    /// Streams one user may open at once after a quiet period.
    #[arg(long, env = "RALLY_STREAM_BURST", default_value_t = NonZeroU32::new(30).unwrap_or(NonZeroU32::MIN))]
    pub stream_burst: NonZeroU32,

    /// JSON file of matchmaking pools (see `rally_rooms::pools`). Default: one pool, `default`,
    /// matching any two players.
    #[arg(long, env = "RALLY_MATCHMAKING_POOLS")]
    pub matchmaking_pools: Option<PathBuf>,

    /// How often the matchmaker runs a round even when nothing was enqueued (windows widen and
    /// tickets expire with time), in milliseconds.
    #[arg(long, env = "RALLY_MATCHMAKING_TICK_MS", default_value_t = 1000)]
    pub matchmaking_tick_ms: u64,

    /// How long final tickets and closed rooms (with their events) are kept, in seconds.
    #[arg(long, env = "RALLY_HISTORY_RETENTION_SECS", default_value_t = 24 * 3600)]
    pub history_retention_secs: u64,

    /// How often old history is purged, in seconds.
    #[arg(long, env = "RALLY_HISTORY_PURGE_EVERY_SECS", default_value_t = 60)]
    pub history_purge_every_secs: u64,

    /// How long a graceful shutdown waits for open calls and streams, in seconds.
    #[arg(long, env = "RALLY_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,

    /// Log format.
    #[arg(long, env = "RALLY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Config {
    /// Checks what clap cannot: durations, duplicates, a database URL we understand.
    pub fn validate(&mut self) -> Result<(), RallydError> {
        self.services.sort();
        self.services.dedup();
        if self.services.is_empty() {
            return Err(RallydError::Config("--services names no service".into()));
        }
        if self.access_token_ttl_secs == 0 || self.access_token_ttl_secs > 24 * 3600 {
            return Err(RallydError::Config(
                "--access-token-ttl-secs must be 1 to 86400".into(),
            ));
        }
        if self.refresh_token_ttl_secs < self.access_token_ttl_secs {
            return Err(RallydError::Config(
                "--refresh-token-ttl-secs must not be shorter than the access token's".into(),
            ));
        }
        if self.history_purge_every_secs == 0 {
            return Err(RallydError::Config(
                "--history-purge-every-secs must be at least 1".into(),
            ));
        }
        if self.relay_max_allocations_per_user == 0 || self.relay_max_total_bytes_per_second == 0 {
            return Err(RallydError::Config(
                "--relay-max-allocations-per-user and --relay-max-total-bytes-per-second must be \
                 at least 1"
                    .into(),
            ));
        }
        if self.max_sessions_per_user == 0 {
            return Err(RallydError::Config(
                "--max-sessions-per-user must be at least 1".into(),
            ));
        }
        if self.request_timeout_ms == 0 {
            return Err(RallydError::Config(
                "--request-timeout-ms must be at least 1".into(),
            ));
        }
        if self.matchmaking_tick_ms == 0 {
            return Err(RallydError::Config(
                "--matchmaking-tick-ms must be at least 1".into(),
            ));
        }
        if self.database_max_connections == 0 {
            return Err(RallydError::Config(
                "--database-max-connections must be at least 1".into(),
            ));
        }
        if self.broker_keepalive_ms < 100 || self.broker_keepalive_ms > 600_000 {
            return Err(RallydError::Config(
                "--broker-keepalive-ms must be 100 to 600000".into(),
            ));
        }
        if self.max_connections == 0 || self.max_connections_per_address == 0 {
            return Err(RallydError::Config(
                "--max-connections and --max-connections-per-address must be at least 1".into(),
            ));
        }
        if self.broker_reauth_grace_ms > 3600 * 1000 {
            return Err(RallydError::Config(
                "--broker-reauth-grace-ms must be at most an hour".into(),
            ));
        }
        if self.broker_detach_grace_ms > 24 * 3600 * 1000 {
            return Err(RallydError::Config(
                "--broker-detach-grace-ms must be at most a day".into(),
            ));
        }
        if self.broker_signals_per_second == 0 || self.broker_signal_burst == 0 {
            return Err(RallydError::Config(
                "--broker-signals-per-second and --broker-signal-burst must be at least 1".into(),
            ));
        }
        if self.relay_grant_ttl_secs == 0
            || self.relay_max_bytes == 0
            || self.relay_max_bytes_per_second == 0
        {
            return Err(RallydError::Config(
                "--relay-grant-ttl-secs, --relay-max-bytes and --relay-max-bytes-per-second must be at least 1".into(),
            ));
        }
        self.validate_relay_listen()?;
        if self.tls().is_none() && !self.listen.ip().is_loopback() && !self.allow_plaintext {
            return Err(RallydError::Config(format!(
                "--listen {} is not a loopback address and no --tls-cert-file/--tls-key-file is \
                 set: rallyd serves plaintext only on loopback unless --allow-plaintext says so",
                self.listen
            )));
        }
        if let Some(url) = &self.database_url
            && !(is_postgres_url(url) || url.starts_with("sqlite:"))
        {
            return Err(RallydError::Config(format!(
                "--database-url must start with postgres://, postgresql:// or sqlite: (got {})",
                redact_url(url)
            )));
        }
        Ok(())
    }

    /// One to [`rally_relay::server::MAX_SOCKETS`] relay addresses, none twice (port 0, "any
    /// free port", may repeat).
    fn validate_relay_listen(&self) -> Result<(), RallydError> {
        let count = self.relay_listen.len();
        if count == 0 || count > rally_relay::server::MAX_SOCKETS {
            return Err(RallydError::Config(format!(
                "--relay-listen must name 1 to {} addresses (got {count})",
                rally_relay::server::MAX_SOCKETS
            )));
        }
        for (i, address) in self.relay_listen.iter().enumerate() {
            if address.port() != 0 && self.relay_listen[..i].contains(address) {
                return Err(RallydError::Config(format!(
                    "--relay-listen names {address} twice"
                )));
            }
        }
        Ok(())
    }

    /// The TLS certificate and key files, when both are set.
    pub fn tls(&self) -> Option<crate::TlsFiles> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some(crate::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }

    /// Whether `kind` runs in this process.
    pub fn runs(&self, kind: ServiceKind) -> bool {
        self.services.contains(&kind)
    }

    /// The token-signing key file.
    pub fn token_key_path(&self) -> PathBuf {
        self.token_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("token-signing-key.pem"))
    }

    /// The relay grant secret file.
    pub fn relay_secret_path(&self) -> PathBuf {
        self.relay_secret_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("relay-grant-secret"))
    }

    /// The shutdown grace period.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

pub(crate) fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The URL with any password replaced by `***`: the one in the authority (`user:password@`) and
/// any query parameter named `password` or ending in it (`?password=`, `&sslpassword=`).
pub(crate) fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = redact_authority(base);
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if key.to_ascii_lowercase().ends_with("password") => {
                    format!("{key}=***")
                }
                _ => param.to_owned(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

fn redact_authority(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("allow_plaintext", &self.allow_plaintext)
            .field("health_listen", &self.health_listen)
            .field("max_connections", &self.max_connections)
            .field(
                "max_connections_per_address",
                &self.max_connections_per_address,
            )
            .field("relay_listen", &self.relay_listen)
            .field("data_dir", &self.data_dir)
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("database_max_connections", &self.database_max_connections)
            .field("services", &self.services)
            .field("token_key_file", &self.token_key_path())
            .field("token_verify_keys", &self.token_verify_keys)
            .field("relay_secret_file", &self.relay_secret_path())
            .field("relay_max_allocations", &self.relay_max_allocations)
            .field("relay_verify_secret_files", &self.relay_verify_secret_files)
            .field("relay_public_addresses", &self.relay_public_addresses)
            .field("relay_grant_ttl_secs", &self.relay_grant_ttl_secs)
            .field(
                "relay_max_allocations_per_user",
                &self.relay_max_allocations_per_user,
            )
            .field(
                "relay_max_total_bytes_per_second",
                &self.relay_max_total_bytes_per_second,
            )
            .field("relay_max_bytes", &self.relay_max_bytes)
            .field(
                "relay_max_bytes_per_second",
                &self.relay_max_bytes_per_second,
            )
            .field("broker_keepalive_ms", &self.broker_keepalive_ms)
            .field("broker_detach_grace_ms", &self.broker_detach_grace_ms)
            .field("broker_reauth_grace_ms", &self.broker_reauth_grace_ms)
            .field("broker_signals_per_second", &self.broker_signals_per_second)
            .field("broker_signal_burst", &self.broker_signal_burst)
            .field("access_token_ttl_secs", &self.access_token_ttl_secs)
            .field("refresh_token_ttl_secs", &self.refresh_token_ttl_secs)
            .field(
                "signin_per_username_per_minute",
                &self.signin_per_username_per_minute,
            )
            .field(
                "signin_per_address_per_minute",
                &self.signin_per_address_per_minute,
            )
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("max_sessions_per_user", &self.max_sessions_per_user)
            .field(
                "refresh_per_address_per_minute",
                &self.refresh_per_address_per_minute,
            )
            .field(
                "refresh_per_session_per_minute",
                &self.refresh_per_session_per_minute,
            )
            .field(
                "writes_per_user_per_minute",
                &self.writes_per_user_per_minute,
            )
            .field("write_burst", &self.write_burst)
            .field(
                "creates_per_user_per_minute",
                &self.creates_per_user_per_minute,
            )
            .field("create_burst", &self.create_burst)
            .field(
                "streams_per_user_per_minute",
                &self.streams_per_user_per_minute,
            )
            .field("stream_burst", &self.stream_burst)
            .field("matchmaking_pools", &self.matchmaking_pools)
            .field("matchmaking_tick_ms", &self.matchmaking_tick_ms)
            .field("history_retention_secs", &self.history_retention_secs)
            .field("history_purge_every_secs", &self.history_purge_every_secs)
            .field("shutdown_grace_secs", &self.shutdown_grace_secs)
            .field("log_format", &self.log_format)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["rallyd"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).expect("parse")
    }

    #[test]
    fn no_flags_means_every_service_on_loopback_with_local_data() {
        let config = parse(&[]);
        assert_eq!(config.listen, "127.0.0.1:7370".parse().expect("addr"));
        assert_eq!(
            config.relay_listen,
            vec!["127.0.0.1:7371".parse().expect("addr")]
        );
        assert_eq!(config.data_dir, PathBuf::from("./rally-data"));
        assert_eq!(
            config.services,
            vec![
                ServiceKind::Identity,
                ServiceKind::Rooms,
                ServiceKind::Broker,
                ServiceKind::Relay
            ]
        );
        assert_eq!(
            config.token_key_path(),
            PathBuf::from("./rally-data/token-signing-key.pem")
        );
    }

    #[test]
    fn services_are_a_comma_separated_subset() {
        let mut config = parse(&["--services", "broker,identity,broker"]);
        config.validate().expect("valid");
        assert_eq!(
            config.services,
            vec![ServiceKind::Identity, ServiceKind::Broker]
        );
        assert!(Config::try_parse_from(["rallyd", "--services", "identity,nope"]).is_err());
    }

    #[test]
    fn relay_listen_is_a_comma_separated_list_of_distinct_addresses() {
        let mut config = parse(&["--relay-listen", "127.0.0.1:0,127.0.0.2:0,127.0.0.1:0"]);
        config.validate().expect("port 0 may repeat");
        assert_eq!(
            config.relay_listen,
            ["127.0.0.1:0", "127.0.0.2:0", "127.0.0.1:0"]
                .map(|a| a.parse::<SocketAddr>().expect("addr"))
        );
        let mut twice = parse(&["--relay-listen", "127.0.0.1:7371,127.0.0.1:7371"]);
        let err = twice.validate().expect_err("a duplicate").to_string();
        assert!(err.contains("127.0.0.1:7371 twice"), "{err}");
        let many = vec!["127.0.0.1:0"; rally_relay::server::MAX_SOCKETS + 1].join(",");
        let mut too_many = parse(&["--relay-listen", &many]);
        assert!(too_many.validate().is_err());
        assert!(Config::try_parse_from(["rallyd", "--relay-listen", "127.0.0.1:1,nope"]).is_err());
    }

    #[test]
    fn plaintext_on_a_non_loopback_address_needs_allow_plaintext() {
        let mut public = parse(&["--listen", "0.0.0.0:7370"]);
        let err = public
            .validate()
            .expect_err("plaintext outside loopback")
            .to_string();
        assert!(err.contains("--allow-plaintext"), "{err}");
        parse(&["--listen", "0.0.0.0:7370", "--allow-plaintext"])
            .validate()
            .expect("allowed explicitly");
        parse(&["--listen", "[::1]:7370"])
            .validate()
            .expect("IPv6 loopback is loopback");
        parse(&[
            "--listen",
            "0.0.0.0:7370",
            "--tls-cert-file",
            "tls.crt",
            "--tls-key-file",
            "tls.key",
        ])
        .validate()
        .expect("TLS anywhere");
        assert!(
            Config::try_parse_from(["rallyd", "--tls-cert-file", "tls.crt"]).is_err(),
            "a certificate needs its key"
        );
    }

    #[test]
    fn unknown_database_schemes_are_refused_with_the_password_hidden() {
        let mut config = parse(&["--database-url", "mysql://root:hunter2@db/rally"]);
        let err = config.validate().expect_err("invalid").to_string();
        assert!(err.contains("mysql://root:***@db/rally"), "{err}");
        assert!(!err.contains("hunter2"));
    }

    #[test]
    fn the_printed_config_never_shows_the_database_password() {
        let config = parse(&["--database-url", "postgres://rally:s3cret@db:5432/rally"]);
        let printed = format!("{config:?}");
        assert!(
            printed.contains("postgres://rally:***@db:5432/rally"),
            "{printed}"
        );
        assert!(!printed.contains("s3cret"));
    }

    #[test]
    fn redaction_keeps_urls_without_passwords() {
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/x"),
            "postgres://postgres@127.0.0.1/x"
        );
        assert_eq!(redact_url("sqlite:./a.db"), "sqlite:./a.db");
        assert_eq!(redact_url("postgres://u:p@h"), "postgres://u:***@h");
    }

    #[test]
    fn redaction_hides_passwords_in_the_query_string_too() {
        assert_eq!(
            redact_url("postgres://db/rally?user=rally&password=hunter2&sslmode=require"),
            "postgres://db/rally?user=rally&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://u:p@db/rally?sslpassword=x&PASSWORD=y"),
            "postgres://u:***@db/rally?sslpassword=***&PASSWORD=***"
        );
        let config = parse(&["--database-url", "postgresql://db/rally?password=s3cret"]);
        assert!(!format!("{config:?}").contains("s3cret"));
    }
}
