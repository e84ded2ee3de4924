//! The relay as `rallyd` runs it: the reflector answers on the relay address.

use std::time::Duration;

use rally_e2e::{Backend, TestServer};
use rally_relay::wire::{self, Message};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rallyd_runs_the_reflector_on_its_relay_address() {
    let server = TestServer::start(Backend::Sqlite).await.expect("server");
    let relay = server.relay_addr().expect("the relay runs by default");
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut request = Vec::new();
    wire::encode(
        &Message::BindingRequest {
            transaction: [4; 12],
        },
        &mut request,
    );
    client.send_to(&request, relay).await.expect("send");
    let mut buf = [0u8; 128];
    let (len, from) = tokio::time::timeout(Duration::from_secs(10), client.recv_from(&mut buf))
        .await
        .expect("an answer within 10 s")
        .expect("receive");
    assert_eq!(from, relay);
    assert_eq!(
        wire::decode(&buf[..len]),
        Ok(Message::BindingResponse {
            transaction: [4; 12],
            address: client.local_addr().expect("addr"),
        })
    );
    assert!(server.data_dir().join("relay-grant-secret").is_file());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_the_relay_binds_no_udp_port() {
    let server = TestServer::start_with(Backend::Sqlite, &["--services", "identity"])
        .await
        .expect("server");
    assert_eq!(server.relay_addr(), None);
    server.stop().await;
}
