//! The attachment to Rally's connection broker: a [`BrokerLink`] and the [`BrokerEvent`]s it
//! delivers.
//!
//! A link keeps one `rally.broker.v1.Broker/Attach` stream open (see `broker.proto` for the
//! contract): it announces the client (its QUIC certificate fingerprint, address candidates,
//! relay policy and NAT type), pings to stay alive and to measure the round trip and the
//! server's clock, sends the connect signals ([`BrokerLink::connect`], [`BrokerLink::accept`],
//! …) and delivers everything the broker sends unasked as [`BrokerEvent`]s, in arrival order.
//! When the stream is lost it re-attaches by itself with backoff, announcing the latest
//! candidates again.
//!
//! Not here: punching, QUIC and relaying themselves (the data plane acts on these events).
//!
//! ```
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (_dir, _server, url) = rally_client::doc_server!();
//! # let rally = rally_client::Rally::connect(&url).await?;
//! # let session = rally.device_login("doc-broker-ada-0123456789", "Ada").await?;
//! # let bob = rally.device_login("doc-broker-bob-0123456789", "Bob").await?;
//! # let peer = bob.user_id();
//! # let (bob_link, mut bob_events) = rally_client::BrokerLink::attach(&bob, rally_client::Announcement {
//! #     fingerprint: [1; 32], candidates: vec![],
//! #     relay_policy: rally_client::proto::broker::v1::RelayPolicy::Fallback,
//! #     nat_type: rally_client::proto::broker::v1::NatType::Unspecified,
//! # }).await?;
//! # tokio::spawn(async move {
//! #     while let Some(event) = bob_events.recv().await {
//! #         if let rally_client::BrokerEvent::PeerConnectRequest { user } = event {
//! #             let _ = bob_link.accept(user).await;
//! #         }
//! #     }
//! # });
//! use rally_client::broker::{Announcement, BrokerEvent, BrokerLink};
//! use rally_client::proto::broker::v1::{NatType, RelayPolicy};
//!
//! let announcement = Announcement {
//!     fingerprint: [0; 32], // SHA-256 of this client's QUIC certificate
//!     candidates: vec![],
//!     relay_policy: RelayPolicy::Fallback,
//!     nat_type: NatType::Unspecified,
//! };
//! let (link, mut events) = BrokerLink::attach(&session, announcement).await?;
//! link.connect(peer).await?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         BrokerEvent::PunchStart { user, candidates, start_at, dialer, .. } => {
//!             println!("punch toward {user} at {candidates:?} at {start_at:?}, dialing: {dialer}");
//! #           break;
//!         }
//!         BrokerEvent::Superseded => break,
//!         other => println!("{other:?}"),
//!     }
//! }
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rally_proto::broker::v1::attach_request::Body as Request;
use rally_proto::broker::v1::{
    Accept, Candidate, Close, Connect, NatType, QueryRoomPresence, Reject, RelayGrant, RelayPolicy,
    RequestRelayGrant, RoomPresence, UpdateCandidates,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{Error, Result, Session};

pub(crate) mod backoff;
mod clock;
mod driver;
mod pending;
pub(crate) mod wire;

use pending::Answer;

/// How many events wait for the game before the link stops reading the stream.
pub const EVENT_CAPACITY: usize = 1024;
/// How long a request waits for its answer before failing with [`Error::BrokerUnavailable`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How many requests may wait to be sent.
const COMMAND_CAPACITY: usize = 256;

/// What a client announces when it attaches (the Hello), and again on every re-attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// SHA-256 of the DER of this client's QUIC certificate; peers pin it.
    pub fingerprint: [u8; 32],
    /// This client's address candidates: at most 16, none RELAYED.
    pub candidates: Vec<Candidate>,
    /// When this client lets its connections go through the relay (fixed for the link).
    pub relay_policy: RelayPolicy,
    /// This client's NAT type, if measured.
    pub nat_type: NatType,
}

