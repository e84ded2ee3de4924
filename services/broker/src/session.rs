//! One attachment's life: the Hello, the message loop, keepalive, and the cleanup when it ends.

use std::sync::Arc;

use rally_auth::Caller;
use rally_proto::broker::v1::attach_request::Body as Request;
use rally_proto::broker::v1::attach_response::Body;
use rally_proto::broker::v1::{
    AttachRequest, AttachResponse, ErrorCode, Pong, Reauthenticate, Reauthenticated, Welcome,
};
use rally_rooms::clock::{now, timestamp};
use rally_store::StoreError;
use rally_store::broker::NewAttachment;
use tonic::{Status, Streaming};
use uuid::Uuid;

use crate::link::{Ending, Link, Outgoing};
use crate::router::Kind;
use crate::signals::{Refusal, superseded};
use crate::validate::{self, Announcement};
use crate::{Broker, metrics};

/// Opens an attachment: waits for and checks the Hello, records the attachment (superseding the
/// user's previous one), answers Welcome, and spawns the task that serves the rest of the stream.
pub(crate) async fn attach(
    broker: Arc<Broker>,
    caller: Caller,
    observed_ip: Option<std::net::IpAddr>,
    mut incoming: Streaming<AttachRequest>,
) -> Result<Outgoing, Status> {
    let user = caller.user_id;
    let first = match tokio::time::timeout(broker.config.hello_timeout, incoming.message()).await {
        Err(_) => {
            return Err(Status::deadline_exceeded(format!(
                "no Hello within {:?} of opening the stream",
                broker.config.hello_timeout
            )));
        }
        Ok(Err(status)) => return Err(status),
        Ok(Ok(None)) => {
            return Err(Status::failed_precondition(
                "the stream ended before its Hello",
            ));
        }
        Ok(Ok(Some(first))) => first,
    };
    let hello = match first.body {
        Some(Request::Hello(hello)) => hello,
        None => {
            return Err(Status::invalid_argument(
                "the first message is malformed (a string that is not UTF-8?) or has no body",
            ));
        }
        Some(_) => {
            return Err(Status::failed_precondition(
                "the first message of an attachment must be a Hello",
            ));
        }
    };
    if first.request_id == 0 {
        return Err(Status::invalid_argument("request_id must be non-zero"));
    }
    validate::hello(&hello).map_err(|e| Status::invalid_argument(format!("Hello: {e}")))?;
    if broker.shutdown.is_cancelled() {
        return Err(Status::unavailable("the server is shutting down"));
    }
    let fingerprint: [u8; 32] = hello
        .certificate_fingerprint
        .as_slice()
        .try_into()
        .map_err(|_| Status::invalid_argument("Hello: certificate_fingerprint must be 32 bytes"))?;
    let announcement = Announcement {
        hello,
        observed_ip: observed_ip.map(|ip| ip.to_canonical()),
    };
    let attachment_id = Uuid::new_v4();
    let previous = broker
        .stores
        .broker
        .attach(
            NewAttachment {
                user,
                attachment_id,
                replica_id: broker.replica_id,
                announcement: announcement.encode(),
                fingerprint,
            },
            now(),
        )
        .await
        .map_err(|error| match error {
            StoreError::NotFound(_) => {
                Status::unauthenticated("the signed-in user no longer exists")
            }
            StoreError::FingerprintTaken => Status::invalid_argument(
                "Hello: certificate_fingerprint is announced by another online user; \
                 each client makes its own certificate",
            ),
            error => {
                tracing::error!(%error, %user, "could not record an attachment");
                Status::unavailable("the server could not record the attachment; re-attach")
            }
        })?;
    if let Some(previous) = previous.as_ref().filter(|p| p.online()) {
        broker
            .route(
                Kind::Supersede,
                user,
                Some(previous.attachment_id),
                superseded(attachment_id),
            )
            .await;
    }
    let (link, stream) = Link::new(user, attachment_id, broker.config.queue_capacity);
    if let Some(stale) = broker.links.insert(link.clone()) {
        // Normally already ended by the supersede above; make sure.
        stale.end(Ending {
            last_message: Some(superseded(attachment_id)),
            status: None,
        });
    }
    let config = &broker.config;
    link.send(AttachResponse {
        request_id: first.request_id,
        body: Some(Body::Welcome(Welcome {
            attachment_id: attachment_id.to_string(),
            user_id: user.to_string(),
            server_time: Some(timestamp(now())),
            keepalive_interval: prost_types::Duration::try_from(config.keepalive_interval).ok(),
            detach_grace_period: prost_types::Duration::try_from(config.detach_grace).ok(),
            reflector_addresses: config
                .reflector_addresses
                .iter()
                .map(|a| crate::signals::socket_address(*a))
                .collect(),
            superseded_attachment_id: previous
                .as_ref()
                .filter(|p| p.online())
                .map(|p| p.attachment_id.to_string())
                .unwrap_or_default(),
            reauthenticate_by: Some(timestamp(reauth_deadline(&broker, caller.expires_at))),
        })),
    });
    tracing::debug!(%user, attachment = %attachment_id, "attached");
    broker.metrics.attached(1);
    let previous_announcement = previous
        .as_ref()
        .and_then(|p| Announcement::decode(&p.announcement).ok());
    tokio::spawn(serve(
        broker,
        link,
        caller,
        incoming,
        previous_announcement,
        announcement,
    ));
    Ok(stream)
}

