//! The signals: what each client message does to the shared state, and who is told what.
//!
//! Authorisation lives here. A user's fingerprint and candidates are only ever put into PeerInfo
//! and PunchStart for the other user of an *agreed* pair ([`Broker::exchange`] reads the pair and
//! refuses anything else), and a client with RELAY_POLICY_ALWAYS has only its relayed candidate
//! forwarded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use rally_proto::broker::v1::attach_request::Body as Request;
use rally_proto::broker::v1::attach_response::Body;
use rally_proto::broker::v1::{
    Ack, AttachResponse, Candidate, CandidateKind, ConnectAccepted, ConnectRejected, Error,
    ErrorCode, MemberPresence, NatType, PeerClosed, PeerClosedReason, PeerConnectRequest, PeerInfo,
    PunchRole, PunchStart, RelayGrant, RelayPolicy, RoomPresence, SocketAddress, Superseded,
    UpdateCandidates,
};
use rally_relay::grant::Grant;
use rally_rooms::clock::{now, timestamp};
use rally_store::broker::{ConnectOutcome, Pair, PairState, Presence, RelayAllocation};
use rally_store::{StoreError, UnixMillis};
use uuid::Uuid;

use crate::Broker;
use crate::link::Link;
use crate::validate::{self, Announcement};

/// A refused client message: an Error answer.
#[derive(Debug)]
pub(crate) struct Refusal {
    code: ErrorCode,
    message: String,
}

impl Refusal {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Its error code.
    pub(crate) fn code(&self) -> ErrorCode {
        self.code
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    fn internal(error: &StoreError) -> Self {
        tracing::error!(%error, "broker store call failed");
        Self::new(
            ErrorCode::Internal,
            "the server could not process the message; it may be sent again",
        )
    }

    pub(crate) fn into_body(self) -> Body {
        let mut message = self.message;
        if message.len() > 256 {
            let mut end = 256;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Body::Error(Error {
            code: self.code as i32,
            message,
        })
    }
}

impl From<validate::Invalid> for Refusal {
    fn from(invalid: validate::Invalid) -> Self {
        Self::invalid(invalid.0)
    }
}

fn internal(error: StoreError) -> Refusal {
    Refusal::internal(&error)
}

/// The message that ends a superseded attachment.
pub(crate) fn superseded(by: Uuid) -> AttachResponse {
    AttachResponse {
        request_id: 0,
        body: Some(Body::Superseded(Superseded {
            by_attachment_id: by.to_string(),
        })),
    }
}

/// A socket address on the wire.
pub(crate) fn socket_address(address: SocketAddr) -> SocketAddress {
    SocketAddress {
        ip: address.ip().to_string(),
        port: u32::from(address.port()),
    }
}

fn ack(request_id: u64) -> AttachResponse {
    AttachResponse {
        request_id,
        body: Some(Body::Ack(Ack {})),
    }
}

/// How hard a NAT type is to traverse (unmeasured counts as moderate).
fn strictness(nat: NatType) -> u8 {
    match nat {
        NatType::Open => 0,
        NatType::Unspecified | NatType::Moderate => 1,
        NatType::Strict => 2,
    }
}

/// Whether `a` dials `b`: the stricter NAT dials; on a tie, the user id that sorts first.
pub(crate) fn dials(a: (Uuid, NatType), b: (Uuid, NatType)) -> bool {
    match strictness(a.1).cmp(&strictness(b.1)) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        // Uuid orders by bytes, which is the order of the canonical lowercase text.
        std::cmp::Ordering::Equal => a.0 < b.0,
    }
}

/// The live users' presence rows and announcements, by user.
type Announced = HashMap<Uuid, (Presence, Announcement)>;

impl Broker {
    /// Applies a signal (any client message but Hello and Ping). `Ok(None)`: the answer was
    /// already sent (before follow-up messages, so it comes first).
    pub(crate) async fn signal(
        self: &Arc<Self>,
        link: &Arc<Link>,
        id: u64,
        body: Request,
    ) -> Result<Option<Body>, Refusal> {
        let me = link.user;
        match body {
            Request::UpdateCandidates(update) => self.update_candidates(link, id, update).await,
            Request::Connect(connect) => {
                let peer = validate::peer_id("user_id", &connect.user_id, me)?;
                self.connect(link, id, peer).await
            }
            Request::Accept(accept) => {
                let peer = validate::peer_id("user_id", &accept.user_id, me)?;
                link.forget_told(peer);
                self.accept(link, id, peer).await
            }
            Request::Reject(reject) => {
                let peer = validate::peer_id("user_id", &reject.user_id, me)?;
                validate::reason(&reject.reason)?;
                link.forget_told(peer);
                if !self
                    .stores
                    .broker
                    .reject(me, peer)
                    .await
                    .map_err(internal)?
                {
                    return Err(no_pending(peer));
                }
                link.send(ack(id));
                self.notify(
                    peer,
                    Body::ConnectRejected(ConnectRejected {
                        user_id: me.to_string(),
                        reason: reject.reason,
                    }),
                )
                .await;
                Ok(None)
            }
            Request::Close(close) => {
                let peer = validate::peer_id("user_id", &close.user_id, me)?;
                let closed = self.stores.broker.close(me, peer).await.map_err(internal)?;
                link.take_connect(&peer.to_string());
                // The release leaves before the Ack: a client that saw the Ack knows the relay
                // was told.
                if let Some(pair) = &closed {
                    self.release(pair).await;
                }
                link.send(ack(id));
                if closed.is_some() {
                    self.notify(
                        peer,
                        Body::PeerClosed(PeerClosed {
                            user_id: me.to_string(),
                            reason: PeerClosedReason::Closed as i32,
                        }),
                    )
                    .await;
                }
                Ok(None)
            }
            Request::RequestRelayGrant(request) => {
                let peer = validate::peer_id("user_id", &request.user_id, me)?;
                self.relay_grant(me, peer).await.map(Some)
            }
            Request::QueryRoomPresence(_) => self.room_presence(me).await.map(Some),
            // The session loop answers these itself.
            Request::Hello(_) | Request::Ping(_) | Request::Reauthenticate(_) => Err(
                Refusal::invalid("Hello, Ping and Reauthenticate are not signals"),
            ),
        }
    }

