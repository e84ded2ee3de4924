//! `Net`: the Meta Platform SDK's peer-to-peer API (`ovr_Net_*`), with data going directly
//! between peers over QUIC.
//!
//! | Meta | Rally |
//! |---|---|
//! | `ovr_Net_Connect(user)` | [`Net::connect`] |
//! | `ovr_Net_Accept(user)` | [`Net::accept`] |
//! | `ovr_Net_AcceptForCurrentRoom()` | [`Net::accept_for_current_room`] |
//! | `ovr_Net_IsConnected(user)` | [`Net::is_connected`] |
//! | `ovr_Net_Ping(user)` | [`Net::ping`] |
//! | `ovr_Net_SendPacket(user, size, bytes, policy)` | [`Net::send_packet`] |
//! | `ovr_Net_SendPacketToCurrentRoom(size, bytes, policy)` | [`Net::send_packet_to_current_room`] |
//! | `ovr_Net_ReadPacket()` | [`Net::read_packet`] (or `async` [`Net::recv`]) |
//! | `ovr_Net_Close(user)` | [`Net::close`] |
//! | `ovr_Net_CloseForCurrentRoom()` | [`Net::close_for_current_room`] |
//! | notifications `ConnectionStateChanged`, `PeerConnectRequest`, `PingResult` | [`Net::poll_event`] (or `async` [`Net::next_event`]) |
//!
//! How it works: consent goes through the broker (Connect, Accept); the broker then gives both
//! sides each other's certificate fingerprint and addresses, and one side dials the other
//! directly over QUIC with both certificates pinned (mutual TLS, no CA). Reliable packets travel
//! on one QUIC stream per [lane](SendPolicy::ReliableLane), unreliable ones as QUIC datagrams with
//! a sequence number so that every loss is counted ([`PeerStats`]). See `framing` for the bytes
//! and `peer` for the connection state machine.
//!
//! ```no_run
//! # async fn game() -> rally_client::Result<()> {
//! use rally_client::net::{Net, NetConfig, NetEvent, SendPolicy};
//! let rally = rally_client::Rally::connect("http://127.0.0.1:7370").await?;
//! let session = rally.device_login("my-device-0123456789", "Ada").await?;
//! let net = Net::start(&session, NetConfig::default()).await?;
//! let friend = uuid::Uuid::parse_str("6f9619ff-8b86-d011-b42d-00cf4fc964ff").expect("a UUID");
//! net.connect(friend).await?;
//! loop {
//!     // Once a frame: pump events, read packets, send.
//!     while let Some(event) = net.poll_event() {
//!         println!("{event:?}");
//!     }
//!     while let Some(packet) = net.read_packet() {
//!         println!("{} bytes from {}", packet.data.len(), packet.sender);
//!     }
//!     net.send_packet(friend, &b"position 1 2 3"[..], SendPolicy::Unreliable)?;
//!     # break;
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broker::{Announcement, BrokerEvent, BrokerLink};
use crate::{Error, Result, Session};

mod attempt;
mod connection;
mod driver;
pub mod framing;
mod inbox;
mod nat;
pub mod peer;
mod relay_path;
mod stats;
pub mod traversal;

pub use nat::{Filtering, Mapping, NatReport};
pub use peer::ConnectionState;
pub use stats::{Path, PeerStats};
pub use traversal::{Failure as ConnectFailure, NatClass, RelayPolicy, TraversalConfig};

/// How a packet is sent (the Meta `ovrSendPolicy`, plus lanes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SendPolicy {
    /// At most 1200 bytes; may be lost or reordered; dropped (and counted) while not connected.
    Unreliable,
    /// Delivered once, in order, on lane 0; buffered until the connection is up.
    Reliable,
    /// Reliable on one of 8 independent lanes (0 to 7): order holds within a lane, and a loss on
    /// one lane does not hold back the others.
    ReliableLane(u8),
}

/// A packet from a peer (the Meta `ovrPacket`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Who sent it: the user whose pinned certificate the connection has, never a claim in the
    /// packet.
    pub sender: Uuid,
    /// The game's bytes.
    pub data: Bytes,
    /// How it was sent.
    pub policy: SendPolicy,
}

