//! `rally_Net_*` and `rally_Packet_*`: the Meta `ovr_Net_*` and `ovr_Packet_*` calls, one to
//! one, over the signed-in user's `rally_client::net::Net`; and the networking notifications
//! (`rally_NetworkingPeer`, `rally_PingResult`) the queue carries.

use std::ffi::c_void;
use std::sync::Arc;

use bytes::Bytes;
use rally_client::net::{ConnectionState, Net, NetEvent, SendPolicy, framing};
use uuid::Uuid;

use crate::args;
use crate::guard::{
    Failure, RALLY_ERROR_CONNECT_FAILED, RALLY_ERROR_INVALID_HANDLE, call, call_result,
    rally_Result,
};
use crate::handles::{self, Kind};
use crate::id::rally_ID;
use crate::instance::{self, Shared, SignedIn, lock};
use crate::message::{
    Payload, rally_Message, rally_MessageType_Notification_Networking_ConnectionFailed,
    rally_MessageType_Notification_Networking_ConnectionStateChange,
    rally_MessageType_Notification_Networking_PeerConnectRequest,
    rally_MessageType_Notification_Networking_PingResult, rally_RequestID,
};

/// The most bytes of an unreliable packet.
pub const RALLY_MAX_UNRELIABLE_PACKET: usize = 1200;
/// The most bytes of a reliable packet (65535 on the wire with Rally's 2-byte framing).
pub const RALLY_MAX_RELIABLE_PACKET: usize = 65533;
/// Independent reliable lanes per peer (`rally_Net_SendPacketOnLane`: 0 to 7).
pub const RALLY_LANES: u8 = 8;

const _: () = assert!(RALLY_MAX_UNRELIABLE_PACKET == framing::MAX_UNRELIABLE_PAYLOAD);
const _: () = assert!(RALLY_MAX_RELIABLE_PACKET == framing::MAX_RELIABLE_PAYLOAD);
const _: () = assert!(RALLY_LANES == framing::LANES);

/// How a packet is sent (the Meta `ovrSendPolicy`, same values).
pub type rally_SendPolicy = u32;
/// At most `RALLY_MAX_UNRELIABLE_PACKET` bytes; may be lost or reordered; dropped (and counted)
/// while not connected.
pub const rally_SendPolicy_Unreliable: rally_SendPolicy = 0;
/// Delivered once and in order (lane 0), retried until acknowledged, buffered until connected.
pub const rally_SendPolicy_Reliable: rally_SendPolicy = 1;

/// A connection's state (the Meta `ovrPeerConnectionState`, same values, plus `Connecting`).
pub type rally_PeerState = u32;
/// Not known (the state of a peer that asks to connect).
pub const rally_PeerState_Unknown: rally_PeerState = 0;
/// Packets flow between the two peers.
pub const rally_PeerState_Connected: rally_PeerState = 1;
/// Could not be set up in time (unreachable, or the peer did not accept).
pub const rally_PeerState_Timeout: rally_PeerState = 2;
/// Closed by either side, refused, or lost.
pub const rally_PeerState_Closed: rally_PeerState = 3;
/// Being set up (Rally only: Meta reported nothing until the outcome).
pub const rally_PeerState_Connecting: rally_PeerState = 4;

/// A received packet (the Meta `ovrPacket`), owned by the game from `rally_Net_ReadPacket`
/// until `rally_Packet_Free`.
#[derive(Debug)]
pub struct rally_Packet {
    sender: rally_ID,
    data: Bytes,
    lane: u8,
    reliable: bool,
}

/// The peer of a networking notification (the Meta `ovrNetworkingPeer`), owned by its message.
#[derive(Debug)]
pub struct rally_NetworkingPeer {
    id: rally_ID,
    state: rally_PeerState,
}

/// The answer to `rally_Net_Ping` (the Meta `ovrPingResult`), owned by its message.
#[derive(Debug)]
pub struct rally_PingResult {
    request_id: rally_RequestID,
    peer: rally_ID,
    usec: u64,
    timeout: bool,
}

fn state(state: ConnectionState) -> rally_PeerState {
    match state {
        ConnectionState::Connecting => rally_PeerState_Connecting,
        ConnectionState::Connected => rally_PeerState_Connected,
        ConnectionState::Closed => rally_PeerState_Closed,
        ConnectionState::Timeout => rally_PeerState_Timeout,
    }
}

