//! Unreliable datagrams: delivered, or counted.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use bytes::{BufMut, Bytes, BytesMut};
use rally_quic::{Connection, ConnectionStats, DatagramError};
use support::{WAIT, connect, echo, transport, within};

/// A 1200-byte game packet behind Rally's 16-byte header.
const GAME_DATAGRAM: usize = 1216;

fn numbered(sequence: u64, len: usize) -> Bytes {
    let mut datagram = BytesMut::with_capacity(len);
    datagram.put_u64(sequence);
    datagram.resize(len, 0xab);
    datagram.freeze()
}

fn sequence_of(datagram: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(datagram.get(..8)?.try_into().ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_echo() -> Result<()> {
    let (alice, bob) = (transport()?, transport()?);
    let (to_bob, from_alice) = connect(&alice, &bob).await?;
    tokio::spawn(echo(from_alice));
    for sequence in 0..10 {
        to_bob.send_datagram(numbered(sequence, 100))?;
        let echoed = within("an echoed datagram", to_bob.recv_datagram()).await?;
        ensure!(
            echoed == Some(numbered(sequence, 100)),
            "datagram {sequence} came back wrong"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_and_its_payload_arrive_as_one_datagram() -> Result<()> {
    let (alice, bob) = (transport()?, transport()?);
    let (to_bob, from_alice) = connect(&alice, &bob).await?;
    let max = to_bob.max_datagram_payload();
    let header = [1u8, 2, 3, 4, 5];
    let payload = numbered(9, max - header.len());
    to_bob.send_datagram_with_header(&header, payload.clone())?;
    let received = within("the framed datagram", from_alice.recv_datagram()).await?;
    ensure!(
        received.as_deref() == Some(&[&header[..], &payload].concat()[..]),
        "the datagram arrived changed"
    );
    // The limit counts the header: one byte more is refused, and so is a header too long.
    let refused = to_bob.send_datagram_with_header(&header, numbered(9, max - header.len() + 1));
    ensure!(
        matches!(refused, Err(DatagramError::TooLarge { .. })),
        "{refused:?}"
    );
    let long = [0u8; rally_quic::MAX_DATAGRAM_HEADER + 1];
    let refused = to_bob.send_datagram_with_header(&long, Bytes::new());
    ensure!(
        matches!(refused, Err(DatagramError::TooLarge { .. })),
        "{refused:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_game_packet_sent_right_after_connecting_arrives() -> Result<()> {
    // s2n-quic's defaults dropped this 4 times out of 4; try several fresh connections.
    for attempt in 0..5 {
        let (alice, bob) = (transport()?, transport()?);
        let (to_bob, from_alice) = connect(&alice, &bob).await?;
        ensure!(to_bob.max_datagram_payload() >= GAME_DATAGRAM);
        to_bob.send_datagram(numbered(attempt, GAME_DATAGRAM))?;
        let received = within("the game packet", from_alice.recv_datagram()).await?;
        ensure!(
            received == Some(numbered(attempt, GAME_DATAGRAM)),
            "attempt {attempt}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_datagram_accepted_arrives_and_a_larger_one_is_refused() -> Result<()> {
    let (alice, bob) = (transport()?, transport()?);
    let (to_bob, from_alice) = connect(&alice, &bob).await?;
    let max = to_bob.max_datagram_payload();
    ensure!(max >= GAME_DATAGRAM, "max payload {max}");
    to_bob.send_datagram(numbered(1, max))?;
    let received = within("the largest datagram", from_alice.recv_datagram()).await?;
    ensure!(received.map(|d| d.len()) == Some(max));
    let refused = to_bob.send_datagram(numbered(2, max + 1));
    ensure!(
        refused == Err(DatagramError::TooLarge { size: max + 1, max }),
        "{refused:?}"
    );
    ensure!(to_bob.stats().datagrams_dropped_too_large == 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_datagram_ends_when_the_connection_closes() -> Result<()> {
    let (alice, bob) = (transport()?, transport()?);
    let (to_bob, from_alice) = connect(&alice, &bob).await?;
    let reader = tokio::spawn(async move { from_alice.recv_datagram().await });
    to_bob.close(0);
    ensure!(within("recv to end", reader).await??.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_the_traffic_and_outlive_the_connection() -> Result<()> {
    let (alice, bob) = (transport()?, transport()?);
    let (to_bob, from_alice) = connect(&alice, &bob).await?;
    tokio::spawn(echo(from_alice.clone()));
    for sequence in 0..20 {
        to_bob.send_datagram(numbered(sequence, 500))?;
        within("an echoed datagram", to_bob.recv_datagram()).await?;
    }
    let live = to_bob.stats();
    ensure!(
        live.datagrams_sent == 20 && live.datagrams_received == 20,
        "{live:?}"
    );
    ensure!(
        live.rtt > Duration::ZERO && live.min_rtt > Duration::ZERO,
        "{live:?}"
    );
    ensure!(live.mtu == 1500, "{live:?}");
    ensure!(
        live.bytes_sent > 20 * 500 && live.bytes_received > 20 * 500,
        "{live:?}"
    );

    to_bob.close(0);
    within("the close", from_alice.closed()).await?;
    let after = to_bob.stats();
    ensure!(
        after.datagrams_sent == 20 && after.bytes_sent >= live.bytes_sent,
        "{after:?}"
    );
    ensure!(from_alice.stats().datagrams_received == 20);
    Ok(())
}

/// Waits until `done()` holds, checking every few milliseconds (the counters have no event to
/// wait on), and fails after `WAIT`.
async fn until(what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out after {WAIT:?} waiting for {what}");
        }
        tick.tick().await;
    }
    Ok(())
}

/// What a load run did.
struct Load {
    attempts: u64,
    accepted: u64,
    queue_full: u64,
    sending: Duration,
}

/// What a sender does when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnFull {
    /// Drops the datagram (a counted local drop) and yields.
    Drop,
    /// Waits for room (`datagram_room`) and sends the same datagram again.
    Wait,
}

/// Sends `COUNT` numbered game datagrams, `per_tick` at a time (each tick of `tick`, or as fast
/// as possible when `tick` is `None`), doing `on_full` when the queue is full.
async fn send_load(
    connection: &Connection,
    per_tick: u64,
    tick: Option<Duration>,
    on_full: OnFull,
) -> Result<Load> {
    const COUNT: u64 = 20_000;
    let started = Instant::now();
    let mut ticker = tick.map(tokio::time::interval);
    let (mut accepted, mut queue_full) = (0u64, 0u64);
    for sequence in 0..COUNT {
        if sequence % per_tick == 0
            && let Some(ticker) = ticker.as_mut()
        {
            ticker.tick().await;
        }
        loop {
            match connection.send_datagram(numbered(sequence, GAME_DATAGRAM)) {
                Ok(()) => accepted += 1,
                Err(DatagramError::QueueFull) => {
                    queue_full += 1;
                    match on_full {
                        OnFull::Drop => tokio::task::yield_now().await,
                        OnFull::Wait => {
                            within("room in the send queue", connection.datagram_room()).await?;
                            continue;
                        }
                    }
                }
                Err(other) => bail!("send_datagram: {other}"),
            }
            break;
        }
    }
    Ok(Load {
        attempts: COUNT,
        accepted,
        queue_full,
        sending: started.elapsed(),
    })
}

/// Runs a load and checks that every accepted datagram was delivered or counted as dropped,
/// with each side's counters adding up on their own too.
async fn every_datagram_delivered_or_counted(
    per_tick: u64,
    tick: Option<Duration>,
    on_full: OnFull,
) -> Result<()> {
    let (alice, bob) = (transport()?, transport()?);
    let (to_bob, from_alice) = connect(&alice, &bob).await?;
    let delivered = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn(read_all(from_alice.clone(), delivered.clone()));

    let started = Instant::now();
    let load = send_load(&to_bob, per_tick, tick, on_full).await?;
    let accounted = |tx: &ConnectionStats, rx: &ConnectionStats, delivered: u64| {
        delivered
            + rx.datagrams_dropped_recv_overflow
            + tx.datagrams_dropped_too_large
            + tx.datagrams_dropped_closed
            + tx.datagrams_lost
    };
    until("every datagram delivered or counted", || {
        let delivered = delivered.load(Ordering::Relaxed);
        accounted(&to_bob.stats(), &from_alice.stats(), delivered) == load.accepted
    })
    .await?;
    let accounted_in = started.elapsed();
    let (tx, rx) = (to_bob.stats(), from_alice.stats());
    let delivered = delivered.load(Ordering::Relaxed);
    eprintln!(
        "{} attempts sent in {:?}: {} accepted, {} queue full; {delivered} delivered, \
         {} recv overflow, {} too large, {} lost on the wire ({} packets lost), \
         {} unsent at close; all accounted for after {accounted_in:?}; mtu {}",
        load.attempts,
        load.sending,
        load.accepted,
        load.queue_full,
        rx.datagrams_dropped_recv_overflow,
        tx.datagrams_dropped_too_large,
        tx.datagrams_lost,
        tx.packets_lost,
        tx.datagrams_dropped_closed,
        tx.mtu,
    );

    match on_full {
        OnFull::Drop => ensure!(load.accepted + load.queue_full == load.attempts),
        // Every datagram was taken in the end, and the sender waited rather than spun: each
        // wait ends with the queue half empty, so refusals are far fewer than datagrams.
        OnFull::Wait => ensure!(
            load.accepted == load.attempts && load.queue_full < load.attempts / 100,
            "{} accepted of {}, {} refusals",
            load.accepted,
            load.attempts,
            load.queue_full
        ),
    }
    ensure!(tx.datagrams_dropped_queue_full == load.queue_full);
    ensure!(accounted(&tx, &rx, delivered) == load.accepted);
    ensure!(tx.datagrams_sent + tx.datagrams_dropped_too_large == load.accepted);
    ensure!(tx.datagrams_sent == rx.datagrams_received + tx.datagrams_lost);
    ensure!(rx.datagrams_received == delivered + rx.datagrams_dropped_recv_overflow);

    to_bob.close(0);
    let duplicates = within("the reader to end", reader).await??;
    ensure!(
        duplicates == 0,
        "{duplicates} datagrams were delivered twice"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_game_datagrams_as_fast_as_accepted_are_each_delivered_or_counted()
-> Result<()> {
    every_datagram_delivered_or_counted(1, None, OnFull::Drop).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_waits_for_room_gets_every_datagram_taken_and_each_delivered_or_counted()
-> Result<()> {
    every_datagram_delivered_or_counted(1, None, OnFull::Wait).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_room_ends_when_the_connection_closes() -> Result<()> {
    let (alice, bob) = (transport()?, transport()?);
    let (to_bob, _from_alice) = connect(&alice, &bob).await?;
    to_bob.close(0);
    within("the closed connection", to_bob.closed()).await?;
    within("room on a closed connection", to_bob.datagram_room()).await?;
    ensure!(matches!(
        to_bob.send_datagram(numbered(0, 10)),
        Err(DatagramError::Closed)
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn game_datagrams_at_100k_per_second_are_each_delivered_or_counted() -> Result<()> {
    every_datagram_delivered_or_counted(100, Some(Duration::from_millis(1)), OnFull::Drop).await
}

/// Reads datagrams until the connection closes, counting them; returns how many were
/// duplicates.
async fn read_all(connection: Connection, delivered: Arc<AtomicU64>) -> u64 {
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    while let Some(datagram) = connection.recv_datagram().await {
        if !sequence_of(&datagram).is_some_and(|sequence| seen.insert(sequence)) {
            duplicates += 1;
        }
        delivered.fetch_add(1, Ordering::Relaxed);
    }
    duplicates
}