/// When an attachment whose token expires at `expires_at` (Unix seconds) must have
/// re-authenticated: the expiry plus the grace period, as Unix milliseconds.
fn reauth_deadline(broker: &Broker, expires_at: i64) -> i64 {
    let grace = i64::try_from(broker.config.reauth_grace.as_millis()).unwrap_or(i64::MAX);
    expires_at.saturating_mul(1000).saturating_add(grace)
}

/// The same deadline on the runtime's clock, 25 hours away at the most (tokens live a day at
/// most, the grace an hour), so that the instant cannot overflow.
fn deadline_instant(unix_millis: i64) -> tokio::time::Instant {
    const AT_MOST_MS: u64 = 25 * 3600 * 1000;
    let left = u64::try_from(unix_millis.saturating_sub(now()))
        .unwrap_or(0)
        .min(AT_MOST_MS);
    tokio::time::Instant::now() + std::time::Duration::from_millis(left)
}

/// Checks a Reauthenticate: a valid token of the attachment's user and session, whose session
/// has not ended. Returns the attachment's new deadline (Unix milliseconds).
fn reauthenticate(
    broker: &Broker,
    caller: &Caller,
    request: &Reauthenticate,
) -> Result<i64, Refusal> {
    let refused = |why: &str| Refusal::new(ErrorCode::Unauthenticated, why);
    let fresh = broker
        .auth
        .verifier
        .verify(request.access_token.trim())
        .map_err(|e| refused(&format!("the access token is not accepted: {e}")))?;
    if fresh.user_id != caller.user_id || fresh.session_id != caller.session_id {
        return Err(refused(
            "the access token belongs to another user or session than the attachment",
        ));
    }
    if broker.auth.session_ends.is_ended(fresh.session_id) {
        return Err(refused("the session has ended; sign in again"));
    }
    Ok(reauth_deadline(broker, fresh.expires_at))
}

/// What the loop does after a message.
enum Next {
    Continue,
    End,
}

