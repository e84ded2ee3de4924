//! The tokio side of `Net`: the peer table, carrying out the state machine's actions, the
//! broker event pump, the accept loop and the timer.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rally_proto::broker::v1::{Candidate, CandidateKind, NatType, RelayGrant, SocketAddress};
use rally_quic::{Connection, DatagramError};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::connection::{LaneGates, SendBuffer, StreamTally};
use super::framing::{self, Datagram};
use super::nat::NatReport;
use super::peer::{Action, ConnectionState, Consent, Peer, PeerInfo};
use super::relay_path::{self, RelayPath};
use super::stats::{Counters, Path, PeerStats, add};
use super::traversal::{Failure, NatClass, Plan};
use super::{NetConfig, NetEvent, Packet, SendPolicy, attempt, connection};
use crate::broker::{BrokerEvent, BrokerLink};
use crate::{Error, Result};

/// How long a ping waits for its pong.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// How often timeouts are checked.
const TICK: Duration = Duration::from_millis(100);
/// How long the room membership used for fan-out is reused.
const ROOM_CACHE_TTL: Duration = Duration::from_millis(500);

/// A connection with its generation (each new connection with a peer gets the next one) and the
/// tally of its open streams.
pub(crate) type Live = Option<(u64, Connection, Arc<StreamTally>)>;

/// After a path upgrade, how long the old connection stays at least (for streams the peer
/// opened on it just before it moved too), and at most (waiting for its streams to end).
const RETIRE_GRACE: Duration = Duration::from_millis(500);
const RETIRE_LIMIT: Duration = Duration::from_secs(15);

/// What a waiting send waits on.
enum Full {
    /// The connection's datagram queue.
    Datagrams(Connection),
    /// The peer's reliable send buffer: `len` more bytes must fit under `limit`.
    Buffer {
        buffer: Arc<SendBuffer>,
        len: usize,
        limit: usize,
    },
}

/// Everything `Net` knows about one remote user.
pub(crate) struct Slot {
    pub(crate) peer: Peer,
    pub(crate) conn: Option<(u64, Connection)>,
    generation: u64,
    pub(crate) live: watch::Sender<Live>,
    lanes: [Option<mpsc::UnboundedSender<Bytes>>; framing::LANES as usize],
    pub(crate) buffered: Arc<SendBuffer>,
    sequence: u32,
    pub(crate) counters: Arc<Counters>,
    /// The order of the peer's reliable streams, per lane.
    gates: Arc<LaneGates>,
    /// When the peer last had traffic, as of the last tick (which compares `traffic_seen`
    /// with the counters' [`traffic`](Counters::traffic)).
    pub(crate) last_activity: Instant,
    traffic_seen: u64,
    pings: HashMap<u32, Instant>,
    punch_at: Option<Instant>,
    /// The peer's public addresses from its last PunchStart.
    punch_reflexive: Vec<SocketAddr>,
    /// The peer's NAT, from its PeerInfo.
    peer_nat: NatClass,
    /// The pair's relay grant, when one arrived.
    grant: Option<RelayGrant>,
    /// The running connection attempt.
    attempt: Option<attempt::Handle>,
    /// This side's relayed path to the peer, while one is open.
    relay_path: Option<RelayPath>,
    /// When to ask for a renewed relay grant (the lower user id of the pair asks), and whether
    /// a request is under way.
    renew_at: Option<Instant>,
    renewing: bool,
    /// The connection's path, when it changed, and how often it did.
    path: Option<Path>,
    path_since: Option<Instant>,
    path_changes: u32,
}

impl Slot {
    fn new(connect_timeout: Duration) -> Self {
        Self {
            peer: Peer::new(connect_timeout),
            conn: None,
            generation: 0,
            live: watch::channel(None).0,
            lanes: Default::default(),
            buffered: Arc::new(SendBuffer::default()),
            sequence: 0,
            counters: Arc::new(Counters::default()),
            gates: Arc::new(LaneGates::default()),
            last_activity: Instant::now(),
            traffic_seen: 0,
            pings: HashMap::new(),
            punch_at: None,
            punch_reflexive: Vec::new(),
            peer_nat: NatClass::Unknown,
            grant: None,
            attempt: None,
            relay_path: None,
            renew_at: None,
            renewing: false,
            path: None,
            path_since: None,
            path_changes: 0,
        }
    }

    /// Ends the attempt and the relayed path (the connection is gone or unwanted).
    fn stop_traversal(&mut self) {
        self.attempt = None;
        self.relay_path = None;
        self.grant = None;
    }
}

/// The broker's NAT type for a measured class.
pub(crate) fn nat_type(class: NatClass) -> NatType {
    match class {
        NatClass::Unknown => NatType::Unspecified,
        NatClass::Open => NatType::Open,
        NatClass::Moderate => NatType::Moderate,
        NatClass::Strict => NatType::Strict,
    }
}

fn nat_class(nat: NatType) -> NatClass {
    match nat {
        NatType::Unspecified => NatClass::Unknown,
        NatType::Open => NatClass::Open,
        NatType::Moderate => NatClass::Moderate,
        NatType::Strict => NatClass::Strict,
    }
}

