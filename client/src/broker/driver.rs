//! The task behind a [`super::BrokerLink`]: it owns the Attach stream, its timers and its
//! re-attaching; the handles talk to it through a command channel.
//!
//! One task, one `select!` loop per state. Attached: requests go out with a fresh `request_id`
//! and wait in [`Pending`]; a Ping goes out every half keepalive interval; each server message is
//! classified ([`wire::classify`]) into an answer, a Pong (round trip and clock) or an event.
//! Events wait in a small outbox for room in the game's bounded channel, and while one waits the
//! stream is not read (backpressure reaches the server, which ends a client that reads too
//! slowly). Detached: requests fail at once, the outbox still drains, and attaching is retried
//! with backoff and full jitter.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rally_proto::broker::v1::attach_request::Body as Request;
use rally_proto::broker::v1::attach_response::Body;
use rally_proto::broker::v1::broker_client::BrokerClient;
use rally_proto::broker::v1::{
    AttachRequest, AttachResponse, Candidate, ErrorCode, Hello, NatType, Ping, Reauthenticate,
    Welcome,
};
use tokio::sync::mpsc::error::{SendError, TrySendError};
use tokio::sync::mpsc::{self, Permit};
use tokio::sync::oneshot;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

use super::backoff::Backoff;
use super::clock::ClockSync;
use super::pending::{Answer, Pending, Reply, Waiting};
use super::wire::{self, Incoming};
use super::{Announcement, BrokerEvent, LinkEnd, LinkStatus};
use crate::{Error, Result, Session};

/// Largest server message accepted (the largest real one, a full RoomPresence, is ~15 KiB).
const MAX_SERVER_MESSAGE_BYTES: usize = 64 * 1024;
/// How long opening a stream (up to its Welcome) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests queued toward the stream before requests are refused as too many.
const OUTBOUND_CAPACITY: usize = 256;
/// Pings remembered while waiting for their Pong.
const MAX_PINGS_IN_FLIGHT: usize = 8;
/// Re-attach backoff: ceilings from 250 ms doubling to 10 s.
const REATTACH_FIRST: Duration = Duration::from_millis(250);
const REATTACH_MAX: Duration = Duration::from_secs(10);

/// A request from a handle.
pub(super) struct Command {
    /// The message to send.
    pub(super) body: Request,
    /// Candidates to remember once accepted (UpdateCandidates).
    pub(super) on_ack: Option<(Vec<Candidate>, NatType)>,
    /// Where the answer goes.
    pub(super) reply: Reply,
}

/// The link's task.
pub(super) struct Driver {
    session: Session,
    announcement: Announcement,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<BrokerEvent>,
    outbox: Outbox,
    status: Arc<LinkStatus>,
    cancel: CancellationToken,
    last_id: u64,
    clock: ClockSync,
    backoff: Backoff,
    /// Changes when the session installs a refreshed access token: the attachment then
    /// re-authenticates in band, or the broker ends it when its first token expires.
    tokens: tokio::sync::watch::Receiver<u64>,
}

/// One open Attach stream.
struct Stream {
    outbound: mpsc::Sender<AttachRequest>,
    inbound: Streaming<AttachResponse>,
    pending: Pending,
    pings: VecDeque<(u64, Instant)>,
    keepalive: Duration,
}

/// How a stream ended.
enum End {
    /// Lost: re-attach.
    Lost(String),
    /// Replaced by a newer attachment: stop.
    Superseded,
    /// Shut down, or every handle dropped: stop.
    Closed,
}

/// Why opening a stream failed.
enum OpenError {
    /// Worth retrying.
    Retry(Error),
    /// Retrying cannot help.
    Fatal(LinkEnd, Error),
}

impl OpenError {
    fn into_error(self) -> Error {
        match self {
            Self::Retry(error) | Self::Fatal(_, error) => error,
        }
    }
}

