//! Delay and jitter on a lab link, in user space (this kernel has no `tc netem`): a forwarder
//! that moves every Ethernet frame arriving on one interface out of another, and back, each after
//! its own delay drawn uniformly from `delay ± jitter`, so frames may reorder as on the internet.
//! It runs as `rally-lab-node delay` in a namespace of its own that is a pure layer-2 pipe (no
//! addresses); the lab puts one on a router's WAN link (see [`Impairment`](super::Impairment)).
//!
//! Two parts: [`DelayLine`], the frames waiting in one direction ordered by due time (no IO, a
//! clock passed in), and [`Forwarder`], the thin IO around two of them: one `AF_PACKET` socket per
//! interface (`pnet_datalink`), a reader thread per socket (its reads block), and one tokio task per
//! direction that sleeps until the next frame is due and sends it. Queues are bounded: a frame
//! that finds its direction full is dropped and counted.
//!
//! Not for: loss (the lab drops packets with iptables `statistic` in the router, where it is
//! counted per direction by the kernel) nor rate limits. Frames are copied as they are, so the
//! veths that send into the forwarder must not leave checksums to offload (`ethtool -K IF tx
//! off`, which the lab does): a frame with a partial checksum would be dropped by whoever
//! receives it after the forwarder re-sends it.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::BinaryHeap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pnet_datalink::{Channel, DataLinkReceiver, DataLinkSender};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// How many frames may wait in each direction, by default.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// The largest frame read (jumbo frames and offloaded super-packets included, so that they are
/// counted as failed sends rather than silently cut).
const READ_BUFFER: usize = 65_536;

/// How often a reader thread looks up from a blocking read (to notice the forwarder stopping).
const READ_TIMEOUT: Duration = Duration::from_millis(250);

/// How long a send may wait for room in the socket before the frame counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// How often the forwarder prints its counters to stderr (when they changed).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// `rally-lab-node delay`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DelayArgs {
    /// One interface.
    #[arg(long)]
    pub a: String,
    /// The other interface.
    #[arg(long)]
    pub b: String,
    /// Mean one-way delay, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub delay_ms: u64,
    /// Each frame's delay is drawn uniformly from delay ± jitter (floored at 0), in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// Seed of the delay draws (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Most frames waiting in each direction; more are dropped and counted.
    #[arg(long, default_value_t = DEFAULT_CAPACITY)]
    pub capacity: usize,
}

impl DelayArgs {
    /// The settings these flags describe.
    pub fn settings(&self) -> DelaySettings {
        DelaySettings {
            delay: Duration::from_millis(self.delay_ms),
            jitter: Duration::from_millis(self.jitter_ms),
            capacity: self.capacity.max(1),
            seed: self.seed.unwrap_or_else(|| fastrand::u64(..)),
        }
    }
}

/// What a [`DelayLine`] does to each frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelaySettings {
    /// Mean delay.
    pub delay: Duration,
    /// Half-width of the uniform spread around it.
    pub jitter: Duration,
    /// Most frames waiting at once.
    pub capacity: usize,
    /// Seed of the draws.
    pub seed: u64,
}

/// A frame waiting for its due time; ordered by due time, then by arrival.
#[derive(Debug)]
struct Pending {
    due: Instant,
    arrival: u64,
    frame: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (self.due, self.arrival).cmp(&(other.due, other.arrival))
    }
}

/// The frames waiting in one direction of a link, each until its own due time. No IO: the
/// caller passes the time in, pushes what arrives, and pops what is due.
///
/// ```
/// use std::time::{Duration, Instant};
/// use rally_e2e::lab::delay::{DelayLine, DelaySettings};
///
/// let mut line = DelayLine::new(&DelaySettings {
///     delay: Duration::from_millis(50),
///     jitter: Duration::ZERO,
///     capacity: 10,
///     seed: 1,
/// });
/// let t0 = Instant::now();
/// assert!(line.push(vec![1, 2, 3], t0));
/// assert_eq!(line.next_due(), Some(t0 + Duration::from_millis(50)));
/// assert_eq!(line.pop_due(t0 + Duration::from_millis(49)), None);
/// assert_eq!(line.pop_due(t0 + Duration::from_millis(50)), Some(vec![1, 2, 3]));
/// ```
#[derive(Debug)]
pub struct DelayLine {
    waiting: BinaryHeap<Reverse<Pending>>,
    rng: fastrand::Rng,
    /// Bounds of the delay, in microseconds.
    min_us: u64,
    max_us: u64,
    capacity: usize,
    arrivals: u64,
}

