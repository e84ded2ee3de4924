//! The C ABI called from Rust as a C game would call it, against a real `rallyd` in this
//! process.
//!
//! The library has one instance per process, so this file is one test that runs its stages in
//! order (tests in one binary share the process). The second player is the Rust SDK itself, a
//! `rally_client::net::Net` on its own runtime; two C instances play each other in
//! `examples/run.sh` (two processes), which CI runs under valgrind.

use std::ffi::{CStr, CString, c_void};
use std::ptr;
use std::time::{Duration, Instant};

use rally::*;
use rally_client::net::{ConnectionState, Net, NetConfig, NetEvent, SendPolicy};
use rally_e2e::{Backend, TestServer};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

fn last_error() -> String {
    // SAFETY: rally_GetLastError returns a NUL-terminated string valid until the next call.
    unsafe { CStr::from_ptr(rally_GetLastError()) }
        .to_string_lossy()
        .into_owned()
}

/// A message popped from the queue, freed on drop.
struct Message(*mut rally_Message);

impl Drop for Message {
    fn drop(&mut self) {
        // SAFETY: a live message from rally_PopMessage, freed once.
        unsafe { rally_FreeMessage(self.0) };
    }
}

impl Message {
    fn kind(&self) -> rally_MessageType {
        // SAFETY: a live message.
        unsafe { rally_Message_GetType(self.0) }
    }

    fn request(&self) -> rally_RequestID {
        // SAFETY: a live message.
        unsafe { rally_Message_GetRequestID(self.0) }
    }

    fn error(&self) -> Option<(rally_Result, String)> {
        // SAFETY: a live message; the error and its text belong to it.
        unsafe {
            let error = rally_Message_GetError(self.0);
            (!error.is_null()).then(|| {
                let text = CStr::from_ptr(rally_Error_GetMessage(error));
                (
                    rally_Error_GetCode(error),
                    text.to_string_lossy().into_owned(),
                )
            })
        }
    }
}

/// Pumps the queue (as a game loop would, once a "frame") until `want` picks a message; the
/// others are freed.
fn pump_until(what: &str, mut want: impl FnMut(&Message) -> bool) -> Message {
    let deadline = Instant::now() + WAIT;
    loop {
        let raw = rally_PopMessage();
        if raw.is_null() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let message = Message(raw);
        if want(&message) {
            return message;
        }
    }
}

/// Waits for the result of `request`, which must not be an error.
fn result_of(request: rally_RequestID, what: &str) -> Message {
    assert_ne!(request, 0, "{what} was refused: {}", last_error());
    let message = pump_until(what, |m| m.request() == request);
    assert_eq!(message.error(), None, "{what} failed");
    message
}

fn id(uuid: Uuid) -> rally_ID {
    rally_ID {
        bytes: *uuid.as_bytes(),
    }
}

#[test]
fn the_c_abi_signs_in_meets_in_a_room_and_exchanges_packets() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let server = runtime
        .block_on(TestServer::start(Backend::Sqlite))
        .expect("SQLite needs no setup");
    let url = CString::new(format!("http://{}", server.addr())).expect("no NUL");

    before_init_everything_is_refused();
    init(&url);
    let me = sign_in();
    let room = create_room();
    let (peer, peer_session, peer_net) = peer_joins(&runtime, &url, room);
    connect_and_exchange(&runtime, me, peer, &peer_net);
    bad_arguments_are_refused(peer);
    matchmaking_finds_a_match(&runtime, &peer_session);
    let logout = result_of(rally_User_Logout(), "the logout");
    assert_eq!(logout.kind(), rally_MessageType_User_Logout);
    assert!(rally_ID_IsNil(rally_GetLoggedInUserID()));
    assert_eq!(rally_User_Logout(), 0, "signed out already");
    assert_eq!(rally_Shutdown(), RALLY_OK);
    // A message the game still holds outlives the instance.
    assert_eq!(logout.kind(), rally_MessageType_User_Logout);
    drop(logout);
    assert_eq!(rally_Shutdown(), RALLY_ERROR_NOT_INITIALIZED);
    // Rally starts again after a shutdown.
    // SAFETY: a C string.
    assert_eq!(unsafe { rally_Init(url.as_ptr()) }, RALLY_OK);
    assert_eq!(rally_Shutdown(), RALLY_OK);
    peer_net.shutdown();
    drop(server);
    tls_options_choose_the_certificate_trusted(&runtime);
}