/// A small, fast, non-cryptographic random source for the simulated network.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn seeded() -> Self {
        let mut seed = [0u8; 8];
        // Without OS randomness the simulation is merely predictable.
        let _ = getrandom::fill(&mut seed);
        Self(u64::from_le_bytes(seed) | 1)
    }

    /// A number in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub(crate) struct Inner {
    pub(crate) me: Uuid,
    pub(crate) broker: BrokerLink,
    pub(crate) transport: rally_quic::Transport,
    pub(crate) config: NetConfig,
    pub(crate) peers: Mutex<HashMap<Uuid, Slot>>,
    pub(crate) inbox: super::inbox::Inbox,
    pub(crate) events_tx: mpsc::UnboundedSender<NetEvent>,
    pub(crate) events_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<NetEvent>>,
    pub(crate) auto_accept_room: AtomicBool,
    pub(crate) next_ping: AtomicU32,
    pub(crate) shutdown: CancellationToken,
    pub(crate) rng: Mutex<Rng>,
    /// The room's members as last asked, and when.
    pub(crate) room_cache: Mutex<Option<(Instant, Option<Vec<Uuid>>)>>,
    /// This client's NAT, as measured at start.
    pub(crate) nat: Mutex<NatReport>,
    /// Whether the server offers a relay.
    pub(crate) relay_available: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The addresses announced as host candidates for a QUIC endpoint bound to `local`: that address
/// itself, or, for an endpoint bound to every interface, each interface's address of the same
/// family.
pub(crate) fn host_candidates(local: SocketAddr) -> Vec<Candidate> {
    let interfaces: Vec<IpAddr> = if local.ip().is_unspecified() {
        match if_addrs::get_if_addrs() {
            Ok(interfaces) => interfaces.into_iter().map(|i| i.ip()).collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot list network interfaces; announcing loopback only");
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    candidates_for(local, &interfaces)
}

/// Whether this client may send punches, probes or a handshake to `addr`, a remote peer's
/// candidate: never to an unspecified, multicast, broadcast or link-local address, nor to port 0;
/// to a loopback address only when this client itself is bound to loopback (everything on one
/// host, as in local tests), since a peer elsewhere can have no loopback address and a hostile one
/// would use it to aim this client's packets at its own host's services.
pub(crate) fn remote_target(addr: SocketAddr, on_loopback: bool) -> bool {
    if addr.port() == 0 {
        return false;
    }
    let ip = match addr.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    if ip.is_loopback() {
        return on_loopback;
    }
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified()
                || v4.octets()[0] == 0
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_link_local())
        }
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast() || v6.is_unicast_link_local()),
    }
}

/// The IPs of host candidates.
pub(crate) fn candidate_ips(candidates: &[Candidate]) -> Vec<IpAddr> {
    candidates
        .iter()
        .filter_map(|c| c.address.as_ref()?.ip.parse().ok())
        .collect()
}

/// `hosts` plus the server-reflexive address, unless it is one of them (no NAT). It ranks below
/// routable host addresses (a LAN peer is better reached directly) and above loopback.
pub(crate) fn with_reflexive(
    mut hosts: Vec<Candidate>,
    public: Option<SocketAddr>,
) -> Vec<Candidate> {
    let Some(public) = public else {
        return hosts;
    };
    let known = hosts.iter().any(|c| {
        c.address
            .as_ref()
            .is_some_and(|a| a.ip == public.ip().to_string() && a.port == u32::from(public.port()))
    });
    if !known && hosts.len() < 16 {
        let at = hosts
            .iter()
            .position(|c| c.priority < 50)
            .unwrap_or(hosts.len());
        hosts.insert(
            at,
            Candidate {
                kind: CandidateKind::ServerReflexive as i32,
                address: Some(SocketAddress {
                    ip: public.ip().to_string(),
                    port: u32::from(public.port()),
                }),
                priority: 50,
            },
        );
    }
    hosts
}

/// Host candidates for `local` given the interfaces' addresses (pure, for tests): routable
/// addresses first, loopback last; IPv6 link-local addresses are left out (they need a zone,
/// which a candidate cannot carry); at most the broker's 16.
fn candidates_for(local: SocketAddr, interfaces: &[IpAddr]) -> Vec<Candidate> {
    let mut ips: Vec<IpAddr> = if local.ip().is_unspecified() {
        interfaces
            .iter()
            .copied()
            .filter(|ip| ip.is_ipv4() == local.is_ipv4())
            .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))
            .collect()
    } else {
        vec![local.ip()]
    };
    if ips.is_empty() {
        ips.push(if local.is_ipv4() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        });
    }
    ips.sort_by_key(IpAddr::is_loopback);
    ips.dedup();
    ips.truncate(16);
    ips.into_iter()
        .map(|ip| Candidate {
            kind: CandidateKind::Host as i32,
            address: Some(SocketAddress {
                ip: ip.to_string(),
                port: u32::from(local.port()),
            }),
            priority: if ip.is_loopback() { 10 } else { 100 },
        })
        .collect()
}

pub(crate) fn spawn(inner: Arc<Inner>, events: mpsc::Receiver<BrokerEvent>) {
    tokio::spawn(pump(inner.clone(), events));
    tokio::spawn(accept_loop(inner.clone()));
    tokio::spawn(ticker(inner));
}

impl Inner {
    /// Runs `f` on `user`'s state machine (creating it), returning its actions.
    pub(crate) fn with_peer(
        &self,
        user: Uuid,
        f: impl FnOnce(&mut Peer) -> Vec<Action>,
    ) -> Vec<Action> {
        let mut peers = lock(&self.peers);
        let slot = peers
            .entry(user)
            .or_insert_with(|| Slot::new(self.config.connect_timeout));
        f(&mut slot.peer)
    }

    pub(crate) fn is_connected(&self, user: Uuid) -> bool {
        lock(&self.peers)
            .get(&user)
            .is_some_and(|slot| slot.peer.is_connected())
    }