/// The message for a notification of `Net`.
fn event_message(shared: &Shared, event: NetEvent) -> rally_Message {
    let peer = |user: Uuid, state| {
        Payload::Peer(rally_NetworkingPeer {
            id: user.into(),
            state,
        })
    };
    match event {
        NetEvent::ConnectionStateChanged { user, state: s } => rally_Message::new(
            rally_MessageType_Notification_Networking_ConnectionStateChange,
            0,
            peer(user, state(s)),
        ),
        NetEvent::PeerConnectRequest { user } => rally_Message::new(
            rally_MessageType_Notification_Networking_PeerConnectRequest,
            0,
            peer(user, rally_PeerState_Unknown),
        ),
        NetEvent::PingResult { user, ping_id, rtt } => {
            let request_id = lock(&shared.pings).remove(&ping_id).unwrap_or(0);
            let usec = rtt.map_or(0, |rtt| u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX));
            rally_Message::new(
                rally_MessageType_Notification_Networking_PingResult,
                request_id,
                Payload::Ping(rally_PingResult {
                    request_id,
                    peer: user.into(),
                    usec,
                    timeout: rtt.is_none(),
                }),
            )
        }
        NetEvent::ConnectionFailed { user, reason } => rally_Message::new(
            rally_MessageType_Notification_Networking_ConnectionFailed,
            0,
            peer(user, rally_PeerState_Timeout),
        )
        .with_error(Failure::new(RALLY_ERROR_CONNECT_FAILED, reason.to_string())),
    }
}

/// Moves `net`'s notifications into the message queue until it stops.
pub(crate) async fn forward_events(shared: Arc<Shared>, net: Net) {
    while let Some(event) = net.next_event().await {
        let message = event_message(&shared, event);
        shared.queue.push(message);
    }
}

/// A peer's id, checked: not nil, not the signed-in user.
fn peer(user: &SignedIn, id: rally_ID) -> Result<Uuid, Failure> {
    let id = id.require("peer")?;
    if id == user.session.user_id() {
        return Err(Failure::invalid("peer is the signed-in user"));
    }
    Ok(id)
}

/// The SDK policy and size limit of a C send policy.
fn policy(policy: rally_SendPolicy) -> Result<(SendPolicy, usize), Failure> {
    match policy {
        rally_SendPolicy_Unreliable => Ok((SendPolicy::Unreliable, RALLY_MAX_UNRELIABLE_PACKET)),
        rally_SendPolicy_Reliable => Ok((SendPolicy::Reliable, RALLY_MAX_RELIABLE_PACKET)),
        other => Err(Failure::invalid(format!(
            "{other} is not a rally_SendPolicy"
        ))),
    }
}

/// Runs a consent step (`connect`, `accept`, `close`) on the runtime: it waits for the broker,
/// and the game hears the outcome as a state change.
fn consent<F, Fut>(peer_id: rally_ID, step: F) -> rally_Result
where
    F: FnOnce(Net, Uuid) -> Fut,
    Fut: Future<Output = rally_client::Result<()>> + Send + 'static,
{
    call_result(|| {
        instance::with_user(|instance, user| {
            let id = peer(&user, peer_id)?;
            let work = step(user.net, id);
            instance.spawn(async move {
                if let Err(error) = work.await {
                    tracing::debug!(%error, peer = %id, "a consent step failed; the state change says so");
                }
            });
            Ok(())
        })
    })
}

/// Asks `peer` for a connection (`ovr_Net_Connect`). Returns at once; a
/// `Notification_Networking_ConnectionStateChange` follows (`Connected`, or `Closed`/`Timeout`).
/// `rally_Net_SendPacket` also connects implicitly, but drops unreliable packets until the
/// connection is up.
///
/// Returns `RALLY_OK`, or at once `RALLY_ERROR_NOT_LOGGED_IN`, `RALLY_ERROR_INVALID_ARGUMENT`
/// (the nil id or the signed-in user's own). Thread safety: any thread.
#[unsafe(no_mangle)]
pub extern "C" fn rally_Net_Connect(peer: rally_ID) -> rally_Result {
    consent(peer, |net, id| async move { net.connect(id).await })
}