/// A notification for the game (the Meta notifications of the `Net` API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// A connection changed state.
    ConnectionStateChanged {
        /// The peer.
        user: Uuid,
        /// The new state.
        state: ConnectionState,
    },
    /// A user asks to connect; answer with [`Net::accept`] or [`Net::close`].
    PeerConnectRequest {
        /// The user.
        user: Uuid,
    },
    /// The answer to [`Net::ping`].
    PingResult {
        /// The peer.
        user: Uuid,
        /// The id [`Net::ping`] returned.
        ping_id: u32,
        /// The round trip, or `None` when no answer came within 5 seconds.
        rtt: Option<Duration>,
    },
    /// A connection attempt failed for a known reason; a `ConnectionStateChanged` to
    /// `Timeout` follows.
    ConnectionFailed {
        /// The peer.
        user: Uuid,
        /// Why.
        reason: ConnectFailure,
    },
}

/// Simulated network trouble on everything this client sends, for testing games (as Steam
/// Networking Sockets' fake lag and loss). Off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FakeNetwork {
    /// Share of unreliable packets dropped (0.0 to 1.0); counted in
    /// [`PeerStats::unreliable_dropped_fake`].
    pub loss: f64,
    /// Share of unreliable packets sent twice (0.0 to 1.0).
    pub duplicate: f64,
    /// Delay added before each packet is sent (reliable and unreliable).
    pub lag: Duration,
}

/// `Net`'s settings.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The QUIC transport (its `bind` is the local UDP address).
    pub transport: rally_quic::TransportConfig,
    /// How long a connection may take to come up once both sides agreed.
    pub connect_timeout: Duration,
    /// Connections with no packet either way for this long are closed; `None` keeps them.
    pub idle_timeout: Option<Duration>,
    /// Most bytes of reliable packets buffered per peer before [`Error::SendBufferFull`].
    pub send_buffer_bytes: usize,
    /// Most received packets waiting for the game; reliable ones then wait in QUIC (the sender
    /// slows down), unreliable ones are dropped and counted.
    pub inbox_packets: usize,
    /// Most bytes of received packets waiting for the game, bounded the same way: a peer cannot
    /// make a stalled game hold more.
    pub inbox_bytes: usize,
    /// Simulated lag and loss.
    pub fake: FakeNetwork,
    /// Whether connections may go through the relay (default: only when no direct path opens).
    pub relay_policy: RelayPolicy,
    /// Punching, birthday probing and relay fallback timings and budgets.
    pub traversal: TraversalConfig,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            transport: rally_quic::TransportConfig::default(),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(60)),
            send_buffer_bytes: 4 << 20,
            inbox_packets: 65_536,
            inbox_bytes: 16 << 20,
            fake: FakeNetwork::default(),
            relay_policy: RelayPolicy::Fallback,
            traversal: TraversalConfig::default(),
        }
    }
}

/// Peer-to-peer networking for one signed-in client. Cheap to clone; every clone is the same
/// `Net`. See the module docs for the Meta mapping and an example.
#[derive(Clone)]
pub struct Net {
    inner: Arc<driver::Inner>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("user", &self.inner.me)
            .field("local_addr", &self.inner.transport.local_addr())
            .finish_non_exhaustive()
    }
}