/// Something the broker sent unasked, or a change of the link's state; delivered in arrival
/// order.
#[derive(Debug, Clone, PartialEq)]
pub enum BrokerEvent {
    /// The link is attached: the first event of a link, and again after every re-attach.
    Attached {
        /// The attachment's id.
        attachment_id: String,
        /// The relay's reflector addresses, for learning the server-reflexive address and the
        /// NAT type.
        reflectors: Vec<SocketAddr>,
        /// Whether the server has a relay (it announced reflectors).
        relay_available: bool,
    },
    /// The stream was lost; the link re-attaches with backoff (an `Attached` follows when it
    /// succeeds). Requests fail with [`Error::BrokerUnavailable`] meanwhile.
    Detached {
        /// What ended the stream.
        reason: String,
    },
    /// A user asks to connect: answer with [`BrokerLink::accept`], [`BrokerLink::reject`] or
    /// [`BrokerLink::close`].
    PeerConnectRequest {
        /// The requesting user.
        user: Uuid,
    },
    /// A user accepted this client's connect; `PeerInfo` and `PunchStart` follow.
    ConnectAccepted {
        /// The user who accepted.
        user: Uuid,
    },
    /// A user refused this client's connect.
    ConnectRejected {
        /// The user who refused.
        user: Uuid,
        /// The reason it gave (may be empty).
        reason: String,
    },
    /// An agreed peer's identity and addresses (again whenever they change).
    PeerInfo {
        /// The peer.
        user: Uuid,
        /// SHA-256 of the peer's QUIC certificate: accept a connection from it only with this
        /// fingerprint.
        fingerprint: [u8; 32],
        /// The peer's direct addresses (host, server- and peer-reflexive), highest priority
        /// first.
        candidates: Vec<SocketAddr>,
        /// The relay address that reaches the peer, when the pair holds a relay allocation.
        relayed: Option<SocketAddr>,
        /// The peer's NAT type.
        nat_type: NatType,
    },
    /// Start punching toward an agreed peer. A later one for the same peer supersedes this.
    PunchStart {
        /// The peer.
        user: Uuid,
        /// The peer's direct addresses to punch toward, highest priority first.
        candidates: Vec<SocketAddr>,
        /// Which of them are its public (server- or peer-reflexive) addresses at the IP the
        /// broker saw it come from (none when the broker did not say): where birthday probing
        /// may aim.
        reflexive: Vec<SocketAddr>,
        /// When to start, on this machine's clock (converted from the server's with the offset
        /// measured by Ping/Pong; kept within 30 s of the moment it arrived).
        start_at: Instant,
        /// Whether this side dials (opens the QUIC connection); the peer has the opposite role.
        dialer: bool,
    },
    /// A relay allocation for an agreed pair that this client did not ask for (the peer did,
    /// or the relay policy needs one).
    RelayGrant(RelayGrant),
    /// A pair ended or a pending request was withdrawn; no more signals flow for it.
    PeerClosed {
        /// The peer.
        user: Uuid,
        /// True when the peer stayed detached past the grace period (it did not close).
        detached: bool,
    },
    /// A newer attachment of this user replaced this link; it does not re-attach, and the
    /// channel closes after this event.
    Superseded,
}

/// A live attachment to the broker. Cheap to clone; it lives while a clone exists (dropping the
/// last clone ends the stream, as [`BrokerLink::shutdown`] does).
///
/// The events receiver returned by [`BrokerLink::attach`] yields `None` once the link has ended
/// for good: shut down, superseded, the session ended, or the server refused the announcement.
/// When the game stops reading events, the link stops reading the stream once
/// [`EVENT_CAPACITY`] events wait: no event is ever dropped, but a server that finds the client
/// too slow ends the stream, and the link re-attaches.
#[derive(Clone)]
pub struct BrokerLink {
    inner: Arc<Handle>,
}

struct Handle {
    commands: mpsc::Sender<driver::Command>,
    status: Arc<LinkStatus>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for BrokerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerLink")
            .field("attached", &self.is_attached())
            .field("rtt", &self.rtt())
            .finish_non_exhaustive()
    }
}