    async fn announced(&self, users: &[Uuid]) -> Result<Announced, Refusal> {
        let rows = self.stores.broker.presence(users).await.map_err(internal)?;
        let mut announced = HashMap::new();
        for row in rows {
            match Announcement::decode(&row.announcement) {
                Ok(announcement) => {
                    announced.insert(row.user, (row, announcement));
                }
                Err(error) => {
                    tracing::error!(%error, user = %row.user, "a stored announcement is unreadable");
                }
            }
        }
        Ok(announced)
    }

    async fn update_candidates(
        self: &Arc<Self>,
        link: &Arc<Link>,
        id: u64,
        update: UpdateCandidates,
    ) -> Result<Option<Body>, Refusal> {
        validate::candidates(&update.candidates)?;
        validate::nat_type(update.nat_type)?;
        let me = link.user;
        let mut announced = self.announced(&[me]).await?;
        let Some((_, mut announcement)) = announced.remove(&me) else {
            return Err(Refusal::new(
                ErrorCode::Internal,
                "this attachment is no longer current",
            ));
        };
        announcement.hello.candidates = update.candidates;
        announcement.hello.nat_type = update.nat_type;
        let current = self
            .stores
            .broker
            .announce(me, link.attachment_id, announcement.encode())
            .await
            .map_err(internal)?;
        if !current {
            return Err(Refusal::new(
                ErrorCode::Internal,
                "this attachment is no longer current",
            ));
        }
        link.send(ack(id));
        self.announce_to_peers(me, true).await;
        Ok(None)
    }

    /// Sends `user`'s new PeerInfo to each agreed peer (and a new PunchStart to both sides of
    /// each pair, if `punch`).
    pub(crate) async fn announce_to_peers(&self, user: Uuid, punch: bool) {
        let pairs = match self.stores.broker.pairs_of(user).await {
            Ok(pairs) => pairs,
            Err(error) => {
                tracing::warn!(%error, %user, "could not read pairs to announce new candidates");
                return;
            }
        };
        for pair in pairs.iter().filter(|p| p.state == PairState::Agreed) {
            let peer = pair.other(user);
            if let Err(refusal) = self.exchange(user, peer, false, true, punch).await {
                tracing::warn!(?refusal, %user, %peer, "could not announce to a peer");
            }
        }
    }

