//! Ended sessions announced by identity (on any replica) reach this replica's
//! [`SessionEnds`]: from the bus, and from the database when bus messages may have been missed.

use std::sync::Arc;

use rally_auth::SessionEnds;
use rally_auth::revocation::{SESSIONS_ENDED_TOPIC, parse_ended};
use rally_store::{Bus, BusEvent, IdentityStore};
use tokio_util::sync::CancellationToken;

use crate::RallydError;

/// Follows the announcements of ended sessions until `shutdown`.
pub(crate) async fn follow(
    bus: Arc<dyn Bus>,
    identity: Arc<dyn IdentityStore>,
    ends: Arc<SessionEnds>,
    shutdown: CancellationToken,
) -> Result<(), RallydError> {
    let mut events = bus.subscribe(SESSIONS_ENDED_TOPIC).await?;
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                event = events.recv() => event,
            };
            match event {
                Some(BusEvent::Message(payload)) => match parse_ended(&payload) {
                    Some(sessions) => {
                        let streams = ends.end(&sessions);
                        tracing::debug!(sessions = sessions.len(), streams, "sessions ended");
                    }
                    None => tracing::warn!("ignored a malformed ended-sessions message"),
                },
                Some(BusEvent::Resync) => recheck(&*identity, &ends).await,
                None => {
                    tracing::warn!("the ended-sessions subscription closed");
                    return;
                }
            }
        }
    });
    Ok(())
}

/// Messages may have been lost: asks the database about every session with open streams here.
async fn recheck(identity: &dyn IdentityStore, ends: &SessionEnds) {
    let open = ends.open_sessions();
    let mut ended = Vec::new();
    for (user, session) in open {
        match identity.session_active(user, session).await {
            Ok(true) => {}
            Ok(false) => ended.push(session),
            Err(error) => {
                tracing::warn!(%error, "could not re-check open sessions; their tokens still expire");
                return;
            }
        }
    }
    if !ended.is_empty() {
        let streams = ends.end(&ended);
        tracing::info!(
            sessions = ended.len(),
            streams,
            "ended sessions found on a re-check"
        );
    }
}