    pub(crate) fn waiting_requests(&self) -> Vec<Uuid> {
        lock(&self.peers)
            .iter()
            .filter(|(_, slot)| slot.peer.consent() == Consent::Incoming)
            .map(|(user, _)| *user)
            .collect()
    }

    pub(crate) fn stats(&self, user: Uuid) -> Option<PeerStats> {
        let peers = lock(&self.peers);
        let slot = peers.get(&user)?;
        let state = slot.peer.state();
        let rtt = slot.conn.as_ref().map(|(_, c)| c.stats().rtt);
        let path = slot.conn.as_ref().and(slot.path);
        let mut stats = slot.counters.snapshot(state, path, rtt);
        stats.path_since = slot.path_since;
        stats.path_changes = slot.path_changes;
        stats.remote_addr = slot.conn.as_ref().map(|(_, c)| c.remote_addr());
        Some(stats)
    }

    /// The members of this user's room (itself included), or `None` when it is in none; at most
    /// [`ROOM_CACHE_TTL`] old (a game may fan out every frame; the broker rate-limits queries).
    pub(crate) async fn room_members(&self) -> Result<Option<Vec<Uuid>>> {
        if let Some((at, members)) = lock(&self.room_cache).clone()
            && at.elapsed() < ROOM_CACHE_TTL
        {
            return Ok(members);
        }
        self.fresh_room_members().await
    }

    /// The members of this user's room, asked of the broker now.
    pub(crate) async fn fresh_room_members(&self) -> Result<Option<Vec<Uuid>>> {
        let presence = self.broker.room_presence().await?;
        let members = (!presence.room_id.is_empty()).then(|| {
            presence
                .members
                .iter()
                .filter_map(|m| Uuid::try_parse(&m.user_id).ok())
                .collect::<Vec<_>>()
        });
        *lock(&self.room_cache) = Some((Instant::now(), members.clone()));
        Ok(members)
    }