    async fn connect(
        self: &Arc<Self>,
        link: &Arc<Link>,
        id: u64,
        peer: Uuid,
    ) -> Result<Option<Body>, Refusal> {
        let me = link.user;
        let announced = self.announced(&[me, peer]).await?;
        match announced.get(&peer) {
            Some((row, _)) if row.online() => {}
            Some(_) => return Err(offline(peer)),
            None => {
                let exists = self
                    .stores
                    .identity
                    .user_by_id(peer)
                    .await
                    .map_err(internal)?
                    .is_some();
                return Err(if exists {
                    offline(peer)
                } else {
                    not_found(peer)
                });
            }
        }
        check_policies(&announced, me, peer)?;
        let outcome = self
            .stores
            .broker
            .connect(me, peer, self.config.pair_limits, now())
            .await
            .map_err(|error| match error {
                StoreError::NotFound(_) => not_found(peer),
                error => internal(error),
            })?;
        match outcome {
            ConnectOutcome::Requested => {
                link.remember_connect(peer, id);
                link.send(ack(id));
                self.notify(
                    peer,
                    Body::PeerConnectRequest(PeerConnectRequest {
                        user_id: me.to_string(),
                    }),
                )
                .await;
            }
            ConnectOutcome::AlreadyPending => {
                link.send(ack(id));
            }
            ConnectOutcome::Crossed => {
                link.remember_connect(peer, id);
                link.send(ack(id));
                link.deliver(accepted_by(peer));
                self.notify(
                    peer,
                    Body::ConnectAccepted(ConnectAccepted {
                        user_id: me.to_string(),
                    }),
                )
                .await;
                self.exchange(me, peer, true, true, true).await?;
            }
            ConnectOutcome::AlreadyAgreed => {
                link.send(ack(id));
                self.exchange(me, peer, true, true, true).await?;
            }
            ConnectOutcome::CallerAtLimit => {
                return Err(Refusal::new(
                    ErrorCode::RateLimited,
                    "you have too many pending connect requests or pairs; close some first",
                ));
            }
            ConnectOutcome::PeerAtLimit => {
                return Err(Refusal::new(
                    ErrorCode::RateLimited,
                    "that user has too many pending connect requests; retry later",
                ));
            }
        }
        Ok(None)
    }

    async fn accept(
        self: &Arc<Self>,
        link: &Arc<Link>,
        id: u64,
        requester: Uuid,
    ) -> Result<Option<Body>, Refusal> {
        let me = link.user;
        let announced = self.announced(&[me, requester]).await?;
        check_policies(&announced, me, requester)?;
        if !self
            .stores
            .broker
            .accept(me, requester)
            .await
            .map_err(internal)?
        {
            return Err(no_pending(requester));
        }
        link.send(ack(id));
        self.notify(
            requester,
            Body::ConnectAccepted(ConnectAccepted {
                user_id: me.to_string(),
            }),
        )
        .await;
        self.exchange(me, requester, true, true, true).await?;
        Ok(None)
    }