/// Accepts `peer`'s connect request (`ovr_Net_Accept`), after a
/// `Notification_Networking_PeerConnectRequest`. Returns at once, as `rally_Net_Connect`.
#[unsafe(no_mangle)]
pub extern "C" fn rally_Net_Accept(peer: rally_ID) -> rally_Result {
    consent(peer, |net, id| async move { net.accept(id).await })
}

/// Closes the connection with `peer`, or refuses its request (`ovr_Net_Close`); both sides get
/// a state change to `Closed`. Returns at once, as `rally_Net_Connect`.
#[unsafe(no_mangle)]
pub extern "C" fn rally_Net_Close(peer: rally_ID) -> rally_Result {
    consent(peer, |net, id| async move { net.close(id).await })
}

/// From now on accepts connect requests from members of the current room without a
/// `PeerConnectRequest` (`ovr_Net_AcceptForCurrentRoom`), and accepts those waiting. `false`
/// when the user is in no room, or on an error (`rally_GetLastError`).
///
/// Waits for one answer of the broker (the room's members), at most 5 seconds.
#[unsafe(no_mangle)]
pub extern "C" fn rally_Net_AcceptForCurrentRoom() -> bool {
    call(|| {
        instance::with_user(|instance, user| instance.block_on(user.net.accept_for_current_room()))
    })
    .unwrap_or(false)
}

/// Closes the connections with every other member of the current room and stops accepting
/// them automatically (`ovr_Net_CloseForCurrentRoom`); call it before leaving a room. `false`
/// when the user is in no room, or on an error.
///
/// Waits for one answer of the broker (the room's members), at most 5 seconds.
#[unsafe(no_mangle)]
pub extern "C" fn rally_Net_CloseForCurrentRoom() -> bool {
    call(|| {
        instance::with_user(|instance, user| instance.block_on(user.net.close_for_current_room()))
    })
    .unwrap_or(false)
}

/// Whether packets flow with `peer` right now (`ovr_Net_IsConnected`). Never waits.
#[unsafe(no_mangle)]
pub extern "C" fn rally_Net_IsConnected(peer: rally_ID) -> bool {
    call(|| instance::with_user(|_, user| Ok(user.net.is_connected(peer.into())))).unwrap_or(false)
}

/// Measures the round trip to a connected peer (`ovr_Net_Ping`). Returns a request id; a
/// `Notification_Networking_PingResult` with that id answers (the time, or a timeout after 5 s).
/// 0 when not connected to `peer` (or another error: `rally_GetLastError`). Never waits.
#[unsafe(no_mangle)]
pub extern "C" fn rally_Net_Ping(peer: rally_ID) -> rally_RequestID {
    call(|| {
        instance::with_user(|instance, user| {
            let id = self::peer(&user, peer)?;
            // Held while pinging, so that the answer cannot be forwarded before it is recorded.
            let mut pings = lock(&instance.shared.pings);
            let ping_id = user.net.ping(id)?;
            let request = instance.shared.next_request();
            pings.insert(ping_id, request);
            Ok(request)
        })
    })
    .unwrap_or(0)
}

fn send(peer_id: rally_ID, data: &[u8], policy: SendPolicy) -> Result<bool, Failure> {
    instance::with_user(|_, user| {
        let id = peer(&user, peer_id)?;
        user.net
            .send_packet(id, Bytes::copy_from_slice(data), policy)?;
        Ok(true)
    })
}

/// Sends `length` bytes to `peer` (`ovr_Net_SendPacket`; same argument order). With no
/// connection, starts one: reliable packets wait for it, unreliable ones are dropped (and
/// counted; the call still answers `true`, as it does when the datagram queue is full). Returns
/// `false` when the packet was not taken: too large for the policy
/// (`RALLY_MAX_UNRELIABLE_PACKET`, `RALLY_MAX_RELIABLE_PACKET`), the reliable send buffer is
/// full, a bad id or policy, not signed in (`rally_GetLastError` says which). Never waits.
///
/// Ownership: the bytes are copied; the caller keeps its buffer. Thread safety: any thread.
///
/// # Safety
/// `bytes` is `NULL` (only with `length` 0) or points to `length` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Net_SendPacket(
    peer: rally_ID,
    length: usize,
    bytes: *const c_void,
    policy: rally_SendPolicy,
) -> bool {
    call(|| {
        let (policy, max) = self::policy(policy)?;
        // SAFETY: forwarded from the caller (the size is checked against `max` first).
        let data = unsafe { args::bytes(bytes, length, max, "bytes")? };
        send(peer, data, policy)
    })
    .unwrap_or(false)
}

