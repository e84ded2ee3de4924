//! A broker attachment driven message by message, for tests that play a client (or an
//! attacker) at the wire level.

use std::time::Duration;

use futures::StreamExt;
use rally_proto::broker::v1::attach_request::Body as Req;
use rally_proto::broker::v1::attach_response::Body;
use rally_proto::broker::v1::broker_client::BrokerClient;
use rally_proto::broker::v1::{
    Accept, AttachRequest, AttachResponse, Connect, Hello, Ping, PunchStart, RelayGrant, Welcome,
};
use rally_relay::wire::{self, Message};
use tokio::sync::mpsc;
use tonic::codec::Streaming;

use crate::{TestServer, TestUser};

/// How long one expected message is waited for.
const WAIT: Duration = Duration::from_secs(20);

/// One attachment, driven by the test.
pub struct Attached {
    /// Where the test queues client messages.
    pub tx: mpsc::UnboundedSender<AttachRequest>,
    /// The server's messages.
    pub rx: Streaming<AttachResponse>,
    next_id: u64,
    /// The server's Welcome.
    pub welcome: Welcome,
}

/// A broker client for `user` on a new connection.
pub async fn client(
    server: &TestServer,
    user: &TestUser,
) -> BrokerClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        rally_client::Bearer,
    >,
> {
    BrokerClient::with_interceptor(
        server.channel().await,
        rally_client::Bearer::new(&user.access_token).expect("token is ASCII"),
    )
}

/// Opens an attachment whose first message is `first`; returns the stream or its status.
pub async fn open(
    server: &TestServer,
    user: &TestUser,
    first: AttachRequest,
) -> Result<
    (
        mpsc::UnboundedSender<AttachRequest>,
        Streaming<AttachResponse>,
    ),
    tonic::Status,
> {
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(first).expect("queue the first message");
    let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    let response = tokio::time::timeout(WAIT, client(server, user).await.attach(stream))
        .await
        .expect("the attach call answers")?;
    Ok((tx, response.into_inner()))
}

impl Attached {
    /// Attaches `user` with `hello` and reads the Welcome.
    pub async fn new(server: &TestServer, user: &TestUser, hello: Hello) -> Self {
        let first = AttachRequest {
            request_id: 1,
            body: Some(Req::Hello(hello)),
        };
        let (tx, rx) = open(server, user, first).await.expect("attach");
        let mut attached = Self {
            tx,
            rx,
            next_id: 2,
            welcome: Welcome::default(),
        };
        let welcome = attached.next().await;
        assert_eq!(welcome.request_id, 1);
        let Some(Body::Welcome(welcome)) = welcome.body else {
            panic!("expected Welcome, got {welcome:?}");
        };
        assert_eq!(welcome.user_id, user.user_id);
        attached.welcome = welcome;
        attached
    }

    /// Sends a message; returns its request id.
    pub fn send(&mut self, body: Req) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.tx
            .send(AttachRequest {
                request_id: id,
                body: Some(body),
            })
            .expect("the stream is open");
        id
    }

    /// The next server message.
    pub async fn next(&mut self) -> AttachResponse {
        match tokio::time::timeout(WAIT, self.rx.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(other) => panic!("expected a message, got {other:?}"),
            Err(_) => panic!("no message within {WAIT:?}"),
        }
    }

    /// The next server message's body, which must answer nothing.
    pub async fn unsolicited(&mut self) -> Body {
        let message = self.next().await;
        assert_eq!(message.request_id, 0, "{message:?}");
        message.body.expect("a body")
    }

    /// Sends a message and returns the body of its immediate answer (the next message).
    pub async fn request(&mut self, body: Req) -> Body {
        let id = self.send(body);
        let answer = self.next().await;
        assert_eq!(answer.request_id, id, "answer out of order: {answer:?}");
        answer.body.expect("a body")
    }

    /// How the stream ends (after any messages still queued, which are skipped).
    pub async fn end(mut self) -> Option<tonic::Status> {
        loop {
            match tokio::time::timeout(WAIT, self.rx.next()).await {
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(status))) => return Some(status),
                Ok(None) => return None,
                Err(_) => panic!("the stream did not end within {WAIT:?}"),
            }
        }
    }

    /// Checks that nothing was queued for this client: a Ping is answered by the very next
    /// message (the server's queue is ordered).
    pub async fn nothing_pending(&mut self) {
        let id = self.send(Req::Ping(Ping { nonce: 99 }));
        let answer = self.next().await;
        assert_eq!(answer.request_id, id, "unexpected message: {answer:?}");
        assert!(matches!(answer.body, Some(Body::Pong(_))));
    }
}