    /// Tells the users of the agreed pair `a`-`b` about each other: PeerInfo to `a` (about `b`)
    /// if `to_a`, to `b` if `to_b`, then a PunchStart to both if `punch`. A pair with a side
    /// that always relays gets its relay allocation first. Does nothing unless the pair is agreed
    /// and both users are still present (attached, or detached within the grace period).
    pub(crate) async fn exchange(
        &self,
        a: Uuid,
        b: Uuid,
        to_a: bool,
        to_b: bool,
        punch: bool,
    ) -> Result<(), Refusal> {
        let announced = self.announced(&[a, b]).await?;
        let (Some((_, ann_a)), Some((_, ann_b))) = (announced.get(&a), announced.get(&b)) else {
            return Ok(());
        };
        let Some(mut pair) = self.stores.broker.pair(a, b).await.map_err(internal)? else {
            return Ok(());
        };
        if pair.state != PairState::Agreed {
            return Ok(());
        }
        let always = ann_a.relay_policy() == RelayPolicy::Always
            || ann_b.relay_policy() == RelayPolicy::Always;
        if always && pair.relay.is_none() && self.config.relay.is_some() {
            let (for_low, for_high) = self.grant(&mut pair).await?;
            self.notify(pair.low, Body::RelayGrant(for_low)).await;
            self.notify(pair.high, Body::RelayGrant(for_high)).await;
        }
        let relayed = match (&self.config.relay, pair.relay) {
            (Some(relay), Some(_)) => Some(Candidate {
                kind: CandidateKind::Relayed as i32,
                address: Some(socket_address(relay.address)),
                priority: 0,
            }),
            _ => None,
        };
        let visible = |announcement: &Announcement| -> Vec<Candidate> {
            let mut candidates = match announcement.relay_policy() {
                RelayPolicy::Always => Vec::new(),
                _ => announcement.hello.candidates.clone(),
            };
            candidates.extend(relayed.clone());
            candidates
        };
        // Where the broker saw the peer, unless the peer hides its address.
        let observed = |announcement: &Announcement| match announcement.relay_policy() {
            RelayPolicy::Always => String::new(),
            _ => announcement
                .observed_ip
                .map(|ip| ip.to_string())
                .unwrap_or_default(),
        };
        let info = |user: Uuid, announcement: &Announcement| PeerInfo {
            user_id: user.to_string(),
            certificate_fingerprint: announcement.hello.certificate_fingerprint.clone(),
            candidates: visible(announcement),
            nat_type: announcement.hello.nat_type,
        };
        if to_a {
            self.notify(a, Body::PeerInfo(info(b, ann_b))).await;
        }
        if to_b {
            self.notify(b, Body::PeerInfo(info(a, ann_a))).await;
        }
        if punch {
            let start_at = timestamp(now().saturating_add(millis(self.config.punch_lead)));
            let a_dials = dials((a, ann_a.nat_type()), (b, ann_b.nat_type()));
            let role = |dialer: bool| {
                if dialer {
                    PunchRole::Dialer as i32
                } else {
                    PunchRole::Acceptor as i32
                }
            };
            self.notify(
                a,
                Body::PunchStart(PunchStart {
                    user_id: b.to_string(),
                    candidates: visible(ann_b),
                    start_at: Some(start_at),
                    role: role(a_dials),
                    observed_ip: observed(ann_b),
                }),
            )
            .await;
            self.notify(
                b,
                Body::PunchStart(PunchStart {
                    user_id: a.to_string(),
                    candidates: visible(ann_a),
                    start_at: Some(start_at),
                    role: role(!a_dials),
                    observed_ip: observed(ann_a),
                }),
            )
            .await;
        }
        Ok(())
    }

    /// Answers RequestRelayGrant: a grant for the caller (returned) and one for its peer (sent).
    async fn relay_grant(&self, me: Uuid, peer: Uuid) -> Result<Body, Refusal> {
        let mut pair = match self.stores.broker.pair(me, peer).await.map_err(internal)? {
            Some(pair) if pair.state == PairState::Agreed => pair,
            _ => {
                return Err(Refusal::new(
                    ErrorCode::NotAgreed,
                    format!("there is no agreed pair with {peer}; Connect and wait for the accept"),
                ));
            }
        };
        let announced = self.announced(&[me, peer]).await?;
        if announced
            .values()
            .any(|(_, a)| a.relay_policy() == RelayPolicy::Never)
        {
            return Err(Refusal::new(
                ErrorCode::RelayPolicyConflict,
                "a side of this pair never relays",
            ));
        }
        let (for_low, for_high) = self.grant(&mut pair).await?;
        let (mine, theirs) = if me == pair.low {
            (for_low, for_high)
        } else {
            (for_high, for_low)
        };
        self.notify(peer, Body::RelayGrant(theirs)).await;
        Ok(Body::RelayGrant(mine))
    }

