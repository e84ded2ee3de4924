//! One remote user's connection life, as a sans-IO state machine: consent (the Meta
//! connect/accept handshake through the broker), then the QUIC connection, then its end.
//!
//! Inputs are what the game asked, what the broker said and what the transport did, with the
//! time; outputs are [`Action`]s the driver carries out (broker calls, dials, allowing a
//! certificate, events for the game). Nothing here touches a socket or a clock, so every path is
//! unit-tested, timeouts included. How the link comes up through NATs (candidate pairs, punching,
//! birthday probing, the relay) is `traversal.rs`'s; this machine only bounds it in time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A connection's state as the game sees it (the Meta `ovrPeerConnectionState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// Asked for, or accepted, and being set up.
    Connecting,
    /// Packets flow directly between the two peers.
    Connected,
    /// Closed by either side, refused, or lost.
    Closed,
    /// Could not be set up in time.
    Timeout,
}

/// Where the consent handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consent {
    /// Nothing asked.
    None,
    /// This side asked; waiting for the peer's accept.
    Requested,
    /// The peer asked; waiting for this side's accept.
    Incoming,
    /// Both agreed.
    Agreed,
}

/// The peer's identity and addresses, from the broker (only ever for an agreed pair).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// SHA-256 of the peer's certificate: the only identity the QUIC connection accepts.
    pub fingerprint: [u8; 32],
    /// Its direct candidates, in priority order.
    pub candidates: Vec<SocketAddr>,
}

/// The transport side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// No connection and none being made.
    Down,
    /// Making the connection: dialing (or waiting for the peer's dial) until `until`.
    Punching {
        /// Whether this side dials.
        dialer: bool,
        /// When the attempt times out.
        until: Instant,
    },
    /// Connected.
    Up,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send Connect for this user to the broker.
    BrokerConnect,
    /// Send Accept to the broker.
    BrokerAccept,
    /// Send Close to the broker.
    BrokerClose,
    /// Let this certificate complete an inbound handshake.
    Allow([u8; 32]),
    /// No longer let it.
    Disallow([u8; 32]),
    /// Start a connection attempt (NAT traversal): dial or accept, punching `candidates`.
    Traverse {
        /// Whether this side dials.
        dialer: bool,
        /// The peer's direct candidates, highest priority first.
        candidates: Vec<SocketAddr>,
        /// The pinned certificate.
        fingerprint: [u8; 32],
    },
    /// Close the QUIC connection.
    CloseConnection,
    /// Tell the game the state changed.
    StateChanged(ConnectionState),
    /// Tell the game the peer asks to connect.
    ConnectRequest,
}

/// One remote user.
#[derive(Debug, Clone)]
pub struct Peer {
    consent: Consent,
    info: Option<PeerInfo>,
    link: Link,
    /// The state last reported to the game (`None`: never reported).
    reported: Option<ConnectionState>,
    /// A renewal of an agreed pair was asked of the broker and no punch followed yet (so a game
    /// that keeps sending does not ask again for every packet).
    renewing: bool,
    connect_timeout: Duration,
}