/// Serves an attachment until it ends, then records the detach and finishes the stream.
async fn serve(
    broker: Arc<Broker>,
    link: Arc<Link>,
    caller: Caller,
    mut incoming: Streaming<AttachRequest>,
    previous: Option<Announcement>,
    current: Announcement,
) {
    broker.repeat_pending_requests(&link).await;
    if previous.is_some_and(|p| {
        p.hello.certificate_fingerprint != current.hello.certificate_fingerprint
            || p.hello.candidates != current.hello.candidates
    }) {
        broker.announce_to_peers(link.user, false).await;
    }
    let silence = broker.config.keepalive_interval * 3;
    let mut deadline = tokio::time::Instant::now() + silence;
    let mut reauth_by = deadline_instant(reauth_deadline(&broker, caller.expires_at));
    loop {
        let received = tokio::select! {
            biased;
            () = link.end_requested() => break,
            () = broker.shutdown.cancelled() => {
                link.end(Ending::status(Status::unavailable("the server is shutting down; re-attach")));
                break;
            }
            () = tokio::time::sleep_until(reauth_by) => {
                link.end(Ending::status(Status::unauthenticated(
                    "the access token expired and no fresh one was presented (Reauthenticate)",
                )));
                break;
            }
            () = tokio::time::sleep_until(deadline) => {
                link.end(Ending::status(Status::deadline_exceeded(format!(
                    "nothing heard for {silence:?} (three keepalive intervals)"
                ))));
                break;
            }
            received = incoming.message() => received,
        };
        match received {
            Ok(Some(AttachRequest {
                request_id,
                body: Some(Request::Reauthenticate(reauth)),
            })) if request_id != 0 => {
                deadline = tokio::time::Instant::now() + silence;
                let answer = match broker.limiter.check_key(&link.user) {
                    Err(_) => Err(Refusal::new(
                        ErrorCode::RateLimited,
                        "too many signals; slow down",
                    )),
                    Ok(()) => reauthenticate(&broker, &caller, &reauth),
                };
                let body = match answer {
                    Ok(next) => {
                        reauth_by = deadline_instant(next);
                        Body::Reauthenticated(Reauthenticated {
                            reauthenticate_by: Some(timestamp(next)),
                        })
                    }
                    Err(refusal) => refusal.into_body(),
                };
                link.send(AttachResponse {
                    request_id,
                    body: Some(body),
                });
            }
            Ok(Some(request)) => {
                deadline = tokio::time::Instant::now() + silence;
                if let Next::End = handle(&broker, &link, request).await {
                    break;
                }
            }
            Ok(None) => {
                link.end(Ending {
                    last_message: None,
                    status: None,
                });
                break;
            }
            Err(status) => {
                link.end(Ending::status(status));
                break;
            }
        }
    }
    broker.links.remove(link.user, link.attachment_id);
    match broker
        .stores
        .broker
        .detach(link.user, link.attachment_id, now())
        .await
    {
        Ok(_) => {}
        Err(error) => {
            // The replica's heartbeat lapses if it dies; while it lives, the janitor retries
            // nothing here: the row stays live until the user re-attaches or the replica stops.
            tracing::warn!(%error, user = %link.user, "could not record a detach");
        }
    }
    tracing::debug!(user = %link.user, attachment = %link.attachment_id, "detached");
    broker.metrics.attached(-1);
    link.finish();
}

/// Handles one client message: exactly one immediate answer.
async fn handle(broker: &Arc<Broker>, link: &Arc<Link>, request: AttachRequest) -> Next {
    let id = request.request_id;
    let answer = match request.body {
        _ if id == 0 => Err(Refusal::invalid("request_id must be non-zero")),
        None => Err(Refusal::invalid(
            "the message is malformed (a string that is not UTF-8?) or has no body this server \
             knows",
        )),
        Some(Request::Hello(_)) => {
            link.end(Ending::status(Status::failed_precondition(
                "Hello may only be sent once, as the first message",
            )));
            return Next::End;
        }
        Some(Request::Ping(ping)) => Ok(Some(Body::Pong(Pong {
            nonce: ping.nonce,
            server_time: Some(timestamp(now())),
        }))),
        Some(body) => {
            let kind = metrics::kind(&body);
            broker.metrics.signal(kind);
            let answer = match broker.limiter.check_key(&link.user) {
                Err(_) => Err(Refusal::new(
                    ErrorCode::RateLimited,
                    "too many signals; slow down",
                )),
                Ok(()) => broker.signal(link, id, body).await,
            };
            if let Err(refusal) = &answer {
                broker.metrics.refused(kind, refusal.code());
            }
            answer
        }
    };
    let body = match answer {
        Ok(Some(body)) => body,
        // Already answered.
        Ok(None) => return Next::Continue,
        Err(refusal) => refusal.into_body(),
    };
    link.send(AttachResponse {
        request_id: id,
        body: Some(body),
    });
    Next::Continue
}