    /// Signs a grant for the pair's allocation (a new one, or the same id with a later expiry),
    /// records it (in the store and in `pair`), and returns the RelayGrant for the low and the
    /// high user.
    async fn grant(&self, pair: &mut Pair) -> Result<(RelayGrant, RelayGrant), Refusal> {
        let Some(relay) = &self.config.relay else {
            return Err(Refusal::new(
                ErrorCode::RelayUnavailable,
                "this server has no relay configured",
            ));
        };
        if pair.relay.is_none() {
            for user in [pair.low, pair.high] {
                let at = now();
                let relayed = self
                    .stores
                    .broker
                    .pairs_of(user)
                    .await
                    .map_err(internal)?
                    .iter()
                    .filter(|p| p.relay.is_some_and(|r| r.expires_at > at))
                    .count();
                if relayed >= relay.max_allocations_per_user {
                    return Err(Refusal::new(
                        ErrorCode::RateLimited,
                        format!(
                            "user {user} is in {relayed} relayed pairs, the most a user may be \
                             in; close one first"
                        ),
                    ));
                }
            }
        }
        let allocation = pair
            .relay
            .map_or_else(|| Uuid::new_v4().into_bytes(), |r| r.id);
        let expires_at = now().saturating_add(millis(relay.grant_ttl));
        let record = RelayAllocation {
            id: allocation,
            expires_at,
        };
        let recorded = self
            .stores
            .broker
            .set_relay(pair.low, pair.high, record)
            .await
            .map_err(internal)?;
        if !recorded {
            return Err(Refusal::new(
                ErrorCode::NotAgreed,
                "the pair ended meanwhile",
            ));
        }
        pair.relay = Some(record);
        // Each side its own grant, bound to it: side 0 is the low user's, side 1 the high's.
        let token = |side: u8| {
            Grant {
                key_id: relay.key.id,
                allocation,
                user_a: pair.low.into_bytes(),
                user_b: pair.high.into_bytes(),
                side,
                expires_at_ms: u64::try_from(expires_at).unwrap_or(0),
                byte_cap: relay.max_bytes,
                rate_bytes_per_sec: relay.max_bytes_per_second,
            }
            .sign(&relay.key)
        };
        let message = |peer: Uuid, side: u32| RelayGrant {
            user_id: peer.to_string(),
            relay_address: Some(socket_address(relay.address)),
            allocation_id: allocation.to_vec(),
            token: token(u8::from(side == 1)).to_vec(),
            expires_at: Some(timestamp(expires_at)),
            max_bytes: relay.max_bytes,
            max_bytes_per_second: u64::from(relay.max_bytes_per_second),
            side,
        };
        Ok((message(pair.high, 0), message(pair.low, 1)))
    }

    /// Tells the relay that an ended pair's allocation (if it had one) is free: the relay drops
    /// it and refuses its grants from then on. One datagram, never answered; if it is lost the
    /// allocation ends when idle, with the relay's per-user cap bounding what lingers.
    pub(crate) async fn release(&self, pair: &Pair) {
        let (Some(relay), Some(allocation), Some(socket)) =
            (&self.config.relay, pair.relay, &self.release_socket)
        else {
            return;
        };
        let issued_at = u64::try_from(now()).unwrap_or(0);
        let release = rally_relay::grant::sign_release(&relay.key, allocation.id, issued_at);
        let mut datagram = Vec::with_capacity(rally_relay::grant::RELEASE_BYTES + 4);
        rally_relay::wire::encode(
            &rally_relay::wire::Message::Release { release: &release },
            &mut datagram,
        );
        if let Err(error) = socket.send_to(&datagram, relay.address).await {
            tracing::warn!(%error, relay = %relay.address, "could not release a relay allocation");
        }
    }

    async fn room_presence(&self, me: Uuid) -> Result<Body, Refusal> {
        let Some(room) = self.stores.rooms.current_room(me).await.map_err(internal)? else {
            return Ok(Body::RoomPresence(RoomPresence::default()));
        };
        let users: Vec<Uuid> = room.members.iter().map(|m| m.user_id).collect();
        let rows = self
            .stores
            .broker
            .presence(&users)
            .await
            .map_err(internal)?;
        let members = room
            .members
            .iter()
            .map(|member| MemberPresence {
                user_id: member.user_id.to_string(),
                online: rows
                    .iter()
                    .any(|row| row.user == member.user_id && row.online()),
            })
            .collect();
        Ok(Body::RoomPresence(RoomPresence {
            room_id: room.id.to_string(),
            members,
        }))
    }

