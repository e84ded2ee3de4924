//! Signing in, and a signed-in [`Session`] whose access token stays fresh by itself.
//!
//! [`Rally`] is an unauthenticated connection to `rallyd`; its sign-in calls give a [`Session`].
//! A session keeps the tokens of one sign-in: a background task refreshes the access token at
//! about 80 % of its lifetime (rotating the refresh token, as `rally.identity.v1.Refresh`
//! requires), retries with backoff when a refresh fails, and ends the session when the refresh
//! token is refused for good. [`Authorized`] puts the current access token on any gRPC call.
//!
//! Not here: the rooms, matchmaking and broker calls (see [`crate::rooms`] and
//! [`crate::broker`]), which use a session.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rally_proto::identity::v1::identity_client::IdentityClient;
use rally_proto::identity::v1::{
    AuthSession, DeviceLoginRequest, LoginRequest, LogoutRequest, RefreshRequest, RegisterRequest,
};
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::TraceContext;
use crate::broker::backoff::Backoff;
use crate::{Error, Result};

/// Tokens longer than this are not parsed (the server issues far shorter ones).
const MAX_TOKEN_BYTES: usize = 4096;
/// The share of an access token's lifetime after which it is refreshed.
const REFRESH_AT_PERCENT: u32 = 80;
/// Never refresh sooner than this after the previous refresh (a token with a tiny or nonsensical
/// lifetime must not turn the task into a busy loop).
const MIN_REFRESH_DELAY: Duration = Duration::from_millis(500);
/// Never wait longer than this between refreshes.
const MAX_REFRESH_DELAY: Duration = Duration::from_secs(24 * 3600);
/// The lifetime assumed for a token whose expiry cannot be read at all, in seconds.
const UNKNOWN_LIFETIME_SECS: i64 = 60;
/// How long one Refresh call may take.
const REFRESH_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Backoff between failed refreshes.
const REFRESH_RETRY_FIRST: Duration = Duration::from_millis(500);
const REFRESH_RETRY_MAX: Duration = Duration::from_secs(30);

/// An unauthenticated connection to `rallyd`, for signing in.
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_dir, _server, url) = rally_client::doc_server!();
/// use rally_client::Rally;
/// let rally = Rally::connect(&url).await?; // e.g. "http://127.0.0.1:7370"
/// # rally.register("ada", "correct horse battery staple", "Ada").await?;
/// let session = rally.login("ada", "correct horse battery staple").await?;
/// println!("signed in as {}", session.user_id());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Rally {
    channel: Channel,
}

impl Rally {
    /// Connects to the `rallyd` at `url`: `https://host:port` with a certificate from a public
    /// CA, or `http://host:port` on loopback. See [`Rally::connect_with`].
    pub async fn connect(url: &str) -> Result<Rally> {
        Ok(Rally {
            channel: crate::connect(url).await?,
        })
    }

    /// Connects to the `rallyd` at `url` with `config`: a self-hosted CA or a pinned server
    /// certificate for `https://` ([`crate::ServerTrust`]).
    ///
    /// ```no_run
    /// # async fn f() -> rally_client::Result<()> {
    /// use rally_client::{Rally, RallyConfig, ServerTrust};
    /// let config = RallyConfig::with_trust(ServerTrust::ca_file("studio-ca.pem")?);
    /// let rally = Rally::connect_with("https://rally.example.com:7370", &config).await?;
    /// # drop(rally); Ok(()) }
    /// ```
    pub async fn connect_with(url: &str, config: &crate::RallyConfig) -> Result<Rally> {
        Ok(Rally {
            channel: crate::connect_with(url, config).await?,
        })
    }

    /// A connection over an existing channel (from [`crate::connect`] or configured by hand).
    pub fn from_channel(channel: Channel) -> Rally {
        Rally { channel }
    }

