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

use bytes::{BufMut, Bytes, BytesMut};
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

/// Most packets a lane writer frames into one chunk for QUIC.
const BATCH_PACKETS: usize = 64;
/// Most payload bytes a lane writer frames into one chunk (a chunk always takes one packet).
const BATCH_BYTES: usize = 256 << 10;

/// Frames packets already queued (`first` and up to `max_packets` or [`BATCH_BYTES`] in all)
/// into one chunk: one allocation, and one call and one lock of the connection for the lot.
/// Returns the chunk and the payload bytes in it.
fn frame_batch(
    first: Bytes,
    queued: &mut mpsc::UnboundedReceiver<Bytes>,
    max_packets: usize,
) -> (Bytes, usize) {
    let mut packets = Vec::with_capacity(max_packets);
    let mut payload = first.len();
    packets.push(first);
    while packets.len() < max_packets && payload < BATCH_BYTES {
        let Ok(packet) = queued.try_recv() else { break };
        payload += packet.len();
        packets.push(packet);
    }
    let mut chunk = BytesMut::with_capacity(payload + packets.len() * framing::RELIABLE_HEADER);
    for packet in &packets {
        chunk.put_slice(&framing::frame_header(packet.len()));
        chunk.put_slice(packet);
    }
    (chunk.freeze(), payload)
}

/// Sends one lane's packets, framed and in order, on whatever connection is live; waits while
/// there is none. Ends when the peer's slot drops its sender. Packets queued meanwhile go to
/// QUIC together (see [`frame_batch`]).
pub(crate) async fn lane_writer(
    inner: Arc<Inner>,
    user: Uuid,
    lane: u8,
    mut packets: mpsc::UnboundedReceiver<Bytes>,
    mut live: watch::Receiver<Live>,
    buffered: Arc<SendBuffer>,
    counters: Arc<Counters>,
) {
    let lag = inner.config.fake.lag;
    let mut stream: Option<LaneStream> = None;
    // Framed packets not yet accepted by a stream, and their payload bytes.
    let mut pending: Option<(Bytes, usize)> = None;
    // The number of the lane's next stream, and whether it follows a cleanly finished one.
    let mut index: u32 = 0;
    let mut follows = false;
    loop {
        let (chunk, payload) = match pending.take() {
            Some(pending) => pending,
            None => {
                let next = tokio::select! {
                    () = inner.shutdown.cancelled() => return,
                    packet = packets.recv() => Some(packet),
                    changed = live.changed(), if stream.is_some() => {
                        if changed.is_err() {
                            return;
                        }
                        None
                    }
                };
                match next {
                    Some(Some(packet)) => {
                        if lag.is_zero() {
                            frame_batch(packet, &mut packets, BATCH_PACKETS)
                        } else {
                            // Simulated lag delays each packet: one at a time.
                            tokio::time::sleep(lag).await;
                            frame_batch(packet, &mut packets, 1)
                        }
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
                    pending = Some((chunk, payload));
                    wait_for_change(&inner, &mut live).await;
                    continue;
                }
            }
        }
        let Some(open) = stream.as_mut() else {
            continue;
        };
        match open.send.send(chunk.clone()).await {
            Ok(()) => {
                buffered.sub(payload);
                super::stats::add(&counters.reliable_bytes_sent, payload as u64);
            }
            Err(error) => {
                tracing::debug!(%error, %user, lane, "lane stream failed; resending on the next connection");
                stream = None;
                follows = false;
                pending = Some((chunk, payload));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_of(sizes: &[usize]) -> mpsc::UnboundedReceiver<Bytes> {
        let (tx, rx) = mpsc::unbounded_channel();
        for (i, size) in sizes.iter().enumerate() {
            let byte = u8::try_from(i % 251).unwrap_or(0);
            tx.send(Bytes::from(vec![byte; *size])).unwrap_or_default();
        }
        rx
    }

    #[test]
    fn a_batch_frames_the_queued_packets_in_order_and_decodes_back() {
        let mut queued = queue_of(&[3, 0, 1000]);
        let first = Bytes::from_static(b"first");
        let (chunk, payload) = frame_batch(first, &mut queued, BATCH_PACKETS);
        assert_eq!(payload, 5 + 3 + 1000);
        let mut decoder = FrameDecoder::default();
        // A lane stream starts with its header; the frames follow.
        let header = StreamHeader {
            lane: 0,
            index: 0,
            follows: false,
        };
        decoder.push(&header.encode());
        decoder.push(&chunk);
        let mut frames = Vec::new();
        while let Ok(Some(frame)) = decoder.next_frame() {
            frames.push(frame);
        }
        let expected: Vec<Bytes> = [
            Bytes::from_static(b"first"),
            Bytes::from(vec![0u8; 3]),
            Bytes::new(),
            Bytes::from(vec![2u8; 1000]),
        ]
        .into();
        assert_eq!(frames, expected);
        assert!(queued.try_recv().is_err(), "everything queued was taken");
    }

    #[test]
    fn a_batch_stops_at_its_packet_and_byte_limits() {
        let mut queued = queue_of(&[10; 10]);
        let (_, payload) = frame_batch(Bytes::from(vec![1u8; 10]), &mut queued, 4);
        assert_eq!(payload, 40, "four packets");
        let mut large = queue_of(&[BATCH_BYTES, 1]);
        let (_, payload) = frame_batch(Bytes::from(vec![1u8; 1]), &mut large, BATCH_PACKETS);
        assert_eq!(
            payload,
            1 + BATCH_BYTES,
            "the limit is reached after the large one"
        );
        assert!(large.try_recv().is_ok(), "the packet after the limit waits");
        let (_, payload) =
            frame_batch(Bytes::from(vec![1u8; BATCH_BYTES]), &mut queue_of(&[1]), 64);
        assert_eq!(
            payload, BATCH_BYTES,
            "a batch takes one packet whatever its size"
        );
    }
}