/// Sends a reliable packet on one of `RALLY_LANES` independent lanes (Rally only): order holds
/// within a lane, and a loss on one lane does not hold back the others. Lane 0 is
/// `rally_SendPolicy_Reliable`. Otherwise as `rally_Net_SendPacket`.
///
/// # Safety
/// `bytes` is `NULL` (only with `length` 0) or points to `length` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Net_SendPacketOnLane(
    peer: rally_ID,
    length: usize,
    bytes: *const c_void,
    lane: u8,
) -> bool {
    call(|| {
        if lane >= RALLY_LANES {
            return Err(Failure::invalid(format!("lane {lane} is not 0 to 7")));
        }
        // SAFETY: forwarded from the caller (the size is checked first).
        let data = unsafe { args::bytes(bytes, length, RALLY_MAX_RELIABLE_PACKET, "bytes")? };
        send(peer, data, SendPolicy::ReliableLane(lane))
    })
    .unwrap_or(false)
}

/// Sends `length` bytes to every other member of the current room, each peer to peer
/// (`ovr_Net_SendPacketToCurrentRoom`). `false` when the user is in no room or the packet was
/// not taken (as `rally_Net_SendPacket`).
///
/// The room's members are asked of the broker at most twice a second: such a call waits for
/// that answer (at most 5 seconds); the others never wait.
///
/// # Safety
/// `bytes` is `NULL` (only with `length` 0) or points to `length` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Net_SendPacketToCurrentRoom(
    length: usize,
    bytes: *const c_void,
    policy: rally_SendPolicy,
) -> bool {
    call(|| {
        let (policy, max) = self::policy(policy)?;
        // SAFETY: forwarded from the caller (the size is checked first).
        let data = unsafe { args::bytes(bytes, length, max, "bytes")? };
        let data = Bytes::copy_from_slice(data);
        instance::with_user(|instance, user| {
            instance.block_on(user.net.send_packet_to_current_room(data, policy))
        })
    })
    .unwrap_or(false)
}

/// The next received packet, or `NULL` when none is waiting (`ovr_Net_ReadPacket`). Never
/// waits. Call it in a loop once a frame until it returns `NULL`.
///
/// Ownership: the packet is the caller's; free it with `rally_Packet_Free`. Thread safety: any
/// thread; each packet goes to exactly one caller.
#[unsafe(no_mangle)]
pub extern "C" fn rally_Net_ReadPacket() -> *mut rally_Packet {
    call(|| {
        let packet = instance::with_user(|_, user| Ok(user.net.read_packet()))?;
        Ok(match packet {
            Some(packet) => {
                let (reliable, lane) = match packet.policy {
                    SendPolicy::Unreliable => (false, 0),
                    SendPolicy::Reliable => (true, 0),
                    SendPolicy::ReliableLane(lane) => (true, lane),
                };
                let packet = rally_Packet {
                    sender: packet.sender.into(),
                    data: packet.data,
                    lane,
                    reliable,
                };
                handles::give(Box::new(packet), Kind::Packet, |_| Vec::new())
            }
            None => std::ptr::null_mut(),
        })
    })
    .unwrap_or(std::ptr::null_mut())
}

fn packet<R>(packet: *const rally_Packet, read: impl FnOnce(&rally_Packet) -> R) -> Result<R, i32> {
    call(|| handles::with(packet, Kind::Packet, "packet", read))
}

/// The packet's bytes (`ovr_Packet_GetBytes`), `rally_Packet_GetSize` of them, owned by the
/// packet (valid until `rally_Packet_Free`); `NULL` for an invalid handle.
///
/// # Safety
/// `packet` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Packet_GetBytes(packet: *const rally_Packet) -> *const c_void {
    self::packet(packet, |p| p.data.as_ptr().cast::<c_void>()).unwrap_or(std::ptr::null())
}

/// The packet's size in bytes (`ovr_Packet_GetSize`); 0 for an invalid handle.
///
/// # Safety
/// `packet` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Packet_GetSize(packet: *const rally_Packet) -> usize {
    self::packet(packet, |p| p.data.len()).unwrap_or(0)
}