    /// The gRPC channel to `rallyd`.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Creates an account with a username and password and signs it in. An empty
    /// `display_name` means the username.
    ///
    /// Errors: [`Error::Rpc`] with `INVALID_ARGUMENT` (outside the rules), `ALREADY_EXISTS`
    /// (username taken), `RESOURCE_EXHAUSTED` (too many attempts).
    pub async fn register(
        &self,
        username: &str,
        password: &str,
        display_name: &str,
    ) -> Result<Session> {
        let answer = self
            .identity()
            .register(RegisterRequest {
                username: username.to_owned(),
                password: password.to_owned(),
                display_name: display_name.to_owned(),
            })
            .await?
            .into_inner();
        Session::start(self.channel.clone(), answer.session)
    }

    /// Signs in with a username and password.
    ///
    /// Errors: [`Error::Rpc`] with `UNAUTHENTICATED` (unknown user or wrong password),
    /// `INVALID_ARGUMENT`, `RESOURCE_EXHAUSTED`.
    pub async fn login(&self, username: &str, password: &str) -> Result<Session> {
        let answer = self
            .identity()
            .login(LoginRequest {
                username: username.to_owned(),
                password: password.to_owned(),
            })
            .await?
            .into_inner();
        Session::start(self.channel.clone(), answer.session)
    }

    /// Signs in anonymously with a device id (16 to 128 bytes of printable ASCII, kept by the
    /// device and secret), creating the account on first use; `display_name` is used only then
    /// (empty: the server picks one).
    pub async fn device_login(&self, device_id: &str, display_name: &str) -> Result<Session> {
        let answer = self
            .identity()
            .device_login(DeviceLoginRequest {
                device_id: device_id.to_owned(),
                display_name: display_name.to_owned(),
            })
            .await?
            .into_inner();
        Session::start(self.channel.clone(), answer.session)
    }

    fn identity(&self) -> IdentityClient<InterceptedService<Channel, TraceContext>> {
        IdentityClient::with_interceptor(self.channel.clone(), TraceContext)
    }
}