/// Why a link ended for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkEnd {
    /// Shut down, or every handle dropped.
    Closed,
    /// A newer attachment replaced it.
    Superseded,
    /// The session ended.
    SessionEnded,
    /// The server refused the announcement on a re-attach.
    Refused,
}

/// The link's state, shared by the driver and the handles.
#[derive(Debug, Default)]
pub(crate) struct LinkStatus {
    attached: AtomicBool,
    rtt: Mutex<Option<Duration>>,
    ended: Mutex<Option<LinkEnd>>,
}

impl LinkStatus {
    pub(crate) fn set_attached(&self, attached: bool) {
        self.attached.store(attached, Ordering::Release);
    }

    pub(crate) fn set_rtt(&self, rtt: Option<Duration>) {
        *self.rtt.lock().unwrap_or_else(PoisonError::into_inner) = rtt;
    }

    pub(crate) fn end(&self, why: LinkEnd) {
        self.set_attached(false);
        self.ended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(why);
    }

    /// The error of a request that found the link ended (or the stream gone).
    pub(crate) fn error(&self) -> Error {
        match *self.ended.lock().unwrap_or_else(PoisonError::into_inner) {
            None => Error::BrokerUnavailable,
            Some(LinkEnd::Closed | LinkEnd::Refused) => Error::Closed,
            Some(LinkEnd::Superseded) => Error::Superseded,
            Some(LinkEnd::SessionEnded) => Error::SessionEnded,
        }
    }
}

