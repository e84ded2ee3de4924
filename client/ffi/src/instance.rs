//! The one Rally instance of the process: `rally_Init` creates it (a tokio runtime, the message
//! queue, the settings), `rally_Shutdown` stops it and frees everything it holds.
//!
//! Requests run as tasks on the runtime and push their result into the queue; the few calls that
//! must answer at once (the Meta ones that return `bool`) wait on the runtime, bounded in time.

use std::collections::HashMap;
use std::ffi::c_char;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use futures::FutureExt;
use rally_client::net::{Net, NetConfig, RelayPolicy};
use rally_client::{ServerTrust, Session};

use crate::args::{self, rally_KeyValuePair};
use crate::guard::{
    Failure, RALLY_ERROR_ALREADY_INITIALIZED, RALLY_ERROR_NOT_INITIALIZED,
    RALLY_ERROR_NOT_LOGGED_IN, RALLY_ERROR_TIMEOUT, call_result, rally_Result,
};
use crate::message::{Payload, Queue, rally_Message, rally_MessageType, rally_RequestID};

/// How long a call that must answer at once may wait for the network.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `rally_Shutdown` lets closing connections say goodbye, and tasks stop.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

static INSTANCE: RwLock<Option<Instance>> = RwLock::new(None);

/// The initialised library.
pub(crate) struct Instance {
    runtime: tokio::runtime::Runtime,
    pub(crate) shared: Arc<Shared>,
}

/// What the instance's tasks share with the C calls.
pub(crate) struct Shared {
    pub(crate) url: String,
    pub(crate) server: rally_client::RallyConfig,
    pub(crate) net_config: NetConfig,
    pub(crate) queue: Queue,
    next_request: AtomicU64,
    user: Mutex<UserState>,
    /// `rally_Net_Ping` ids: the SDK's ping id → the request id the game was given.
    pub(crate) pings: Mutex<HashMap<u32, rally_RequestID>>,
}

/// Who is signed in.
pub(crate) enum UserState {
    SignedOut,
    SigningIn,
    SignedIn(SignedIn),
}

/// A signed-in user: its session and its peer-to-peer `Net`.
#[derive(Clone)]
pub(crate) struct SignedIn {
    pub(crate) session: Session,
    pub(crate) net: Net,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `body` with the instance (held for the call: `rally_Shutdown` waits for it), inside
/// its runtime's context (the SDK's calls may start tasks).
pub(crate) fn with<R>(body: impl FnOnce(&Instance) -> Result<R, Failure>) -> Result<R, Failure> {
    let guard = INSTANCE
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let instance = guard.as_ref().ok_or_else(|| {
        Failure::new(
            RALLY_ERROR_NOT_INITIALIZED,
            "Rally is not initialised (rally_Init)",
        )
    })?;
    let _context = instance.runtime.enter();
    body(instance)
}

/// Runs `body` with the signed-in user.
pub(crate) fn with_user<R>(
    body: impl FnOnce(&Instance, SignedIn) -> Result<R, Failure>,
) -> Result<R, Failure> {
    with(|instance| {
        let user = instance.shared.signed_in()?;
        body(instance, user)
    })
}

impl Shared {
    pub(crate) fn next_request(&self) -> rally_RequestID {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn user(&self) -> MutexGuard<'_, UserState> {
        lock(&self.user)
    }

    /// The signed-in user, or `RALLY_ERROR_NOT_LOGGED_IN`.
    pub(crate) fn signed_in(&self) -> Result<SignedIn, Failure> {
        match &*self.user() {
            UserState::SignedIn(user) => Ok(user.clone()),
            _ => Err(Failure::new(
                RALLY_ERROR_NOT_LOGGED_IN,
                "no user is signed in (rally_User_Login*)",
            )),
        }
    }
}

impl Instance {
    /// Starts a request: `work` runs on the runtime and its answer (or failure, or panic)
    /// becomes a `kind` message with the returned request id.
    pub(crate) fn request<F, Fut>(&self, kind: rally_MessageType, work: F) -> rally_RequestID
    where
        F: FnOnce(Arc<Shared>, rally_RequestID) -> Fut,
        Fut: Future<Output = Result<Payload, Failure>> + Send + 'static,
    {
        let id = self.shared.next_request();
        let shared = self.shared.clone();
        let work = work(shared.clone(), id);
        self.runtime.spawn(async move {
            let message = match AssertUnwindSafe(work).catch_unwind().await {
                Ok(Ok(payload)) => rally_Message::new(kind, id, payload),
                Ok(Err(failure)) => rally_Message::error(kind, id, failure),
                Err(_) => rally_Message::error(
                    kind,
                    id,
                    Failure::new(crate::guard::RALLY_ERROR_PANIC, "the request panicked"),
                ),
            };
            shared.queue.push(message);
        });
        id
    }

    /// Runs `work` on the runtime without waiting for it.
    pub(crate) fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.runtime.spawn(work);
    }

