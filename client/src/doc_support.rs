//! Set-up for the runnable examples in this crate's documentation: not part of the API, and
//! hidden from it. The examples start a real `rallyd` with [`doc_server!`](crate::doc_server)
//! (only possible where `rallyd` is a dependency: in this crate's doctests) and sign in real
//! clients with these functions.

use std::time::Duration;

use uuid::Uuid;

use crate::net::{ConnectionState, Net, NetConfig, NetEvent};
use crate::{Error, Rally, Result, Session};

/// Starts a throwaway `rallyd` on loopback (SQLite in a temporary directory) and evaluates to
/// `(guard, server, url)`; keep the guard and the server alive for the example's length.
#[doc(hidden)]
#[macro_export]
macro_rules! doc_server {
    () => {{
        let dir = ::tempfile::tempdir()?;
        let data = dir.path().display().to_string();
        let config = <::rallyd::Config as ::clap::Parser>::try_parse_from([
            "rallyd",
            "--listen",
            "127.0.0.1:0",
            "--relay-listen",
            "127.0.0.1:0",
            "--data-dir",
            &data,
        ])?;
        let server = ::rallyd::start(config).await?;
        let url = format!("http://{}", server.grpc_addr());
        (dir, server, url)
    }};
}

/// A signed-in client with `Net` started, named `name`.
pub async fn client(url: &str, name: &str) -> Result<(Session, Net)> {
    let session = Rally::connect(url)
        .await?
        .device_login(&format!("doc-{name}-{}", Uuid::new_v4().simple()), name)
        .await?;
    let mut config = NetConfig::default();
    config.transport.bind = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let net = Net::start(&session, config).await?;
    Ok((session, net))
}

/// Waits (at most 20 s) until `net` reports `state` for `user`.
pub async fn wait_for(net: &Net, user: Uuid, state: ConnectionState) -> Result<()> {
    let wait = async {
        while let Some(event) = net.next_event().await {
            if event == (NetEvent::ConnectionStateChanged { user, state }) {
                return Ok(());
            }
        }
        Err(Error::Closed)
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .map_err(|_| Error::NotConnected)?
}

/// Two clients connected to each other: `(ada, bob)`.
pub async fn connected_pair(url: &str) -> Result<(Net, Net)> {
    let (_, ada) = client(url, "ada").await?;
    let (_, bob) = client(url, "bob").await?;
    ada.connect(bob.user_id()).await?;
    let request = async {
        while let Some(event) = bob.next_event().await {
            if event
                == (NetEvent::PeerConnectRequest {
                    user: ada.user_id(),
                })
            {
                return Ok(());
            }
        }
        Err(Error::Closed)
    };
    tokio::time::timeout(Duration::from_secs(20), request)
        .await
        .map_err(|_| Error::NotConnected)??;
    bob.accept(ada.user_id()).await?;
    wait_for(&ada, bob.user_id(), ConnectionState::Connected).await?;
    wait_for(&bob, ada.user_id(), ConnectionState::Connected).await?;
    Ok((ada, bob))
}

/// Three clients in one room (the first created it): `(sessions, nets)`.
pub async fn room_of_three(url: &str) -> Result<(Vec<Session>, Vec<Net>)> {
    let mut sessions = Vec::new();
    let mut nets = Vec::new();
    for name in ["ada", "bob", "cy"] {
        let (session, net) = client(url, name).await?;
        sessions.push(session);
        nets.push(net);
    }
    let room = sessions[0]
        .rooms()
        .create_room(rally_proto::rooms::v1::CreateRoomRequest {
            capacity: 8,
            ..Default::default()
        })
        .await?
        .room
        .ok_or(Error::Closed)?;
    for session in &sessions[1..] {
        session.rooms().join_room(&room.room_id).await?;
    }
    Ok((sessions, nets))
}
