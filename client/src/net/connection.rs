//! The tasks of one live QUIC connection with a peer (reading datagrams and streams, watching
//! for its end), and the per-lane writers that outlive connections: a reliable packet waits in
//! its lane until a connection is up, and is sent again on the next connection if the one it was
//! on failed before taking it. When the connection moves to another path (a relayed connection
//! upgraded to a direct one), each writer finishes its stream on the old connection (waiting for
//! the peer's acknowledgement) and opens the next one marked as following it; readers deliver a
//! lane's streams in their order ([`LaneGates`]), so nothing is lost or reordered.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use rally_quic::Connection;
use tokio::sync::{Notify, mpsc, watch};
use uuid::Uuid;

use super::driver::{Inner, Live};
use super::framing::{self, FrameDecoder, LossCounter, StreamHeader};
use super::stats::Counters;

/// How long a stream waits for the lane's previous stream to end before delivering anyway (the
/// previous one can only be missing if its connection died with it unread).
const GATE_WAIT: Duration = Duration::from_secs(10);
/// How long a writer waits for the peer to acknowledge the end of a stream it moves away from.
const FINISH_WAIT: Duration = Duration::from_secs(5);

/// Streams open on one connection, both ways: a connection retired after a path upgrade closes
/// once none is left.
#[derive(Debug, Default)]
pub(crate) struct StreamTally {
    open: AtomicUsize,
    changed: Notify,
}

impl StreamTally {
    /// Counts a stream until the guard drops.
    pub(crate) fn track(self: &Arc<Self>) -> TallyGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        TallyGuard(self.clone())
    }

    /// Waits until no stream is open.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open.load(Ordering::Relaxed) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One counted stream.
#[derive(Debug)]
pub(crate) struct TallyGuard(Arc<StreamTally>);

impl Drop for TallyGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.changed.notify_waiters();
    }
}

/// Per lane, the number of the peer's stream whose frames may be delivered now.
#[derive(Debug, Default)]
pub(crate) struct LaneGates {
    next: Mutex<[u32; framing::LANES as usize]>,
    changed: Notify,
}

impl LaneGates {
    fn next(&self) -> std::sync::MutexGuard<'_, [u32; framing::LANES as usize]> {
        self.next.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the stream with `header` may deliver: at once, unless it follows a previous
    /// stream of its lane that has not ended yet (bounded by [`GATE_WAIT`]).
    async fn turn(&self, header: StreamHeader) {
        let lane = usize::from(header.lane);
        if !header.follows {
            let mut next = self.next();
            next[lane] = next[lane].max(header.index);
        }
        let wait = async {
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.next()[lane] >= header.index {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(GATE_WAIT, wait).await.is_err() {
            tracing::warn!(
                lane,
                index = header.index,
                "the previous stream of a lane never ended; delivering the next one"
            );
            let mut next = self.next();
            next[lane] = next[lane].max(header.index);
        }
    }

    /// The stream with `header` ended: the lane's next stream may deliver.
    fn done(&self, header: StreamHeader) {
        let lane = usize::from(header.lane);
        {
            let mut next = self.next();
            if next[lane] == header.index {
                next[lane] = header.index.wrapping_add(1);
            }
        }
        self.changed.notify_waiters();
    }
}

/// Serves a connection until it ends, then tells the driver.
pub(crate) async fn serve(
    inner: Arc<Inner>,
    user: Uuid,
    generation: u64,
    conn: Connection,
    counters: Arc<Counters>,
    gates: Arc<LaneGates>,
    tally: Arc<StreamTally>,
) {
    let datagrams = read_datagrams(inner.clone(), user, conn.clone(), counters.clone());
    let streams = accept_streams(inner.clone(), user, conn.clone(), counters, gates, tally);
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

async fn accept_streams(
    inner: Arc<Inner>,
    user: Uuid,
    conn: Connection,
    counters: Arc<Counters>,
    gates: Arc<LaneGates>,
    tally: Arc<StreamTally>,
) {
    while let Some((_send, recv)) = conn.accept_stream().await {
        let guard = tally.track();
        tokio::spawn(read_stream(
            inner.clone(),
            user,
            recv,
            counters.clone(),
            gates.clone(),
            guard,
        ));
    }
}

async fn read_stream(
    inner: Arc<Inner>,
    user: Uuid,
    mut recv: rally_quic::RecvStream,
    counters: Arc<Counters>,
    gates: Arc<LaneGates>,
    _open: TallyGuard,
) {
    let mut decoder = FrameDecoder::default();
    let mut my_turn = false;
    'stream: loop {
        let chunk = match recv.receive().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(error) => {
                tracing::debug!(%error, %user, "a reliable stream ended");
                break;
            }
        };
        decoder.push(&chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let Some(header) = decoder.header() else {
                        break 'stream;
                    };
                    if !my_turn {
                        gates.turn(header).await;
                        my_turn = true;
                    }
                    if !inner.on_reliable(user, header.lane, frame, &counters).await {
                        break 'stream;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%error, %user, "a peer broke Rally's stream framing; ignoring the stream");
                    break 'stream;
                }
            }
        }
    }
    // The lane's next stream may deliver once this one has (in order).
    if let Some(header) = decoder.header() {
        if !my_turn {
            gates.turn(header).await;
        }
        gates.done(header);
    }
}

