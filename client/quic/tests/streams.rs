//! Reliable streams between two transports.

mod support;

use anyhow::{Result, ensure};
use support::{connect, echo, stream_round_trip, transport, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reliable_stream_echoes_what_it_carries() -> Result<()> {
    let (alice, bob) = (transport()?, transport()?);
    let (to_bob, from_alice) = connect(&alice, &bob).await?;
    tokio::spawn(echo(from_alice));
    let message: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let echoed = within("the echo", stream_round_trip(&to_bob, &message)).await??;
    ensure!(echoed == message, "the echo differs from what was sent");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn either_side_may_open_streams() -> Result<()> {
    let (alice, bob) = (transport()?, transport()?);
    let (to_bob, from_alice) = connect(&alice, &bob).await?;
    tokio::spawn(echo(to_bob));
    let echoed = within(
        "the echo",
        stream_round_trip(&from_alice, b"from the acceptor"),
    )
    .await??;
    ensure!(echoed == b"from the acceptor");
    Ok(())
}
