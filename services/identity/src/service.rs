//! The `rally.identity.v1.Identity` handlers: validate → rate-limit → one store call → answer.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rally_auth::{Caller, TokenIssuer};
use rally_proto::identity::v1 as pb;
use rally_proto::identity::v1::identity_server::{Identity, IdentityServer};
use rally_store::{Bus, IdentityStore, NewSession, NewUser, RefreshRotation, UnixMillis, User};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::password::Passwords;
use crate::rules::{validate_device_id, validate_display_name, validate_password};
use crate::throttle::SignInThrottle;
use crate::{IdentityError, PasswordParams, ThrottleConfig, refresh_token, validate_username};

/// The identity service's settings.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// How long refresh tokens (and so idle sessions) live.
    pub refresh_ttl: Duration,
    /// Password hashing cost.
    pub passwords: PasswordParams,
    /// Sign-in rate limits.
    pub throttle: ThrottleConfig,
    /// Most sessions one user holds: a new sign-in past it ends the oldest.
    pub max_sessions_per_user: u32,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            passwords: PasswordParams::default(),
            throttle: ThrottleConfig::default(),
            max_sessions_per_user: 32,
        }
    }
}

/// The identity service.
pub struct IdentityService {
    store: Arc<dyn IdentityStore>,
    issuer: Arc<TokenIssuer>,
    passwords: Passwords,
    throttle: SignInThrottle,
    refresh_ttl: Duration,
    max_sessions_per_user: u32,
    /// Where ended sessions are announced to every replica (`None`: nowhere).
    session_ends: Option<Arc<dyn Bus>>,
}

impl IdentityService {
    /// A service over `store`, signing access tokens with `issuer`.
    pub fn new(
        store: Arc<dyn IdentityStore>,
        issuer: Arc<TokenIssuer>,
        config: IdentityConfig,
    ) -> Result<Self, IdentityError> {
        Ok(Self {
            store,
            issuer,
            passwords: Passwords::new(config.passwords)?,
            throttle: SignInThrottle::new(config.throttle),
            refresh_ttl: config.refresh_ttl,
            max_sessions_per_user: config.max_sessions_per_user.max(1),
            session_ends: None,
        })
    }

    /// Announces every session this service ends (Logout, a reused refresh token) on `bus`, so
    /// that every replica refuses its tokens and ends its open streams
    /// (`rally_auth::revocation`).
    pub fn announcing_session_ends(mut self, bus: Arc<dyn Bus>) -> Self {
        self.session_ends = Some(bus);
        self
    }