/// A lane's stream on one connection.
struct LaneStream {
    generation: u64,
    send: rally_quic::SendStream,
    _open: TallyGuard,
}

/// Ends a stream the lane moves away from; true when the peer acknowledged all of it (so the
/// next stream can follow it without a gap).
async fn finish(stream: Option<LaneStream>) -> bool {
    let Some(mut stream) = stream else {
        return false;
    };
    matches!(
        tokio::time::timeout(FINISH_WAIT, stream.send.close()).await,
        Ok(Ok(()))
    )
}

/// Opens the lane's stream number `index` on `conn`.
async fn open(
    conn: &Connection,
    generation: u64,
    tally: &Arc<StreamTally>,
    header: StreamHeader,
) -> Result<LaneStream, String> {
    let (mut send, _recv) = conn.open_stream().await.map_err(|e| e.to_string())?;
    let guard = tally.track();
    send.send(Bytes::copy_from_slice(&header.encode()))
        .await
        .map_err(|e| e.to_string())?;
    Ok(LaneStream {
        generation,
        send,
        _open: guard,
    })
}

/// Bytes of a peer's reliable packets accepted and not yet handed to QUIC, and a wake-up for
/// senders waiting for room ([`Net::send`](super::Net::send)).
#[derive(Debug, Default)]
pub(crate) struct SendBuffer {
    bytes: AtomicUsize,
    /// A sender waits in [`room`](Self::room): wake it when bytes leave.
    wanted: AtomicBool,
    drained: Notify,
}

impl SendBuffer {
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn add(&self, len: usize) {
        self.bytes.fetch_add(len, Ordering::Relaxed);
    }

    /// `len` bytes were handed to QUIC.
    pub(crate) fn sub(&self, len: usize) {
        self.bytes.fetch_sub(len, Ordering::AcqRel);
        if self.wanted.load(Ordering::Acquire) {
            self.wanted.store(false, Ordering::Release);
            self.drained.notify_waiters();
        }
    }

    /// Resolves once `len` more bytes fit under `limit`.
    pub(crate) async fn room(&self, len: usize, limit: usize) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            self.wanted.store(true, Ordering::Release);
            if self.bytes.load(Ordering::Acquire).saturating_add(len) <= limit {
                return;
            }
            drained.await;
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
    buffered: Arc<SendBuffer>,
    counters: Arc<Counters>,
) {
    let lag = inner.config.fake.lag;
    let mut stream: Option<LaneStream> = None;
    let mut pending: Option<Bytes> = None;
    // The number of the lane's next stream, and whether it follows a cleanly finished one.
    let mut index: u32 = 0;
    let mut follows = false;
    loop {
        let frame = match pending.take() {
            Some(frame) => frame,
            None => {
                let next = tokio::select! {
                    () = inner.shutdown.cancelled() => return,
                    frame = frames.recv() => Some(frame),
                    changed = live.changed(), if stream.is_some() => {
                        if changed.is_err() {
                            return;
                        }
                        None
                    }
                };
                match next {
                    Some(Some(frame)) => {
                        if !lag.is_zero() {
                            tokio::time::sleep(lag).await;
                        }
                        frame
                    }
                    Some(None) => return,
                    // The connection changed while the lane was idle: leave the old one now,
                    // so it can be retired.
                    None => {
                        let current = live.borrow_and_update().as_ref().map(|(g, ..)| *g);
                        if stream
                            .as_ref()
                            .is_some_and(|s| Some(s.generation) != current)
                        {
                            follows = finish(stream.take()).await;
                        }
                        continue;
                    }
                }
            }
        };
        // Wait for a live connection.
        let (generation, conn, tally) = loop {
            if let Some(current) = live.borrow_and_update().clone() {
                break current;
            }
            tokio::select! {
                () = inner.shutdown.cancelled() => return,
                changed = live.changed() => if changed.is_err() { return },
            }
        };
        if stream.as_ref().is_some_and(|s| s.generation != generation) {
            follows = finish(stream.take()).await;
        }
        if stream.is_none() {
            let header = StreamHeader {
                lane,
                index,
                follows,
            };
            match open(&conn, generation, &tally, header).await {
                Ok(opened) => {
                    stream = Some(opened);
                    index = index.wrapping_add(1);
                    follows = false;
                }
                Err(error) => {
                    tracing::debug!(%error, %user, lane, "could not open a lane stream");
                    pending = Some(frame);
                    wait_for_change(&inner, &mut live).await;
                    continue;
                }
            }
        }
        let Some(open) = stream.as_mut() else {
            continue;
        };
        let len = frame.len().saturating_sub(framing::RELIABLE_HEADER);
        match open.send.send(frame.clone()).await {
            Ok(()) => {
                buffered.sub(len);
                super::stats::add(&counters.reliable_bytes_sent, len as u64);
            }
            Err(error) => {
                tracing::debug!(%error, %user, lane, "lane stream failed; resending on the next connection");
                stream = None;
                follows = false;
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
