//! One unary gRPC call at a time on loopback: `GetRoom` answered by `rallyd` with a room whose
//! answer is about 4 KiB, next to a bare tonic server answering the same `GetRoom` with the same
//! message from memory (no authentication, no store), in the same run.
//!
//! An answer of a few KiB on a socket without `TCP_NODELAY` waits for the client's delayed ACK
//! (Nagle: about 40 ms on Linux) where the bare server, which tonic binds with `TCP_NODELAY`,
//! answers in a fraction of a millisecond: this scenario shows that at once. Rally is measured in
//! plaintext and over TLS 1.3.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::Context;
use rally_proto::rooms::v1::rooms_server::{Rooms, RoomsServer};
use rally_proto::rooms::v1::{CreateRoomRequest, GetRoomRequest, GetRoomResponse, Room};
use tokio_util::sync::CancellationToken;

use crate::Budget;
use crate::hist::Hist;
use crate::report::Report;
use crate::scenarios::{UNARY, UNARY_ANSWER_BYTES};

pub(crate) async fn run(budget: Budget, report: &mut Report) -> anyhow::Result<()> {
    let calls = if budget.quick { 200 } else { 5_000 };
    let dir = tempfile::tempdir().context("a temporary directory")?;
    let pki = rally_e2e::pki::TestCa::new("bench CA");
    let folder = rally_e2e::pki::TlsFolder::new(dir.path());
    folder.install(&pki.issue(&["localhost"], rally_e2e::pki::Validity::Current));
    let flags = folder.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let tls = rally_e2e::TestServer::start_with(rally_e2e::Backend::Sqlite, &flags)
        .await
        .context("rallyd over TLS did not start")?;
    let plain = rally_e2e::TestServer::start(rally_e2e::Backend::Sqlite)
        .await
        .context("rallyd did not start")?;

    // The answer a client gets: the room as rallyd stores it, ~4 KiB with its data.
    let (session, room_id) = room_of_size(&format!("http://{}", plain.addr())).await?;
    let room = session.rooms().get_room(&room_id).await?;
    let answer_bytes = prost::Message::encoded_len(&GetRoomResponse {
        room: Some(room.clone()),
    });

    let bare = BareRooms::serve(room.clone()).await?;
    let mut bare_client = rally_proto::rooms::v1::rooms_client::RoomsClient::new(
        rally_client::connect(&format!("http://{}", bare.addr)).await?,
    );
    let mut bare_times = Hist::new(false)?;
    for _ in 0..calls {
        let started = Instant::now();
        bare_client
            .get_room(GetRoomRequest {
                room_id: room_id.clone(),
            })
            .await
            .context("the bare GetRoom")?;
        bare_times.record(started.elapsed());
    }
    let settings = format!("sequential calls; answer {answer_bytes} B");
    bare_times.push_rows(report, UNARY, "bare tonic GetRoom", &settings, true);

    let mut times = Hist::new(false)?;
    for _ in 0..calls {
        let started = Instant::now();
        session.rooms().get_room(&room_id).await?;
        times.record(started.elapsed());
    }
    times.push_rows(report, UNARY, "Rally GetRoom", &settings, false);

    // The same room read through the TLS server (its own database: a room of the same size).
    let config = rally_client::RallyConfig::with_trust(rally_client::ServerTrust::ca_pem(
        pki.pem().as_bytes(),
    )?);
    let url = format!("https://localhost:{}", tls.addr().port());
    let tls_session = rally_client::Rally::connect_with(&url, &config)
        .await?
        .device_login(
            &format!("bench-unary-tls-{}", uuid::Uuid::new_v4().simple()),
            "u",
        )
        .await?;
    let tls_room = create_room(&tls_session).await?;
    let mut tls_times = Hist::new(false)?;
    for _ in 0..calls {
        let started = Instant::now();
        tls_session.rooms().get_room(&tls_room).await?;
        tls_times.record(started.elapsed());
    }
    tls_times.push_rows(
        report,
        UNARY,
        "Rally GetRoom over TLS 1.3",
        &settings,
        false,
    );

    anyhow::ensure!(
        (UNARY_ANSWER_BYTES - 512..UNARY_ANSWER_BYTES + 512).contains(&answer_bytes),
        "the GetRoom answer is {answer_bytes} B, not about {UNARY_ANSWER_BYTES}"
    );
    bare.stop.cancel();
    Ok(())
}

async fn room_of_size(url: &str) -> anyhow::Result<(rally_client::Session, String)> {
    let session = rally_client::Rally::connect(url)
        .await?
        .device_login(
            &format!("bench-unary-{}", uuid::Uuid::new_v4().simple()),
            "u",
        )
        .await?;
    let room = create_room(&session).await?;
    Ok((session, room))
}

/// A room whose `GetRoom` answer is about [`UNARY_ANSWER_BYTES`]: one data value fills it.
async fn create_room(session: &rally_client::Session) -> anyhow::Result<String> {
    let filler = "x".repeat(UNARY_ANSWER_BYTES - 300);
    let room = session
        .rooms()
        .create_room(CreateRoomRequest {
            capacity: 4,
            data: [("filler".to_owned(), filler)].into(),
            ..Default::default()
        })
        .await?
        .room
        .context("no room in the answer")?;
    Ok(room.room_id)
}

/// A tonic server answering `GetRoom` with one fixed room, bound by tonic itself.
struct BareRooms {
    addr: SocketAddr,
    stop: CancellationToken,
}

struct FixedRoom(Room);

#[tonic::async_trait]
impl Rooms for FixedRoom {
    async fn get_room(
        &self,
        _request: tonic::Request<GetRoomRequest>,
    ) -> Result<tonic::Response<GetRoomResponse>, tonic::Status> {
        Ok(tonic::Response::new(GetRoomResponse {
            room: Some(self.0.clone()),
        }))
    }
}

impl BareRooms {
    async fn serve(room: Room) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tonic::transport::Server::builder()
            .add_service(RoomsServer::new(FixedRoom(room)))
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
        tokio::spawn(async move {
            if let Err(error) = server.await {
                eprintln!("rally-bench: the bare tonic server failed: {error}");
            }
        });
        Ok(Self { addr, stop })
    }
}