    /// Sends the attachment a PeerConnectRequest for every request waiting for its answer, in a
    /// task of its own and each as the attachment's queue has room: however many requests wait,
    /// a re-attach never overflows its queue.
    pub(crate) async fn repeat_pending_requests(&self, link: &Arc<Link>) {
        let pairs = match self.stores.broker.pairs_of(link.user).await {
            Ok(pairs) => pairs,
            Err(error) => {
                tracing::warn!(%error, user = %link.user, "could not read pending requests");
                return;
            }
        };
        let requests: Vec<AttachResponse> = pairs
            .into_iter()
            .filter_map(|pair| match pair.state {
                // Told once: a request that reached the client meanwhile is not repeated.
                PairState::Pending { requester }
                    if requester != link.user && link.first_telling(requester) =>
                {
                    Some(AttachResponse {
                        request_id: 0,
                        body: Some(Body::PeerConnectRequest(PeerConnectRequest {
                            user_id: requester.to_string(),
                        })),
                    })
                }
                _ => None,
            })
            .collect();
        if requests.is_empty() {
            return;
        }
        let link = link.clone();
        tokio::spawn(async move {
            for request in requests {
                if !link.send_paced(request).await {
                    break;
                }
            }
        });
    }
}

fn accepted_by(peer: Uuid) -> AttachResponse {
    AttachResponse {
        request_id: 0,
        body: Some(Body::ConnectAccepted(ConnectAccepted {
            user_id: peer.to_string(),
        })),
    }
}

/// A duration in milliseconds, as the store's times are (saturating).
pub(crate) fn millis(duration: std::time::Duration) -> UnixMillis {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn check_policies(announced: &Announced, a: Uuid, b: Uuid) -> Result<(), Refusal> {
    if let (Some((_, x)), Some((_, y))) = (announced.get(&a), announced.get(&b))
        && !validate::policies_compatible(x.relay_policy(), y.relay_policy())
    {
        return Err(Refusal::new(
            ErrorCode::RelayPolicyConflict,
            "one side never relays and the other always does: no connection is possible",
        ));
    }
    Ok(())
}

fn offline(peer: Uuid) -> Refusal {
    Refusal::new(
        ErrorCode::UserOffline,
        format!("user {peer} is not attached"),
    )
}

fn not_found(peer: Uuid) -> Refusal {
    Refusal::new(ErrorCode::UserNotFound, format!("no user has id {peer}"))
}

fn no_pending(peer: Uuid) -> Refusal {
    Refusal::new(
        ErrorCode::NoPendingRequest,
        format!("user {peer} has no pending connect request to you"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nat(n: u8) -> NatType {
        match n % 4 {
            0 => NatType::Unspecified,
            1 => NatType::Open,
            2 => NatType::Moderate,
            _ => NatType::Strict,
        }
    }

    #[test]
    fn the_stricter_nat_dials() {
        let (a, b) = (Uuid::from_u128(2), Uuid::from_u128(1));
        assert!(dials((a, NatType::Strict), (b, NatType::Open)));
        assert!(!dials((a, NatType::Open), (b, NatType::Moderate)));
        assert!(
            !dials((a, NatType::Moderate), (b, NatType::Unspecified)),
            "tie: lower id dials"
        );
        assert!(dials((b, NatType::Moderate), (a, NatType::Unspecified)));
    }

    proptest! {
        #[test]
        fn exactly_one_side_of_a_pair_dials(x in any::<u128>(), y in any::<u128>(), n in any::<u8>(), m in any::<u8>()) {
            prop_assume!(x != y);
            let a = (Uuid::from_u128(x), nat(n));
            let b = (Uuid::from_u128(y), nat(m));
            prop_assert!(dials(a, b) != dials(b, a));
        }
    }

    #[test]
    fn error_messages_are_cut_to_256_bytes_on_a_char_boundary() {
        let Body::Error(error) = Refusal::invalid("é".repeat(300)).into_body() else {
            panic!("an error body");
        };
        assert!(error.message.len() <= 256);
        assert!(error.message.chars().all(|c| c == 'é'));
    }
}