    /// Waits (on the calling thread, at most [`CALL_TIMEOUT`]) for `work`. Called from a thread
    /// that runs an async runtime's tasks, tokio refuses with a panic, which the call's guard
    /// turns into `RALLY_ERROR_PANIC`.
    pub(crate) fn block_on<T>(
        &self,
        work: impl Future<Output = Result<T, rally_client::Error>>,
    ) -> Result<T, Failure> {
        // The timer is made inside the runtime (it needs its clock).
        match self
            .runtime
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, work).await })
        {
            Ok(answer) => answer.map_err(Failure::from),
            Err(_) => Err(Failure::new(
                RALLY_ERROR_TIMEOUT,
                format!("no answer within {CALL_TIMEOUT:?}"),
            )),
        }
    }
}

/// Settings from `rally_InitWithOptions`.
struct Settings {
    url: String,
    server: rally_client::RallyConfig,
    net: NetConfig,
    worker_threads: usize,
    log: Option<String>,
}

fn parse_u64(key: &str, value: &str, range: std::ops::RangeInclusive<u64>) -> Result<u64, Failure> {
    value
        .parse::<u64>()
        .ok()
        .filter(|v| range.contains(v))
        .ok_or_else(|| {
            Failure::invalid(format!(
                "option {key} must be a number from {} to {}, not {value:?}",
                range.start(),
                range.end()
            ))
        })
}

impl Settings {
    fn new(url: &str, options: Vec<(String, String)>) -> Result<Self, Failure> {
        if url.is_empty() {
            return Err(Failure::invalid("server_url is empty"));
        }
        let mut settings = Settings {
            url: url.to_owned(),
            server: rally_client::RallyConfig::default(),
            net: NetConfig::default(),
            worker_threads: 2,
            log: std::env::var("RALLY_LOG").ok(),
        };
        for (key, value) in options {
            match key.as_str() {
                "bind" => {
                    settings.net.transport.bind = value.parse().map_err(|_| {
                        Failure::invalid(format!("option bind is not an IP:port: {value:?}"))
                    })?;
                }
                "relay_policy" => {
                    settings.net.relay_policy = match value.as_str() {
                        "never" => RelayPolicy::Never,
                        "fallback" => RelayPolicy::Fallback,
                        "always" => RelayPolicy::Always,
                        _ => {
                            return Err(Failure::invalid(format!(
                                "option relay_policy must be never, fallback or always, not {value:?}"
                            )));
                        }
                    };
                }
                "connect_timeout_ms" => {
                    let ms = parse_u64(&key, &value, 100..=600_000)?;
                    settings.net.connect_timeout = Duration::from_millis(ms);
                }
                "handshake_timeout_ms" => {
                    let ms = parse_u64(&key, &value, 100..=600_000)?;
                    settings.net.transport.handshake_timeout = Duration::from_millis(ms);
                }
                "worker_threads" => {
                    settings.worker_threads = parse_u64(&key, &value, 1..=64)? as usize;
                }
                "tls_ca_file" => {
                    settings.server.trust = ServerTrust::ca_file(&value)
                        .map_err(|e| Failure::invalid(format!("option tls_ca_file: {e}")))?;
                }
                "tls_ca_pem" => {
                    settings.server.trust = ServerTrust::ca_pem(value.as_bytes())
                        .map_err(|e| Failure::invalid(format!("option tls_ca_pem: {e}")))?;
                }
                "tls_pin_sha256" => {
                    settings.server.trust = ServerTrust::pinned_sha256_hex(&value)
                        .map_err(|e| Failure::invalid(format!("option tls_pin_sha256: {e}")))?;
                }
                "log" => settings.log = Some(value),
                _ => return Err(Failure::invalid(format!("unknown option {key:?}"))),
            }
        }
        Ok(settings)
    }
}

fn start(settings: Settings) -> Result<Instance, Failure> {
    if let Some(filter) = &settings.log {
        // Only the first subscriber of the process is installed; a game's own wins.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.worker_threads)
        .thread_name("rally")
        .enable_all()
        .build()
        .map_err(|e| Failure::new(crate::guard::RALLY_ERROR_INTERNAL, e.to_string()))?;
    Ok(Instance {
        runtime,
        shared: Arc::new(Shared {
            url: settings.url,
            server: settings.server,
            net_config: settings.net,
            queue: Queue::default(),
            next_request: AtomicU64::new(1),
            user: Mutex::new(UserState::SignedOut),
            pings: Mutex::new(HashMap::new()),
        }),
    })
}

/// Initialises Rally for the `rallyd` at `server_url` (`"http://host:port"`) with default
/// settings. Nothing goes on the network until a `rally_User_Login*` request. See
/// `rally_InitWithOptions`.
///
/// Returns `RALLY_OK`, or `RALLY_ERROR_ALREADY_INITIALIZED`, `RALLY_ERROR_NULL_POINTER`,
/// `RALLY_ERROR_INVALID_ARGUMENT`.
///
/// Thread safety: every `rally_*` function may be called from any thread once this returned.
///
/// # Safety
/// `server_url` is `NULL` or a NUL-terminated string (copied; the caller keeps ownership).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Init(server_url: *const c_char) -> rally_Result {
    // SAFETY: forwarded from the caller; no options.
    unsafe { rally_InitWithOptions(server_url, std::ptr::null(), 0) }
}

