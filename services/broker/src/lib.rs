//! Rally's connection broker (`rally.broker.v1.Broker`): presence and the signals two peers
//! exchange to open a peer-to-peer connection. It never carries game data.
//!
//! The contract (message flow, authorisation, statuses) is documented in
//! `proto/rally/broker/v1/broker.proto`; this crate implements it:
//! - `link`: each attachment on this replica is a `Link` with a bounded outgoing queue; a client
//!   that reads too slowly is ended, never buffered without bound.
//! - `session`: one task per attachment reads the client's messages, checks them
//!   ([`validate`]), rate-limits signals per user, and applies them to the shared state in the
//!   [`rally_store::BrokerStore`] (presence, pairs), which every replica sees.
//! - `router`: a signal for a user attached here goes into its link; otherwise it goes over the
//!   cross-replica [`rally_store::Bus`] to the replica that holds the user.
//! - `janitor`: heartbeats this replica, marks the attachments of silent (crashed) replicas
//!   detached, and forgets users detached past the grace period: they leave their room (a
//!   `MemberLeft` event with reason `DISCONNECTED`) and their peers receive PeerClosed.
//! - Relay grants are signed here with the secret the relay checks (`rally-relay`'s grants).
//! - [`metrics`]: attachments and signals, as OpenTelemetry instruments.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rally_proto::broker::v1::AttachResponse;
use rally_proto::broker::v1::attach_response::Body;
use rally_proto::broker::v1::broker_server::{Broker as BrokerRpc, BrokerServer};
use rally_relay::grant::GrantKey;
use rally_rooms::RoomHub;
use rally_store::broker::PairLimits;
use rally_store::{BrokerStore, Bus, BusEvent, IdentityStore, RoomStore, StoreError};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod janitor;
mod link;
pub mod metrics;
mod router;
mod session;
mod signals;
pub mod validate;

pub use router::BROKER_TOPIC;

/// Largest client message on the Attach stream (the gRPC decoding limit; larger is `OUT_OF_RANGE`).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// The relay the broker hands out allocations on.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// The secret shared with the relay that signs grants.
    pub key: GrantKey,
    /// The relay's address as clients reach it.
    pub address: SocketAddr,
    /// How long a grant is valid.
    pub grant_ttl: Duration,
    /// Most bytes an allocation carries, both ways together.
    pub max_bytes: u64,
    /// Most bytes per second an allocation carries, both ways together.
    pub max_bytes_per_second: u32,
    /// Most relayed pairs a user may be in at once (the relay holds each user to the same).
    pub max_allocations_per_user: usize,
}

/// The broker's settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Clients ping at least this often; silence for three intervals ends an attachment.
    pub keepalive_interval: Duration,
    /// How long a user may stay detached before it leaves its room and loses its pairs.
    pub detach_grace: Duration,
    /// How long a new stream may take to send its Hello.
    pub hello_timeout: Duration,
    /// How far ahead of sending a PunchStart its start time is.
    pub punch_lead: Duration,
    /// Most messages queued for one client before it counts as too slow.
    pub queue_capacity: usize,
    /// Signals per second a user may send (Ping excluded), sustained.
    pub signals_per_second: u32,
    /// Signals a user may send in a burst.
    pub signal_burst: u32,
    /// Bounds on each user's pairs.
    pub pair_limits: PairLimits,
    /// How often this replica records that it is alive.
    pub heartbeat_interval: Duration,
    /// The reflector addresses announced in Welcome.
    pub reflector_addresses: Vec<SocketAddr>,
    /// The relay for relay grants; `None` answers grant requests with RELAY_UNAVAILABLE.
    pub relay: Option<RelaySettings>,
    /// How long an attachment outlives its access token's expiry without a Reauthenticate.
    pub reauth_grace: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            keepalive_interval: Duration::from_secs(10),
            detach_grace: Duration::from_secs(30),
            hello_timeout: Duration::from_secs(10),
            punch_lead: Duration::from_millis(250),
            queue_capacity: 256,
            signals_per_second: 20,
            signal_burst: 60,
            pair_limits: PairLimits::default(),
            heartbeat_interval: Duration::from_secs(5),
            reflector_addresses: Vec::new(),
            relay: None,
            reauth_grace: Duration::from_secs(30),
        }
    }
}