impl DelayLine {
    /// An empty line.
    pub fn new(settings: &DelaySettings) -> Self {
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let (delay, jitter) = (micros(settings.delay), micros(settings.jitter));
        Self {
            waiting: BinaryHeap::new(),
            rng: fastrand::Rng::with_seed(settings.seed),
            min_us: delay.saturating_sub(jitter),
            max_us: delay.saturating_add(jitter),
            capacity: settings.capacity,
            arrivals: 0,
        }
    }

    /// Takes in a frame that arrived at `now`; `false` (and the frame is dropped) when the line
    /// holds its capacity already.
    pub fn push(&mut self, frame: Vec<u8>, now: Instant) -> bool {
        if self.waiting.len() >= self.capacity {
            return false;
        }
        let delay = Duration::from_micros(self.rng.u64(self.min_us..=self.max_us));
        self.waiting.push(Reverse(Pending {
            due: now + delay,
            arrival: self.arrivals,
            frame,
        }));
        self.arrivals += 1;
        true
    }

    /// When the next frame is due, if any waits.
    pub fn next_due(&self) -> Option<Instant> {
        self.waiting.peek().map(|Reverse(pending)| pending.due)
    }

    /// The frame due first, if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.next_due()? > now {
            return None;
        }
        self.waiting.pop().map(|Reverse(pending)| pending.frame)
    }

    /// How many frames wait.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// One direction's counters, shared by its reader thread and its pacing task.
#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    forwarded: AtomicU64,
    dropped_full: AtomicU64,
    send_failed: AtomicU64,
}

impl Counters {
    fn report(&self) -> DirectionReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DirectionReport {
            received: get(&self.received),
            forwarded: get(&self.forwarded),
            dropped_full: get(&self.dropped_full),
            send_failed: get(&self.send_failed),
        }
    }
}

fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What one direction of the forwarder did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionReport {
    /// Frames read from the incoming interface.
    pub received: u64,
    /// Frames sent out of the other one.
    pub forwarded: u64,
    /// Frames dropped because the direction held its capacity already.
    pub dropped_full: u64,
    /// Frames the outgoing interface refused (too large, or no room within a second).
    pub send_failed: u64,
}

/// The forwarder's counters, as `rally-lab-node delay` prints them (`{"event":"delay-stats",…}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename = "delay-stats")]
pub struct ForwarderReport {
    /// Frames from interface A to interface B.
    pub a_to_b: DirectionReport,
    /// Frames from interface B to interface A.
    pub b_to_a: DirectionReport,
}

/// Both directions' counters.
#[derive(Debug, Clone, Default)]
pub struct ForwarderStats {
    a_to_b: Arc<Counters>,
    b_to_a: Arc<Counters>,
}

impl ForwarderStats {
    /// What the forwarder did so far.
    pub fn report(&self) -> ForwarderReport {
        ForwarderReport {
            a_to_b: self.a_to_b.report(),
            b_to_a: self.b_to_a.report(),
        }
    }
}

/// An interface opened for raw frames.
struct Port {
    name: String,
    tx: Box<dyn DataLinkSender>,
    rx: Box<dyn DataLinkReceiver>,
}

impl Port {
    fn open(name: &str) -> io::Result<Port> {
        let interface = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == name)
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("no interface {name:?}"))
            })?;
        let config = pnet_datalink::Config {
            read_buffer_size: READ_BUFFER,
            read_timeout: Some(READ_TIMEOUT),
            write_timeout: Some(WRITE_TIMEOUT),
            promiscuous: true,
            ..pnet_datalink::Config::default()
        };
        match pnet_datalink::channel(&interface, config) {
            Ok(Channel::Ethernet(tx, rx)) => Ok(Port {
                name: name.to_owned(),
                tx,
                rx,
            }),
            Ok(_) => Err(io::Error::other(format!("{name}: not an Ethernet channel"))),
            Err(e) => Err(io::Error::new(e.kind(), format!("{name}: {e}"))),
        }
    }
}

/// Two interfaces opened for raw frames, to be joined by a delay ([`Forwarder::run`]).
pub struct Forwarder {
    a: Port,
    b: Port,
    stats: ForwarderStats,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("a", &self.a.name)
            .field("b", &self.b.name)
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// Opens `a` and `b` (an `AF_PACKET` socket bound to each, promiscuous). Needs root (or
    /// `CAP_NET_RAW`).
    pub fn open(a: &str, b: &str) -> io::Result<Forwarder> {
        Ok(Forwarder {
            a: Port::open(a)?,
            b: Port::open(b)?,
            stats: ForwarderStats::default(),
        })
    }