/// `tls_ca_pem` reaches a TLS `rallyd` with a self-hosted CA; `tls_pin_sha256` with another
/// certificate's hash fails the sign-in with a TLS error, and nothing is signed in.
fn tls_options_choose_the_certificate_trusted(runtime: &tokio::runtime::Runtime) {
    use rally_e2e::pki::{TestCa, TlsFolder, Validity};
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Studio CA");
    let folder = TlsFolder::new(dir.path());
    folder.install(&ca.issue(&["localhost"], Validity::Current));
    let flags = folder.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = runtime
        .block_on(TestServer::start_with(Backend::Sqlite, &flags))
        .expect("SQLite needs no setup");
    let url = CString::new(format!("https://localhost:{}", server.addr().port())).expect("no NUL");
    let ca_pem = CString::new(ca.pem()).expect("no NUL");
    let wrong_pin = CString::new("00".repeat(32)).expect("no NUL");
    for (key, value, signs_in) in [
        (c"tls_ca_pem", ca_pem.as_c_str(), true),
        (c"tls_pin_sha256", wrong_pin.as_c_str(), false),
    ] {
        let options = [rally_KeyValuePair {
            key: key.as_ptr(),
            value: value.as_ptr(),
        }];
        // SAFETY: a C string and an array of one pair of C strings.
        let init = unsafe { rally_InitWithOptions(url.as_ptr(), options.as_ptr(), options.len()) };
        assert_eq!(init, RALLY_OK, "{}", last_error());
        let device = CString::new(format!("ffi-tls-{}", Uuid::new_v4().simple())).expect("no NUL");
        // SAFETY: C strings.
        let request = unsafe { rally_User_LoginWithDevice(device.as_ptr(), c"Ada".as_ptr()) };
        assert_ne!(request, 0, "{}", last_error());
        let message = pump_until("the TLS sign-in", |m| m.request() == request);
        match signs_in {
            true => assert_eq!(message.error(), None, "sign-in over TLS"),
            false => {
                let (_, text) = message.error().expect("a refused certificate");
                assert!(text.contains("TLS with rallyd failed"), "{text}");
                assert!(rally_ID_IsNil(rally_GetLoggedInUserID()));
            }
        }
        drop(message);
        assert_eq!(rally_Shutdown(), RALLY_OK);
    }
    drop(server);
}

fn before_init_everything_is_refused() {
    assert!(rally_PopMessage().is_null());
    assert_eq!(rally_GetLastErrorCode(), RALLY_ERROR_NOT_INITIALIZED);
    assert_eq!(
        rally_Net_Connect(id(Uuid::new_v4())),
        RALLY_ERROR_NOT_INITIALIZED
    );
    assert!(rally_Net_ReadPacket().is_null());
    assert!(!rally_Net_IsConnected(id(Uuid::new_v4())));
    // SAFETY: NULL is a documented argument (refused).
    unsafe {
        assert_eq!(rally_Init(ptr::null()), RALLY_ERROR_NULL_POINTER);
        assert_eq!(rally_User_LoginWithDevice(ptr::null(), ptr::null()), 0);
        assert_eq!(rally_GetLastErrorCode(), RALLY_ERROR_NULL_POINTER);
        let option = rally_KeyValuePair {
            key: c"colour".as_ptr(),
            value: c"blue".as_ptr(),
        };
        assert_eq!(
            rally_InitWithOptions(c"http://127.0.0.1:1".as_ptr(), &option, 1),
            RALLY_ERROR_INVALID_ARGUMENT
        );
        assert!(last_error().contains("colour"), "{}", last_error());
        // Freeing NULL is allowed; freeing what Rally never gave is refused, not done.
        rally_FreeMessage(ptr::null_mut());
        rally_Packet_Free(ptr::null_mut());
        let mut not_a_packet = [0u64; 8];
        rally_Packet_Free(not_a_packet.as_mut_ptr().cast());
        assert_eq!(rally_GetLastErrorCode(), RALLY_ERROR_INVALID_HANDLE);
        assert_eq!(rally_Packet_GetSize(not_a_packet.as_ptr().cast()), 0);
        assert_eq!(
            rally_Message_GetType(ptr::null()),
            rally_MessageType_Unknown
        );
    }
    assert_eq!(rally_Shutdown(), RALLY_ERROR_NOT_INITIALIZED);
}

