//! Sessions that ended (Logout, a revoked refresh-token family) and what their end does on this
//! replica: [`SessionEnds`] refuses their access tokens from then on and ends their open
//! streams, which [`SessionLayer`] registers; streams that cannot re-authenticate in band also
//! end when their access token expires.
//!
//! Access tokens are verified locally, so a replica learns that a session ended from the
//! cross-replica bus: identity publishes [`ended_payloads`] on [`SESSIONS_ENDED_TOPIC`] and every
//! replica applies what [`parse_ended`] reads to its `SessionEnds` (`rallyd` wires this). A
//! replica that may have missed messages re-checks its open sessions in the database. Either
//! way, a token of an ended session stops working everywhere at its expiry at the latest.
//!
//! Not here: the database, the bus or the broker's in-band re-authentication.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::{Either, Ready, ready};

use pin_project_lite::pin_project;
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};
use uuid::Uuid;

use crate::Caller;
use crate::ending_body::EndingBody;

/// The bus topic on which identity announces ended sessions.
pub const SESSIONS_ENDED_TOPIC: &str = "sessions_ended";
/// Session ids per bus payload: 200 ids of 36 characters and a space stay under the bus's 7900
/// bytes (Postgres NOTIFY's 8000).
const IDS_PER_PAYLOAD: usize = 200;
/// Most ended sessions remembered at once; past it the oldest are forgotten (their tokens then
/// work until they expire, as without this list).
const MAX_REMEMBERED: usize = 100_000;
/// Clock skew tolerated on a token's expiry (the verifier's leeway).
const EXPIRY_LEEWAY: Duration = Duration::from_secs(5);