    /// Its counters, readable while it runs.
    pub fn stats(&self) -> ForwarderStats {
        self.stats.clone()
    }

    /// Forwards frames both ways with `settings` until an interface fails (then returns the
    /// error); meant to be raced against the end of the forwarder's input. Each direction draws
    /// its delays from its own seed (`settings.seed`, and its successor for B to A).
    pub async fn run(self, settings: DelaySettings) -> io::Result<()> {
        let Forwarder { a, b, stats } = self;
        let (failed_tx, mut failed) = mpsc::unbounded_channel();
        let mut directions = tokio::task::JoinSet::new();
        let ways = [
            (a.rx, &a.name, b.tx, &b.name, stats.a_to_b.clone(), 0),
            (b.rx, &b.name, a.tx, &a.name, stats.b_to_a.clone(), 1),
        ];
        for (rx, from, tx, to, counters, n) in ways {
            let (frames_tx, frames) = mpsc::channel(settings.capacity);
            let reader = Reader {
                name: from.clone(),
                rx,
                frames: frames_tx,
                counters: counters.clone(),
            };
            let failed = failed_tx.clone();
            std::thread::Builder::new()
                .name(format!("delay-read-{from}"))
                .spawn(move || {
                    if let Err(error) = reader.run() {
                        let _ = failed.send(error);
                    }
                })?;
            let line = DelayLine::new(&DelaySettings {
                seed: settings.seed.wrapping_add(n),
                ..settings
            });
            directions.spawn(pace(frames, line, tx, to.clone(), counters));
        }
        drop(failed_tx);
        let mut log = tokio::time::interval(LOG_EVERY);
        let mut logged = ForwarderReport::default();
        loop {
            tokio::select! {
                Some(error) = failed.recv() => return Err(error),
                _ = directions.join_next() => {
                    return Err(io::Error::other("a direction of the forwarder stopped"));
                }
                _ = log.tick() => {
                    let report = stats.report();
                    if report != logged {
                        eprintln!("delay: {}", serde_json::to_string(&report).unwrap_or_default());
                        logged = report;
                    }
                }
            }
        }
    }
}

/// One interface's incoming frames, read by a thread of its own (pnet's reads block).
struct Reader {
    name: String,
    rx: Box<dyn DataLinkReceiver>,
    frames: mpsc::Sender<Vec<u8>>,
    counters: Arc<Counters>,
}

impl Reader {
    /// Reads until the pacing task is gone (`Ok`) or the socket fails.
    fn run(mut self) -> io::Result<()> {
        loop {
            match self.rx.next() {
                Ok(frame) => {
                    add(&self.counters.received);
                    match self.frames.try_send(frame.to_vec()) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            add(&self.counters.dropped_full);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                            | io::ErrorKind::WouldBlock
                    ) =>
                {
                    if self.frames.is_closed() {
                        return Ok(());
                    }
                }
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", self.name))),
            }
        }
    }
}