impl Peer {
    /// A peer nothing happened with yet; attempts to connect time out after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            consent: Consent::None,
            info: None,
            link: Link::Down,
            reported: None,
            renewing: false,
            connect_timeout,
        }
    }

    /// Where consent is.
    pub fn consent(&self) -> Consent {
        self.consent
    }

    /// The transport side.
    pub fn link(&self) -> Link {
        self.link
    }

    /// The peer's certificate, once agreed.
    pub fn fingerprint(&self) -> Option<[u8; 32]> {
        self.info.as_ref().map(|i| i.fingerprint)
    }

    /// Whether packets flow.
    pub fn is_connected(&self) -> bool {
        self.link == Link::Up
    }

    /// The connection's state as the game last saw it in an event (`Connected` while the link
    /// is up; `Closed` for a peer nothing happened with).
    pub fn state(&self) -> ConnectionState {
        if self.is_connected() {
            return ConnectionState::Connected;
        }
        match self.reported {
            Some(ConnectionState::Connected) | None if self.is_idle() => ConnectionState::Closed,
            Some(ConnectionState::Connected) | None => ConnectionState::Connecting,
            Some(state) => state,
        }
    }

    /// Whether nothing is left of this peer (it may be forgotten).
    pub fn is_idle(&self) -> bool {
        self.consent == Consent::None && self.link == Link::Down
    }

    fn report(&mut self, state: ConnectionState, actions: &mut Vec<Action>) {
        if self.reported != Some(state) {
            self.reported = Some(state);
            actions.push(Action::StateChanged(state));
        }
    }

    /// The game asks to connect (`ovr_Net_Connect`), or sends to a peer with no connection.
    pub fn connect(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        match self.consent {
            Consent::None => {
                self.consent = Consent::Requested;
                actions.push(Action::BrokerConnect);
                self.report(ConnectionState::Connecting, &mut actions);
            }
            // Connecting to a peer that asked is accepting it (the broker treats crossing
            // connects the same way).
            Consent::Incoming => return self.accept(),
            Consent::Requested => {}
            // Agreed but not connected (lost, or never made): ask the broker to renew the
            // agreement, which sends both sides a new punch.
            Consent::Agreed if self.link == Link::Down && !self.renewing => {
                self.renewing = true;
                actions.push(Action::BrokerConnect);
                self.report(ConnectionState::Connecting, &mut actions);
            }
            Consent::Agreed => {}
        }
        actions
    }

    /// The game accepts the peer's request (`ovr_Net_Accept`). Without a pending request this is
    /// a connect (the Meta API allows accepting before the request arrives).
    pub fn accept(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        match self.consent {
            Consent::Incoming => {
                self.consent = Consent::Agreed;
                actions.push(Action::BrokerAccept);
                self.report(ConnectionState::Connecting, &mut actions);
            }
            _ => return self.connect(),
        }
        actions
    }

    /// The game closes the connection (`ovr_Net_Close`), or it idled out.
    pub fn close(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.consent != Consent::None {
            actions.push(Action::BrokerClose);
        }
        self.end(ConnectionState::Closed, &mut actions);
        actions
    }

    fn end(&mut self, state: ConnectionState, actions: &mut Vec<Action>) {
        self.consent = Consent::None;
        self.renewing = false;
        if self.link != Link::Down {
            actions.push(Action::CloseConnection);
            self.link = Link::Down;
        }
        if let Some(info) = self.info.take() {
            actions.push(Action::Disallow(info.fingerprint));
        }
        if self.reported.is_some() {
            self.report(state, actions);
        }
    }

    /// The peer asks to connect. `auto_accept`: the game accepts members of its room.
    pub fn on_request(&mut self, auto_accept: bool) -> Vec<Action> {
        match self.consent {
            Consent::None | Consent::Incoming => {
                self.consent = Consent::Incoming;
                if auto_accept {
                    self.accept()
                } else {
                    vec![Action::ConnectRequest]
                }
            }
            // Asked both ways: the broker agrees the pair itself.
            Consent::Requested | Consent::Agreed => Vec::new(),
        }
    }

    /// The peer accepted this side's request.
    pub fn on_accepted(&mut self) -> Vec<Action> {
        if matches!(self.consent, Consent::Requested | Consent::Incoming) {
            self.consent = Consent::Agreed;
        }
        Vec::new()
    }

    /// The peer refused, or ended the pair, or the broker forgot it.
    pub fn on_closed(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        self.end(ConnectionState::Closed, &mut actions);
        actions
    }

    /// The peer's identity and addresses (agreed pairs only). Ignored unless this side asked or
    /// agreed: a PeerInfo still in flight when the game closed the pair must not re-open it.
    pub fn on_info(&mut self, info: PeerInfo) -> Vec<Action> {
        let mut actions = Vec::new();
        if !matches!(self.consent, Consent::Requested | Consent::Agreed) {
            return actions;
        }
        self.consent = Consent::Agreed;
        if let Some(old) = &self.info
            && old.fingerprint != info.fingerprint
        {
            actions.push(Action::Disallow(old.fingerprint));
        }
        actions.push(Action::Allow(info.fingerprint));
        self.info = Some(info);
        actions
    }

    /// Start connecting: this side dials `candidates`, or accepts the peer's dial (punching
    /// `candidates` so that its NAT lets it in).
    pub fn on_punch(
        &mut self,
        dialer: bool,
        candidates: Vec<SocketAddr>,
        now: Instant,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(info) = &self.info else {
            return actions;
        };
        if self.consent != Consent::Agreed || self.link == Link::Up {
            return actions;
        }
        self.renewing = false;
        self.link = Link::Punching {
            dialer,
            until: now + self.connect_timeout,
        };
        actions.push(Action::Traverse {
            dialer,
            candidates,
            fingerprint: info.fingerprint,
        });
        self.report(ConnectionState::Connecting, &mut actions);
        actions
    }

    /// A QUIC connection with the peer's pinned certificate is up.
    pub fn on_connection_up(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.consent != Consent::Agreed {
            // Closed meanwhile: drop the connection.
            actions.push(Action::CloseConnection);
            return actions;
        }
        self.link = Link::Up;
        self.report(ConnectionState::Connected, &mut actions);
        actions
    }

    /// The QUIC connection ended (or every dial failed). The agreement stays: a later connect
    /// renews it.
    pub fn on_connection_down(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        let was = self.link;
        self.link = Link::Down;
        self.renewing = false;
        match was {
            Link::Up => self.report(ConnectionState::Closed, &mut actions),
            Link::Punching { .. } => self.report(ConnectionState::Timeout, &mut actions),
            Link::Down => {}
        }
        actions
    }

    /// Time passed.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        match self.link {
            Link::Punching { until, .. } if now >= until => self.on_connection_down(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    fn info(fp: u8) -> PeerInfo {
        PeerInfo {
            fingerprint: [fp; 32],
            candidates: vec![SocketAddr::from(([127, 0, 0, 1], 4000))],
        }
    }

    #[test]
    fn connect_then_accept_then_punch_then_up() {
        let now = Instant::now();
        let mut peer = Peer::new(T);
        assert_eq!(
            peer.connect(),
            vec![
                Action::BrokerConnect,
                Action::StateChanged(ConnectionState::Connecting)
            ]
        );
        assert!(peer.connect().is_empty(), "asking twice changes nothing");
        assert!(peer.on_accepted().is_empty());
        assert_eq!(peer.on_info(info(1)), vec![Action::Allow([1; 32])]);
        let candidates = info(1).candidates;
        assert_eq!(
            peer.on_punch(true, candidates.clone(), now),
            vec![Action::Traverse {
                dialer: true,
                candidates,
                fingerprint: [1; 32]
            }]
        );
        assert_eq!(
            peer.on_connection_up(),
            vec![Action::StateChanged(ConnectionState::Connected)]
        );
        assert!(peer.is_connected());
        assert_eq!(peer.state(), ConnectionState::Connected);
        assert_eq!(
            peer.close(),
            vec![
                Action::BrokerClose,
                Action::CloseConnection,
                Action::Disallow([1; 32]),
                Action::StateChanged(ConnectionState::Closed)
            ]
        );
        assert!(peer.is_idle());
    }

    #[test]
    fn an_incoming_request_waits_for_the_game_unless_auto_accepted() {
        let mut peer = Peer::new(T);
        assert_eq!(peer.on_request(false), vec![Action::ConnectRequest]);
        assert_eq!(
            peer.accept(),
            vec![
                Action::BrokerAccept,
                Action::StateChanged(ConnectionState::Connecting)
            ]
        );
        let mut member = Peer::new(T);
        assert_eq!(
            member.on_request(true),
            vec![
                Action::BrokerAccept,
                Action::StateChanged(ConnectionState::Connecting)
            ]
        );
    }

    #[test]
    fn an_acceptor_that_sees_no_dial_times_out_and_can_retry() {
        let now = Instant::now();
        let mut peer = Peer::new(T);
        peer.on_request(false);
        peer.accept();
        peer.on_info(info(2));
        assert_eq!(
            peer.on_punch(false, Vec::new(), now),
            vec![Action::Traverse {
                dialer: false,
                candidates: Vec::new(),
                fingerprint: [2; 32]
            }]
        );
        assert!(peer.on_tick(now + T / 2).is_empty());
        assert_eq!(
            peer.on_tick(now + T),
            vec![Action::StateChanged(ConnectionState::Timeout)]
        );
        assert_eq!(
            peer.state(),
            ConnectionState::Timeout,
            "as the game was told"
        );
        assert_eq!(
            peer.connect(),
            vec![
                Action::BrokerConnect,
                Action::StateChanged(ConnectionState::Connecting)
            ],
            "a later connect renews the agreement"
        );
        assert!(
            peer.connect().is_empty(),
            "a game sending every frame renews once, not once a packet"
        );
        peer.on_punch(false, Vec::new(), now + T);
        assert_eq!(
            peer.on_tick(now + T * 2),
            vec![Action::StateChanged(ConnectionState::Timeout)]
        );
        assert_eq!(
            peer.connect(),
            vec![
                Action::BrokerConnect,
                Action::StateChanged(ConnectionState::Connecting)
            ]
        );
    }

    #[test]
    fn a_refusal_or_peer_close_ends_everything() {
        let mut peer = Peer::new(T);
        peer.connect();
        peer.on_info(info(3));
        assert_eq!(
            peer.on_closed(),
            vec![
                Action::Disallow([3; 32]),
                Action::StateChanged(ConnectionState::Closed)
            ]
        );
        assert!(peer.is_idle());
        // A punch for a closed pair does nothing.
        assert!(peer.on_punch(true, Vec::new(), Instant::now()).is_empty());
    }

    #[test]
    fn peer_info_arriving_after_a_close_is_ignored() {
        let mut peer = Peer::new(T);
        peer.connect();
        peer.close();
        assert!(peer.on_info(info(6)).is_empty());
        assert!(peer.is_idle());
        assert_eq!(peer.fingerprint(), None);
        // Nor does it let a request the game has not accepted through.
        peer.on_request(false);
        assert!(peer.on_info(info(6)).is_empty());
        assert_eq!(peer.consent(), Consent::Incoming);
    }

    #[test]
    fn a_connection_that_comes_up_after_a_close_is_dropped() {
        let mut peer = Peer::new(T);
        peer.connect();
        peer.close();
        assert_eq!(peer.on_connection_up(), vec![Action::CloseConnection]);
    }

    #[test]
    fn a_new_fingerprint_replaces_the_allowed_one() {
        let mut peer = Peer::new(T);
        peer.connect();
        peer.on_info(info(4));
        assert_eq!(
            peer.on_info(info(5)),
            vec![Action::Disallow([4; 32]), Action::Allow([5; 32])]
        );
        assert_eq!(peer.fingerprint(), Some([5; 32]));
    }
}