fn init(url: &CString) {
    let options = [rally_KeyValuePair {
        key: c"bind".as_ptr(),
        value: c"127.0.0.1:0".as_ptr(),
    }];
    // SAFETY: a C string and an array of one pair of C strings.
    unsafe {
        assert_eq!(
            rally_InitWithOptions(url.as_ptr(), options.as_ptr(), options.len()),
            RALLY_OK,
            "{}",
            last_error()
        );
        assert_eq!(rally_Init(url.as_ptr()), RALLY_ERROR_ALREADY_INITIALIZED);
    }
    // Signed out: the Net calls say so.
    assert_eq!(
        rally_Net_Connect(id(Uuid::new_v4())),
        RALLY_ERROR_NOT_LOGGED_IN
    );
    assert!(rally_ID_IsNil(rally_GetLoggedInUserID()));
}

fn sign_in() -> rally_ID {
    let device = CString::new(format!("ffi-test-{}", Uuid::new_v4().simple())).expect("no NUL");
    // SAFETY: C strings.
    let request = unsafe { rally_User_LoginWithDevice(device.as_ptr(), c"Ada".as_ptr()) };
    // A second sign-in while the first runs is refused at once.
    // SAFETY: C strings.
    let again = unsafe { rally_User_LoginWithDevice(device.as_ptr(), c"Ada".as_ptr()) };
    assert_eq!(again, 0);
    assert_eq!(rally_GetLastErrorCode(), RALLY_ERROR_ALREADY_LOGGED_IN);
    let message = result_of(request, "sign-in");
    assert_eq!(message.kind(), rally_MessageType_User_Login);
    // SAFETY: a live message; the user and its name belong to it.
    let (me, name) = unsafe {
        let user = rally_Message_GetUser(message.0);
        (
            rally_User_GetID(user),
            CStr::from_ptr(rally_User_GetDisplayName(user)).to_owned(),
        )
    };
    assert_eq!(name.to_str(), Ok("Ada"));
    assert!(!rally_ID_IsNil(me));
    assert_eq!(rally_GetLoggedInUserID(), me);
    me
}

fn create_room() -> rally_ID {
    assert_eq!(rally_Room_Create(2, 7, 0), 0, "a bad visibility is refused");
    let request = rally_Room_Create(2, rally_RoomVisibility_Private, rally_RoomJoinPolicy_Open);
    let message = result_of(request, "the room");
    assert_eq!(message.kind(), rally_MessageType_Room_Create);
    // SAFETY: a live message; the room belongs to it.
    let room = unsafe {
        let room = rally_Message_GetRoom(message.0);
        assert_eq!(rally_Room_GetCapacity(room), 2);
        assert_eq!(rally_Room_GetMemberCount(room), 1);
        assert!(
            rally_ID_IsNil(rally_Room_GetMemberID(room, 1)),
            "out of range"
        );
        rally_Room_GetID(room)
    };
    let data = [rally_KeyValuePair {
        key: c"map".as_ptr(),
        value: c"arena".as_ptr(),
    }];
    // SAFETY: an array of one pair of C strings.
    let request = unsafe { rally_Room_UpdateDataStore(room, data.as_ptr(), data.len()) };
    let message = result_of(request, "the room data");
    // SAFETY: a live message and a C string key.
    let map = unsafe {
        CStr::from_ptr(rally_Room_GetDataValue(
            rally_Message_GetRoom(message.0),
            c"map".as_ptr(),
        ))
    };
    assert_eq!(map.to_str(), Ok("arena"));
    assert!(rally_Net_AcceptForCurrentRoom(), "{}", last_error());
    room
}