/// A signed-in user: its identity, its tokens (refreshed in the background) and the channel to
/// `rallyd`. Cheap to clone; the refresh task stops when the last clone is dropped or on
/// [`Session::logout`].
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_dir, _server, url) = rally_client::doc_server!();
/// # let session = rally_client::Rally::connect(&url).await?.device_login("doc-session-0123456789", "Ada").await?;
/// use rally_client::proto::identity::v1::{identity_client::IdentityClient, GetAccountRequest};
/// let mut identity = IdentityClient::with_interceptor(session.channel(), session.authorized());
/// let account = identity.get_account(GetAccountRequest {}).await?.into_inner();
/// println!("{:?}", account.user);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    channel: Channel,
    user_id: Uuid,
    display_name: String,
    session_id: String,
    tokens: Arc<TokenState>,
    stop: CancellationToken,
    /// Stops the refresh task when the last clone goes.
    _stop_on_drop: DropGuard,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user_id", &self.inner.user_id)
            .field("display_name", &self.inner.display_name)
            .field("session_id", &self.inner.session_id)
            .field("ended", &self.is_ended())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session from a sign-in answer; starts its refresh task.
    fn start(channel: Channel, auth: Option<AuthSession>) -> Result<Session> {
        let auth = auth.ok_or_else(|| Error::protocol("the sign-in answer has no session"))?;
        let user = auth
            .user
            .as_ref()
            .ok_or_else(|| Error::protocol("the session has no user"))?;
        let user_id = Uuid::try_parse(&user.user_id)
            .map_err(|_| Error::protocol("the session's user id is not a UUID"))?;
        let tokens = Arc::new(TokenState::new(&auth)?);
        let stop = CancellationToken::new();
        tokio::spawn(keep_fresh(tokens.clone(), channel.clone(), stop.clone()));
        Ok(Session {
            inner: Arc::new(Inner {
                channel,
                user_id,
                display_name: user.display_name.clone(),
                session_id: auth.session_id.clone(),
                tokens,
                _stop_on_drop: stop.clone().drop_guard(),
                stop,
            }),
        })
    }

    /// The signed-in user's id.
    pub fn user_id(&self) -> Uuid {
        self.inner.user_id
    }

    /// The user's display name at sign-in.
    pub fn display_name(&self) -> String {
        self.inner.display_name.clone()
    }

    /// The session's id (the same across refreshes).
    pub fn session_id(&self) -> String {
        self.inner.session_id.clone()
    }

    /// The gRPC channel to `rallyd`.
    pub fn channel(&self) -> Channel {
        self.inner.channel.clone()
    }

    /// An interceptor that puts the session's current access token on a call. Calls made
    /// through it after the session ended fail with `UNAUTHENTICATED` without reaching the
    /// server.
    pub fn authorized(&self) -> Authorized {
        Authorized {
            tokens: self.inner.tokens.clone(),
        }
    }

    /// The current access token (it changes on every refresh); empty once the session ended.
    pub fn access_token(&self) -> String {
        self.inner.tokens.read().access.clone()
    }

    /// When the current access token expires (read from its `exp` claim, else from the
    /// server's answer); `None` once the session ended.
    pub fn access_token_expires_at(&self) -> Option<SystemTime> {
        let tokens = self.inner.tokens.read();
        (!tokens.ended).then_some(tokens.expires_at)
    }

    /// Whether the session has ended (logged out, or its refresh token was refused).
    pub fn is_ended(&self) -> bool {
        self.inner.tokens.read().ended
    }

    /// Ends the session: revokes it on the server (its refresh token stops working, every
    /// replica refuses its access tokens and ends its streams), stops the refresh task and
    /// forgets the tokens. The session is ended locally even when the call fails (its error is
    /// returned). Logging out an ended session does nothing.
    pub async fn logout(&self) -> Result<()> {
        if self.is_ended() {
            return Ok(());
        }
        let mut identity = IdentityClient::with_interceptor(self.channel(), self.authorized());
        let answer = identity
            .logout(LogoutRequest {
                all_sessions: false,
            })
            .await;
        self.inner.stop.cancel();
        self.inner.tokens.end();
        answer.map(drop).map_err(|status| self.error(status))
    }

    /// A receiver that changes whenever a refreshed access token is installed.
    pub(crate) fn token_updates(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.tokens.generation.subscribe()
    }

    /// How many refreshed access tokens were installed so far (compare two readings to tell
    /// whether a refused call used an older token than the current one).
    pub(crate) fn token_generation(&self) -> u64 {
        *self.inner.tokens.generation.borrow()
    }

    /// Refreshes the tokens now rather than on schedule: a server refused the current access
    /// token. If the session ended on the server, the refresh is refused and the session ends
    /// here too ([`Session::is_ended`]).
    pub(crate) fn refresh_now(&self) {
        self.inner.tokens.refresh_now.notify_one();
    }

    /// The SDK error for a refused call made with this session: `UNAUTHENTICATED` after the
    /// session ended is [`Error::SessionEnded`].
    pub(crate) fn error(&self, status: tonic::Status) -> Error {
        if status.code() == tonic::Code::Unauthenticated && self.is_ended() {
            Error::SessionEnded
        } else {
            Error::from(status)
        }
    }
}

/// A tonic interceptor that adds `authorization: Bearer <current access token>` to every call,
/// and the current span's trace context ([`TraceContext`]).
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_dir, _server, url) = rally_client::doc_server!();
/// # let session = rally_client::Rally::connect(&url).await?.device_login("doc-authorized-0123456789", "Ada").await?;
/// use rally_client::proto::rooms::v1::{rooms_client::RoomsClient, GetCurrentRoomRequest};
/// let mut rooms = RoomsClient::with_interceptor(session.channel(), session.authorized());
/// rooms.get_current_room(GetCurrentRoomRequest {}).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Authorized {
    tokens: Arc<TokenState>,
}