/// Initialises Rally (as `rally_Init`) with options, each a key and a value (text):
///
/// - `"bind"`: the local UDP address of the peer-to-peer endpoint, e.g. `"127.0.0.1:0"`
///   (default `"0.0.0.0:0"`: every interface, a free port);
/// - `"relay_policy"`: `"never"`, `"fallback"` (default: only when no direct path opens) or
///   `"always"` (hides this player's addresses from peers);
/// - `"connect_timeout_ms"`: how long a connection may take to come up once both sides agreed
///   (default 10000);
/// - `"handshake_timeout_ms"`: how long one QUIC handshake may take (default 5000);
/// - `"worker_threads"`: threads of Rally's runtime (default 2);
/// - `"tls_ca_file"`, `"tls_ca_pem"`: for an `"https://"` server, trust the CA certificates in
///   this PEM file, or this PEM text, instead of the public roots (a self-hosted CA);
/// - `"tls_pin_sha256"`: for an `"https://"` server, trust exactly the certificate with this
///   SHA-256 (64 hex digits, colons allowed);
/// - `"log"`: Rally's log filter, written to stderr (e.g. `"info"`, `"rally_client=debug"`;
///   default from the `RALLY_LOG` environment variable, else no logging).
///
/// An unknown key or a bad value is `RALLY_ERROR_INVALID_ARGUMENT` (the last error names it).
///
/// # Safety
/// `server_url` is `NULL` or a NUL-terminated string; `options` is `NULL` (only with
/// `option_count` 0) or points to `option_count` pairs of NUL-terminated strings. Everything is
/// copied; the caller keeps ownership.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_InitWithOptions(
    server_url: *const c_char,
    options: *const rally_KeyValuePair,
    option_count: usize,
) -> rally_Result {
    call_result(|| {
        // SAFETY: forwarded from the caller.
        let url = unsafe { args::text(server_url, "server_url")? };
        // SAFETY: forwarded from the caller.
        let options = unsafe { args::key_values(options, option_count, "options")? };
        let settings = Settings::new(url, options)?;
        let mut slot = INSTANCE
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_some() {
            return Err(Failure::new(
                RALLY_ERROR_ALREADY_INITIALIZED,
                "Rally is initialised already (rally_Shutdown first)",
            ));
        }
        *slot = Some(start(settings)?);
        Ok(())
    })
}

/// Stops Rally: closes every peer-to-peer connection, detaches from the broker, stops the
/// runtime and its threads, and frees every message not popped yet. Messages and packets the
/// game holds stay valid until it frees them. `rally_Init` may be called again afterwards.
///
/// Returns `RALLY_OK` or `RALLY_ERROR_NOT_INITIALIZED`. Thread safety: waits for calls in
/// progress on other threads to finish; calls made after it answer
/// `RALLY_ERROR_NOT_INITIALIZED`.
#[unsafe(no_mangle)]
pub extern "C" fn rally_Shutdown() -> rally_Result {
    call_result(|| {
        let instance = INSTANCE
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .ok_or_else(|| Failure::new(RALLY_ERROR_NOT_INITIALIZED, "Rally is not initialised"))?;
        let Instance { runtime, shared } = instance;
        let user = std::mem::replace(&mut *shared.user(), UserState::SignedOut);
        if let UserState::SignedIn(user) = user {
            user.net.shutdown();
            runtime.block_on(async move {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
                drop(user);
            });
        }
        // Drops every task (and what they hold), then joins the runtime's threads.
        runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
        drop(shared);
        crate::handles::trim();
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let option = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        assert!(Settings::new("http://127.0.0.1:1", option("bind", "127.0.0.1:0")).is_ok());
        assert!(Settings::new("http://127.0.0.1:1", option("bind", "nowhere")).is_err());
        assert!(Settings::new("http://127.0.0.1:1", option("relay_policy", "sometimes")).is_err());
        assert!(Settings::new("http://127.0.0.1:1", option("worker_threads", "0")).is_err());
        assert!(Settings::new("http://127.0.0.1:1", option("colour", "blue")).is_err());
        assert!(Settings::new("", Vec::new()).is_err());
        let settings =
            Settings::new("http://127.0.0.1:1", option("connect_timeout_ms", "30000")).expect("ok");
        assert_eq!(settings.net.connect_timeout, Duration::from_secs(30));
        assert!(Settings::new("https://a:1", option("tls_pin_sha256", "abcd")).is_err());
        assert!(Settings::new("https://a:1", option("tls_ca_pem", "not PEM")).is_err());
        assert!(Settings::new("https://a:1", option("tls_ca_file", "/nonexistent")).is_err());
        let pinned = Settings::new("https://a:1", option("tls_pin_sha256", &"ab".repeat(32)))
            .expect("a pin");
        assert_eq!(pinned.server.trust, ServerTrust::PinnedSha256([0xab; 32]));
    }
}