fn peer_joins(
    runtime: &tokio::runtime::Runtime,
    url: &CString,
    room: rally_ID,
) -> (rally_ID, rally_client::Session, Net) {
    let url = url.to_str().expect("UTF-8").to_owned();
    let net = runtime.block_on(async {
        let session = rally_client::Rally::connect(&url)
            .await?
            .device_login(&format!("ffi-peer-{}", Uuid::new_v4().simple()), "Bob")
            .await?;
        session
            .rooms()
            .join_room(&Uuid::from_bytes(room.bytes).to_string())
            .await?;
        let mut config = NetConfig::default();
        config.transport.bind = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let net = Net::start(&session, config).await?;
        Ok::<_, rally_client::Error>((session, net))
    });
    let (session, net) = net.expect("the Rust peer joins");
    (id(net.user_id()), session, net)
}

fn connect_and_exchange(
    runtime: &tokio::runtime::Runtime,
    me: rally_ID,
    peer: rally_ID,
    peer_net: &Net,
) {
    let me_uuid = Uuid::from_bytes(me.bytes);
    // The Rust peer connects; the C side auto-accepts members of its room.
    runtime
        .block_on(peer_net.connect(me_uuid))
        .expect("the peer asks");
    pump_until("the connection", |m| {
        // SAFETY: a live message; the peer belongs to it.
        unsafe {
            let networking = rally_Message_GetNetworkingPeer(m.0);
            m.kind() == rally_MessageType_Notification_Networking_ConnectionStateChange
                && rally_NetworkingPeer_GetID(networking) == peer
                && rally_NetworkingPeer_GetState(networking) == rally_PeerState_Connected
        }
    });
    assert!(rally_Net_IsConnected(peer));
    runtime
        .block_on(async {
            tokio::time::timeout(WAIT, async {
                while let Some(event) = peer_net.next_event().await {
                    if event
                        == (NetEvent::ConnectionStateChanged {
                            user: me_uuid,
                            state: ConnectionState::Connected,
                        })
                    {
                        return;
                    }
                }
            })
            .await
        })
        .expect("the peer sees the connection");

    // C to Rust: reliable packets in order and intact, across the size range.
    let sizes = [1usize, 100, 1200, 20_000, RALLY_MAX_RELIABLE_PACKET];
    for (n, size) in sizes.iter().enumerate() {
        let packet = vec![n as u8; *size];
        // SAFETY: `packet` holds `size` bytes.
        let sent = unsafe {
            rally_Net_SendPacket(
                peer,
                packet.len(),
                packet.as_ptr().cast(),
                rally_SendPolicy_Reliable,
            )
        };
        assert!(sent, "{}", last_error());
    }
    for (n, size) in sizes.iter().enumerate() {
        let packet = runtime
            .block_on(async { tokio::time::timeout(WAIT, peer_net.recv()).await })
            .expect("in time")
            .expect("a packet");
        assert_eq!(packet.sender, me_uuid);
        assert_eq!(packet.policy, SendPolicy::Reliable);
        assert_eq!(&packet.data[..], &vec![n as u8; *size][..]);
    }

    // Rust to C: a reliable packet on lane 3, then read with the ovr_Packet_* getters.
    {
        let _context = runtime.enter();
        peer_net
            .send_packet(
                me_uuid,
                &b"hello from Rust"[..],
                SendPolicy::ReliableLane(3),
            )
            .expect("sent");
    }
    let deadline = Instant::now() + WAIT;
    let packet = loop {
        let packet = rally_Net_ReadPacket();
        if !packet.is_null() {
            break packet;
        }
        assert!(Instant::now() < deadline, "no packet arrived");
        std::thread::sleep(Duration::from_millis(2));
    };
    // SAFETY: a live packet, freed once at the end; its bytes are read before that.
    unsafe {
        let bytes = std::slice::from_raw_parts(
            rally_Packet_GetBytes(packet).cast::<u8>(),
            rally_Packet_GetSize(packet),
        );
        assert_eq!(bytes, b"hello from Rust");
        assert_eq!(rally_Packet_GetSenderID(packet), peer);
        assert_eq!(
            rally_Packet_GetSendPolicy(packet),
            rally_SendPolicy_Reliable
        );
        assert_eq!(rally_Packet_GetLane(packet), 3);
        rally_Packet_Free(packet);
        // A second free is refused, not done.
        rally_Packet_Free(packet);
        assert_eq!(rally_GetLastErrorCode(), RALLY_ERROR_INVALID_HANDLE);
        assert!(rally_Packet_GetBytes(packet).is_null());
    }

    // Ping: the result carries the request id the call returned.
    let request = rally_Net_Ping(peer);
    assert_ne!(request, 0, "{}", last_error());
    let message = pump_until("the ping result", |m| {
        m.kind() == rally_MessageType_Notification_Networking_PingResult
    });
    assert_eq!(message.request(), request);
    // SAFETY: a live message; the result belongs to it.
    unsafe {
        let ping = rally_Message_GetPingResult(message.0);
        assert_eq!(rally_PingResult_GetID(ping), request);
        assert_eq!(rally_PingResult_GetPeerID(ping), peer);
        assert!(!rally_PingResult_IsTimeout(ping));
    }

    // To the room: the Rust peer is its other member.
    // SAFETY: a byte string literal.
    assert!(unsafe {
        rally_Net_SendPacketToCurrentRoom(4, b"room".as_ptr().cast(), rally_SendPolicy_Reliable)
    });
    let packet = runtime
        .block_on(async { tokio::time::timeout(WAIT, peer_net.recv()).await })
        .expect("in time")
        .expect("a packet");
    assert_eq!(&packet.data[..], b"room");
}