impl Net {
    /// Binds the QUIC endpoint, attaches to the broker (announcing this client's certificate
    /// fingerprint and addresses) and starts serving. Must run inside a tokio runtime.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_dir, _server, url) = rally_client::doc_server!();
    /// use rally_client::net::{Net, NetConfig};
    /// let session = rally_client::Rally::connect(&url)
    ///     .await?
    ///     .device_login("doc-example-device-0001", "Ada")
    ///     .await?;
    /// let mut config = NetConfig::default();
    /// config.transport.bind = "127.0.0.1:0".parse()?; // by default, every interface
    /// let net = Net::start(&session, config).await?;
    /// assert_eq!(net.user_id(), session.user_id());
    /// # Ok(()) }
    /// ```
    pub async fn start(session: &Session, config: NetConfig) -> Result<Net> {
        config
            .traversal
            .validate()
            .map_err(Error::InvalidArgument)?;
        let transport = rally_quic::Transport::bind(config.transport.clone())
            .map_err(|e| Error::Transport(e.to_string()))?;
        let hosts = driver::host_candidates(transport.local_addr());
        let announcement = Announcement {
            fingerprint: transport.fingerprint(),
            candidates: hosts.clone(),
            relay_policy: match config.relay_policy {
                RelayPolicy::Never => rally_proto::broker::v1::RelayPolicy::Never,
                RelayPolicy::Fallback => rally_proto::broker::v1::RelayPolicy::Fallback,
                RelayPolicy::Always => rally_proto::broker::v1::RelayPolicy::Always,
            },
            nat_type: rally_proto::broker::v1::NatType::Unspecified,
        };
        let (broker, mut events) = BrokerLink::attach(session, announcement).await?;
        // The first event is the attachment, with the reflectors to measure the NAT against.
        let first = events.recv().await;
        let (reflectors, relay_available) = match &first {
            Some(BrokerEvent::Attached {
                reflectors,
                relay_available,
                ..
            }) => (reflectors.clone(), *relay_available),
            _ => (Vec::new(), false),
        };
        let host_ips = driver::candidate_ips(&hosts);
        let report = nat::discover(&transport, &reflectors, &host_ips).await;
        if report.public_address.is_some() || report.nat_type != NatClass::Unknown {
            let candidates = driver::with_reflexive(hosts, report.public_address);
            broker
                .update_candidates(candidates, driver::nat_type(report.nat_type))
                .await?;
        }
        let inbox = inbox::Inbox::new(config.inbox_packets, config.inbox_bytes);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(driver::Inner {
            me: session.user_id(),
            broker,
            transport,
            config,
            peers: std::sync::Mutex::new(HashMap::new()),
            inbox,
            events_tx,
            events_rx: tokio::sync::Mutex::new(events_rx),
            auto_accept_room: AtomicBool::new(false),
            next_ping: AtomicU32::new(1),
            shutdown: CancellationToken::new(),
            rng: std::sync::Mutex::new(driver::Rng::seeded()),
            room_cache: std::sync::Mutex::new(None),
            nat: std::sync::Mutex::new(report),
            relay_available: AtomicBool::new(relay_available),
        });
        driver::spawn(inner.clone(), events);
        Ok(Net { inner })
    }

    /// This client's NAT as measured when it started (Epic Online Services' NAT type): open,
    /// moderate or strict, with the mapping and filtering behaviour and the public address.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_dir, _server, url) = rally_client::doc_server!();
    /// use rally_client::net::{Mapping, NatClass};
    /// # let (_, net) = rally_client::doc_support::client(&url, "ada").await?;
    /// let report = net.nat_report();
    /// // On loopback the reflector sees this client's own address: no NAT.
    /// assert_eq!(report.mapping, Mapping::NoNat);
    /// assert_eq!(report.nat_type, NatClass::Open);
    /// # Ok(()) }
    /// ```
    pub fn nat_report(&self) -> NatReport {
        *self
            .inner
            .nat
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// This client's user id.
    pub fn user_id(&self) -> Uuid {
        self.inner.me
    }

    /// The local UDP address of the QUIC endpoint.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.transport.local_addr()
    }

