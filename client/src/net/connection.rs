//! The tasks of one live QUIC connection with a peer (reading datagrams and streams, watching
//! for its end), and the per-lane writers that outlive connections: a reliable packet waits in
//! its lane until a connection is up, and is sent again on the next connection if the one it was
//! on failed before taking it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use rally_quic::Connection;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::driver::{Inner, Live};
use super::framing::{self, FrameDecoder, LossCounter};
use super::stats::Counters;

/// Serves a connection until it ends, then tells the driver.
pub(crate) async fn serve(
    inner: Arc<Inner>,
    user: Uuid,
    generation: u64,
    conn: Connection,
    counters: Arc<Counters>,
) {
    let datagrams = read_datagrams(inner.clone(), user, conn.clone(), counters.clone());
    let streams = accept_streams(inner.clone(), user, conn.clone(), counters);
    tokio::select! {
        () = inner.shutdown.cancelled() => conn.close(0),
        () = conn.closed() => {}
        () = datagrams => {}
        () = streams => {}
    }
    inner.connection_lost(user, generation);
}

async fn read_datagrams(inner: Arc<Inner>, user: Uuid, conn: Connection, counters: Arc<Counters>) {
    let mut loss = LossCounter::default();
    // Losses counted on earlier connections with this peer.
    let base = counters.lost.load(Ordering::Relaxed);
    while let Some(datagram) = conn.recv_datagram().await {
        if let Some(sequence) = inner.on_datagram(user, &conn, datagram) {
            loss.record(sequence);
            counters.lost.store(base + loss.lost(), Ordering::Relaxed);
        }
    }
}

async fn accept_streams(inner: Arc<Inner>, user: Uuid, conn: Connection, counters: Arc<Counters>) {
    while let Some((_send, recv)) = conn.accept_stream().await {
        tokio::spawn(read_stream(inner.clone(), user, recv, counters.clone()));
    }
}

async fn read_stream(
    inner: Arc<Inner>,
    user: Uuid,
    mut recv: rally_quic::RecvStream,
    counters: Arc<Counters>,
) {
    let mut decoder = FrameDecoder::default();
    loop {
        let chunk = match recv.receive().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return,
            Err(error) => {
                tracing::debug!(%error, %user, "a reliable stream ended");
                return;
            }
        };
        decoder.push(&chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let lane = decoder.lane().unwrap_or(0);
                    if !inner.on_reliable(user, lane, frame, &counters).await {
                        return;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%error, %user, "a peer broke Rally's stream framing; ignoring the stream");
                    return;
                }
            }
        }
    }
}

/// Sends one lane's frames, in order, on whatever connection is live; waits while there is
/// none. Ends when the peer's slot drops its sender.
pub(crate) async fn lane_writer(
    inner: Arc<Inner>,
    user: Uuid,
    lane: u8,
    mut frames: mpsc::UnboundedReceiver<Bytes>,
    mut live: watch::Receiver<Live>,
    buffered: Arc<AtomicUsize>,
    counters: Arc<Counters>,
) {
    let lag = inner.config.fake.lag;
    let mut stream: Option<(u64, rally_quic::SendStream)> = None;
    let mut pending: Option<Bytes> = None;
    loop {
        let frame = match pending.take() {
            Some(frame) => frame,
            None => {
                let next = tokio::select! {
                    () = inner.shutdown.cancelled() => return,
                    frame = frames.recv() => frame,
                };
                match next {
                    Some(frame) => {
                        if !lag.is_zero() {
                            tokio::time::sleep(lag).await;
                        }
                        frame
                    }
                    None => return,
                }
            }
        };
        // Wait for a live connection.
        let (generation, conn) = loop {
            if let Some(current) = live.borrow_and_update().clone() {
                break current;
            }
            tokio::select! {
                () = inner.shutdown.cancelled() => return,
                changed = live.changed() => if changed.is_err() { return },
            }
        };
        if stream.as_ref().is_none_or(|(g, _)| *g != generation) {
            stream = match conn.open_stream().await {
                Ok((mut send, _recv)) => match send
                    .send(Bytes::copy_from_slice(&framing::lane_header(lane)))
                    .await
                {
                    Ok(()) => Some((generation, send)),
                    Err(error) => {
                        tracing::debug!(%error, %user, lane, "could not start a lane stream");
                        pending = Some(frame);
                        wait_for_change(&inner, &mut live).await;
                        continue;
                    }
                },
                Err(error) => {
                    tracing::debug!(%error, %user, lane, "could not open a lane stream");
                    pending = Some(frame);
                    wait_for_change(&inner, &mut live).await;
                    continue;
                }
            };
        }
        let Some((_, send)) = stream.as_mut() else {
            continue;
        };
        let len = frame.len().saturating_sub(framing::RELIABLE_HEADER);
        match send.send(frame.clone()).await {
            Ok(()) => {
                buffered.fetch_sub(len, Ordering::Relaxed);
                super::stats::add(&counters.reliable_bytes_sent, len as u64);
            }
            Err(error) => {
                tracing::debug!(%error, %user, lane, "lane stream failed; resending on the next connection");
                stream = None;
                pending = Some(frame);
                wait_for_change(&inner, &mut live).await;
            }
        }
    }
}

async fn wait_for_change(inner: &Inner, live: &mut watch::Receiver<Live>) {
    tokio::select! {
        () = inner.shutdown.cancelled() => {}
        _ = live.changed() => {}
    }
}
