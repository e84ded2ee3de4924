//! Making connections: pinning both ways, the shared port, and the pitfalls of s2n-quic's
//! one-role endpoints.

mod support;

use std::time::Instant;

use anyhow::{Result, bail, ensure};
use rally_quic::{Transport, TransportError};
use support::{connect, serve_echo, stream_round_trip, transport, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_and_accept_connect_two_transports() -> Result<()> {
    let (alice, bob) = (transport()?, transport()?);
    let (to_bob, from_alice) = connect(&alice, &bob).await?;
    ensure!(to_bob.is_dialer() && !from_alice.is_dialer());
    ensure!(to_bob.remote_addr() == bob.local_addr());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_side_sees_the_pinned_fingerprint_as_its_peer() -> Result<()> {
    let (alice, bob) = (transport()?, transport()?);
    let (to_bob, from_alice) = connect(&alice, &bob).await?;
    ensure!(to_bob.peer() == bob.fingerprint());
    ensure!(from_alice.peer() == alice.fingerprint());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dialer_dials_from_its_acceptor_port() -> Result<()> {
    let (alice, bob) = (transport()?, transport()?);
    let (_to_bob, from_alice) = connect(&alice, &bob).await?;
    ensure!(
        from_alice.remote_addr().port() == alice.local_addr().port(),
        "bob sees alice at {}, alice listens on {}",
        from_alice.remote_addr(),
        alice.local_addr()
    );
    Ok(())
}

/// Proves `acceptor` never yielded a connection so far: the next one it yields is the one
/// `witness` makes now.
async fn next_accepted_is_from(acceptor: &Transport, witness: &Transport) -> Result<()> {
    acceptor.allow(witness.fingerprint());
    let (dialed, accepted) = within("the witness connection", async {
        tokio::join!(
            witness.dial(acceptor.local_addr(), acceptor.fingerprint()),
            acceptor.accept()
        )
    })
    .await?;
    dialed?;
    let Some(accepted) = accepted else {
        bail!("the acceptor closed");
    };
    ensure!(
        accepted.peer() == witness.fingerprint(),
        "the acceptor yielded a connection from someone else first"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_with_the_wrong_pin_fails_and_the_acceptor_yields_nothing() -> Result<()> {
    let (alice, bob, mallory) = (transport()?, transport()?, transport()?);
    bob.allow(alice.fingerprint());
    // Alice expects Mallory's certificate at Bob's address.
    let dialed = within(
        "the dial",
        alice.dial(bob.local_addr(), mallory.fingerprint()),
    )
    .await?;
    match dialed {
        Err(TransportError::UnexpectedPeer { remote }) => ensure!(remote == bob.local_addr()),
        other => bail!("expected UnexpectedPeer, got {other:?}"),
    }
    next_accepted_is_from(&bob, &transport()?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_whose_certificate_is_not_allowed_gets_no_connection() -> Result<()> {
    let (alice, bob) = (transport()?, transport()?);
    // Bob has not allowed Alice: her handshake completes on her side (TLS 1.3), but Bob refuses
    // her certificate and never confirms.
    let dialed = within("the dial", alice.dial(bob.local_addr(), bob.fingerprint())).await?;
    match dialed {
        Err(TransportError::PeerRefused { remote, .. }) => ensure!(remote == bob.local_addr()),
        other => bail!("expected PeerRefused, got {other:?}"),
    }
    next_accepted_is_from(&bob, &transport()?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disallowed_peer_can_no_longer_connect() -> Result<()> {
    let (alice, bob) = (transport()?, transport()?);
    let (to_bob, _from_alice) = connect(&alice, &bob).await?;
    bob.disallow(alice.fingerprint());
    let again = within(
        "the second dial",
        alice.dial(bob.local_addr(), bob.fingerprint()),
    )
    .await?;
    ensure!(
        matches!(again, Err(TransportError::PeerRefused { .. })),
        "{again:?}"
    );
    ensure!(!to_bob.is_closed(), "an open connection stays open");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_transport_reaches_a_transport_that_has_dialed_out() -> Result<()> {
    let (alice, bob, carol) = (transport()?, transport()?, transport()?);
    let (to_bob, from_alice) = connect(&alice, &bob).await?;
    let (to_alice, from_carol) = connect(&carol, &alice).await?;
    ensure!(from_carol.peer() == carol.fingerprint());
    ensure!(to_alice.peer() == alice.fingerprint());
    // Both of Alice's connections carry traffic.
    tokio::spawn(support::echo(from_alice));
    tokio::spawn(support::echo(from_carol));
    ensure!(within("echo from bob", stream_round_trip(&to_bob, b"to bob")).await?? == b"to bob");
    ensure!(
        within("echo from alice", stream_round_trip(&to_alice, b"to alice")).await?? == b"to alice"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_again_after_dropping_a_dial_works() -> Result<()> {
    let (alice, bob) = (transport()?, transport()?);
    bob.allow(alice.fingerprint());
    let _echo = serve_echo(bob.clone());

    // Start a dial and drop it once it is under way: its client endpoint keeps running in the
    // background until its handshake ends.
    {
        let dial = alice.dial(bob.local_addr(), bob.fingerprint());
        tokio::pin!(dial);
        tokio::select! {
            biased;
            result = &mut dial => bail!("the dial finished at its first poll: {result:?}"),
            () = std::future::ready(()) => {}
        }
    }

    let started = Instant::now();
    let to_bob = within(
        "the second dial",
        alice.dial(bob.local_addr(), bob.fingerprint()),
    )
    .await??;
    ensure!(within("echo", stream_round_trip(&to_bob, b"again")).await?? == b"again");
    eprintln!("second dial and echo took {:?}", started.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_transport_ends_accept_and_its_connections() -> Result<()> {
    let (alice, bob) = (transport()?, transport()?);
    let (to_bob, from_alice) = connect(&alice, &bob).await?;
    bob.close();
    ensure!(within("accept to end", bob.accept()).await?.is_none());
    within("bob's side to close", from_alice.closed()).await?;
    within("alice's side to close", to_bob.closed()).await?;
    ensure!(to_bob.recv_datagram().await.is_none());
    let late = bob.dial(alice.local_addr(), alice.fingerprint()).await;
    ensure!(matches!(late, Err(TransportError::Closed)), "{late:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_connection_is_seen_by_the_peer() -> Result<()> {
    let (alice, bob) = (transport()?, transport()?);
    let (to_bob, from_alice) = connect(&alice, &bob).await?;
    to_bob.close(7);
    within("the peer to see the close", from_alice.closed()).await?;
    ensure!(from_alice.accept_stream().await.is_none());
    let late = to_bob.send_datagram(bytes::Bytes::from_static(b"late"));
    ensure!(late == Err(rally_quic::DatagramError::Closed), "{late:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_to_a_silent_address_times_out() -> Result<()> {
    let alice = support::transport_with(rally_quic::TransportConfig {
        handshake_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    })?;
    let silent = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let dialed = within("the dial", alice.dial(silent.local_addr()?, [7; 32])).await?;
    ensure!(
        matches!(dialed, Err(TransportError::Timeout { .. })),
        "{dialed:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_connection_the_dialer_nominates_is_nominated_at_the_acceptor() -> Result<()> {
    // A dialer that tried two addresses of one acceptor completed two handshakes; it keeps and
    // nominates one, closes the other, and the acceptor can tell which is which.
    let dialer = transport()?;
    let acceptor = transport()?;
    let (kept, kept_there) = connect(&dialer, &acceptor).await?;
    let second = transport()?;
    let (dropped, dropped_there) = connect(&second, &acceptor).await?;
    kept.nominate().await?;
    within("the nomination", kept_there.nominated()).await??;
    dropped.close(0);
    let refused = within("the closed one's nomination", dropped_there.nominated()).await?;
    assert!(
        refused.is_err(),
        "a connection closed without nomination is not nominated"
    );
    Ok(())
}