impl Driver {
    pub(super) fn new(
        session: Session,
        announcement: Announcement,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<BrokerEvent>,
        status: Arc<LinkStatus>,
        cancel: CancellationToken,
    ) -> Self {
        let tokens = session.token_updates();
        Self {
            tokens,
            session,
            announcement,
            commands,
            events,
            outbox: Outbox::default(),
            status,
            cancel,
            last_id: 0,
            clock: ClockSync::default(),
            backoff: Backoff::new(REATTACH_FIRST, REATTACH_MAX),
        }
    }

    /// Attaches (reporting the outcome on `first`), then serves and re-attaches until the link
    /// ends.
    pub(super) async fn run(mut self, first: oneshot::Sender<Result<()>>) {
        let opening = self.opening();
        let opened = tokio::select! {
            () = self.cancel.cancelled() => Err(Error::Closed),
            opened = opening => opened.map_err(OpenError::into_error),
        };
        let mut stream = match opened {
            Ok(opened) => self.welcomed(opened),
            Err(error) => {
                self.status.end(LinkEnd::Closed);
                let _ = first.send(Err(error));
                return;
            }
        };
        if first.send(Ok(())).is_err() {
            // Whoever attached stopped waiting: nobody holds the link.
            self.status.end(LinkEnd::Closed);
            return;
        }
        loop {
            let end = self.serve(&mut stream).await;
            self.status.set_attached(false);
            match end {
                End::Lost(reason) => {
                    stream.pending.fail_all(&Error::BrokerUnavailable);
                    drop(stream);
                    tracing::info!(%reason, "the broker link was lost; re-attaching");
                    self.outbox.push(BrokerEvent::Detached { reason });
                    match self.reattach().await {
                        Some(next) => stream = next,
                        None => break,
                    }
                }
                End::Superseded => {
                    self.status.end(LinkEnd::Superseded);
                    stream.pending.fail_all(&Error::Superseded);
                    self.outbox.push(BrokerEvent::Superseded);
                    break;
                }
                End::Closed => {
                    self.status.end(LinkEnd::Closed);
                    stream.pending.fail_all(&Error::Closed);
                    break;
                }
            }
        }
        self.flush_final().await;
    }

    fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }

    /// Opening a stream with the current announcement (a future that does not borrow the driver,
    /// so requests can be answered meanwhile).
    fn opening(&mut self) -> impl Future<Output = Result<Opened, OpenError>> + use<> {
        // The stream opens with the current token: only later ones need re-authenticating.
        self.tokens.mark_unchanged();
        let id = self.next_id();
        open(self.session.clone(), wire::hello(&self.announcement), id)
    }

    /// Takes a welcomed stream into use.
    fn welcomed(&mut self, opened: Opened) -> Stream {
        let welcome = wire::welcome(&opened.welcome);
        if let Some(server_time) = welcome.server_time {
            self.clock
                .sample(opened.sent, opened.received, server_time, false);
        }
        self.status.set_attached(true);
        tracing::debug!(attachment = %welcome.attachment_id, "attached to the broker");
        self.outbox.push(BrokerEvent::Attached {
            attachment_id: welcome.attachment_id,
            relay_available: !welcome.reflectors.is_empty(),
            reflectors: welcome.reflectors,
        });
        Stream {
            outbound: opened.outbound,
            inbound: opened.inbound,
            pending: Pending::default(),
            pings: VecDeque::new(),
            keepalive: welcome.keepalive,
        }
    }

    /// Re-attaches with backoff; `None` when the link ended meanwhile.
    async fn reattach(&mut self) -> Option<Stream> {
        loop {
            let delay = self.backoff.next_delay();
            self.idle(tokio::time::sleep(delay)).await?;
            let opening = self.opening();
            match self.idle(opening).await? {
                Ok(opened) => {
                    self.backoff.reset();
                    return Some(self.welcomed(opened));
                }
                Err(OpenError::Retry(error)) => {
                    tracing::info!(%error, "re-attaching to the broker failed; retrying");
                }
                Err(OpenError::Fatal(why, error)) => {
                    tracing::warn!(%error, "the broker refused to re-attach; the link ended");
                    self.status.end(why);
                    return None;
                }
            }
        }
    }

    /// Runs `work` while detached: requests fail at once (new candidates are remembered), events
    /// are delivered. `None` when the link ends meanwhile.
    async fn idle<F: Future>(&mut self, work: F) -> Option<F::Output> {
        tokio::pin!(work);
        // A handle of its own, so a reserved slot does not borrow the driver.
        let events = self.events.clone();
        loop {
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return None,
                output = &mut work => return Some(output),
                permit = events.reserve(), if !self.outbox.is_empty() => {
                    self.outbox.deliver(permit);
                }
                command = self.commands.recv() => match command {
                    None => return None,
                    Some(command) => self.refuse_detached(command),
                },
            }
        }
    }

    fn refuse_detached(&mut self, command: Command) {
        let answer = match command.on_ack {
            Some((candidates, nat_type)) => {
                self.announcement.candidates = candidates;
                self.announcement.nat_type = nat_type;
                Ok(Answer::Ack)
            }
            None => Err(Error::BrokerUnavailable),
        };
        let _ = command.reply.send(answer);
    }

    /// Serves an open stream until it ends.
    async fn serve(&mut self, stream: &mut Stream) -> End {
        let ping_every = stream.keepalive / 2;
        let silence = stream.keepalive * 2;
        let mut ping = tokio::time::interval(ping_every);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let quiet = tokio::time::sleep(silence);
        tokio::pin!(quiet);
        // A handle of its own, so a reserved slot does not borrow the driver.
        let events = self.events.clone();
        loop {
            let reading = self.outbox.is_empty();
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return End::Closed,
                permit = events.reserve(), if !reading => {
                    self.outbox.deliver(permit);
                    if self.outbox.is_empty() {
                        // Reading again: the server gets a full silence window from now.
                        quiet.as_mut().reset(tokio::time::Instant::now() + silence);
                    }
                }
                command = self.commands.recv() => match command {
                    None => return End::Closed,
                    Some(command) => self.send(stream, command),
                },
                _ = ping.tick() => self.ping(stream),
                changed = self.tokens.changed() => match changed {
                    Ok(()) => self.reauthenticate(stream),
                    // The session is gone; the link ends with it.
                    Err(_) => return End::Closed,
                },
                message = stream.inbound.message(), if reading => match message {
                    Ok(Some(message)) => {
                        quiet.as_mut().reset(tokio::time::Instant::now() + silence);
                        if let Err(end) = self.receive(stream, message) {
                            return end;
                        }
                    }
                    Ok(None) => return End::Lost("the broker ended the stream".into()),
                    Err(status) => {
                        if status.code() == tonic::Code::Unauthenticated {
                            // Expired, or the session ended on the server: a refresh tells
                            // which (it fails for an ended session, which then ends here).
                            self.session.refresh_now();
                        }
                        return End::Lost(format!("{:?}: {}", status.code(), status.message()));
                    }
                },
                () = &mut quiet, if reading => {
                    return End::Lost(format!("nothing heard from the broker for {silence:?}"));
                }
            }
        }
    }

    /// Sends a request.
    fn send(&mut self, stream: &mut Stream, command: Command) {
        let id = self.next_id();
        let waiting = Waiting {
            reply: command.reply,
            on_ack: command.on_ack,
        };
        if let Err(waiting) = stream.pending.insert(id, waiting) {
            let _ = waiting
                .reply
                .send(Err(too_many("requests waiting for an answer")));
            return;
        }
        let request = AttachRequest {
            request_id: id,
            body: Some(command.body),
        };
        let refusal = match stream.outbound.try_send(request) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => too_many("requests queued"),
            Err(TrySendError::Closed(_)) => {
                self.outbound_closed();
                Error::BrokerUnavailable
            }
        };
        if let Some(waiting) = stream.pending.take(id) {
            let _ = waiting.reply.send(Err(refusal));
        }
    }

    /// Presents the session's refreshed access token on the attachment (Reauthenticate); a
    /// refusal is logged (the broker then ends the attachment at the old token's deadline, and
    /// the link re-attaches with the current token).
    fn reauthenticate(&mut self, stream: &mut Stream) {
        let access_token = self.session.access_token();
        if access_token.is_empty() {
            return;
        }
        let (reply, answer) = oneshot::channel();
        self.send(
            stream,
            Command {
                body: Request::Reauthenticate(Reauthenticate { access_token }),
                on_ack: None,
                reply,
            },
        );
        tokio::spawn(async move {
            match answer.await {
                Ok(Ok(_)) => tracing::debug!("the attachment re-authenticated"),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "the broker refused the refreshed access token");
                }
                Err(_) => {}
            }
        });
    }

    /// Sends a Ping (and forgets requests whose callers gave up).
    fn ping(&mut self, stream: &mut Stream) {
        stream.pending.purge_abandoned();
        let id = self.next_id();
        let request = AttachRequest {
            request_id: id,
            body: Some(Request::Ping(Ping { nonce: id })),
        };
        match stream.outbound.try_send(request) {
            Ok(()) => {
                if stream.pings.len() == MAX_PINGS_IN_FLIGHT {
                    stream.pings.pop_front();
                }
                stream.pings.push_back((id, Instant::now()));
            }
            // The queue is full of requests: they keep the attachment alive as well.
            Err(TrySendError::Full(_)) => {}
            Err(TrySendError::Closed(_)) => self.outbound_closed(),
        }
    }

    /// The call is over: nothing more can be sent. How it ended, and any message still buffered
    /// before its end, is read from the inbound side (which ends the stream).
    fn outbound_closed(&self) {
        self.status.set_attached(false);
    }

    /// Handles one server message; `Err` when it ends the stream.
    fn receive(&mut self, stream: &mut Stream, message: AttachResponse) -> Result<(), End> {
        let now = Instant::now();
        match wire::classify(message, &self.clock, now) {
            Incoming::Answer { request_id, answer } => match stream.pending.take(request_id) {
                Some(waiting) => {
                    if let (Ok(Answer::Ack), Some((candidates, nat_type))) =
                        (&answer, waiting.on_ack)
                    {
                        self.announcement.candidates = candidates;
                        self.announcement.nat_type = nat_type;
                    }
                    let _ = waiting.reply.send(answer);
                }
                // The asker gave up, but the peer has the grant: keep it usable.
                None => match answer {
                    Ok(Answer::RelayGrant(grant)) => {
                        self.outbox.push(BrokerEvent::RelayGrant(grant));
                    }
                    _ => tracing::debug!(request_id, "an answer nobody waits for"),
                },
            },
            Incoming::Pong {
                request_id,
                server_time,
            } => {
                let sent = stream
                    .pings
                    .iter()
                    .position(|(id, _)| *id == request_id)
                    .and_then(|i| stream.pings.remove(i));
                if let (Some((_, sent)), Some(server_time)) = (sent, server_time) {
                    self.clock.sample(sent, now, server_time, true);
                    self.status.set_rtt(self.clock.rtt());
                }
            }
            Incoming::Event(event) => self.outbox.push(event),
            Incoming::Superseded => return Err(End::Superseded),
            Incoming::Dropped(why) => {
                tracing::warn!(%why, "dropped a malformed message from the broker");
            }
        }
        Ok(())
    }

    /// Delivers what is left in the outbox after the link ended (a final `Superseded`),
    /// answering requests with the link's end meanwhile.
    async fn flush_final(&mut self) {
        while !self.outbox.is_empty() {
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return,
                permit = self.events.reserve() => self.outbox.deliver(permit),
                command = self.commands.recv() => match command {
                    None => return,
                    Some(command) => {
                        let _ = command.reply.send(Err(self.status.error()));
                    }
                },
            }
        }
    }
}