/// The bus payloads announcing that `sessions` ended: their ids, space-separated, in chunks.
pub fn ended_payloads(sessions: &[Uuid]) -> Vec<String> {
    sessions
        .chunks(IDS_PER_PAYLOAD)
        .map(|chunk| {
            chunk
                .iter()
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// The session ids in a payload of [`ended_payloads`]; `None` when it is not one.
pub fn parse_ended(payload: &str) -> Option<Vec<Uuid>> {
    let ids: Vec<Uuid> = payload
        .split(' ')
        .filter(|part| !part.is_empty())
        .map(Uuid::try_parse)
        .collect::<Result<_, _>>()
        .ok()?;
    (!ids.is_empty() && ids.len() <= IDS_PER_PAYLOAD).then_some(ids)
}

/// What this replica knows of ended sessions, and the streams open for each live one.
#[derive(Debug)]
pub struct SessionEnds {
    inner: Mutex<Inner>,
    /// How long an ended session is remembered: the longest an access token lives, plus the
    /// leeway. After that, no token of it verifies anyway.
    remember: Duration,
}

#[derive(Debug, Default)]
struct Inner {
    /// Open streams by session: their user, and a token that ends each.
    open: HashMap<Uuid, OpenSession>,
    /// Ended sessions, until when they are remembered.
    ended: HashMap<Uuid, Instant>,
    /// The same, oldest first, for forgetting.
    ended_order: VecDeque<(Instant, Uuid)>,
    next_stream: u64,
}

#[derive(Debug)]
struct OpenSession {
    user: Uuid,
    streams: HashMap<u64, CancellationToken>,
}

impl SessionEnds {
    /// An empty registry remembering ended sessions for `access_token_ttl` (plus the verifier's
    /// leeway).
    pub fn new(access_token_ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            remember: access_token_ttl + EXPIRY_LEEWAY,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `session` is known to have ended.
    pub fn is_ended(&self, session: Uuid) -> bool {
        let mut inner = self.lock();
        inner.forget_expired(Instant::now());
        inner.ended.contains_key(&session)
    }

    /// Records that `sessions` ended: their tokens are refused from now on, and their open
    /// streams end. Returns how many streams were ended.
    pub fn end(&self, sessions: &[Uuid]) -> usize {
        let now = Instant::now();
        let mut ended_streams = 0;
        let mut inner = self.lock();
        inner.forget_expired(now);
        for session in sessions {
            if let Some(open) = inner.open.remove(session) {
                for (_, stream) in open.streams {
                    stream.cancel();
                    ended_streams += 1;
                }
            }
            let until = now + self.remember;
            if inner.ended.insert(*session, until).is_none() {
                inner.ended_order.push_back((until, *session));
            }
            while inner.ended.len() > MAX_REMEMBERED {
                match inner.ended_order.pop_front() {
                    Some((_, oldest)) => {
                        inner.ended.remove(&oldest);
                    }
                    None => break,
                }
            }
        }
        ended_streams
    }

    /// The (user, session) of every session with open streams here, for checking them against
    /// the database when ended-session messages may have been missed.
    pub fn open_sessions(&self) -> Vec<(Uuid, Uuid)> {
        self.lock()
            .open
            .iter()
            .map(|(session, open)| (open.user, *session))
            .collect()
    }

    /// Registers a stream of `caller`'s session; `None` when the session already ended.
    fn register(self: &Arc<Self>, caller: &Caller) -> Option<Registration> {
        let mut inner = self.lock();
        if inner.ended.contains_key(&caller.session_id) {
            return None;
        }
        let id = inner.next_stream;
        inner.next_stream += 1;
        let token = CancellationToken::new();
        inner
            .open
            .entry(caller.session_id)
            .or_insert_with(|| OpenSession {
                user: caller.user_id,
                streams: HashMap::new(),
            })
            .streams
            .insert(id, token.clone());
        Some(Registration {
            ends: self.clone(),
            session: caller.session_id,
            id,
            token,
        })
    }

    fn unregister(&self, session: Uuid, id: u64) {
        let mut inner = self.lock();
        if let Some(open) = inner.open.get_mut(&session) {
            open.streams.remove(&id);
            if open.streams.is_empty() {
                inner.open.remove(&session);
            }
        }
    }
}

impl Inner {
    fn forget_expired(&mut self, now: Instant) {
        while let Some(&(until, session)) = self.ended_order.front() {
            if until > now {
                break;
            }
            self.ended_order.pop_front();
            if self.ended.get(&session) == Some(&until) {
                self.ended.remove(&session);
            }
        }
    }
}

/// A registered stream; dropping it unregisters.
#[derive(Debug)]
struct Registration {
    ends: Arc<SessionEnds>,
    session: Uuid,
    id: u64,
    token: CancellationToken,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.ends.unregister(self.session, self.id);
    }
}

/// How long a stream may outlive its access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamLife {
    /// It re-authenticates in band (the broker's Attach): only its session's end ends it here.
    Reauthenticates,
    /// It cannot re-authenticate: it ends at its token's expiry too (the client resumes it with
    /// a fresh token).
    EndsAtExpiry,
}

/// A tower layer behind the authentication layer: refuses every call of an ended session with
/// `UNAUTHENTICATED`, and ends the configured streaming calls with `UNAUTHENTICATED` when their
/// session ends (or, see [`StreamLife`], their token expires).
#[derive(Debug, Clone)]
pub struct SessionLayer {
    ends: Arc<SessionEnds>,
    streams: Arc<HashMap<String, StreamLife>>,
}

impl SessionLayer {
    /// A layer over `ends`, with no streaming call registered yet.
    pub fn new(ends: Arc<SessionEnds>) -> Self {
        Self {
            ends,
            streams: Arc::new(HashMap::new()),
        }
    }

    /// Bounds the streaming call at `path` (`/rally.rooms.v1.Rooms/WatchRoom`).
    pub fn stream(mut self, path: impl Into<String>, life: StreamLife) -> Self {
        Arc::make_mut(&mut self.streams).insert(path.into(), life);
        self
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            ends: self.ends.clone(),
            streams: self.streams.clone(),
        }
    }
}

/// The service [`SessionLayer`] wraps.
#[derive(Debug, Clone)]
pub struct SessionService<S> {
    inner: S,
    ends: Arc<SessionEnds>,
    streams: Arc<HashMap<String, StreamLife>>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

fn ended_status() -> tonic::Status {
    tonic::Status::unauthenticated("the session has ended (signed out or revoked); sign in again")
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for SessionService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = http::Response<SessionBody<ResBody>>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, S::Error>>, SessionFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let Some(caller) = request.extensions().get::<Caller>().copied() else {
            // Public calls carry no session.
            return Either::Right(SessionFuture {
                inner: self.inner.call(request),
                end: None,
            });
        };
        let refused = || {
            let (parts, body) = ended_status().into_http::<ResBody>().into_parts();
            Either::Left(ready(Ok(http::Response::from_parts(
                parts,
                EndingBody::new(body, None),
            ))))
        };
        let life = self.streams.get(request.uri().path()).copied();
        let end = match life {
            None if self.ends.is_ended(caller.session_id) => return refused(),
            None => None,
            Some(life) => match self.ends.register(&caller) {
                None => return refused(),
                Some(registration) => Some(StreamEnd::new(registration, life, &caller)),
            },
        };
        Either::Right(SessionFuture {
            inner: self.inner.call(request),
            end,
        })
    }
}

/// What ends one stream: its session's end, or its token's expiry.
pub struct StreamEnd {
    _registration: Registration,
    ended: Pin<Box<dyn Future<Output = tonic::Status> + Send>>,
}

impl std::fmt::Debug for StreamEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamEnd").finish_non_exhaustive()
    }
}

