//! Assembling and running the gRPC server, and its graceful shutdown.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use rally_auth::{
    AuthLayer, KeyRing, PublicMethods, Rate, RateLayer, RateLimits, SessionEnds, SessionLayer,
    SigningKey, StreamLife, TokenIssuer, TokenVerifier,
};
use rally_identity::{IdentityConfig, IdentityService, ThrottleConfig};
use rally_relay::server::RelayServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::body_timeout::BodyTimeoutLayer;
use crate::rpc_telemetry::RpcTelemetryLayer;
use crate::tls::CertStore;
use crate::{Config, Database, RallydError, ServiceKind};

/// Largest request message the identity service decodes; its biggest field is a 1024-byte password.
const IDENTITY_MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// The longest access-token lifetime `--access-token-ttl-secs` allows.
const MAX_ACCESS_TOKEN_TTL_SECS: u64 = 24 * 3600;
/// Users each per-user rate limit tracks at most (the least recently seen are forgotten).
const RATE_TRACKED_USERS: usize = 200_000;
/// Most concurrent calls on one client connection: announced to clients as HTTP/2's
/// SETTINGS_MAX_CONCURRENT_STREAMS (a client opening more is refused by the protocol), and
/// enforced again per connection by tower.
const MAX_CALLS_PER_CONNECTION: u32 = 256;
/// Streams a client may reset before the server accepted them, and ones the server may reset
/// for a client's protocol errors, before the connection is closed (HTTP/2 "rapid reset").
const MAX_PENDING_RESETS: usize = 20;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Largest request header block (HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`): metadata, a token.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Largest health request (a service name) and reflection request (a symbol or file name).
const HEALTH_MAX_MESSAGE_BYTES: usize = 1024;
const REFLECTION_MAX_MESSAGE_BYTES: usize = 4 * 1024;

/// A running `rallyd`.
pub struct Running {
    grpc_addr: SocketAddr,
    health_addr: Option<SocketAddr>,
    tls: Option<Arc<CertStore>>,
    relay: Option<RelayServer>,
    database: Option<Database>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), RallydError>>,
}

impl Running {
    /// The address the gRPC server listens on (the real port when configured with port 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The plaintext health-only address (`--health-listen`), when configured.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_addr
    }

    /// Whether gRPC is served over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Reads the TLS certificate and key files again (what `rallyd` does on SIGHUP and when the
    /// files change): new connections get the new certificate, open ones keep theirs. Returns
    /// whether the certificate changed; without TLS, `false`.
    pub fn reload_tls(&self) -> Result<bool, RallydError> {
        match &self.tls {
            Some(store) => store.reload(),
            None => Ok(false),
        }
    }

    /// A handle that rereads the TLS files (what `rallyd` does on SIGHUP), usable after this
    /// value moved into [`Running::wait`]; `None` without TLS.
    pub fn tls_reloader(&self) -> Option<crate::TlsReloader> {
        self.tls.clone().map(crate::TlsReloader)
    }

    /// The SHA-256 of the TLS certificate new connections get, in hex; `None` without TLS.
    pub fn tls_fingerprint(&self) -> Option<String> {
        self.tls.as_ref().map(|store| store.fingerprint())
    }

    /// The first UDP address of the relay and reflector (the one that carries allocations),
    /// when the relay runs here.
    pub fn relay_addr(&self) -> Option<SocketAddr> {
        self.relay.as_ref().map(RelayServer::local_addr)
    }

    /// Every UDP address of the relay and reflector, in `--relay-listen` order (the real ports
    /// when configured with port 0); empty when the relay does not run here.
    pub fn relay_addrs(&self) -> &[SocketAddr] {
        self.relay
            .as_ref()
            .map(RelayServer::local_addrs)
            .unwrap_or_default()
    }

    /// What the relay has done so far, when it runs here.
    pub fn relay_counters(&self) -> Option<rally_relay::allocations::Counters> {
        self.relay.as_ref().map(RelayServer::counters)
    }

    /// The database it runs on; `None` for a process that runs only the relay (it keeps no
    /// state and gets no database URL).
    pub fn database(&self) -> Option<&Database> {
        self.database.as_ref()
    }

    /// Cancelling this token starts a graceful shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Starts a graceful shutdown and waits for it to finish.
    pub async fn stop(self) -> Result<(), RallydError> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the server has stopped (after a shutdown was started elsewhere).
    pub async fn wait(self) -> Result<(), RallydError> {
        let result = match self.task.await {
            Ok(result) => result,
            Err(join) => Err(RallydError::Server(format!("server task failed: {join}"))),
        };
        if let Some(relay) = self.relay {
            // The gRPC server has stopped (perhaps with an error, without a shutdown): so does
            // the rest, the relay's loops as soon as the token is cancelled.
            self.shutdown.cancel();
            relay.wait().await;
        }
        result
    }
}

/// Starts `rallyd` with `config`: opens the database, loads keys, binds and serves.
///
/// The per-user budgets: writes share one, creations (rooms, tickets) another, streams a third.
fn user_rate_limits(config: &Config) -> RateLimits {
    const WRITES: &[&str] = &[
        "/rally.identity.v1.Identity/Logout",
        "/rally.rooms.v1.Rooms/JoinRoom",
        "/rally.rooms.v1.Rooms/LeaveRoom",
        "/rally.rooms.v1.Rooms/KickMember",
        "/rally.rooms.v1.Rooms/UpdateRoomData",
        "/rally.rooms.v1.Matchmaking/Cancel",
    ];
    // What leaves a record behind for the history retention (a room, a ticket): fewer.
    const CREATES: &[&str] = &[
        "/rally.rooms.v1.Rooms/CreateRoom",
        "/rally.rooms.v1.Matchmaking/Enqueue",
    ];
    const STREAMS: &[&str] = &[
        "/rally.broker.v1.Broker/Attach",
        "/rally.rooms.v1.Rooms/WatchRoom",
        "/rally.rooms.v1.Matchmaking/WatchTicket",
    ];
    RateLimits::new(NonZeroUsize::new(RATE_TRACKED_USERS).unwrap_or(NonZeroUsize::MIN))
        .class(
            "write",
            Rate {
                per_minute: config.writes_per_user_per_minute,
                burst: config.write_burst,
            },
            WRITES,
        )
        .class(
            "create",
            Rate {
                per_minute: config.creates_per_user_per_minute,
                burst: config.create_burst,
            },
            CREATES,
        )
        .class(
            "stream",
            Rate {
                per_minute: config.streams_per_user_per_minute,
                burst: config.stream_burst,
            },
            STREAMS,
        )
}

/// Returns once the server is listening; it then runs until [`Running::stop`] or its shutdown
/// token is cancelled.
pub async fn start(mut config: Config) -> Result<Running, RallydError> {
    config.validate()?;
    tracing::info!(?config, "starting rallyd");
    // Identity, rooms and the broker keep state; a relay-only process opens no database.
    let needs_store = [
        ServiceKind::Identity,
        ServiceKind::Rooms,
        ServiceKind::Broker,
    ]
    .into_iter()
    .any(|kind| config.runs(kind));
    if (needs_store && config.database_url.is_none())
        || (config.runs(ServiceKind::Identity) && config.token_key_file.is_none())
    {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| RallydError::Io {
            what: format!("creating data directory {}", config.data_dir.display()),
            source,
        })?;
    }

    let database = match needs_store {
        true => {
            let database = Database::open(&config).await?;
            tracing::info!(
                backend = database.backend(),
                "database ready (migrations applied)"
            );
            Some(database)
        }
        false => None,
    };

    let (key, ring) = load_keys(&config)?;
    let verifier = Arc::new(TokenVerifier::new(ring));
    // Ended sessions are remembered as long as one of their access tokens could still verify,
    // whatever lifetime the identity replicas give them.
    let session_ends = SessionEnds::new(Duration::from_secs(MAX_ACCESS_TOKEN_TTL_SECS));
    let mut public = PublicMethods::default()
        .service("grpc.health.v1.Health")
        .service("grpc.reflection.v1.ServerReflection")
        .service("grpc.reflection.v1alpha.ServerReflection");

    let shutdown = CancellationToken::new();
    let identity = match config.runs(ServiceKind::Identity) {
        true => {
            for method in rally_identity::PUBLIC_METHODS {
                public = public.method(method);
            }
            let key = key.as_ref().ok_or_else(|| {
                RallydError::Config("identity runs without its signing key".into())
            })?;
            let issuer = Arc::new(TokenIssuer::new(
                key,
                Duration::from_secs(config.access_token_ttl_secs),
            ));
            let identity_config = IdentityConfig {
                refresh_ttl: Duration::from_secs(config.refresh_token_ttl_secs),
                throttle: ThrottleConfig {
                    per_username_per_minute: config.signin_per_username_per_minute,
                    per_address_per_minute: config.signin_per_address_per_minute,
                    refresh_per_address_per_minute: config.refresh_per_address_per_minute,
                    refresh_per_session_per_minute: config.refresh_per_session_per_minute,
                    ..ThrottleConfig::default()
                },
                max_sessions_per_user: config.max_sessions_per_user,
                ..IdentityConfig::default()
            };
            // Sessions are kept at least as long as their last access token could verify.
            rally_identity::janitor::spawn_session_janitor(
                store(&database)?.identity(),
                Duration::from_secs(config.history_retention_secs.max(MAX_ACCESS_TOKEN_TTL_SECS)),
                Duration::from_secs(config.history_purge_every_secs),
                shutdown.clone(),
            );
            let service =
                IdentityService::new(store(&database)?.identity(), issuer, identity_config)?
                    .announcing_session_ends(store(&database)?.bus());
            Some(
                service
                    .into_server()
                    .max_decoding_message_size(IDENTITY_MAX_MESSAGE_BYTES),
            )
        }
        false => None,
    };
    if let Some(database) = &database {
        crate::session_ends::follow(
            database.bus(),
            database.identity(),
            session_ends.clone(),
            shutdown.clone(),
        )
        .await?;
    }
    let room_hub = match config.runs(ServiceKind::Rooms) || config.runs(ServiceKind::Broker) {
        true => Some(
            rally_rooms::Hub::start(
                store(&database)?.bus(),
                rally_rooms::ROOMS_TOPIC,
                shutdown.clone(),
            )
            .await?,
        ),
        false => None,
    };
    let relay = match config.runs(ServiceKind::Relay) {
        true => Some(start_relay(&config, shutdown.clone()).await?),
        false => None,
    };
    let (rooms, matchmaking) = match (config.runs(ServiceKind::Rooms), room_hub.clone()) {
        (true, Some(room_hub)) => {
            let pools = Arc::new(load_pools(&config)?);
            let ticket_hub = rally_rooms::Hub::start(
                store(&database)?.bus(),
                rally_rooms::TICKETS_TOPIC,
                shutdown.clone(),
            )
            .await?;
            let matchmaker = rally_rooms::Matchmaker::spawn(
                store(&database)?.tickets(),
                pools.clone(),
                room_hub.clone(),
                ticket_hub.clone(),
                Duration::from_millis(config.matchmaking_tick_ms),
                shutdown.clone(),
            );
            if let Some(every) = crate::telemetry::metric_export_interval() {
                rally_rooms::census::spawn_census(
                    store(&database)?.rooms(),
                    every,
                    shutdown.clone(),
                );
            }
            rally_rooms::history::spawn_history_janitor(
                store(&database)?.tickets(),
                Duration::from_secs(config.history_retention_secs),
                Duration::from_secs(config.history_purge_every_secs),
                shutdown.clone(),
            );
            let rooms = rally_rooms::RoomsService::new(
                store(&database)?.rooms(),
                room_hub,
                shutdown.clone(),
            );
            let matchmaking = rally_rooms::MatchmakingService::new(
                store(&database)?.tickets(),
                pools,
                ticket_hub,
                matchmaker,
                shutdown.clone(),
            );
            (Some(rooms.into_server()), Some(matchmaking.into_server()))
        }
        _ => (None, None),
    };
    let broker = match (config.runs(ServiceKind::Broker), room_hub) {
        (true, Some(room_hub)) => {
            let broker = rally_broker::Broker::start(
                broker_config(
                    &config,
                    relay
                        .as_ref()
                        .map(RelayServer::local_addrs)
                        .unwrap_or_default(),
                )?,
                rally_broker::BrokerAuth {
                    verifier: verifier.clone(),
                    session_ends: session_ends.clone(),
                },
                rally_broker::BrokerStores {
                    broker: store(&database)?.broker(),
                    identity: store(&database)?.identity(),
                    rooms: store(&database)?.rooms(),
                },
                room_hub,
                store(&database)?.bus(),
                shutdown.clone(),
            )
            .await?;
            Some(broker)
        }
        _ => None,
    };
    let broker_server = broker.clone().map(rally_broker::Broker::into_server);

    let served: Vec<&'static str> = config
        .services
        .iter()
        .flat_map(|kind| kind.grpc_names().iter().copied())
        .collect();
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    for name in &served {
        health
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(rally_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for name in &served {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    let reflection_error = |e: tonic_reflection::server::Error| {
        RallydError::Server(format!("building reflection: {e}"))
    };
    // Public services: small requests only (tonic's default decode limit is 4 MiB).
    let health_service = health_service.max_decoding_message_size(HEALTH_MAX_MESSAGE_BYTES);
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(reflection_error)?
        .max_decoding_message_size(REFLECTION_MAX_MESSAGE_BYTES);
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(reflection_error)?
        .max_decoding_message_size(REFLECTION_MAX_MESSAGE_BYTES);

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| RallydError::Io {
            what: format!("binding gRPC address {}", config.listen),
            source,
        })?;
    let grpc_addr = listener.local_addr().map_err(|source| RallydError::Io {
        what: "reading the bound gRPC address".into(),
        source,
    })?;

    let tls = match config.tls() {
        Some(files) => {
            let store = CertStore::load(files)?;
            store.watch(shutdown.clone())?;
            Some(store)
        }
        None => {
            if !grpc_addr.ip().is_loopback() {
                tracing::warn!(
                    %grpc_addr,
                    "serving plaintext gRPC beyond loopback (--allow-plaintext): passwords, \
                     tokens and the fingerprints peers pin travel in clear"
                );
            }
            None
        }
    };
    let acceptor = match &tls {
        Some(store) => Some(tokio_rustls::TlsAcceptor::from(store.server_config()?)),
        None => None,
    };
    let limits = crate::listener::ConnectionLimits {
        total: config.max_connections,
        per_address: config.max_connections_per_address,
    };
    let incoming = crate::listener::incoming(
        listener,
        acceptor,
        limits,
        crate::listener::OPENING_TIMEOUT,
        shutdown.clone(),
    );
    let health_addr = match config.health_listen {
        Some(address) => Some(serve_health(address, health_service.clone(), &shutdown).await?),
        None => None,
    };

    // `TCP_NODELAY` is set on each accepted socket by `listener` (the builder's setting applies
    // only to listeners tonic binds itself).
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(MAX_CALLS_PER_CONNECTION)
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .concurrency_limit_per_connection(MAX_CALLS_PER_CONNECTION as usize)
        // Outermost, so that calls the authentication layer refuses are measured too.
        .layer(RpcTelemetryLayer::new(&[
            rally_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ]))
        // Before authentication: a request must arrive whole in time, token or not.
        .layer(BodyTimeoutLayer::new(
            Duration::from_millis(config.request_timeout_ms),
            &["/rally.broker.v1.Broker/Attach"],
        ))
        .layer(AuthLayer::new(verifier.clone(), public))
        // Behind authentication: refuses the calls of ended sessions and ends their streams.
        .layer(
            SessionLayer::new(session_ends.clone())
                .stream(
                    "/rally.broker.v1.Broker/Attach",
                    StreamLife::Reauthenticates,
                )
                .stream("/rally.rooms.v1.Rooms/WatchRoom", StreamLife::EndsAtExpiry)
                .stream(
                    "/rally.rooms.v1.Matchmaking/WatchTicket",
                    StreamLife::EndsAtExpiry,
                ),
        )
        // Behind authentication: each user's budget of writes and of new streams.
        .layer(RateLayer::new(user_rate_limits(&config)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_optional_service(identity)
        .add_optional_service(rooms)
        .add_optional_service(matchmaking)
        .add_optional_service(broker_server);

    let grace = config.shutdown_grace();
    let task = {
        let shutdown = shutdown.clone();
        let database = database.clone();
        tokio::spawn(async move {
            let signal = {
                let shutdown = shutdown.clone();
                async move {
                    shutdown.cancelled().await;
                    tracing::info!("shutting down: refusing new calls, draining open ones");
                    health
                        .set_service_status("", ServingStatus::NotServing)
                        .await;
                    for name in served {
                        health
                            .set_service_status(name, ServingStatus::NotServing)
                            .await;
                    }
                }
            };
            let serve = router.serve_with_incoming_shutdown(incoming, signal);
            tokio::pin!(serve);
            let result = tokio::select! {
                result = &mut serve => result,
                () = shutdown.cancelled() => match tokio::time::timeout(grace, &mut serve).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!(?grace, "grace period over; closing the remaining connections");
                        Ok(())
                    }
                },
            };
            // Background work writes to the database as it ends: close it only after.
            if let Some(broker) = &broker
                && tokio::time::timeout(grace, broker.finished())
                    .await
                    .is_err()
            {
                tracing::warn!(
                    ?grace,
                    "the broker's last store write did not finish in time"
                );
            }
            if let Some(database) = &database {
                database.close().await;
            }
            tracing::info!("rallyd stopped");
            result.map_err(|e| RallydError::Server(e.to_string()))
        })
    };
    match &tls {
        Some(_) => tracing::info!("gRPC listening on {grpc_addr} (TLS 1.3)"),
        None => tracing::info!("gRPC listening on {grpc_addr} (plaintext)"),
    }
    Ok(Running {
        grpc_addr,
        health_addr,
        tls,
        relay,
        database,
        shutdown,
        task,
    })
}

/// Serves only the health service, in plaintext, on `address` until `shutdown`: Kubernetes'
/// gRPC probes cannot speak TLS. Returns the bound address.
async fn serve_health<S>(
    address: SocketAddr,
    health: S,
    shutdown: &CancellationToken,
) -> Result<SocketAddr, RallydError>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| RallydError::Io {
            what: format!("binding the health address {address}"),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| RallydError::Io {
        what: "reading the bound health address".into(),
        source,
    })?;
    // Probes and a few operators: a handful of connections.
    let limits = crate::listener::ConnectionLimits {
        total: 64,
        per_address: 16,
    };
    let incoming = crate::listener::incoming(
        listener,
        None,
        limits,
        crate::listener::OPENING_TIMEOUT,
        shutdown.clone(),
    );
    let router = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(8)
        .add_service(health);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if let Err(error) = router
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await
        {
            tracing::warn!(%error, "the health listener failed");
        }
    });
    tracing::info!("health checking listening on {bound} (plaintext)");
    Ok(bound)
}

/// The database of a process that runs a service keeping state.
fn store(database: &Option<Database>) -> Result<&Database, RallydError> {
    database
        .as_ref()
        .ok_or_else(|| RallydError::Config("this service needs a database".into()))
}

/// The broker's settings from the flags; `relay_addrs` are the addresses of this process's relay
/// (empty when it runs none), all announced as reflectors and the first carrying allocations
/// unless `--relay-public-addresses` says otherwise.
fn broker_config(
    config: &Config,
    relay_addrs: &[SocketAddr],
) -> Result<rally_broker::BrokerConfig, RallydError> {
    let public: Vec<SocketAddr> = match config.relay_public_addresses.is_empty() {
        true => relay_addrs.to_vec(),
        false => config.relay_public_addresses.clone(),
    };
    let relay = match public.first() {
        Some(address) => Some(rally_broker::RelaySettings {
            key: crate::relay_secret::load_or_generate(&config.relay_secret_path())?,
            address: *address,
            grant_ttl: Duration::from_secs(config.relay_grant_ttl_secs),
            max_bytes: config.relay_max_bytes,
            max_bytes_per_second: config.relay_max_bytes_per_second,
            max_allocations_per_user: config.relay_max_allocations_per_user,
        }),
        None => None,
    };
    Ok(rally_broker::BrokerConfig {
        keepalive_interval: Duration::from_millis(config.broker_keepalive_ms),
        detach_grace: Duration::from_millis(config.broker_detach_grace_ms),
        signals_per_second: config.broker_signals_per_second,
        signal_burst: config.broker_signal_burst,
        reflector_addresses: public,
        relay,
        reauth_grace: Duration::from_millis(config.broker_reauth_grace_ms),
        ..rally_broker::BrokerConfig::default()
    })
}

/// Binds every `--relay-listen` address and starts the relay on them.
async fn start_relay(
    config: &Config,
    shutdown: CancellationToken,
) -> Result<RelayServer, RallydError> {
    let key = crate::relay_secret::load_or_generate(&config.relay_secret_path())?;
    let mut sockets = Vec::with_capacity(config.relay_listen.len());
    for address in &config.relay_listen {
        let socket = tokio::net::UdpSocket::bind(address)
            .await
            .map_err(|source| RallydError::Io {
                what: format!("binding relay address {address}"),
                source,
            })?;
        sockets.push(socket);
    }
    let limits = rally_relay::allocations::RelayLimits {
        max_allocations: config.relay_max_allocations,
        max_allocations_per_user: config.relay_max_allocations_per_user,
        max_bytes_per_second: config.relay_max_total_bytes_per_second,
        // Releases of allocations not held are remembered as long as a grant could live.
        release_memory_ms: config.relay_grant_ttl_secs.saturating_mul(1000),
        ..Default::default()
    };
    let mut keys = vec![key];
    for path in &config.relay_verify_secret_files {
        keys.push(crate::relay_secret::load(path)?);
    }
    let relay = rally_relay::allocations::Relay::new(keys, limits);
    let server =
        RelayServer::spawn(sockets, relay, shutdown).map_err(|source| RallydError::Io {
            what: "starting the relay".into(),
            source,
        })?;
    crate::relay_metrics::register(&server.stats());
    tracing::info!(addresses = ?server.local_addrs(), "relay listening on udp");
    Ok(server)
}

/// The matchmaking pools from `--matchmaking-pools`, or the default pool.
fn load_pools(config: &Config) -> Result<rally_rooms::pools::Pools, RallydError> {
    let Some(path) = &config.matchmaking_pools else {
        return Ok(rally_rooms::pools::Pools::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| RallydError::Io {
        what: format!("reading matchmaking pools {}", path.display()),
        source,
    })?;
    let pools = rally_rooms::pools::Pools::from_json(&text)
        .map_err(|e| RallydError::Config(format!("{}: {e}", path.display())))?;
    let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
    tracing::info!(?names, "matchmaking pools loaded");
    Ok(pools)
}

/// The signing key (only where identity runs: no other replica holds it), and the ring of public
/// keys whose tokens are accepted.
fn load_keys(config: &Config) -> Result<(Option<SigningKey>, KeyRing), RallydError> {
    let path = config.token_key_path();
    let (key, mut ring) = if config.runs(ServiceKind::Identity) {
        let (key, generated) = SigningKey::load_or_generate(&path)?;
        if generated {
            tracing::info!(path = %path.display(), kid = key.kid(), "generated a token-signing key");
        }
        let ring = KeyRing::of(&key);
        (Some(key), ring)
    } else {
        (None, KeyRing::default())
    };
    for extra in &config.token_verify_keys {
        let kid = ring.insert_pem_file(extra)?;
        tracing::info!(path = %extra.display(), kid, "accepting tokens of this key");
    }
    if key.is_none() {
        // Services that only verify need public keys: `--token-verify-keys`. A key file named
        // by `--token-key-file` (or the default one, when no verify key is given) is read for
        // its public half, as earlier versions did.
        let named = config.token_key_file.is_some();
        if named || (config.token_verify_keys.is_empty() && path.is_file()) {
            let kid = ring.insert_pem_file(&path)?;
            tracing::info!(
                path = %path.display(),
                kid,
                "accepting tokens of the token key file (a replica without identity needs only \
                 its public half, --token-verify-keys)"
            );
        }
        let verifies = [ServiceKind::Rooms, ServiceKind::Broker]
            .into_iter()
            .any(|kind| config.runs(kind));
        if ring.kids().is_empty() && verifies {
            return Err(RallydError::Config(
                "services without identity need the identity service's public key: \
                 --token-verify-keys <public PEM> (`openssl pkey -in token-signing-key.pem -pubout`)"
                    .into(),
            ));
        }
    }
    tracing::info!(signing = ?key.as_ref().map(SigningKey::kid), accepted = ?ring.kids(), "token keys loaded");
    Ok((key, ring))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, args: &[&str]) -> Config {
        let data_dir = dir.display().to_string();
        let mut all = vec!["rallyd", "--data-dir", &data_dir];
        all.extend_from_slice(args);
        <Config as clap::Parser>::try_parse_from(all).expect("parse")
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter()
            .map(|a| a.parse().expect("a literal address"))
            .collect()
    }

    #[test]
    fn the_broker_announces_every_relay_address_and_allocates_on_the_first() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let bound = addrs(&["127.0.0.1:7371", "127.0.0.2:7371", "127.0.0.1:7372"]);
        let broker = broker_config(&config(dir.path(), &[]), &bound).expect("broker config");
        assert_eq!(broker.reflector_addresses, bound);
        assert_eq!(broker.relay.map(|relay| relay.address), Some(bound[0]));

        let public = addrs(&["203.0.113.1:7371", "203.0.113.2:7371"]);
        let flags = [
            "--relay-public-addresses",
            "203.0.113.1:7371,203.0.113.2:7371",
        ];
        let broker = broker_config(&config(dir.path(), &flags), &bound).expect("broker config");
        assert_eq!(broker.reflector_addresses, public, "public addresses win");
        assert_eq!(broker.relay.map(|relay| relay.address), Some(public[0]));

        let broker = broker_config(&config(dir.path(), &[]), &[]).expect("broker config");
        assert!(broker.reflector_addresses.is_empty());
        assert!(broker.relay.is_none(), "no relay here, none announced");
    }
}