    /// Carries out actions, waiting for broker answers; a refused Connect or Accept closes the
    /// peer (the game also gets the state change) and is returned as the error.
    pub(crate) async fn apply_now(
        self: &Arc<Self>,
        user: Uuid,
        actions: Vec<Action>,
    ) -> Result<()> {
        let mut queue: VecDeque<Action> = actions.into();
        let mut first_error = None;
        while let Some(action) = queue.pop_front() {
            let refused = match action {
                Action::BrokerConnect => self.broker.connect(user).await.err(),
                Action::BrokerAccept => self.broker.accept(user).await.err(),
                Action::BrokerClose => {
                    if let Err(error) = self.broker.close(user).await {
                        tracing::debug!(%error, %user, "broker close failed; the pair ends when the broker forgets it");
                    }
                    None
                }
                other => {
                    self.apply_local(user, other);
                    None
                }
            };
            if let Some(error) = refused {
                queue.extend(self.with_peer(user, Peer::on_closed));
                first_error.get_or_insert(error);
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Carries out actions in the background.
    pub(crate) fn apply(self: &Arc<Self>, user: Uuid, actions: Vec<Action>) {
        if actions.is_empty() {
            return;
        }
        let needs_broker = actions.iter().any(|a| {
            matches!(
                a,
                Action::BrokerConnect | Action::BrokerAccept | Action::BrokerClose
            )
        });
        if needs_broker {
            let inner = self.clone();
            tokio::spawn(async move {
                if let Err(error) = inner.apply_now(user, actions).await {
                    tracing::debug!(%error, %user, "a background connect was refused");
                }
            });
        } else {
            for action in actions {
                self.apply_local(user, action);
            }
        }
    }

    /// The actions that need no broker round trip.
    fn apply_local(self: &Arc<Self>, user: Uuid, action: Action) {
        match action {
            Action::Allow(fingerprint) => self.transport.allow(fingerprint),
            Action::Disallow(fingerprint) => self.transport.disallow(fingerprint),
            Action::Traverse {
                dialer,
                candidates,
                fingerprint,
            } => self.traverse(user, dialer, candidates, fingerprint),
            Action::CloseConnection => {
                let mut peers = lock(&self.peers);
                if let Some(slot) = peers.get_mut(&user) {
                    slot.stop_traversal();
                    if let Some((_, conn)) = slot.conn.take() {
                        conn.close(0);
                        slot.live.send_replace(None);
                    }
                }
            }
            Action::StateChanged(state) => {
                if matches!(state, ConnectionState::Closed | ConnectionState::Timeout)
                    && let Some(slot) = lock(&self.peers).get_mut(&user)
                {
                    slot.stop_traversal();
                }
                let _ = self
                    .events_tx
                    .send(NetEvent::ConnectionStateChanged { user, state });
            }
            Action::ConnectRequest => {
                let _ = self.events_tx.send(NetEvent::PeerConnectRequest { user });
            }
            Action::BrokerConnect | Action::BrokerAccept | Action::BrokerClose => {
                self.apply(user, vec![action]);
            }
        }
    }

    /// Hands a packet to the peer's connection (see `Net::send_packet`).
    /// Sends a packet; a full queue or buffer refuses it (unreliable: counted as dropped).
    pub(crate) fn send(
        self: &Arc<Self>,
        user: Uuid,
        data: Bytes,
        policy: SendPolicy,
    ) -> Result<()> {
        self.send_or_wait(user, data, policy, false).map(|_| ())
    }

    /// Sends a packet, waiting for room in a full queue or buffer instead of refusing it.
    pub(crate) async fn send_waiting(
        self: &Arc<Self>,
        user: Uuid,
        data: Bytes,
        policy: SendPolicy,
    ) -> Result<()> {
        loop {
            let wait = match self.send_or_wait(user, data.clone(), policy, true)? {
                None => return Ok(()),
                Some(wait) => wait,
            };
            let room = async {
                match &wait {
                    Full::Datagrams(conn) => conn.datagram_room().await,
                    Full::Buffer { buffer, len, limit } => buffer.room(*len, *limit).await,
                }
            };
            tokio::select! {
                () = room => {}
                () = self.shutdown.cancelled() => return Err(Error::Closed),
            }
        }
    }

    /// Sends, or (with `wait`) says what is full instead of refusing.
    fn send_or_wait(
        self: &Arc<Self>,
        user: Uuid,
        data: Bytes,
        policy: SendPolicy,
        wait: bool,
    ) -> Result<Option<Full>> {
        let lane = match policy {
            SendPolicy::Unreliable => None,
            SendPolicy::Reliable => Some(0),
            SendPolicy::ReliableLane(lane) if lane < framing::LANES => Some(lane),
            SendPolicy::ReliableLane(lane) => {
                return Err(Error::InvalidArgument(format!(
                    "lane {lane} does not exist (0 to {})",
                    framing::LANES - 1
                )));
            }
        };
        let max = match lane {
            None => framing::MAX_UNRELIABLE_PAYLOAD,
            Some(_) => framing::MAX_RELIABLE_PAYLOAD,
        };
        if data.len() > max {
            return Err(Error::PacketTooLarge {
                size: data.len(),
                max,
            });
        }
        let mut peers = lock(&self.peers);
        let slot = peers
            .entry(user)
            .or_insert_with(|| Slot::new(self.config.connect_timeout));
        let implicit = if slot.peer.is_connected() {
            Vec::new()
        } else {
            // Implicit connect: the first send to a user with no connection starts one.
            slot.peer.connect()
        };
        let len = data.len();
        let limit = self.config.send_buffer_bytes;
        let result = match lane {
            None => Ok(self.send_unreliable(slot, data, wait).map(Full::Datagrams)),
            Some(lane) => match self.send_reliable(user, slot, lane, data) {
                // Waiting helps only when the packet fits an empty buffer.
                Err(Error::SendBufferFull) if wait && len <= limit => Ok(Some(Full::Buffer {
                    buffer: slot.buffered.clone(),
                    len,
                    limit,
                })),
                other => other.map(|()| None),
            },
        };
        drop(peers);
        self.apply(user, implicit);
        result
    }

    /// Sends an unreliable packet, or counts it as dropped. With `wait`, a full queue neither
    /// sends nor counts it: the connection to wait on comes back instead.
    fn send_unreliable(&self, slot: &mut Slot, data: Bytes, wait: bool) -> Option<Connection> {
        let counters = slot.counters.clone();
        let Some((_, conn)) = slot.conn.clone() else {
            add(&counters.unreliable_sent, 1);
            add(&counters.dropped_not_connected, 1);
            return None;
        };
        let fake = self.config.fake;
        let (lost, twice) = if fake.loss > 0.0 || fake.duplicate > 0.0 {
            let mut rng = lock(&self.rng);
            (rng.unit() < fake.loss, rng.unit() < fake.duplicate)
        } else {
            (false, false)
        };
        let sequence = slot.sequence;
        let len = data.len() as u64;
        // The header goes in front of the payload inside the packet: the payload is not copied.
        let header = Datagram::unreliable_header(sequence);
        if lost {
            // Simulated loss happens "in the network": the peer sees the gap too.
            add(&counters.unreliable_sent, 1);
            slot.sequence = slot.sequence.wrapping_add(1);
            add(&counters.dropped_fake, 1);
            return None;
        }
        if !fake.lag.is_zero() {
            add(&counters.unreliable_sent, 1);
            slot.sequence = slot.sequence.wrapping_add(1);
            add(&counters.unreliable_bytes_sent, len);
            tokio::spawn(async move {
                tokio::time::sleep(fake.lag).await;
                for _ in 0..if twice { 2 } else { 1 } {
                    if conn
                        .send_datagram_with_header(&header, data.clone())
                        .is_err()
                    {
                        add(&counters.dropped_queue_full, 1);
                    }
                }
            });
            return None;
        }
        let copy = twice.then(|| data.clone());
        match conn.send_datagram_with_header(&header, data) {
            Ok(()) => {
                add(&counters.unreliable_sent, 1);
                slot.sequence = slot.sequence.wrapping_add(1);
                add(&counters.unreliable_bytes_sent, len);
                if let Some(copy) = copy {
                    let _ = conn.send_datagram_with_header(&header, copy);
                }
            }
            // The caller waits for room and sends it again: not sent yet, so not counted.
            Err(DatagramError::QueueFull) if wait => return Some(conn),
            // Refused before it got a sequence number: counted here, not as a gap at the peer.
            Err(DatagramError::QueueFull | DatagramError::TooLarge { .. }) => {
                add(&counters.unreliable_sent, 1);
                add(&counters.dropped_queue_full, 1);
            }
            Err(DatagramError::Closed) => {
                add(&counters.unreliable_sent, 1);
                add(&counters.dropped_not_connected, 1);
            }
        }
        None
    }

    fn send_reliable(
        self: &Arc<Self>,
        user: Uuid,
        slot: &mut Slot,
        lane: u8,
        data: Bytes,
    ) -> Result<()> {
        let len = data.len();
        let buffered = slot.buffered.bytes();
        if buffered.saturating_add(len) > self.config.send_buffer_bytes {
            return Err(Error::SendBufferFull);
        }
        // The lane's writer frames the packet (with the others queued by then).
        let writer = slot.lanes[usize::from(lane)].get_or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(connection::lane_writer(
                self.clone(),
                user,
                lane,
                rx,
                slot.live.subscribe(),
                slot.buffered.clone(),
                slot.counters.clone(),
            ));
            tx
        });
        if writer.send(data).is_err() {
            return Err(Error::Closed);
        }
        slot.buffered.add(len);
        add(&slot.counters.reliable_sent, 1);
        Ok(())
    }

    pub(crate) fn ping(self: &Arc<Self>, user: Uuid) -> Result<u32> {
        let mut peers = lock(&self.peers);
        let Some(slot) = peers.get_mut(&user) else {
            return Err(Error::NotConnected);
        };
        let Some((_, conn)) = slot.conn.clone() else {
            return Err(Error::NotConnected);
        };
        let id = self.next_ping.fetch_add(1, Ordering::Relaxed);
        conn.send_datagram(Datagram::Ping { id }.encode())
            .map_err(|e| Error::Transport(e.to_string()))?;
        slot.pings.insert(id, Instant::now());
        Ok(id)
    }

    /// A received datagram from `user`; returns the sequence number of an unreliable packet.
    pub(crate) fn on_datagram(
        self: &Arc<Self>,
        user: Uuid,
        conn: &Connection,
        bytes: Bytes,
    ) -> Option<u32> {
        let mut peers = lock(&self.peers);
        let slot = peers.get_mut(&user)?;
        let counters = slot.counters.clone();
        match Datagram::decode(bytes) {
            Ok(Datagram::Unreliable { sequence, payload }) => {
                drop(peers);
                add(&counters.unreliable_received, 1);
                add(&counters.unreliable_bytes_received, payload.len() as u64);
                let packet = Packet {
                    sender: user,
                    data: payload,
                    policy: SendPolicy::Unreliable,
                };
                if !self.inbox.offer(packet) {
                    add(&counters.dropped_inbox_full, 1);
                }
                return Some(sequence);
            }
            Ok(Datagram::Ping { id }) => {
                drop(peers);
                let _ = conn.send_datagram(Datagram::Pong { id }.encode());
            }
            Ok(Datagram::Pong { id }) => {
                if let Some(sent) = slot.pings.remove(&id) {
                    let _ = self.events_tx.send(NetEvent::PingResult {
                        user,
                        ping_id: id,
                        rtt: Some(sent.elapsed()),
                    });
                }
            }
            Err(error) => {
                add(&counters.malformed, 1);
                tracing::debug!(%error, %user, "dropping a malformed datagram");
            }
        }
        None
    }

    /// A reliable packet arrived (waits while the game's inbox is full).
    pub(crate) async fn on_reliable(
        &self,
        user: Uuid,
        lane: u8,
        data: Bytes,
        counters: &Counters,
    ) -> bool {
        add(&counters.reliable_received, 1);
        add(&counters.reliable_bytes_received, data.len() as u64);
        let policy = if lane == 0 {
            SendPolicy::Reliable
        } else {
            SendPolicy::ReliableLane(lane)
        };
        self.inbox
            .push(Packet {
                sender: user,
                data,
                policy,
            })
            .await
    }

    /// Starts a connection attempt with `user` (a PunchStart arrived).
    fn traverse(
        self: &Arc<Self>,
        user: Uuid,
        dialer: bool,
        candidates: Vec<SocketAddr>,
        fingerprint: [u8; 32],
    ) {
        let ours = lock(&self.nat).nat_type;
        let on_loopback = self.transport.local_addr().ip().is_loopback();
        let mut peers = lock(&self.peers);
        let Some(slot) = peers.get_mut(&user) else {
            return;
        };
        // A peer's announcement is not trusted to aim this client's packets: nothing goes to
        // addresses that cannot be a remote peer's.
        let (candidates, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = candidates
            .into_iter()
            .partition(|addr| remote_target(*addr, on_loopback));
        if !refused.is_empty() {
            tracing::debug!(%user, ?refused, "ignoring candidates no remote peer can have");
        }
        let reflexive: Vec<SocketAddr> = slot
            .punch_reflexive
            .iter()
            .copied()
            .filter(|addr| remote_target(*addr, on_loopback))
            .collect();
        let plan = Plan {
            dialer,
            candidates,
            reflexive,
            ours,
            theirs: slot.peer_nat,
            policy: self.config.relay_policy,
            relay_available: self.relay_available.load(Ordering::Relaxed),
            granted: slot.grant.is_some(),
        };
        let start = slot.punch_at.unwrap_or_else(Instant::now);
        // A new attempt replaces the old one (and its relayed path, unless connected on it).
        slot.attempt = None;
        if slot.conn.is_none() {
            slot.relay_path = None;
        }
        slot.attempt = Some(attempt::spawn(
            self.clone(),
            user,
            plan,
            fingerprint,
            start,
            slot.grant.clone(),
        ));
    }

    /// The attempt's relayed path to `user` is open, with `grant`.
    pub(crate) fn set_relay_path(&self, user: Uuid, path: RelayPath, grant: &RelayGrant) {
        if let Some(slot) = lock(&self.peers).get_mut(&user)
            && slot.attempt.is_some()
        {
            slot.relay_path = Some(path);
            slot.renew_at = Some(Instant::now() + relay_path::renew_after(grant));
        }
    }

    /// A relay grant for the pair with `user` arrived: a path that is open presents it (a
    /// renewal: same allocation, later expiry).
    fn renewed(&self, user: Uuid, grant: &RelayGrant) {
        if let Some(slot) = lock(&self.peers).get_mut(&user) {
            slot.renewing = false;
            if let Some(path) = &slot.relay_path
                && path.renew(grant)
            {
                slot.renew_at = Some(Instant::now() + relay_path::renew_after(grant));
            }
        }
    }

    /// Asks for a renewed grant for every relayed path due (this side being the pair's lower
    /// user id, so one request per pair).
    fn renew_grants(self: &Arc<Self>, now: Instant) {
        let due: Vec<Uuid> = lock(&self.peers)
            .iter_mut()
            .filter(|(user, slot)| {
                self.me < **user
                    && slot.relay_path.is_some()
                    && !slot.renewing
                    && slot.renew_at.is_some_and(|at| now >= at)
            })
            .map(|(user, slot)| {
                slot.renewing = true;
                *user
            })
            .collect();
        for user in due {
            let inner = self.clone();
            tokio::spawn(async move {
                match inner.broker.request_relay_grant(user).await {
                    Ok(grant) => inner.renewed(user, &grant),
                    Err(error) => {
                        tracing::debug!(%error, %user, "relay grant renewal refused; retrying");
                        if let Some(slot) = lock(&inner.peers).get_mut(&user) {
                            slot.renewing = false;
                            slot.renew_at = Some(Instant::now() + Duration::from_secs(5));
                        }
                    }
                }
            });
        }
    }

    /// Where the local endpoint reaches the relayed path to `user`.
    pub(crate) fn relay_path_local(&self, user: Uuid) -> Option<SocketAddr> {
        lock(&self.peers)
            .get(&user)
            .and_then(|slot| slot.relay_path.as_ref().map(|p| p.local))
    }

    /// The attempt with `user` gave up: the game learns why, then that it timed out.
    pub(crate) fn attempt_failed(self: &Arc<Self>, user: Uuid, failure: Failure) {
        let actions = {
            let mut peers = lock(&self.peers);
            match peers.get_mut(&user) {
                Some(slot) if slot.conn.is_none() => {
                    let _ = self.events_tx.send(NetEvent::ConnectionFailed {
                        user,
                        reason: failure,
                    });
                    slot.peer.on_connection_down()
                }
                _ => Vec::new(),
            }
        };
        self.apply(user, actions);
    }

    /// A QUIC connection with `user`'s pinned certificate is up (dialed or accepted) on `path`.
    /// Returns whether the connection was kept (a dialer then nominates it).
    pub(crate) fn attach(self: &Arc<Self>, user: Uuid, conn: Connection, path: Path) -> bool {
        let mut peers = lock(&self.peers);
        let Some(slot) = peers.get_mut(&user) else {
            conn.close(0);
            return false;
        };
        let upgrade =
            slot.conn.is_some() && slot.path == Some(Path::Relayed) && path == Path::Direct;
        if slot.conn.is_some() && !upgrade {
            // One connection per pair: keep the first (unless it moves off the relay).
            conn.close(0);
            return false;
        }
        let actions = slot.peer.on_connection_up();
        if actions.contains(&Action::CloseConnection) {
            conn.close(0);
            return false;
        }
        if let Some(attempt) = &slot.attempt {
            let _ = attempt.inputs.send(attempt::Input::Connected {
                relayed: path == Path::Relayed,
            });
        }
        if upgrade {
            // Move to the direct path: writers finish their streams on the relayed connection
            // (the peer acknowledges them) and continue on the new one; the relayed connection
            // and its forwarder go once their streams have ended.
            let old = slot.live.borrow().clone();
            let forwarder = slot.relay_path.take();
            if let Some((_, old, tally)) = old {
                tokio::spawn(async move {
                    tokio::time::sleep(RETIRE_GRACE).await;
                    let _ = tokio::time::timeout(RETIRE_LIMIT, tally.drained()).await;
                    old.close(0);
                    drop(forwarder);
                });
            }
            tracing::debug!(%user, "moving the connection from the relay to a direct path");
        } else if path == Path::Direct {
            // The relayed path, if one opened meanwhile, is not needed.
            slot.relay_path = None;
        }
        if slot.path.is_some_and(|p| p != path) {
            slot.path_changes += 1;
        }
        slot.path = Some(path);
        slot.path_since = Some(Instant::now());
        slot.generation += 1;
        let generation = slot.generation;
        slot.conn = Some((generation, conn.clone()));
        slot.last_activity = Instant::now();
        let tally = Arc::new(StreamTally::default());
        slot.live
            .send_replace(Some((generation, conn.clone(), tally.clone())));
        let counters = slot.counters.clone();
        let gates = slot.gates.clone();
        drop(peers);
        tokio::spawn(connection::serve(
            self.clone(),
            user,
            generation,
            conn,
            counters,
            gates,
            tally,
        ));
        self.apply(user, actions);
        true
    }

    /// A connection this side dialed is up: keep it if it is the pair's, and nominate it so the
    /// acceptor keeps the same one.
    pub(crate) fn dialed(self: &Arc<Self>, user: Uuid, conn: Connection, path: Path) {
        if self.attach(user, conn.clone(), path) {
            tokio::spawn(async move {
                if let Err(error) = conn.nominate().await {
                    tracing::debug!(%error, %user, "could not nominate the connection");
                }
            });
        }
    }

    /// The connection of generation `generation` with `user` ended.
    pub(crate) fn connection_lost(self: &Arc<Self>, user: Uuid, generation: u64) {
        let mut peers = lock(&self.peers);
        let Some(slot) = peers.get_mut(&user) else {
            return;
        };
        if slot.conn.as_ref().is_none_or(|(g, _)| *g != generation) {
            return;
        }
        slot.conn = None;
        slot.live.send_replace(None);
        slot.stop_traversal();
        let actions = slot.peer.on_connection_down();
        drop(peers);
        self.apply(user, actions);
    }

    /// One broker event.
    async fn on_broker_event(self: &Arc<Self>, event: BrokerEvent) {
        let (user, actions) = match event {
            BrokerEvent::PeerConnectRequest { user } => {
                let auto = self.auto_accept_room.load(Ordering::Relaxed)
                    && self.is_room_member(user).await;
                (user, self.with_peer(user, |p| p.on_request(auto)))
            }
            BrokerEvent::ConnectAccepted { user } => {
                (user, self.with_peer(user, Peer::on_accepted))
            }
            BrokerEvent::ConnectRejected { user, .. } | BrokerEvent::PeerClosed { user, .. } => {
                (user, self.with_peer(user, Peer::on_closed))
            }
            BrokerEvent::PeerInfo {
                user,
                fingerprint,
                candidates,
                nat_type,
                ..
            } => {
                let mut peers = lock(&self.peers);
                let slot = peers
                    .entry(user)
                    .or_insert_with(|| Slot::new(self.config.connect_timeout));
                slot.peer_nat = nat_class(nat_type);
                let actions = slot.peer.on_info(PeerInfo {
                    fingerprint,
                    candidates,
                });
                (user, actions)
            }
            BrokerEvent::PunchStart {
                user,
                candidates,
                reflexive,
                start_at,
                dialer,
                ..
            } => {
                let mut peers = lock(&self.peers);
                let slot = peers
                    .entry(user)
                    .or_insert_with(|| Slot::new(self.config.connect_timeout));
                slot.punch_at = Some(start_at);
                slot.punch_reflexive = reflexive;
                (user, slot.peer.on_punch(dialer, candidates, Instant::now()))
            }
            BrokerEvent::RelayGrant(grant) => {
                let Ok(user) = Uuid::try_parse(&grant.user_id) else {
                    return;
                };
                self.renewed(user, &grant);
                if let Some(slot) = lock(&self.peers).get_mut(&user) {
                    if let Some(attempt) = &slot.attempt {
                        let _ = attempt.inputs.send(attempt::Input::Grant(grant.clone()));
                    }
                    slot.grant = Some(grant);
                }
                return;
            }
            BrokerEvent::Attached {
                relay_available, ..
            } => {
                self.relay_available
                    .store(relay_available, Ordering::Relaxed);
                return;
            }
            BrokerEvent::Detached { .. } | BrokerEvent::Superseded => return,
        };
        self.apply(user, actions);
    }

    /// Whether `user` is in this user's room (asking the broker again when the cached members
    /// do not include it: it may just have joined).
    async fn is_room_member(&self, user: Uuid) -> bool {
        if let Ok(Some(members)) = self.room_members().await
            && members.contains(&user)
        {
            return true;
        }
        matches!(self.fresh_room_members().await, Ok(Some(members)) if members.contains(&user))
    }

    fn tick(self: &Arc<Self>) {
        let now = Instant::now();
        let mut work = Vec::new();
        {
            let mut peers = lock(&self.peers);
            for (user, slot) in peers.iter_mut() {
                let traffic = slot.counters.traffic();
                if traffic != slot.traffic_seen {
                    slot.traffic_seen = traffic;
                    slot.last_activity = now;
                }
                let mut actions = slot.peer.on_tick(now);
                if let Some(idle) = self.config.idle_timeout
                    && slot.peer.is_connected()
                    && now.duration_since(slot.last_activity) >= idle
                    && slot.buffered.bytes() == 0
                {
                    actions.extend(slot.peer.close());
                }
                slot.pings.retain(|id, sent| {
                    let waiting = now.duration_since(*sent) < PING_TIMEOUT;
                    if !waiting {
                        let _ = self.events_tx.send(NetEvent::PingResult {
                            user: *user,
                            ping_id: *id,
                            rtt: None,
                        });
                    }
                    waiting
                });
                if !actions.is_empty() {
                    work.push((*user, actions));
                }
            }
            // Forget peers nothing is left of (their counters go with them).
            peers.retain(|_, slot| {
                !(slot.peer.is_idle()
                    && slot.conn.is_none()
                    && slot.buffered.bytes() == 0
                    && slot.lanes.iter().all(Option::is_none)
                    && now.duration_since(slot.last_activity) > Duration::from_secs(600))
            });
        }
        for (user, actions) in work {
            self.apply(user, actions);
        }
        self.renew_grants(now);
    }
}

async fn pump(inner: Arc<Inner>, mut events: mpsc::Receiver<BrokerEvent>) {
    loop {
        let event = tokio::select! {
            () = inner.shutdown.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Some(event) => inner.on_broker_event(event).await,
            None => return,
        }
    }
}

async fn accept_loop(inner: Arc<Inner>) {
    loop {
        let conn = tokio::select! {
            () = inner.shutdown.cancelled() => return,
            conn = inner.transport.accept() => conn,
        };
        let Some(conn) = conn else {
            return;
        };
        let fingerprint = conn.peer();
        let remote = conn.remote_addr();
        let found = {
            let peers = lock(&inner.peers);
            owner_of(
                fingerprint,
                peers
                    .iter()
                    .map(|(user, slot)| (*user, slot.peer.fingerprint())),
            )
            .and_then(|user| peers.get(&user).map(|slot| (user, slot)))
            .map(|(user, slot)| {
                let relayed = slot.relay_path.as_ref().is_some_and(|p| p.local == remote);
                (user, if relayed { Path::Relayed } else { Path::Direct })
            })
        };
        let Some((user, path)) = found else {
            tracing::debug!(%remote, "refused a connection no single agreed peer announced");
            conn.close(0);
            continue;
        };
        // Only the connection the dialer nominates is the pair's: a dialer trying several of
        // our addresses at once may complete more than one handshake.
        let inner = inner.clone();
        let wait = inner.config.transport.handshake_timeout;
        tokio::spawn(async move {
            match tokio::time::timeout(wait, conn.nominated()).await {
                Ok(Ok(())) => {
                    inner.attach(user, conn, path);
                }
                _ => conn.close(0),
            }
        });
    }
}

/// The user an incoming connection with certificate `fingerprint` belongs to: the one agreed
/// peer that announced it. A connection is never given to a user by its fingerprint alone: when
/// two agreed peers announced the same one (the broker refuses that among online users; a stale
/// announcement could still carry it), nobody gets the connection.
fn owner_of(
    fingerprint: [u8; 32],
    peers: impl Iterator<Item = (Uuid, Option<[u8; 32]>)>,
) -> Option<Uuid> {
    let mut owners = peers
        .filter(|(_, announced)| *announced == Some(fingerprint))
        .map(|(user, _)| user);
    let owner = owners.next()?;
    owners.next().is_none().then_some(owner)
}

async fn ticker(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = inner.shutdown.cancelled() => return,
            _ = tick.tick() => inner.tick(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_packet_goes_where_no_remote_peer_can_be() {
        let target = |text: &str| text.parse::<SocketAddr>().expect("address");
        for refused in [
            "0.0.0.0:4000",
            "0.1.2.3:4000",
            "224.0.0.251:5353",
            "239.255.255.250:1900",
            "255.255.255.255:4000",
            "169.254.1.1:4000",
            "203.0.113.9:0",
            "[::]:4000",
            "[ff02::1]:4000",
            "[fe80::1]:4000",
            "[::ffff:169.254.1.1]:4000",
            "[::ffff:224.0.0.1]:4000",
        ] {
            for on_loopback in [false, true] {
                assert!(!remote_target(target(refused), on_loopback), "{refused}");
            }
        }
        for loopback in [
            "127.0.0.1:6379",
            "127.8.9.10:4000",
            "[::1]:4000",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(
                !remote_target(target(loopback), false),
                "{loopback} from a real interface"
            );
            assert!(
                remote_target(target(loopback), true),
                "{loopback} when all is on one host"
            );
        }
        for allowed in [
            "203.0.113.9:4000",
            "10.0.0.2:4000",
            "192.168.1.20:4000",
            "[2001:db8::7]:4000",
        ] {
            assert!(remote_target(target(allowed), false), "{allowed}");
        }
    }

    #[test]
    fn a_connection_goes_to_the_one_peer_that_announced_its_fingerprint_or_to_nobody() {
        let (ada, bob, eve) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let (a, b) = ([0xA1; 32], [0xB2; 32]);
        let peers = [(ada, Some(a)), (bob, Some(b)), (eve, None)];
        assert_eq!(owner_of(b, peers.into_iter()), Some(bob));
        assert_eq!(owner_of([0xFF; 32], peers.into_iter()), None);
        // Eve announced Bob's fingerprint: Bob's connection must not become Eve's.
        let copied = [(bob, Some(b)), (eve, Some(b)), (ada, Some(a))];
        assert_eq!(owner_of(b, copied.into_iter()), None);
        assert_eq!(owner_of(a, copied.into_iter()), Some(ada));
    }

    fn ips(candidates: &[Candidate]) -> Vec<String> {
        candidates
            .iter()
            .filter_map(|c| c.address.as_ref().map(|a| format!("{}:{}", a.ip, a.port)))
            .collect()
    }

    #[test]
    fn a_specific_bind_address_is_the_only_candidate() {
        let local: SocketAddr = "192.0.2.7:4000".parse().expect("address");
        let interfaces = ["10.0.0.1".parse().expect("ip")];
        assert_eq!(ips(&candidates_for(local, &interfaces)), ["192.0.2.7:4000"]);
    }

    #[test]
    fn an_unspecified_bind_announces_every_interface_of_its_family_loopback_last() {
        let local: SocketAddr = "0.0.0.0:4000".parse().expect("address");
        let interfaces: Vec<IpAddr> = [
            "127.0.0.1",
            "fe80::1",
            "192.168.1.20",
            "2001:db8::5",
            "10.1.2.3",
        ]
        .iter()
        .map(|ip| ip.parse().expect("ip"))
        .collect();
        let candidates = candidates_for(local, &interfaces);
        assert_eq!(
            ips(&candidates),
            ["192.168.1.20:4000", "10.1.2.3:4000", "127.0.0.1:4000"]
        );
        assert!(candidates[0].priority > candidates[2].priority);
        let local6: SocketAddr = "[::]:4000".parse().expect("address");
        assert_eq!(
            ips(&candidates_for(local6, &interfaces)),
            ["2001:db8::5:4000"]
        );
    }

    #[test]
    fn with_no_interface_known_loopback_is_announced() {
        let local: SocketAddr = "0.0.0.0:4000".parse().expect("address");
        assert_eq!(ips(&candidates_for(local, &[])), ["127.0.0.1:4000"]);
    }
}