impl std::fmt::Debug for Authorized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorized").finish_non_exhaustive()
    }
}

impl Interceptor for Authorized {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let tokens = self.tokens.read();
        if tokens.ended {
            return Err(tonic::Status::unauthenticated("the session has ended"));
        }
        request
            .metadata_mut()
            .insert("authorization", tokens.header.clone());
        crate::trace_context::inject(request.metadata_mut());
        Ok(request)
    }
}

/// The metadata value `Bearer <token>`.
pub(crate) fn bearer_value(access_token: &str) -> Result<AsciiMetadataValue> {
    format!("Bearer {access_token}")
        .parse()
        .map_err(|_| Error::InvalidArgument("the access token cannot be gRPC metadata".into()))
}

/// A session's tokens, shared by the session, its interceptors and its refresh task.
struct TokenState {
    tokens: RwLock<Tokens>,
    /// Counts installed tokens: the broker link re-authenticates its attachment on each.
    generation: tokio::sync::watch::Sender<u64>,
    /// Wakes the refresh task early (a server refused the current access token).
    refresh_now: tokio::sync::Notify,
}

struct Tokens {
    access: String,
    header: AsciiMetadataValue,
    refresh: String,
    expires_at: SystemTime,
    refresh_at: Instant,
    ended: bool,
}