/// One direction's pacing: takes frames in as they arrive, sleeps until the next is due, sends
/// it out of `tx`. Ends when the reader is gone.
async fn pace(
    mut frames: mpsc::Receiver<Vec<u8>>,
    mut line: DelayLine,
    mut tx: Box<dyn DataLinkSender>,
    to: String,
    counters: Arc<Counters>,
) {
    loop {
        let due = line.next_due();
        tokio::select! {
            frame = frames.recv() => {
                let Some(frame) = frame else { return };
                if !line.push(frame, Instant::now()) {
                    add(&counters.dropped_full);
                }
            }
            () = sleep_until(due), if due.is_some() => {}
        }
        let now = Instant::now();
        while let Some(frame) = line.pop_due(now) {
            match tx.send_to(&frame, None) {
                Some(Ok(())) => add(&counters.forwarded),
                failed => {
                    let failures = counters.send_failed.fetch_add(1, Ordering::Relaxed);
                    if failures < 10 {
                        let why = match failed {
                            Some(Err(e)) => e.to_string(),
                            _ => "not sent".to_owned(),
                        };
                        eprintln!("delay: a {}-byte frame to {to}: {why}", frame.len());
                    }
                }
            }
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(delay_ms: u64, jitter_ms: u64, capacity: usize) -> DelaySettings {
        DelaySettings {
            delay: Duration::from_millis(delay_ms),
            jitter: Duration::from_millis(jitter_ms),
            capacity,
            seed: 7,
        }
    }

    /// Pops everything due at `now`.
    fn drain(line: &mut DelayLine, now: Instant) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| line.pop_due(now)).collect()
    }

    #[test]
    fn without_jitter_frames_leave_after_the_delay_in_order() {
        let mut line = DelayLine::new(&settings(50, 0, 100));
        let t0 = Instant::now();
        for i in 0..10u8 {
            assert!(line.push(vec![i], t0 + Duration::from_millis(u64::from(i))));
        }
        assert!(drain(&mut line, t0 + Duration::from_millis(49)).is_empty());
        let first = drain(&mut line, t0 + Duration::from_millis(54));
        assert_eq!(first, (0..5u8).map(|i| vec![i]).collect::<Vec<_>>());
        assert_eq!(line.next_due(), Some(t0 + Duration::from_millis(55)));
        let rest = drain(&mut line, t0 + Duration::from_secs(1));
        assert_eq!(rest, (5..10u8).map(|i| vec![i]).collect::<Vec<_>>());
        assert!(line.is_empty());
        assert_eq!(line.next_due(), None);
    }

    #[test]
    fn frames_due_at_the_same_time_leave_in_arrival_order() {
        let mut line = DelayLine::new(&settings(10, 0, 100));
        let t0 = Instant::now();
        for i in 0..100u8 {
            line.push(vec![i], t0);
        }
        let out = drain(&mut line, t0 + Duration::from_millis(10));
        assert_eq!(out, (0..100u8).map(|i| vec![i]).collect::<Vec<_>>());
    }

    #[test]
    fn jitter_spreads_delays_within_the_bounds_and_reorders() {
        let mut line = DelayLine::new(&settings(50, 20, 10_000));
        let t0 = Instant::now();
        let n = 2000u32;
        for i in 0..n {
            line.push(i.to_be_bytes().to_vec(), t0);
        }
        assert!(drain(&mut line, t0 + Duration::from_micros(29_999)).is_empty());
        let mut early = 0;
        let mut order = Vec::new();
        for ms in 30..=70 {
            let out = drain(&mut line, t0 + Duration::from_millis(ms));
            if ms < 50 {
                early += out.len();
            }
            order.extend(out);
        }
        assert!(line.is_empty(), "every frame is due by delay + jitter");
        assert_eq!(order.len(), n as usize);
        // Uniform over 30..=70 ms: about half is early.
        assert!((800..1200).contains(&early), "{early} of {n} before 50 ms");
        let sorted = {
            let mut s = order.clone();
            s.sort();
            s
        };
        assert_ne!(order, sorted, "with jitter, frames reorder");
    }

    #[test]
    fn jitter_larger_than_the_delay_floors_at_zero() {
        let mut line = DelayLine::new(&settings(5, 20, 1000));
        let t0 = Instant::now();
        for i in 0..500u16 {
            line.push(i.to_be_bytes().to_vec(), t0);
        }
        assert_eq!(drain(&mut line, t0 + Duration::from_millis(25)).len(), 500);
    }

    #[test]
    fn a_full_line_drops_what_comes() {
        let mut line = DelayLine::new(&settings(50, 0, 3));
        let t0 = Instant::now();
        assert!(line.push(vec![1], t0));
        assert!(line.push(vec![2], t0));
        assert!(line.push(vec![3], t0));
        assert!(!line.push(vec![4], t0));
        assert_eq!(line.len(), 3);
        assert_eq!(drain(&mut line, t0 + Duration::from_millis(50)).len(), 3);
        assert!(line.push(vec![5], t0 + Duration::from_millis(50)));
    }

    #[test]
    fn the_same_seed_draws_the_same_delays() {
        let t0 = Instant::now();
        let dues = || {
            let mut line = DelayLine::new(&settings(50, 20, 100));
            (0..20)
                .map(|i: u8| {
                    line.push(vec![i], t0);
                    let due = line.next_due();
                    drain(&mut line, t0 + Duration::from_secs(1));
                    due
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(dues(), dues());
    }

    #[test]
    fn the_report_is_a_tagged_json_line() {
        let report = ForwarderReport {
            a_to_b: DirectionReport {
                received: 3,
                forwarded: 2,
                dropped_full: 1,
                send_failed: 0,
            },
            b_to_a: DirectionReport::default(),
        };
        let line = serde_json::to_string(&report).expect("serialises");
        assert!(
            line.starts_with(r#"{"event":"delay-stats","a_to_b":{"received":3"#),
            "{line}"
        );
        assert_eq!(
            serde_json::from_str::<ForwarderReport>(&line).ok(),
            Some(report)
        );
    }
}