fn bad_arguments_are_refused(peer: rally_ID) {
    let me = rally_GetLoggedInUserID();
    let big = vec![0u8; RALLY_MAX_RELIABLE_PACKET + 1];
    // SAFETY: every pointer is NULL (refused) or points to as many bytes as given.
    unsafe {
        assert!(!rally_Net_SendPacket(
            rally_ID::default(),
            1,
            b"x".as_ptr().cast(),
            rally_SendPolicy_Reliable
        ));
        assert_eq!(rally_GetLastErrorCode(), RALLY_ERROR_INVALID_ARGUMENT);
        assert!(!rally_Net_SendPacket(
            me,
            1,
            b"x".as_ptr().cast(),
            rally_SendPolicy_Reliable
        ));
        assert_eq!(rally_GetLastErrorCode(), RALLY_ERROR_INVALID_ARGUMENT);
        assert!(!rally_Net_SendPacket(
            peer,
            1,
            ptr::null::<c_void>(),
            rally_SendPolicy_Reliable
        ));
        assert_eq!(rally_GetLastErrorCode(), RALLY_ERROR_NULL_POINTER);
        assert!(!rally_Net_SendPacket(peer, 1, b"x".as_ptr().cast(), 9));
        assert_eq!(rally_GetLastErrorCode(), RALLY_ERROR_INVALID_ARGUMENT);
        assert!(!rally_Net_SendPacket(
            peer,
            big.len(),
            big.as_ptr().cast(),
            rally_SendPolicy_Reliable
        ));
        assert_eq!(rally_GetLastErrorCode(), RALLY_ERROR_PACKET_TOO_LARGE);
        assert!(!rally_Net_SendPacket(
            peer,
            1201,
            big.as_ptr().cast(),
            rally_SendPolicy_Unreliable
        ));
        assert_eq!(rally_GetLastErrorCode(), RALLY_ERROR_PACKET_TOO_LARGE);
        assert!(!rally_Net_SendPacketOnLane(
            peer,
            1,
            b"x".as_ptr().cast(),
            RALLY_LANES
        ));
        assert_eq!(rally_GetLastErrorCode(), RALLY_ERROR_INVALID_ARGUMENT);
        assert_eq!(rally_Net_Connect(me), RALLY_ERROR_INVALID_ARGUMENT);
        assert_eq!(
            rally_Net_Accept(rally_ID::default()),
            RALLY_ERROR_INVALID_ARGUMENT
        );
        assert_eq!(
            rally_Net_Ping(id(Uuid::new_v4())),
            0,
            "not connected to a stranger"
        );
        assert_eq!(rally_GetLastErrorCode(), RALLY_ERROR_NOT_CONNECTED);
        assert_eq!(rally_Room_Join(rally_ID::default()), 0);
        let mut out = rally_ID::default();
        assert!(!rally_ID_FromString(c"nope".as_ptr(), &mut out));
        assert_eq!(
            rally_Matchmaking_Enqueue(ptr::null(), ptr::null(), 0, ptr::null(), 0),
            0
        );
        assert_eq!(rally_GetLastErrorCode(), RALLY_ERROR_NULL_POINTER);
        assert_eq!(
            rally_Matchmaking_Enqueue(c"default".as_ptr(), ptr::null(), 1, ptr::null(), 0),
            0
        );
        assert_eq!(rally_GetLastErrorCode(), RALLY_ERROR_NULL_POINTER);
    }
    // A server refusal comes back as an error message with the gRPC status.
    let request = rally_Room_Get(id(Uuid::new_v4()));
    assert_ne!(request, 0);
    let refused = pump_until("the refusal", |m| m.request() == request);
    let (code, _) = refused.error().expect("an error");
    assert_eq!(code, RALLY_ERROR_SERVER_REFUSED);
}