    /// Asks `user` for a connection (`ovr_Net_Connect`). A
    /// [`NetEvent::ConnectionStateChanged`] follows (`Connected`, or `Closed` if refused). Errors
    /// when the broker refuses at once (the user is offline or unknown, for example).
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_dir, _server, url) = rally_client::doc_server!();
    /// use rally_client::net::{ConnectionState, NetEvent};
    /// # let (_, ada) = rally_client::doc_support::client(&url, "ada").await?;
    /// # let (_, bob) = rally_client::doc_support::client(&url, "bob").await?;
    /// ada.connect(bob.user_id()).await?;
    /// // Bob's game sees the request and accepts it...
    /// # loop { if let Some(NetEvent::PeerConnectRequest { .. }) = bob.next_event().await { break; } }
    /// bob.accept(ada.user_id()).await?;
    /// // ...and Ada's sees the connection come up.
    /// rally_client::doc_support::wait_for(&ada, bob.user_id(), ConnectionState::Connected).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(&self, user: Uuid) -> Result<()> {
        self.check_peer(user)?;
        let actions = self.inner.with_peer(user, |peer| peer.connect());
        self.inner.apply_now(user, actions).await
    }

    /// Accepts `user`'s connect request (`ovr_Net_Accept`).
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_dir, _server, url) = rally_client::doc_server!();
    /// use rally_client::net::NetEvent;
    /// # let (_, ada) = rally_client::doc_support::client(&url, "ada").await?;
    /// # let (_, bob) = rally_client::doc_support::client(&url, "bob").await?;
    /// # ada.connect(bob.user_id()).await?;
    /// while let Some(event) = bob.next_event().await {
    ///     if let NetEvent::PeerConnectRequest { user } = event {
    ///         bob.accept(user).await?;
    ///         break;
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn accept(&self, user: Uuid) -> Result<()> {
        self.check_peer(user)?;
        let actions = self.inner.with_peer(user, |peer| peer.accept());
        self.inner.apply_now(user, actions).await
    }

    /// From now on, accepts connect requests from members of the current room without asking
    /// the game (`ovr_Net_AcceptForCurrentRoom`); also accepts those already waiting. `false` when
    /// this user is in no room.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_dir, _server, url) = rally_client::doc_server!();
    /// # let (sessions, nets) = rally_client::doc_support::room_of_three(&url).await?;
    /// let net = &nets[1];
    /// assert!(net.accept_for_current_room().await?);
    /// // Requests from the room's members are now accepted without asking the game.
    /// nets[0].connect(sessions[1].user_id()).await?;
    /// rally_client::doc_support::wait_for(
    ///     net,
    ///     sessions[0].user_id(),
    ///     rally_client::net::ConnectionState::Connected,
    /// )
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub async fn accept_for_current_room(&self) -> Result<bool> {
        let Some(members) = self.inner.fresh_room_members().await? else {
            return Ok(false);
        };
        self.inner
            .auto_accept_room
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for user in self.inner.waiting_requests() {
            if members.contains(&user) {
                self.accept(user).await?;
            }
        }
        Ok(true)
    }

    /// Whether packets flow with `user` right now (`ovr_Net_IsConnected`).
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_dir, _server, url) = rally_client::doc_server!();
    /// # let (net, peer) = rally_client::doc_support::connected_pair(&url).await?;
    /// assert!(net.is_connected(peer.user_id()));
    /// # Ok(()) }
    /// ```
    pub fn is_connected(&self, user: Uuid) -> bool {
        self.inner.is_connected(user)
    }

    /// Measures the round trip to a connected peer (`ovr_Net_Ping`); the result comes as
    /// [`NetEvent::PingResult`] with the returned id.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_dir, _server, url) = rally_client::doc_server!();
    /// # let (net, peer) = rally_client::doc_support::connected_pair(&url).await?;
    /// use rally_client::net::NetEvent;
    /// let id = net.ping(peer.user_id())?;
    /// while let Some(event) = net.next_event().await {
    ///     if let NetEvent::PingResult { ping_id, rtt, .. } = event
    ///         && ping_id == id
    ///     {
    ///         println!("round trip: {rtt:?}");
    ///         break;
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn ping(&self, user: Uuid) -> Result<u32> {
        self.inner.ping(user)
    }

    /// Sends a packet to `user` (`ovr_Net_SendPacket`). With no connection, this starts one
    /// (implicit connect): reliable packets wait for it, unreliable ones are dropped (and
    /// counted). Refuses a reliable packet larger than
    /// [`MAX_RELIABLE_PAYLOAD`](framing::MAX_RELIABLE_PAYLOAD) bytes or an unreliable one larger
    /// than [`MAX_UNRELIABLE_PAYLOAD`](framing::MAX_UNRELIABLE_PAYLOAD), and says when the
    /// reliable send buffer is full ([`Error::SendBufferFull`]).
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_dir, _server, url) = rally_client::doc_server!();
    /// # let (net, peer) = rally_client::doc_support::connected_pair(&url).await?;
    /// use rally_client::net::SendPolicy;
    /// net.send_packet(peer.user_id(), &b"fire!"[..], SendPolicy::Reliable)?;
    /// net.send_packet(peer.user_id(), vec![0u8; 1200], SendPolicy::Unreliable)?;
    /// let packet = peer.recv().await.expect("a packet");
    /// assert_eq!(packet.sender, net.user_id());
    /// # Ok(()) }
    /// ```
    pub fn send_packet(
        &self,
        user: Uuid,
        data: impl Into<Bytes>,
        policy: SendPolicy,
    ) -> Result<()> {
        self.check_peer(user)?;
        self.inner.send(user, data.into(), policy)
    }

    /// Sends a packet to `user` like [`send_packet`](Self::send_packet), but waits for room
    /// instead of refusing: a reliable packet waits while the peer's send buffer is full
    /// (rather than [`Error::SendBufferFull`]), an unreliable one while the connection's
    /// datagram queue is full (rather than being dropped and counted). For senders that
    /// produce faster than the path carries (bulk transfers, benchmarks); a game loop that must
    /// never wait uses `send_packet`. Unreliable packets with no connection are still dropped
    /// and counted, as with `send_packet`.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_dir, _server, url) = rally_client::doc_server!();
    /// # let (net, peer) = rally_client::doc_support::connected_pair(&url).await?;
    /// use rally_client::net::SendPolicy;
    /// // A level's worth of data: each send waits while the buffer is full, none is refused.
    /// for chunk in 0..200u32 {
    ///     net.send(peer.user_id(), vec![chunk as u8; 60_000], SendPolicy::Reliable).await?;
    /// }
    /// for chunk in 0..200u32 {
    ///     assert_eq!(peer.recv().await.expect("a packet").data[0], chunk as u8);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn send(&self, user: Uuid, data: impl Into<Bytes>, policy: SendPolicy) -> Result<()> {
        self.check_peer(user)?;
        self.inner.send_waiting(user, data.into(), policy).await
    }

    /// Sends a packet to every other member of the current room, each peer to peer
    /// (`ovr_Net_SendPacketToCurrentRoom`). `false` when this user is in no room. The membership
    /// is asked of the broker at most twice a second, so a member who just joined or left may
    /// be missed or included for that long.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_dir, _server, url) = rally_client::doc_server!();
    /// use rally_client::net::SendPolicy;
    /// # let (_sessions, nets) = rally_client::doc_support::room_of_three(&url).await?;
    /// for net in &nets[1..] {
    ///     net.accept_for_current_room().await?;
    /// }
    /// // One call: a packet to each other member, peer to peer (connecting as needed).
    /// assert!(nets[0].send_packet_to_current_room(&b"round starts"[..], SendPolicy::Reliable).await?);
    /// for net in &nets[1..] {
    ///     assert_eq!(&net.recv().await.expect("a packet").data[..], b"round starts");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn send_packet_to_current_room(
        &self,
        data: impl Into<Bytes>,
        policy: SendPolicy,
    ) -> Result<bool> {
        let Some(members) = self.inner.room_members().await? else {
            return Ok(false);
        };
        let data = data.into();
        for member in members.into_iter().filter(|m| *m != self.inner.me) {
            self.inner.send(member, data.clone(), policy)?;
        }
        Ok(true)
    }

    /// The next received packet, if one is waiting (`ovr_Net_ReadPacket`; never blocks).
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_dir, _server, url) = rally_client::doc_server!();
    /// # let (net, peer) = rally_client::doc_support::connected_pair(&url).await?;
    /// # peer.send_packet(net.user_id(), &b"hi"[..], rally_client::net::SendPolicy::Reliable)?;
    /// # tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    /// // Once a frame: everything that arrived, without waiting.
    /// while let Some(packet) = net.read_packet() {
    ///     println!("{} bytes from {}", packet.data.len(), packet.sender);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn read_packet(&self) -> Option<Packet> {
        self.inner.inbox.try_take()
    }

    /// The next received packet, waiting for one; `None` after [`Net::shutdown`].
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_dir, _server, url) = rally_client::doc_server!();
    /// # let (net, peer) = rally_client::doc_support::connected_pair(&url).await?;
    /// # peer.send_packet(net.user_id(), &b"hi"[..], rally_client::net::SendPolicy::Reliable)?;
    /// let packet = net.recv().await.expect("net is running");
    /// assert_eq!(&packet.data[..], b"hi");
    /// # Ok(()) }
    /// ```
    pub async fn recv(&self) -> Option<Packet> {
        tokio::select! {
            packet = self.inner.inbox.take() => packet,
            () = self.inner.shutdown.cancelled() => None,
        }
    }

    /// Closes the connection with `user` (`ovr_Net_Close`), or refuses its request.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_dir, _server, url) = rally_client::doc_server!();
    /// # let (net, peer) = rally_client::doc_support::connected_pair(&url).await?;
    /// net.close(peer.user_id()).await?;
    /// assert!(!net.is_connected(peer.user_id()));
    /// # Ok(()) }
    /// ```
    pub async fn close(&self, user: Uuid) -> Result<()> {
        self.check_peer(user)?;
        let actions = self.inner.with_peer(user, |peer| peer.close());
        self.inner.apply_now(user, actions).await
    }

    /// Closes the connections with every other member of the current room
    /// (`ovr_Net_CloseForCurrentRoom`) and stops accepting them automatically. `false` when this
    /// user is in no room.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_dir, _server, url) = rally_client::doc_server!();
    /// # let (_sessions, nets) = rally_client::doc_support::room_of_three(&url).await?;
    /// assert!(nets[0].close_for_current_room().await?);
    /// # Ok(()) }
    /// ```
    pub async fn close_for_current_room(&self) -> Result<bool> {
        let Some(members) = self.inner.fresh_room_members().await? else {
            return Ok(false);
        };
        self.inner
            .auto_accept_room
            .store(false, std::sync::atomic::Ordering::Relaxed);
        for member in members.into_iter().filter(|m| *m != self.inner.me) {
            self.close(member).await?;
        }
        Ok(true)
    }

    /// The next notification, if one is waiting (for game loops that pump once a frame).
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_dir, _server, url) = rally_client::doc_server!();
    /// # let (net, peer) = rally_client::doc_support::connected_pair(&url).await?;
    /// use rally_client::net::NetEvent;
    /// # net.ping(peer.user_id())?;
    /// # tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    /// // Once a frame:
    /// while let Some(event) = net.poll_event() {
    ///     match event {
    ///         NetEvent::PeerConnectRequest { user } => net.accept(user).await?,
    ///         other => println!("{other:?}"),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn poll_event(&self) -> Option<NetEvent> {
        self.inner.events_rx.try_lock().ok()?.try_recv().ok()
    }

    /// The next notification, waiting for one; `None` after [`Net::shutdown`].
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_dir, _server, url) = rally_client::doc_server!();
    /// # let (net, peer) = rally_client::doc_support::connected_pair(&url).await?;
    /// # net.ping(peer.user_id())?;
    /// let event = net.next_event().await.expect("net is running");
    /// println!("{event:?}");
    /// # Ok(()) }
    /// ```
    pub async fn next_event(&self) -> Option<NetEvent> {
        let mut events = self.inner.events_rx.lock().await;
        tokio::select! {
            event = events.recv() => event,
            () = self.inner.shutdown.cancelled() => None,
        }
    }

    /// The connection's figures with `user`, if there ever was one.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_dir, _server, url) = rally_client::doc_server!();
    /// # let (net, peer) = rally_client::doc_support::connected_pair(&url).await?;
    /// let stats = net.stats(peer.user_id()).expect("a peer");
    /// println!("rtt {:?}, unreliable lost {}", stats.rtt, stats.unreliable_lost);
    /// # Ok(()) }
    /// ```
    pub fn stats(&self, user: Uuid) -> Option<PeerStats> {
        self.inner.stats(user)
    }

    /// Closes every connection, detaches from the broker and stops. P2P connections end; the
    /// session stays signed in.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_dir, _server, url) = rally_client::doc_server!();
    /// # let (net, peer) = rally_client::doc_support::connected_pair(&url).await?;
    /// net.shutdown();
    /// assert!(net.recv().await.is_none());
    /// # Ok(()) }
    /// ```
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.broker.shutdown();
        self.inner.transport.close();
    }

    fn check_peer(&self, user: Uuid) -> Result<()> {
        if user == self.inner.me || user.is_nil() {
            return Err(Error::InvalidArgument(format!(
                "{user} is not a peer of this client"
            )));
        }
        Ok(())
    }
}