impl TokenState {
    fn new(auth: &AuthSession) -> Result<Self> {
        let tokens = Tokens::from_answer(auth)?;
        Ok(Self {
            tokens: RwLock::new(tokens),
            generation: tokio::sync::watch::Sender::new(0),
            refresh_now: tokio::sync::Notify::new(),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tokens> {
        self.tokens.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tokens> {
        self.tokens.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Installs refreshed tokens, unless the session ended meanwhile.
    fn install(&self, auth: &AuthSession) -> Result<()> {
        let fresh = Tokens::from_answer(auth)?;
        let mut tokens = self.write();
        if !tokens.ended {
            *tokens = fresh;
            drop(tokens);
            self.generation.send_modify(|generation| *generation += 1);
        }
        Ok(())
    }

    /// When to refresh and with which refresh token; `None` once ended.
    fn next_refresh(&self) -> Option<(Instant, String)> {
        let tokens = self.read();
        (!tokens.ended).then(|| (tokens.refresh_at, tokens.refresh.clone()))
    }

    /// Ends the session and forgets its tokens.
    fn end(&self) {
        let mut tokens = self.write();
        tokens.ended = true;
        tokens.access.clear();
        tokens.refresh.clear();
    }
}

impl Tokens {
    fn from_answer(auth: &AuthSession) -> Result<Self> {
        let header = bearer_value(&auth.access_token)
            .map_err(|_| Error::protocol("the access token cannot be gRPC metadata"))?;
        let now_unix = unix_now();
        let fallback = auth.access_token_expires_at.as_ref().map(|t| t.seconds);
        let schedule = RefreshSchedule::of(&auth.access_token, fallback, now_unix);
        Ok(Self {
            access: auth.access_token.clone(),
            header,
            refresh: auth.refresh_token.clone(),
            expires_at: UNIX_EPOCH
                .checked_add(Duration::from_secs(
                    schedule.expires_at.max(0).unsigned_abs(),
                ))
                .unwrap_or(UNIX_EPOCH),
            refresh_at: Instant::now() + schedule.refresh_after,
            ended: false,
        })
    }
}

/// Refreshes the session's tokens until it ends or `stop` is cancelled.
async fn keep_fresh(tokens: Arc<TokenState>, channel: Channel, stop: CancellationToken) {
    let mut identity = IdentityClient::with_interceptor(channel, TraceContext);
    while let Some((at, _)) = tokens.next_refresh() {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(at.into()) => {}
            () = tokens.refresh_now.notified() => {
                tracing::debug!("a server refused the access token; refreshing now");
            }
        }
        let mut backoff = Backoff::new(REFRESH_RETRY_FIRST, REFRESH_RETRY_MAX);
        loop {
            let Some((_, refresh_token)) = tokens.next_refresh() else {
                return;
            };
            let call = identity.refresh(RefreshRequest { refresh_token });
            let answer = tokio::select! {
                () = stop.cancelled() => return,
                answer = tokio::time::timeout(REFRESH_CALL_TIMEOUT, call) => answer,
            };
            let failure = match answer {
                Ok(Ok(answer)) => match answer.into_inner().session {
                    Some(auth) => match tokens.install(&auth) {
                        Ok(()) => break,
                        Err(error) => Some(error.to_string()),
                    },
                    None => Some("the refresh answer has no session".to_owned()),
                },
                Ok(Err(status)) => match Error::from(status) {
                    Error::Rpc {
                        code: tonic::Code::Unauthenticated,
                        message,
                    } => Some(message),
                    error => {
                        tracing::warn!(%error, "could not refresh the access token; retrying");
                        None
                    }
                },
                Err(_) => {
                    tracing::warn!("refreshing the access token timed out; retrying");
                    None
                }
            };
            if let Some(reason) = failure {
                // The refresh token is spent or refused: nothing can renew this session.
                tracing::warn!(%reason, "the session's refresh token was refused; the session ended");
                tokens.end();
                return;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }
}

fn unix_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// When an access token expires and how soon to refresh it (pure: time is an argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RefreshSchedule {
    /// Expiry, seconds since the Unix epoch.
    expires_at: i64,
    /// How long after receiving the token to refresh it.
    refresh_after: Duration,
}

impl RefreshSchedule {
    /// The schedule of `token`, received at `now_unix`. Its lifetime is `exp - iat` from the
    /// token's claims (both on the server's clock, so a wrong local clock does not matter), else
    /// `exp - now`, else `fallback_expires_at - now`, else a minute.
    fn of(token: &str, fallback_expires_at: Option<i64>, now_unix: i64) -> Self {
        let claims = TokenClaims::read(token);
        let expires_at = claims
            .and_then(|c| c.exp)
            .or(fallback_expires_at)
            .unwrap_or_else(|| now_unix.saturating_add(UNKNOWN_LIFETIME_SECS));
        // `iat` is the issuing second, rounded down: the token may have been up to a second
        // old when it arrived, so count a second less of it.
        let lifetime_secs = match claims {
            Some(TokenClaims {
                iat: Some(iat),
                exp: Some(exp),
            }) if exp > iat => exp.saturating_sub(iat).saturating_sub(1),
            _ => expires_at.saturating_sub(now_unix),
        };
        let lifetime = u64::try_from(lifetime_secs).map_or(Duration::ZERO, Duration::from_secs);
        let refresh_after = (lifetime / 100)
            .saturating_mul(REFRESH_AT_PERCENT)
            .clamp(MIN_REFRESH_DELAY, MAX_REFRESH_DELAY);
        Self {
            expires_at,
            refresh_after,
        }
    }
}

/// The two claims the SDK reads from an access token, without verifying it (the server does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
struct TokenClaims {
    /// Issued at, seconds since the Unix epoch.
    iat: Option<i64>,
    /// Expires at, seconds since the Unix epoch.
    exp: Option<i64>,
}

impl TokenClaims {
    /// The claims of a compact JWT (`header.payload.signature`), or `None` if it is not one.
    fn read(token: &str) -> Option<Self> {
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let mut parts = token.split('.');
        let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        serde_json::from_slice(&json).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn jwt(payload: &str) -> String {
        let encode = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.{}",
            encode(r#"{"alg":"EdDSA","kid":"k"}"#),
            encode(payload),
            encode("signature")
        )
    }

    #[test]
    fn claims_are_read_from_the_payload() {
        let token = jwt(r#"{"sub":"u","iat":1000,"exp":1900,"aud":"rally"}"#);
        assert_eq!(
            TokenClaims::read(&token),
            Some(TokenClaims {
                iat: Some(1000),
                exp: Some(1900)
            })
        );
    }

    #[test]
    fn a_token_is_refreshed_at_eighty_percent_of_its_lifetime_whatever_the_local_clock() {
        let token = jwt(r#"{"iat":1000,"exp":1900}"#);
        // The local clock is an hour off: the lifetime still comes from iat and exp.
        let schedule = RefreshSchedule::of(&token, None, 1000 + 3600);
        assert_eq!(schedule.expires_at, 1900);
        // 80% of 899 s: `iat` is rounded down, so a second of the 900 may have passed.
        assert_eq!(schedule.refresh_after, Duration::from_millis(719_200));
    }

    #[test]
    fn a_short_token_is_refreshed_before_it_expires_even_when_it_arrived_late_in_its_second() {
        // Issued at 1000.999 (iat 1000), lives 3 s: at most 2.001 s are left on arrival.
        let schedule = RefreshSchedule::of(&jwt(r#"{"iat":1000,"exp":1003}"#), None, 1000);
        assert_eq!(schedule.refresh_after, Duration::from_millis(1600));
    }

    #[test]
    fn without_iat_the_lifetime_counts_from_now() {
        let token = jwt(r#"{"exp":1100}"#);
        let schedule = RefreshSchedule::of(&token, None, 1000);
        assert_eq!(schedule.refresh_after, Duration::from_secs(80));
    }

    #[test]
    fn an_unreadable_token_falls_back_to_the_answers_expiry() {
        let schedule = RefreshSchedule::of("opaque", Some(1010), 1000);
        assert_eq!(schedule.expires_at, 1010);
        assert_eq!(schedule.refresh_after, Duration::from_secs(8));
    }

    #[test]
    fn an_expired_or_tiny_lifetime_never_makes_a_busy_loop() {
        let expired = RefreshSchedule::of(&jwt(r#"{"exp":900}"#), None, 1000);
        assert_eq!(expired.refresh_after, MIN_REFRESH_DELAY);
        let reversed = RefreshSchedule::of(&jwt(r#"{"iat":2000,"exp":1000}"#), None, 1000);
        assert_eq!(reversed.refresh_after, MIN_REFRESH_DELAY);
        let huge = RefreshSchedule::of(&jwt(r#"{"iat":0,"exp":9223372036854775807}"#), None, 0);
        assert_eq!(huge.refresh_after, MAX_REFRESH_DELAY);
    }

    #[test]
    fn oversized_and_malformed_tokens_are_not_parsed() {
        let long = jwt(&format!(
            r#"{{"exp":1,"pad":"{}"}}"#,
            "x".repeat(MAX_TOKEN_BYTES)
        ));
        assert_eq!(TokenClaims::read(&long), None);
        assert_eq!(TokenClaims::read("a.b"), None);
        assert_eq!(TokenClaims::read("a.b.c.d"), None);
        assert_eq!(TokenClaims::read(&jwt("not json")), None);
        assert_eq!(TokenClaims::read(&jwt(r#"{"exp":"soon"}"#)), None);
    }

    #[test]
    fn bearer_values_must_be_ascii() {
        assert!(bearer_value("abc.def").is_ok());
        assert!(matches!(
            bearer_value("line\nbreak"),
            Err(Error::InvalidArgument(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_tokens_never_panic(token in ".{0,600}", now in any::<i64>(), fallback in any::<Option<i64>>()) {
            let schedule = RefreshSchedule::of(&token, fallback, now);
            prop_assert!(schedule.refresh_after >= MIN_REFRESH_DELAY);
            prop_assert!(schedule.refresh_after <= MAX_REFRESH_DELAY);
        }

        #[test]
        fn arbitrary_payloads_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..600)) {
            let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload);
            let _ = TokenClaims::read(&format!("h.{encoded}.s"));
        }
    }
}