impl Future for StreamEnd {
    type Output = tonic::Status;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<tonic::Status> {
        self.ended.as_mut().poll(cx)
    }
}

impl StreamEnd {
    fn new(registration: Registration, life: StreamLife, caller: &Caller) -> Self {
        let cancelled = registration.token.clone().cancelled_owned();
        let ended: Pin<Box<dyn Future<Output = tonic::Status> + Send>> = match life {
            StreamLife::Reauthenticates => Box::pin(async move {
                cancelled.await;
                ended_status()
            }),
            StreamLife::EndsAtExpiry => {
                let left = u64::try_from(caller.expires_at.saturating_sub(unix_now()))
                    .map(Duration::from_secs)
                    .unwrap_or(Duration::ZERO)
                    + EXPIRY_LEEWAY;
                Box::pin(async move {
                    tokio::select! {
                        () = cancelled => ended_status(),
                        () = tokio::time::sleep(left) => tonic::Status::unauthenticated(
                            "the access token expired; resume the stream with a fresh one",
                        ),
                    }
                })
            }
        };
        Self {
            _registration: registration,
            ended,
        }
    }
}

pin_project! {
    /// The response future of [`SessionService`].
    pub struct SessionFuture<F> {
        #[pin]
        inner: F,
        end: Option<StreamEnd>,
    }
}

impl<F, B, E> Future for SessionFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<SessionBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        // An answer whose status is in its headers (a refused call: "trailers-only") has no
        // stream to end.
        let end = match response.headers().contains_key("grpc-status") {
            true => None,
            false => this.end.take(),
        };
        let (parts, body) = response.into_parts();
        let body = EndingBody::new(body, end);
        Poll::Ready(Ok(http::Response::from_parts(parts, body)))
    }
}

/// A response body that ends with `UNAUTHENTICATED` trailers when its stream's session ends
/// (or its token expires); any other body passes through unchanged.
pub type SessionBody<B> = EndingBody<B, StreamEnd>;

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(session: Uuid) -> Caller {
        Caller {
            user_id: Uuid::new_v4(),
            session_id: session,
            expires_at: unix_now() + 900,
        }
    }

    #[test]
    fn ending_a_session_cancels_its_streams_only_and_refuses_it_from_then_on() {
        let ends = SessionEnds::new(Duration::from_secs(900));
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let a1 = ends.register(&caller(a)).expect("open");
        let a2 = ends.register(&caller(a)).expect("open");
        let b1 = ends.register(&caller(b)).expect("open");
        assert_eq!(ends.open_sessions().len(), 2);
        assert_eq!(ends.end(&[a]), 2);
        assert!(a1.token.is_cancelled() && a2.token.is_cancelled());
        assert!(!b1.token.is_cancelled());
        assert!(ends.is_ended(a) && !ends.is_ended(b));
        assert!(
            ends.register(&caller(a)).is_none(),
            "no new stream of an ended session"
        );
        drop((a1, a2));
        drop(b1);
        assert!(
            ends.open_sessions().is_empty(),
            "dropped registrations leave nothing"
        );
    }

    #[test]
    fn ended_sessions_are_forgotten_when_no_token_of_theirs_can_verify() {
        let ends = SessionEnds::new(Duration::ZERO);
        let session = Uuid::new_v4();
        ends.end(&[session]);
        // Remembered for the leeway only.
        let mut inner = ends.lock();
        inner.forget_expired(Instant::now() + EXPIRY_LEEWAY + Duration::from_millis(1));
        assert!(inner.ended.is_empty() && inner.ended_order.is_empty());
    }

    #[test]
    fn the_list_of_ended_sessions_is_bounded() {
        let ends = SessionEnds::new(Duration::from_secs(900));
        let first = Uuid::new_v4();
        ends.end(&[first]);
        let more: Vec<Uuid> = (0..MAX_REMEMBERED).map(|_| Uuid::new_v4()).collect();
        ends.end(&more);
        assert!(!ends.is_ended(first), "the oldest was forgotten");
        assert!(ends.is_ended(more[MAX_REMEMBERED - 1]));
        assert_eq!(ends.lock().ended.len(), MAX_REMEMBERED);
    }

    #[test]
    fn payloads_carry_every_id_in_chunks_within_the_bus_limit() {
        let ids: Vec<Uuid> = (0..450).map(|_| Uuid::new_v4()).collect();
        let payloads = ended_payloads(&ids);
        assert_eq!(payloads.len(), 3);
        assert!(payloads.iter().all(|p| p.len() < 7900));
        let back: Vec<Uuid> = payloads
            .iter()
            .flat_map(|p| parse_ended(p).expect("parses"))
            .collect();
        assert_eq!(back, ids);
        assert_eq!(parse_ended(""), None);
        assert_eq!(parse_ended("not-a-uuid"), None);
    }
}