/// Connect to `user`.
pub fn connect(user: &TestUser) -> Req {
    Req::Connect(Connect {
        user_id: user.user_id.clone(),
    })
}

/// Accept `user`'s request.
pub fn accept(user: &TestUser) -> Req {
    Req::Accept(Accept {
        user_id: user.user_id.clone(),
    })
}

/// A connects to B and B accepts; checks every message both receive, in order, and returns
/// (A's PunchStart, B's PunchStart).
pub async fn handshake(
    a: &mut Attached,
    a_user: &TestUser,
    b: &mut Attached,
    b_user: &TestUser,
) -> (PunchStart, PunchStart) {
    let connect_id = a.send(connect(b_user));
    let ack = a.next().await;
    assert_eq!(ack.request_id, connect_id);
    assert!(matches!(ack.body, Some(Body::Ack(_))), "{ack:?}");
    match b.unsolicited().await {
        Body::PeerConnectRequest(request) => assert_eq!(request.user_id, a_user.user_id),
        other => panic!("expected PeerConnectRequest, got {other:?}"),
    }
    assert!(matches!(b.request(accept(a_user)).await, Body::Ack(_)));
    let accepted = a.next().await;
    assert_eq!(
        accepted.request_id, connect_id,
        "ConnectAccepted answers the Connect"
    );
    match accepted.body {
        Some(Body::ConnectAccepted(accepted)) => assert_eq!(accepted.user_id, b_user.user_id),
        other => panic!("expected ConnectAccepted, got {other:?}"),
    }
    let info_of = |body: Body| match body {
        Body::PeerInfo(info) => info,
        other => panic!("expected PeerInfo, got {other:?}"),
    };
    let punch_of = |body: Body| match body {
        Body::PunchStart(punch) => punch,
        other => panic!("expected PunchStart, got {other:?}"),
    };
    let a_info = info_of(a.unsolicited().await);
    let b_info = info_of(b.unsolicited().await);
    assert_eq!(a_info.user_id, b_user.user_id);
    assert_eq!(b_info.user_id, a_user.user_id);
    let a_punch = punch_of(a.unsolicited().await);
    let b_punch = punch_of(b.unsolicited().await);
    assert_eq!(a_punch.user_id, b_user.user_id);
    assert_eq!(b_punch.user_id, a_user.user_id);
    assert_eq!(a_punch.start_at, b_punch.start_at, "a common start time");
    assert_ne!(a_punch.role, b_punch.role, "exactly one side dials");
    assert_eq!(a_punch.candidates, a_info.candidates);
    assert_eq!(b_punch.candidates, b_info.candidates);
    (a_punch, b_punch)
}

/// Presents `grant` to the relay at `relay` from `socket`; the relay's answer.
pub async fn present(
    socket: &tokio::net::UdpSocket,
    relay: std::net::SocketAddr,
    grant: &RelayGrant,
) -> Vec<u8> {
    socket
        .send_to(&allocate_datagram(grant), relay)
        .await
        .expect("send");
    let mut buf = [0u8; 256];
    let (len, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("an answer")
        .expect("receive");
    buf[..len].to_vec()
}

/// The Allocate datagram that presents `grant` for its side.
pub fn allocate_datagram(grant: &RelayGrant) -> Vec<u8> {
    let token: &[u8; rally_relay::grant::GRANT_BYTES] =
        grant.token.as_slice().try_into().expect("grant size");
    let mut datagram = Vec::new();
    wire::encode(
        &Message::Allocate {
            side: u8::try_from(grant.side).expect("side"),
            grant: token,
        },
        &mut datagram,
    );
    datagram
}