fn too_many(what: &str) -> Error {
    Error::Broker {
        code: ErrorCode::RateLimited,
        message: format!("too many {what} on this link; retry later"),
    }
}

/// Events waiting for room in the game's channel.
#[derive(Debug, Default)]
struct Outbox {
    queue: VecDeque<BrokerEvent>,
    /// The game dropped its receiver: events are discarded.
    receiver_gone: bool,
}

impl Outbox {
    fn push(&mut self, event: BrokerEvent) {
        if !self.receiver_gone {
            self.queue.push_back(event);
        }
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn deliver(&mut self, permit: Result<Permit<'_, BrokerEvent>, SendError<()>>) {
        match permit {
            Ok(permit) => {
                if let Some(event) = self.queue.pop_front() {
                    permit.send(event);
                }
            }
            Err(_) => {
                self.receiver_gone = true;
                self.queue.clear();
            }
        }
    }
}

/// A stream that answered its Hello with a Welcome.
struct Opened {
    outbound: mpsc::Sender<AttachRequest>,
    inbound: Streaming<AttachResponse>,
    welcome: Welcome,
    sent: Instant,
    received: Instant,
}

/// Opens an Attach stream for `session` and sends `hello` as request `request_id`.
async fn open(session: Session, hello: Hello, request_id: u64) -> Result<Opened, OpenError> {
    if session.is_ended() {
        return Err(OpenError::Fatal(LinkEnd::SessionEnded, Error::SessionEnded));
    }
    let mut client = BrokerClient::with_interceptor(session.channel(), session.authorized())
        .max_decoding_message_size(MAX_SERVER_MESSAGE_BYTES);
    let (outbound, requests) = mpsc::channel(OUTBOUND_CAPACITY);
    let hello = AttachRequest {
        request_id,
        body: Some(Request::Hello(hello)),
    };
    outbound
        .try_send(hello)
        .map_err(|_| OpenError::Retry(Error::Closed))?;
    let sent = Instant::now();
    let exchange = async {
        let requests = tokio_stream::wrappers::ReceiverStream::new(requests);
        let mut inbound = client
            .attach(requests)
            .await
            .map_err(|status| refused(&session, status))?
            .into_inner();
        match inbound.message().await {
            Ok(Some(AttachResponse {
                request_id: id,
                body: Some(Body::Welcome(welcome)),
            })) if id == request_id => Ok((inbound, welcome)),
            Ok(Some(other)) => Err(OpenError::Retry(Error::protocol(format!(
                "the broker answered Hello with {other:?}"
            )))),
            Ok(None) => Err(OpenError::Retry(Error::protocol(
                "the broker ended the stream before its Welcome",
            ))),
            Err(status) => Err(refused(&session, status)),
        }
    };
    let (inbound, welcome) = tokio::time::timeout(OPEN_TIMEOUT, exchange)
        .await
        .map_err(|_| OpenError::Retry(Error::Unreachable("no Welcome in time".into())))??;
    Ok(Opened {
        outbound,
        inbound,
        welcome,
        sent,
        received: Instant::now(),
    })
}

/// Whether a refused stream is worth opening again.
fn refused(session: &Session, status: tonic::Status) -> OpenError {
    use tonic::Code;
    match session.error(status) {
        Error::SessionEnded => OpenError::Fatal(LinkEnd::SessionEnded, Error::SessionEnded),
        error @ Error::Rpc {
            code:
                Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::PermissionDenied
                | Code::OutOfRange
                | Code::Unimplemented,
            ..
        } => OpenError::Fatal(LinkEnd::Refused, error),
        error => OpenError::Retry(error),
    }
}
