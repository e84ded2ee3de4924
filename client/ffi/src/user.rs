//! Signing in and out: the requests that give the game its user (and start peer-to-peer
//! networking for it), and the `rally_User` in their results.

use std::ffi::{CString, c_char};
use std::sync::Arc;

use rally_client::Rally;
use rally_client::net::Net;

use crate::args;
use crate::guard::{Failure, RALLY_ERROR_ALREADY_LOGGED_IN, RALLY_ERROR_NOT_LOGGED_IN, call};
use crate::handles::{self, Kind};
use crate::id::rally_ID;
use crate::instance::{self, Shared, SignedIn, UserState};
use crate::message::{
    Payload, rally_MessageType_User_Login, rally_MessageType_User_Logout, rally_RequestID,
};

/// A user (in a `rally_MessageType_User_Login` result), owned by its message.
#[derive(Debug)]
pub struct rally_User {
    id: rally_ID,
    display_name: CString,
}

/// How to sign in.
enum SignIn {
    Device {
        device_id: String,
        display_name: String,
    },
    Password {
        username: String,
        password: String,
    },
    Register {
        username: String,
        password: String,
        display_name: String,
    },
}

/// Puts the state back to signed out if a sign-in ends without finishing (failed, or panicked).
struct SigningIn(Arc<Shared>);

impl Drop for SigningIn {
    fn drop(&mut self) {
        let mut user = self.0.user();
        if matches!(*user, UserState::SigningIn) {
            *user = UserState::SignedOut;
        }
    }
}

async fn sign_in(shared: Arc<Shared>, how: SignIn) -> Result<Payload, Failure> {
    let _reset = SigningIn(shared.clone());
    let rally = Rally::connect_with(&shared.url, &shared.server).await?;
    let session = match how {
        SignIn::Device {
            device_id,
            display_name,
        } => rally.device_login(&device_id, &display_name).await?,
        SignIn::Password { username, password } => rally.login(&username, &password).await?,
        SignIn::Register {
            username,
            password,
            display_name,
        } => rally.register(&username, &password, &display_name).await?,
    };
    let net = Net::start(&session, shared.net_config.clone()).await?;
    let user = rally_User {
        id: session.user_id().into(),
        display_name: crate::message::owned_text(&session.display_name()),
    };
    *shared.user() = UserState::SignedIn(SignedIn {
        session,
        net: net.clone(),
    });
    tokio::spawn(crate::net::forward_events(shared, net));
    Ok(Payload::User(user))
}

/// Starts a sign-in request, refusing it while a user is signed in or signing in.
fn start(how: impl FnOnce() -> Result<SignIn, Failure>) -> rally_RequestID {
    call(|| {
        let how = how()?;
        instance::with(|instance| {
            {
                let mut user = instance.shared.user();
                if !matches!(*user, UserState::SignedOut) {
                    return Err(Failure::new(
                        RALLY_ERROR_ALREADY_LOGGED_IN,
                        "a user is signed in or signing in already",
                    ));
                }
                *user = UserState::SigningIn;
            }
            Ok(instance.request(rally_MessageType_User_Login, |shared, _| {
                sign_in(shared, how)
            }))
        })
    })
    .unwrap_or(0)
}

/// Signs in anonymously with a device id (16 to 128 printable ASCII characters, kept by the
/// device and secret), creating the account on first use; `display_name` is used only then
/// (empty: the server picks one). Then starts peer-to-peer networking for the user.
///
/// Returns a request id; a `rally_MessageType_User_Login` message answers with the user
/// (`rally_Message_GetUser`) or an error. 0 when refused at once (not initialised, bad text,
/// a user signed in already): see `rally_GetLastError`.
///
/// # Safety
/// Both arguments are `NULL` or NUL-terminated strings (copied; the caller keeps ownership).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_User_LoginWithDevice(
    device_id: *const c_char,
    display_name: *const c_char,
) -> rally_RequestID {
    start(|| {
        Ok(SignIn::Device {
            // SAFETY: forwarded from the caller.
            device_id: unsafe { args::text(device_id, "device_id")? }.to_owned(),
            // SAFETY: forwarded from the caller.
            display_name: unsafe { args::text(display_name, "display_name")? }.to_owned(),
        })
    })
}

/// Signs in with a username and password, then starts peer-to-peer networking for the user.
/// Answered as `rally_User_LoginWithDevice`.
///
/// # Safety
/// Both arguments are `NULL` or NUL-terminated strings (copied; the caller keeps ownership).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_User_Login(
    username: *const c_char,
    password: *const c_char,
) -> rally_RequestID {
    start(|| {
        Ok(SignIn::Password {
            // SAFETY: forwarded from the caller.
            username: unsafe { args::text(username, "username")? }.to_owned(),
            // SAFETY: forwarded from the caller.
            password: unsafe { args::text(password, "password")? }.to_owned(),
        })
    })
}

/// Creates an account with a username and password and signs it in (an empty `display_name`
/// means the username). Answered as `rally_User_LoginWithDevice`, with the message type
/// `rally_MessageType_User_Login`.
///
/// # Safety
/// All arguments are `NULL` or NUL-terminated strings (copied; the caller keeps ownership).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_User_Register(
    username: *const c_char,
    password: *const c_char,
    display_name: *const c_char,
) -> rally_RequestID {
    start(|| {
        Ok(SignIn::Register {
            // SAFETY: forwarded from the caller.
            username: unsafe { args::text(username, "username")? }.to_owned(),
            // SAFETY: forwarded from the caller.
            password: unsafe { args::text(password, "password")? }.to_owned(),
            // SAFETY: forwarded from the caller.
            display_name: unsafe { args::text(display_name, "display_name")? }.to_owned(),
        })
    })
}

/// Signs out: closes every peer-to-peer connection, stops networking and ends the session on
/// the server. Returns a request id answered by a `rally_MessageType_User_Logout` message; 0
/// when no user is signed in.
#[unsafe(no_mangle)]
pub extern "C" fn rally_User_Logout() -> rally_RequestID {
    call(|| {
        instance::with(|instance| {
            let user = {
                let mut state = instance.shared.user();
                match std::mem::replace(&mut *state, UserState::SignedOut) {
                    UserState::SignedIn(user) => user,
                    other => {
                        *state = other;
                        return Err(Failure::new(
                            RALLY_ERROR_NOT_LOGGED_IN,
                            "no user is signed in",
                        ));
                    }
                }
            };
            user.net.shutdown();
            Ok(
                instance.request(rally_MessageType_User_Logout, |_, _| async move {
                    user.session.logout().await?;
                    Ok(Payload::None)
                }),
            )
        })
    })
    .unwrap_or(0)
}

/// The signed-in user's id; the nil id when no user is signed in (or Rally is not initialised).
#[unsafe(no_mangle)]
pub extern "C" fn rally_GetLoggedInUserID() -> rally_ID {
    call(|| instance::with_user(|_, user| Ok(user.session.user_id().into()))).unwrap_or_default()
}

/// The user's id; the nil id for an invalid handle.
///
/// # Safety
/// `user` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_User_GetID(user: *const rally_User) -> rally_ID {
    call(|| handles::with(user, Kind::User, "user", |u| u.id)).unwrap_or_default()
}

/// The user's display name (owned by the message; valid until `rally_FreeMessage`); an empty
/// string for an invalid handle.
///
/// # Safety
/// `user` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_User_GetDisplayName(user: *const rally_User) -> *const c_char {
    call(|| handles::with(user, Kind::User, "user", |u| u.display_name.as_ptr()))
        .unwrap_or(c"".as_ptr())
}