    /// Tells every replica that `sessions` ended. A failure is logged: the sessions are revoked
    /// in the database already, and their access tokens expire on their own.
    async fn announce_ended(&self, sessions: &[Uuid]) {
        let Some(bus) = &self.session_ends else {
            return;
        };
        for payload in rally_auth::revocation::ended_payloads(sessions) {
            if let Err(error) = bus
                .publish(rally_auth::revocation::SESSIONS_ENDED_TOPIC, &payload)
                .await
            {
                tracing::warn!(%error, "could not announce ended sessions to the other replicas");
            }
        }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> IdentityServer<Self> {
        IdentityServer::new(self)
    }

    /// Opens a session for `user` and returns its tokens.
    async fn open_session(&self, user: User) -> Result<pb::AuthSession, IdentityError> {
        let now = now_millis();
        let refresh = refresh_token::generate()?;
        let session_id = Uuid::new_v4();
        let refresh_expires_at = now.saturating_add(millis(self.refresh_ttl));
        self.store
            .create_session(NewSession {
                id: session_id,
                user_id: user.id,
                refresh_token: refresh.hash,
                created_at: now,
                refresh_expires_at,
            })
            .await?;
        // However often a user signs in, it holds a bounded number of sessions.
        let ended = self
            .store
            .trim_sessions(user.id, self.max_sessions_per_user)
            .await?;
        if !ended.is_empty() {
            tracing::info!(user_id = %user.id, sessions = ended.len(), "oldest sessions ended by a new sign-in");
            self.announce_ended(&ended).await;
        }
        self.session_reply(user, session_id, refresh.text, now, refresh_expires_at)
    }

    fn session_reply(
        &self,
        user: User,
        session_id: Uuid,
        refresh_token: String,
        now: UnixMillis,
        refresh_expires_at: UnixMillis,
    ) -> Result<pb::AuthSession, IdentityError> {
        let access = self
            .issuer
            .issue(user.id, session_id, now / 1000)
            .map_err(|e| IdentityError::Internal(e.to_string()))?;
        Ok(pb::AuthSession {
            access_token: access.token,
            access_token_expires_at: Some(timestamp(access.expires_at.saturating_mul(1000))),
            refresh_token,
            refresh_token_expires_at: Some(timestamp(refresh_expires_at)),
            user: Some(user_reply(&user)),
            session_id: session_id.to_string(),
        })
    }

    fn new_user(
        &self,
        username: Option<String>,
        display_name: String,
        password_hash: Option<String>,
    ) -> NewUser {
        NewUser {
            id: Uuid::new_v4(),
            username,
            display_name,
            password_hash,
            created_at: now_millis(),
        }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let address = peer_ip(&request);
        let pb::RegisterRequest {
            username,
            password,
            display_name,
        } = request.into_inner();
        validate_username(&username)?;
        validate_password(&password)?;
        let display_name = if display_name.is_empty() {
            username.clone()
        } else {
            validate_display_name(&display_name)?;
            display_name
        };
        self.throttle
            .attempt(address, Some(&username.to_ascii_lowercase()))?;
        let hash = self.passwords.hash(password).await?;
        let user = self
            .store
            .create_user(self.new_user(Some(username), display_name, Some(hash)))
            .await
            .map_err(|e| match e {
                rally_store::StoreError::UsernameTaken => IdentityError::UsernameTaken,
                other => other.into(),
            })?;
        tracing::info!(user_id = %user.id, "account registered");
        let session = self.open_session(user).await?;
        Ok(Response::new(pb::RegisterResponse {
            session: Some(session),
        }))
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let address = peer_ip(&request);
        let pb::LoginRequest { username, password } = request.into_inner();
        // Malformed input cannot match an account; say so without touching the database.
        validate_username(&username)?;
        validate_password(&password)?;
        self.throttle
            .attempt(address, Some(&username.to_ascii_lowercase()))?;
        let credentials = self
            .store
            .credentials_by_username(&username)
            .await
            .map_err(IdentityError::from)?;
        let (user, hash) = match credentials {
            Some(c) => (Some(c.user), c.password_hash),
            None => (None, None),
        };
        let matches = self.passwords.verify(password, hash).await?;
        let user = match user {
            Some(user) if matches => user,
            _ => return Err(IdentityError::BadCredentials.into()),
        };
        let session = self.open_session(user).await?;
        Ok(Response::new(pb::LoginResponse {
            session: Some(session),
        }))
    }

    async fn device_login(
        &self,
        request: Request<pb::DeviceLoginRequest>,
    ) -> Result<Response<pb::DeviceLoginResponse>, Status> {
        let address = peer_ip(&request);
        let pb::DeviceLoginRequest {
            device_id,
            display_name,
        } = request.into_inner();
        validate_device_id(&device_id)?;
        if !display_name.is_empty() {
            validate_display_name(&display_name)?;
        }
        self.throttle.attempt(address, None)?;
        let mut new_user = self.new_user(None, display_name, None);
        if new_user.display_name.is_empty() {
            new_user.display_name = format!("player-{}", &new_user.id.simple().to_string()[..8]);
        }
        let (user, created) = self
            .store
            .device_user(refresh_token::hash_device_id(&device_id), new_user)
            .await
            .map_err(IdentityError::from)?;
        if created {
            tracing::info!(user_id = %user.id, "device account created");
        }
        let session = self.open_session(user).await?;
        Ok(Response::new(pb::DeviceLoginResponse {
            session: Some(session),
            created,
        }))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        self.throttle.refresh_from(peer_ip(&request))?;
        let presented = refresh_token::parse(&request.get_ref().refresh_token)
            .ok_or(IdentityError::RefreshRefused("malformed refresh token"))?;
        // A read first: unknown tokens are refused, and one family's refreshes limited, without
        // a write (on SQLite every write waits for the one write lock).
        let Some(family) = self
            .store
            .refresh_token_session(presented)
            .await
            .map_err(IdentityError::from)?
        else {
            return Err(IdentityError::RefreshRefused("unknown refresh token").into());
        };
        self.throttle.refresh_of(family)?;
        let now = now_millis();
        let next = refresh_token::generate()?;
        let next_expires_at = now.saturating_add(millis(self.refresh_ttl));
        let rotation = self
            .store
            .rotate_refresh_token(presented, next.hash, now, next_expires_at)
            .await
            .map_err(IdentityError::from)?;
        let (user, session_id) = match rotation {
            RefreshRotation::Rotated { user, session_id } => (user, session_id),
            RefreshRotation::Unknown => {
                return Err(IdentityError::RefreshRefused("unknown refresh token").into());
            }
            RefreshRotation::Expired => {
                return Err(IdentityError::RefreshRefused("refresh token expired").into());
            }
            RefreshRotation::Revoked => {
                return Err(IdentityError::RefreshRefused("session was revoked").into());
            }
            RefreshRotation::Reused { session_id } => {
                tracing::warn!(%session_id, "rotated refresh token presented again; session revoked");
                self.announce_ended(&[session_id]).await;
                return Err(IdentityError::RefreshRefused(
                    "refresh token was already used; the session is revoked",
                )
                .into());
            }
        };
        let session = self.session_reply(user, session_id, next.text, now, next_expires_at)?;
        Ok(Response::new(pb::RefreshResponse {
            session: Some(session),
        }))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let caller = Caller::of(&request)?;
        let now = now_millis();
        let ended = if request.get_ref().all_sessions {
            self.store
                .revoke_all_sessions(caller.user_id, now)
                .await
                .map_err(IdentityError::from)?
        } else {
            let revoked = self
                .store
                .revoke_session(caller.user_id, caller.session_id, now)
                .await
                .map_err(IdentityError::from)?;
            match revoked {
                0 => Vec::new(),
                _ => vec![caller.session_id],
            }
        };
        // The caller's own session ends too when it was revoked earlier (its token still
        // verifies): announce it again, so that replicas that missed it catch up.
        let mut announced = ended.clone();
        if !announced.contains(&caller.session_id) {
            announced.push(caller.session_id);
        }
        self.announce_ended(&announced).await;
        Ok(Response::new(pb::LogoutResponse {
            revoked_sessions: u32::try_from(ended.len()).unwrap_or(u32::MAX),
        }))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        Caller::of(&request)?;
        let text = &request.get_ref().user_id;
        let id = Uuid::parse_str(text)
            .map_err(|_| IdentityError::invalid("user_id", "must be a UUID"))?;
        let user = self
            .store
            .user_by_id(id)
            .await
            .map_err(IdentityError::from)?
            .ok_or_else(|| IdentityError::UserNotFound(id.to_string()))?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some(user_reply(&user)),
        }))
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        let caller = Caller::of(&request)?;
        let account = self
            .store
            .account(caller.user_id)
            .await
            .map_err(IdentityError::from)?
            .ok_or_else(|| IdentityError::UserNotFound(caller.user_id.to_string()))?;
        Ok(Response::new(pb::GetAccountResponse {
            user: Some(user_reply(&account.user)),
            has_password: account.has_password,
            device_count: account.device_count,
            session_id: caller.session_id.to_string(),
        }))
    }
}

fn user_reply(user: &User) -> pb::User {
    pb::User {
        user_id: user.id.to_string(),
        username: user.username.clone().unwrap_or_default(),
        display_name: user.display_name.clone(),
        created_at: Some(timestamp(user.created_at)),
    }
}

fn peer_ip<T>(request: &Request<T>) -> Option<IpAddr> {
    request.remote_addr().map(|addr| addr.ip())
}

pub(crate) fn now_millis() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or_default()
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn timestamp(millis: UnixMillis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: i32::try_from(millis.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}