impl BrokerLink {
    /// Attaches `session`'s user to the broker with `announcement`. Returns once the server
    /// welcomed the attachment; the first event is [`BrokerEvent::Attached`].
    ///
    /// Errors: [`Error::InvalidArgument`] for candidates outside the contract's bounds (checked
    /// before sending); [`Error::Rpc`] when the server refuses the stream; [`Error::Unreachable`]
    /// without a server. The first attach is not retried.
    pub async fn attach(
        session: &Session,
        announcement: Announcement,
    ) -> Result<(BrokerLink, mpsc::Receiver<BrokerEvent>)> {
        wire::check_candidates(&announcement.candidates)?;
        if session.is_ended() {
            return Err(Error::SessionEnded);
        }
        let (commands, commands_rx) = mpsc::channel(COMMAND_CAPACITY);
        let (events, events_rx) = mpsc::channel(EVENT_CAPACITY);
        let status = Arc::new(LinkStatus::default());
        let cancel = CancellationToken::new();
        let (first, first_rx) = oneshot::channel();
        let driver = driver::Driver::new(
            session.clone(),
            announcement,
            commands_rx,
            events,
            status.clone(),
            cancel.clone(),
        );
        tokio::spawn(driver.run(first));
        match first_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error),
            Err(_) => return Err(Error::Closed),
        }
        let link = BrokerLink {
            inner: Arc::new(Handle {
                commands,
                status,
                cancel,
            }),
        };
        Ok((link, events_rx))
    }

    /// Asks `user` for a connection (`ovr_Net_Connect`). `Ok` once the request reached the user
    /// (it receives `PeerConnectRequest`); its answer comes later as
    /// [`BrokerEvent::ConnectAccepted`], [`BrokerEvent::ConnectRejected`] or
    /// [`BrokerEvent::PeerClosed`]. Connecting to an agreed peer again renews the agreement (a
    /// new `PeerInfo` and `PunchStart` on both sides).
    ///
    /// Errors: [`Error::Broker`] with `UserOffline`, `UserNotFound`, `RelayPolicyConflict`,
    /// `RateLimited`, `InvalidArgument` (oneself); [`Error::BrokerUnavailable`] while detached.
    pub async fn connect(&self, user: Uuid) -> Result<()> {
        let body = Request::Connect(Connect {
            user_id: user.to_string(),
        });
        self.request(body, None).await.map(drop)
    }

    /// Accepts `user`'s pending connect request (`ovr_Net_Accept`): the pair is agreed, and
    /// both sides receive `PeerInfo` and `PunchStart`.
    ///
    /// Errors: [`Error::Broker`] with `NoPendingRequest`, `RelayPolicyConflict`, ….
    pub async fn accept(&self, user: Uuid) -> Result<()> {
        let body = Request::Accept(Accept {
            user_id: user.to_string(),
        });
        self.request(body, None).await.map(drop)
    }

    /// Refuses `user`'s pending connect request, with a reason it is shown (at most 256 bytes;
    /// may be empty).
    pub async fn reject(&self, user: Uuid, reason: &str) -> Result<()> {
        wire::check_reason(reason)?;
        let body = Request::Reject(Reject {
            user_id: user.to_string(),
            reason: reason.to_owned(),
        });
        self.request(body, None).await.map(drop)
    }

    /// Ends the pair with `user`, withdraws this client's pending request to it, or refuses its
    /// pending request without a reason (`ovr_Net_Close`). Closing nothing succeeds.
    pub async fn close(&self, user: Uuid) -> Result<()> {
        let body = Request::Close(Close {
            user_id: user.to_string(),
        });
        self.request(body, None).await.map(drop)
    }

    /// Replaces this client's announced candidates and NAT type; agreed peers receive a new
    /// `PeerInfo` and both sides a new `PunchStart`. The new candidates are remembered for every
    /// later re-attach once the broker accepted them; while detached, they are remembered at
    /// once (and `Ok` is returned), to be announced by the next re-attach.
    pub async fn update_candidates(
        &self,
        candidates: Vec<Candidate>,
        nat_type: NatType,
    ) -> Result<()> {
        wire::check_candidates(&candidates)?;
        let body = Request::UpdateCandidates(UpdateCandidates {
            candidates: candidates.clone(),
            nat_type: nat_type as i32,
        });
        self.request(body, Some((candidates, nat_type)))
            .await
            .map(drop)
    }

    /// Asks for a relay allocation for the agreed pair with `user`; the peer receives the same
    /// allocation as a [`BrokerEvent::RelayGrant`]. Asking again renews it.
    ///
    /// Errors: [`Error::Broker`] with `NotAgreed`, `RelayPolicyConflict`, `RelayUnavailable`.
    pub async fn request_relay_grant(&self, user: Uuid) -> Result<RelayGrant> {
        let body = Request::RequestRelayGrant(RequestRelayGrant {
            user_id: user.to_string(),
        });
        match self.request(body, None).await? {
            Answer::RelayGrant(grant) => Ok(grant),
            other => Err(Error::protocol(format!(
                "RequestRelayGrant answered with {other:?}"
            ))),
        }
    }

    /// The members of the user's current room and whether each is online (an empty `room_id`
    /// when it is in no room).
    pub async fn room_presence(&self) -> Result<RoomPresence> {
        match self
            .request(Request::QueryRoomPresence(QueryRoomPresence {}), None)
            .await?
        {
            Answer::RoomPresence(presence) => Ok(presence),
            other => Err(Error::protocol(format!(
                "QueryRoomPresence answered with {other:?}"
            ))),
        }
    }

    /// Whether the link is attached right now.
    pub fn is_attached(&self) -> bool {
        self.inner.status.attached.load(Ordering::Acquire)
    }

    /// The control link's smoothed round trip, once measured by Ping/Pong.
    pub fn rtt(&self) -> Option<Duration> {
        *self
            .inner
            .status
            .rtt
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the stream for good: no re-attach; requests fail with [`Error::Closed`] and the
    /// events channel closes.
    pub fn shutdown(&self) {
        self.inner.status.end(LinkEnd::Closed);
        self.inner.cancel.cancel();
    }

    /// Sends a request and waits for its immediate answer.
    async fn request(
        &self,
        body: Request,
        on_ack: Option<(Vec<Candidate>, NatType)>,
    ) -> Result<Answer> {
        let (reply, answer) = oneshot::channel();
        let command = driver::Command {
            body,
            on_ack,
            reply,
        };
        let status = &self.inner.status;
        let exchange = async {
            self.inner
                .commands
                .send(command)
                .await
                .map_err(|_| status.error())?;
            answer.await.map_err(|_| status.error())?
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or(Err(Error::BrokerUnavailable))
    }
}