/// Who sent the packet (`ovr_Packet_GetSenderID`): the user whose pinned certificate the
/// connection has, never a claim inside the packet. The nil id for an invalid handle.
///
/// # Safety
/// `packet` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Packet_GetSenderID(packet: *const rally_Packet) -> rally_ID {
    self::packet(packet, |p| p.sender).unwrap_or_default()
}

/// How the packet was sent (`ovr_Packet_GetSendPolicy`): `rally_SendPolicy_Reliable` for every
/// reliable lane (see `rally_Packet_GetLane`).
///
/// # Safety
/// `packet` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Packet_GetSendPolicy(
    packet: *const rally_Packet,
) -> rally_SendPolicy {
    self::packet(packet, |p| {
        if p.reliable {
            rally_SendPolicy_Reliable
        } else {
            rally_SendPolicy_Unreliable
        }
    })
    .unwrap_or(rally_SendPolicy_Unreliable)
}

/// The reliable lane the packet came on (0 for lane 0 and for unreliable packets).
///
/// # Safety
/// `packet` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Packet_GetLane(packet: *const rally_Packet) -> u8 {
    self::packet(packet, |p| p.lane).unwrap_or(0)
}

/// Frees a packet from `rally_Net_ReadPacket` (`ovr_Packet_Free`). `NULL` is ignored; a pointer
/// that is not a live packet (freed already) is refused and left alone.
///
/// # Safety
/// `packet` is `NULL` or a pointer Rally returned; after this call its bytes may not be used.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Packet_Free(packet: *mut rally_Packet) {
    let _ = call(|| {
        if packet.is_null() || handles::free(packet, Kind::Packet, |_| Vec::new()) {
            Ok(())
        } else {
            Err(Failure::new(
                RALLY_ERROR_INVALID_HANDLE,
                "packet is not a live packet (freed already, or not from Rally)",
            ))
        }
    });
}

/// The peer's user id (`ovr_NetworkingPeer_GetID`); the nil id for an invalid handle.
///
/// # Safety
/// `peer` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_NetworkingPeer_GetID(peer: *const rally_NetworkingPeer) -> rally_ID {
    call(|| handles::with(peer, Kind::NetworkingPeer, "peer", |p| p.id)).unwrap_or_default()
}

/// The connection's new state (`ovr_NetworkingPeer_GetState`); `rally_PeerState_Unknown` for
/// a connect request or an invalid handle.
///
/// # Safety
/// `peer` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_NetworkingPeer_GetState(
    peer: *const rally_NetworkingPeer,
) -> rally_PeerState {
    call(|| handles::with(peer, Kind::NetworkingPeer, "peer", |p| p.state))
        .unwrap_or(rally_PeerState_Unknown)
}

fn ping<R>(
    ping: *const rally_PingResult,
    read: impl FnOnce(&rally_PingResult) -> R,
) -> Result<R, i32> {
    call(|| handles::with(ping, Kind::PingResult, "ping result", read))
}

/// The request id `rally_Net_Ping` returned (`ovr_PingResult_GetID`); 0 for an invalid handle.
///
/// # Safety
/// `ping` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_PingResult_GetID(ping: *const rally_PingResult) -> rally_RequestID {
    self::ping(ping, |p| p.request_id).unwrap_or(0)
}

/// The peer that was pinged (Rally only); the nil id for an invalid handle.
///
/// # Safety
/// `ping` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_PingResult_GetPeerID(ping: *const rally_PingResult) -> rally_ID {
    self::ping(ping, |p| p.peer).unwrap_or_default()
}

/// The round trip in microseconds (`ovr_PingResult_GetPingTimeUsec`); 0 on a timeout.
///
/// # Safety
/// `ping` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_PingResult_GetPingTimeUsec(ping: *const rally_PingResult) -> u64 {
    self::ping(ping, |p| p.usec).unwrap_or(0)
}

/// Whether no answer came within 5 seconds (`ovr_PingResult_IsTimeout`); `true` for an invalid
/// handle.
///
/// # Safety
/// `ping` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_PingResult_IsTimeout(ping: *const rally_PingResult) -> bool {
    self::ping(ping, |p| p.timeout).unwrap_or(true)
}