/// A UDP socket to send releases to the relay at `relay` from.
async fn release_socket(relay: SocketAddr) -> Option<tokio::net::UdpSocket> {
    let any: SocketAddr = match relay {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    match tokio::net::UdpSocket::bind(any).await {
        Ok(socket) => Some(socket),
        Err(error) => {
            tracing::warn!(%error, "no socket to release relay allocations from; they end when idle");
            None
        }
    }
}

/// The stores the broker uses.
#[derive(Clone)]
pub struct BrokerStores {
    /// Presence and pairs.
    pub broker: Arc<dyn BrokerStore>,
    /// Users (to tell an unknown user from an offline one).
    pub identity: Arc<dyn IdentityStore>,
    /// Rooms (room presence, and leaving the room after the grace period).
    pub rooms: Arc<dyn RoomStore>,
}

/// How the broker checks the tokens attachments re-authenticate with: the verifier of every
/// other call, and this replica's ended sessions.
#[derive(Clone)]
pub struct BrokerAuth {
    /// Verifies access tokens.
    pub verifier: Arc<rally_auth::TokenVerifier>,
    /// Sessions known to have ended.
    pub session_ends: Arc<rally_auth::SessionEnds>,
}

/// The broker of one replica: its attachments and its view of the shared state.
pub struct Broker {
    config: BrokerConfig,
    auth: BrokerAuth,
    replica_id: Uuid,
    stores: BrokerStores,
    room_hub: Arc<RoomHub>,
    bus: Arc<dyn Bus>,
    links: link::Links,
    limiter: DefaultKeyedRateLimiter<Uuid>,
    /// Where releases of ended pairs' relay allocations are sent from (`None`: no relay, or the
    /// socket could not be bound; allocations then end at their expiry or when idle).
    release_socket: Option<tokio::net::UdpSocket>,
    metrics: metrics::BrokerMetrics,
    shutdown: CancellationToken,
    /// The janitor task, whose last act after `shutdown` is a store write: see
    /// [`finished`](Broker::finished).
    janitor: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("replica_id", &self.replica_id)
            .field("attachments", &self.links.len())
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Starts the broker: subscribes to the bus, and runs the janitor until `shutdown`. On
    /// shutdown every attachment ends with `UNAVAILABLE`, recorded as detached.
    pub async fn start(
        config: BrokerConfig,
        auth: BrokerAuth,
        stores: BrokerStores,
        room_hub: Arc<RoomHub>,
        bus: Arc<dyn Bus>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, StoreError> {
        let quota = Quota::per_second(
            std::num::NonZeroU32::MIN.saturating_add(config.signals_per_second.saturating_sub(1)),
        )
        .allow_burst(
            std::num::NonZeroU32::MIN.saturating_add(config.signal_burst.saturating_sub(1)),
        );
        let release_socket = match &config.relay {
            Some(relay) => release_socket(relay.address).await,
            None => None,
        };
        let broker = Arc::new(Self {
            replica_id: Uuid::new_v4(),
            limiter: RateLimiter::keyed(quota),
            release_socket,
            config,
            auth,
            stores,
            room_hub,
            bus,
            links: link::Links::default(),
            metrics: metrics::BrokerMetrics::new(),
            shutdown,
            janitor: std::sync::Mutex::new(None),
        });
        let signals = broker.bus.subscribe(BROKER_TOPIC).await?;
        tokio::spawn(broker.clone().listen(signals));
        let janitor = janitor::spawn(broker.clone());
        *broker
            .janitor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(janitor);
        tracing::info!(replica = %broker.replica_id, "broker started");
        Ok(broker)
    }

    /// Resolves once the broker's background work has ended after the shutdown, including its
    /// last store write (every attachment of this replica recorded as detached): the database
    /// may be closed only then.
    pub async fn finished(&self) {
        let janitor = self
            .janitor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(janitor) = janitor
            && let Err(error) = janitor.await
        {
            tracing::warn!(%error, "the broker's janitor task failed");
        }
    }

    /// This replica's id (attachments record it).
    pub fn replica_id(&self) -> Uuid {
        self.replica_id
    }

    /// How many attachments this replica holds.
    pub fn attachment_count(&self) -> usize {
        self.links.len()
    }

    /// The tonic server for the broker.
    pub fn into_server(self: Arc<Self>) -> BrokerServer<BrokerService> {
        BrokerServer::new(BrokerService { broker: self })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Delivers signals other replicas published for users attached here.
    async fn listen(self: Arc<Self>, mut signals: tokio::sync::mpsc::Receiver<BusEvent>) {
        loop {
            let event = tokio::select! {
                () = self.shutdown.cancelled() => return,
                event = signals.recv() => event,
            };
            match event {
                Some(BusEvent::Message(payload)) => match router::Envelope::decode(&payload) {
                    Some(envelope) => {
                        self.deliver_here(envelope);
                    }
                    None => tracing::warn!(
                        len = payload.len(),
                        "dropping a malformed broker signal from the bus"
                    ),
                },
                Some(BusEvent::Resync) => self.resync().await,
                None => {
                    tracing::error!(
                        "the broker's bus subscription ended; cross-replica signals stop"
                    );
                    return;
                }
            }
        }
    }

    /// Delivers an envelope to the attachment on this replica it is for, if there is one.
    /// Returns whether it was.
    fn deliver_here(&self, envelope: router::Envelope) -> bool {
        let Some(link) = self.links.get(envelope.user) else {
            return false;
        };
        if envelope
            .attachment
            .is_some_and(|attachment| attachment != link.attachment_id)
        {
            return false;
        }
        match envelope.kind {
            router::Kind::Message => {
                link.deliver(envelope.message);
            }
            router::Kind::Supersede => link.end(link::Ending {
                last_message: Some(envelope.message),
                status: None,
            }),
        }
        true
    }

    /// Sends `message` to `user`'s attachment (only to `attachment`, if given), here or through
    /// the bus.
    pub(crate) async fn route(
        &self,
        kind: router::Kind,
        user: Uuid,
        attachment: Option<Uuid>,
        message: AttachResponse,
    ) {
        let envelope = router::Envelope {
            kind,
            user,
            attachment,
            message,
        };
        if self.deliver_here(envelope.clone()) {
            return;
        }
        if let Err(error) = self.bus.publish(BROKER_TOPIC, &envelope.encode()).await {
            tracing::warn!(%error, %user, "could not publish a broker signal");
        }
    }

    /// Sends a server message that answers nothing to `user`, wherever it is attached.
    pub(crate) async fn notify(&self, user: Uuid, body: Body) {
        let message = AttachResponse {
            request_id: 0,
            body: Some(body),
        };
        self.route(router::Kind::Message, user, None, message).await;
    }

    /// After the bus may have lost messages: ends attachments that were superseded elsewhere,
    /// and repeats each attachment's pending incoming requests.
    async fn resync(&self) {
        let links = self.links.all();
        tracing::info!(
            attachments = links.len(),
            "re-syncing attachments after a bus interruption"
        );
        for chunk in links.chunks(1024) {
            let users: Vec<Uuid> = chunk.iter().map(|link| link.user).collect();
            let rows = match self.stores.broker.presence(&users).await {
                Ok(rows) => rows,
                Err(error) => {
                    tracing::warn!(%error, "re-sync could not read presence");
                    return;
                }
            };
            for link in chunk {
                let current = rows.iter().find(|row| row.user == link.user);
                match current {
                    Some(row) if row.attachment_id != link.attachment_id => {
                        link.end(link::Ending {
                            last_message: Some(signals::superseded(row.attachment_id)),
                            status: None,
                        });
                    }
                    _ => self.repeat_pending_requests(link).await,
                }
            }
        }
    }
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct BrokerService {
    broker: Arc<Broker>,
}

#[tonic::async_trait]
impl BrokerRpc for BrokerService {
    async fn attach(
        &self,
        request: tonic::Request<tonic::Streaming<rally_proto::broker::v1::AttachRequest>>,
    ) -> Result<tonic::Response<link::Outgoing>, tonic::Status> {
        let caller = rally_auth::Caller::of(&request)?;
        let observed_ip = request.remote_addr().map(|addr| addr.ip());
        let stream = session::attach(
            self.broker.clone(),
            caller,
            observed_ip,
            request.into_inner(),
        )
        .await?;
        Ok(tonic::Response::new(stream))
    }
}