fn matchmaking_finds_a_match(
    runtime: &tokio::runtime::Runtime,
    peer_session: &rally_client::Session,
) {
    let skill = [rally_NumericAttribute {
        name: c"skill".as_ptr(),
        value: 1500.0,
    }];
    // SAFETY: a C string and an array of one attribute.
    let request = unsafe {
        rally_Matchmaking_Enqueue(c"default".as_ptr(), ptr::null(), 0, skill.as_ptr(), 1)
    };
    let queued = result_of(request, "the ticket");
    assert_eq!(queued.kind(), rally_MessageType_Matchmaking_Enqueue);
    // SAFETY: a live message; the ticket belongs to it.
    unsafe {
        let ticket = rally_Message_GetMatchmakingTicket(queued.0);
        assert_eq!(
            rally_MatchmakingTicket_GetStatus(ticket),
            rally_TicketStatus_Queued
        );
        assert_eq!(
            CStr::from_ptr(rally_MatchmakingTicket_GetPool(ticket)).to_str(),
            Ok("default")
        );
    }
    runtime
        .block_on(peer_session.matchmaking().enqueue(
            rally_client::proto::rooms::v1::EnqueueRequest {
                pool: "default".into(),
                ..Default::default()
            },
        ))
        .expect("the peer queues");
    let found = pump_until("the match", |m| {
        m.kind() == rally_MessageType_Notification_Matchmaking_MatchFound
    });
    assert_eq!(
        found.request(),
        request,
        "the match carries the enqueue's request id"
    );
    // SAFETY: a live message; the ticket belongs to it.
    let room = unsafe {
        let ticket = rally_Message_GetMatchmakingTicket(found.0);
        assert_eq!(
            rally_MatchmakingTicket_GetStatus(ticket),
            rally_TicketStatus_Matched
        );
        rally_MatchmakingTicket_GetRoomID(ticket)
    };
    assert!(!rally_ID_IsNil(room));
    // The matched user is a member of the match's room already.
    let current = result_of(rally_Room_GetCurrent(), "the current room");
    // SAFETY: a live message; the room belongs to it.
    let current_id = unsafe { rally_Room_GetID(rally_Message_GetRoom(current.0)) };
    assert_eq!(current_id, room);
    let left = result_of(rally_Room_Leave(room), "leaving the room");
    assert_eq!(left.kind(), rally_MessageType_Room_Leave);
    let none = result_of(rally_Room_GetCurrent(), "no current room");
    // SAFETY: a live message.
    assert!(unsafe { rally_Message_GetRoom(none.0) }.is_null());
    assert!(!rally_Net_AcceptForCurrentRoom(), "in no room");
}
