//! The attachments held by this replica: each one's bounded outgoing queue, and how it ends.
//!
//! Everything sent to a client goes through its [`Link`]'s queue with `try_send`: a client that
//! reads too slowly fills it, and is then ended with `RESOURCE_EXHAUSTED` instead of growing
//! memory. Ending is two steps: anyone may ask a link to end (`Link::end`, first reason wins);
//! the attachment's own task then records the detach and lets the outgoing stream finish with the
//! reason's last message and status.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::Stream;
use rally_proto::broker::v1::AttachResponse;
use rally_proto::broker::v1::attach_response::Body;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

/// Most pending Connects an attachment remembers the `request_id` of.
const MAX_REMEMBERED_CONNECTS: usize = 256;
/// Most requesters an attachment remembers having told of their request (more than the cap on
/// requests waiting for one user's answer).
const MAX_TOLD: usize = 1024;

/// How an attachment ends: an optional last message, then a status (`None`: OK).
#[derive(Debug, Clone)]
pub(crate) struct Ending {
    pub(crate) last_message: Option<AttachResponse>,
    pub(crate) status: Option<Status>,
}

impl Ending {
    pub(crate) fn status(status: Status) -> Self {
        Self {
            last_message: None,
            status: Some(status),
        }
    }
}

/// One live attachment on this replica.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) user: Uuid,
    pub(crate) attachment_id: Uuid,
    queue: mpsc::Sender<AttachResponse>,
    ending: Mutex<Option<Ending>>,
    end_requested: CancellationToken,
    finished: CancellationToken,
    /// The `request_id` of each pending Connect, by the user it was sent to.
    connects: Mutex<HashMap<Uuid, u64>>,
    /// The requesters whose pending request this client was told of (a PeerConnectRequest),
    /// so that the replay on attach and a request arriving meanwhile tell it once.
    told: Mutex<std::collections::HashSet<Uuid>>,
}

/// The client's side of a link: the stream of server messages.
pub(crate) type Outgoing = Pin<Box<dyn Stream<Item = Result<AttachResponse, Status>> + Send>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Link {
    /// A link with an outgoing queue of `capacity` messages, and the stream that drains it.
    pub(crate) fn new(user: Uuid, attachment_id: Uuid, capacity: usize) -> (Arc<Self>, Outgoing) {
        let (queue, rx) = mpsc::channel(capacity.max(1));
        let link = Arc::new(Self {
            user,
            attachment_id,
            queue,
            ending: Mutex::new(None),
            end_requested: CancellationToken::new(),
            finished: CancellationToken::new(),
            connects: Mutex::new(HashMap::new()),
            told: Mutex::new(std::collections::HashSet::new()),
        });
        let stream = outgoing(rx, link.clone());
        (link, stream)
    }

    /// Queues a message. A full queue ends the link (`RESOURCE_EXHAUSTED`); returns false when
    /// the message was not queued.
    pub(crate) fn send(&self, message: AttachResponse) -> bool {
        if self.end_requested.is_cancelled() {
            return false;
        }
        match self.queue.try_send(message) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::info!(user = %self.user, attachment = %self.attachment_id, "client reads too slowly; ending its attachment");
                self.end(Ending::status(Status::resource_exhausted(
                    "the client read its messages too slowly and its queue filled up; re-attach",
                )));
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues a message once the queue has room, never ending the link for a full queue (for
    /// what the server repeats on its own, at the client's pace); returns false when the link
    /// ended first.
    pub(crate) async fn send_paced(&self, message: AttachResponse) -> bool {
        let permit = tokio::select! {
            biased;
            () = self.end_requested.cancelled() => return false,
            permit = self.queue.reserve() => permit,
        };
        match permit {
            Ok(permit) => {
                permit.send(message);
                true
            }
            Err(_) => false,
        }
    }

    /// Whether to tell this client of `requester`'s request now: false when it was told already
    /// (and not answered since); otherwise remembers that it is being told.
    pub(crate) fn first_telling(&self, requester: Uuid) -> bool {
        let mut told = lock(&self.told);
        if told.contains(&requester) {
            return false;
        }
        if told.len() < MAX_TOLD {
            told.insert(requester);
        }
        true
    }

    /// Forgets that this client was told of `requester`'s request (it was answered, withdrawn,
    /// or crossed): a new request from it is told again.
    pub(crate) fn forget_told(&self, requester: Uuid) {
        lock(&self.told).remove(&requester);
    }

    /// Queues a server message that answers nothing, or one that answers a remembered Connect
    /// (ConnectAccepted, ConnectRejected: they get its `request_id`; PeerClosed forgets it). A
    /// PeerConnectRequest the client was already told of is not queued again.
    pub(crate) fn deliver(&self, mut message: AttachResponse) -> bool {
        match &message.body {
            Some(Body::PeerConnectRequest(request)) => {
                if let Ok(requester) = Uuid::try_parse(&request.user_id)
                    && !self.first_telling(requester)
                {
                    return true;
                }
            }
            Some(Body::ConnectAccepted(answer)) => {
                message.request_id = self.take_connect(&answer.user_id);
                if let Ok(peer) = Uuid::try_parse(&answer.user_id) {
                    self.forget_told(peer);
                }
            }
            Some(Body::ConnectRejected(answer)) => {
                message.request_id = self.take_connect(&answer.user_id);
            }
            Some(Body::PeerClosed(closed)) => {
                self.take_connect(&closed.user_id);
                if let Ok(peer) = Uuid::try_parse(&closed.user_id) {
                    self.forget_told(peer);
                }
            }
            _ => {}
        }
        self.send(message)
    }

    /// Asks the link to end; the first reason wins.
    pub(crate) fn end(&self, ending: Ending) {
        let mut slot = lock(&self.ending);
        if slot.is_none() {
            *slot = Some(ending);
        }
        drop(slot);
        self.end_requested.cancel();
    }

    /// Resolves once someone asked the link to end.
    pub(crate) async fn end_requested(&self) {
        self.end_requested.cancelled().await;
    }

    /// Lets the outgoing stream finish (after the attachment's task cleaned up).
    pub(crate) fn finish(&self) {
        self.finished.cancel();
    }

    /// Remembers the `request_id` of a Connect to `peer`.
    pub(crate) fn remember_connect(&self, peer: Uuid, request_id: u64) {
        let mut connects = lock(&self.connects);
        if connects.len() >= MAX_REMEMBERED_CONNECTS && !connects.contains_key(&peer) {
            // Bounded: forget an arbitrary one; its answer then carries request_id 0.
            if let Some(victim) = connects.keys().next().copied() {
                connects.remove(&victim);
            }
        }
        connects.insert(peer, request_id);
    }

    /// Forgets and returns the `request_id` of the Connect to `peer` (0 if none).
    pub(crate) fn take_connect(&self, peer: &str) -> u64 {
        let Ok(peer) = Uuid::try_parse(peer) else {
            return 0;
        };
        lock(&self.connects).remove(&peer).unwrap_or(0)
    }

    fn take_ending(&self) -> Ending {
        lock(&self.ending).take().unwrap_or(Ending {
            last_message: None,
            status: None,
        })
    }
}

/// The stream of server messages: the queue until the link finishes, then the ending.
fn outgoing(rx: mpsc::Receiver<AttachResponse>, link: Arc<Link>) -> Outgoing {
    enum State {
        Open(mpsc::Receiver<AttachResponse>, Arc<Link>),
        Last(Option<Status>),
        Done,
    }
    Box::pin(futures::stream::unfold(
        State::Open(rx, link),
        |state| async move {
            match state {
                State::Open(mut rx, link) => {
                    let finished = link.finished.clone();
                    tokio::select! {
                        biased;
                        () = finished.cancelled() => {
                            let ending = link.take_ending();
                            match ending.last_message {
                                Some(message) => Some((Ok(message), State::Last(ending.status))),
                                None => ending.status.map(|status| (Err(status), State::Done)),
                            }
                        }
                        // `None` is unreachable while the link (which holds the sender) lives.
                        message = rx.recv() => message.map(|message| (Ok(message), State::Open(rx, link))),
                    }
                }
                State::Last(status) => status.map(|status| (Err(status), State::Done)),
                State::Done => None,
            }
        },
    ))
}

/// The links of this replica, by user (a user has at most one attachment).
#[derive(Debug, Default)]
pub(crate) struct Links {
    by_user: Mutex<HashMap<Uuid, Arc<Link>>>,
}

impl Links {
    /// Adds a link, returning the one of the same user it replaced.
    pub(crate) fn insert(&self, link: Arc<Link>) -> Option<Arc<Link>> {
        lock(&self.by_user).insert(link.user, link)
    }

    /// The user's link here, if any.
    pub(crate) fn get(&self, user: Uuid) -> Option<Arc<Link>> {
        lock(&self.by_user).get(&user).cloned()
    }

    /// Removes the user's link if it is still `attachment_id`.
    pub(crate) fn remove(&self, user: Uuid, attachment_id: Uuid) {
        let mut links = lock(&self.by_user);
        if links
            .get(&user)
            .is_some_and(|link| link.attachment_id == attachment_id)
        {
            links.remove(&user);
        }
    }

    /// Every link.
    pub(crate) fn all(&self) -> Vec<Arc<Link>> {
        lock(&self.by_user).values().cloned().collect()
    }

    /// How many links there are.
    pub(crate) fn len(&self) -> usize {
        lock(&self.by_user).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use rally_proto::broker::v1::{Ack, ConnectAccepted, Superseded};

    #[tokio::test]
    async fn a_client_is_told_of_a_pending_request_once_until_it_is_answered() {
        let (link, mut stream) = Link::new(Uuid::new_v4(), Uuid::new_v4(), 8);
        let requester = Uuid::new_v4();
        let request = || AttachResponse {
            request_id: 0,
            body: Some(Body::PeerConnectRequest(
                rally_proto::broker::v1::PeerConnectRequest {
                    user_id: requester.to_string(),
                },
            )),
        };
        assert!(link.deliver(request()));
        assert!(!link.first_telling(requester), "the replay skips it");
        assert!(link.deliver(request()), "a second delivery is not an error");
        link.forget_told(requester);
        assert!(
            link.deliver(request()),
            "answered, then asked again: told again"
        );
        link.send(ack(7));
        let mut bodies = Vec::new();
        while let Some(Ok(message)) = stream.next().await {
            if message.request_id == 7 {
                break;
            }
            bodies.push(message.body);
        }
        assert_eq!(bodies.len(), 2, "told once, then once more: {bodies:?}");
    }

    fn ack(request_id: u64) -> AttachResponse {
        AttachResponse {
            request_id,
            body: Some(Body::Ack(Ack {})),
        }
    }

    #[tokio::test]
    async fn a_full_queue_ends_the_link_with_resource_exhausted() {
        let (link, mut stream) = Link::new(Uuid::new_v4(), Uuid::new_v4(), 2);
        assert!(link.send(ack(1)));
        assert!(link.send(ack(2)));
        assert!(!link.send(ack(3)), "the third message does not fit");
        assert!(!link.send(ack(4)), "nothing is queued once the link ends");
        link.finish();
        let first = stream.next().await.expect("an item");
        // The queue is dropped once the link finishes: the client re-attaches and re-syncs.
        let status = match first {
            Err(status) => status,
            Ok(_) => match stream.next().await.expect("an item") {
                Err(status) => status,
                Ok(message) => panic!("unexpected {message:?}"),
            },
        };
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn a_superseded_link_sends_its_last_message_then_ends_ok() {
        let (link, mut stream) = Link::new(Uuid::new_v4(), Uuid::new_v4(), 8);
        link.end(Ending {
            last_message: Some(AttachResponse {
                request_id: 0,
                body: Some(Body::Superseded(Superseded {
                    by_attachment_id: "x".into(),
                })),
            }),
            status: None,
        });
        // A later reason does not replace the first.
        link.end(Ending::status(Status::unavailable("later")));
        link.finish();
        let last = stream.next().await.expect("an item").expect("a message");
        assert!(matches!(last.body, Some(Body::Superseded(_))));
        assert!(
            stream.next().await.is_none(),
            "then the stream ends with OK"
        );
    }

    #[tokio::test]
    async fn answers_to_connects_carry_the_connects_request_id_once() {
        let (link, mut stream) = Link::new(Uuid::new_v4(), Uuid::new_v4(), 8);
        let peer = Uuid::new_v4();
        link.remember_connect(peer, 42);
        let accepted = || AttachResponse {
            request_id: 0,
            body: Some(Body::ConnectAccepted(ConnectAccepted {
                user_id: peer.to_string(),
            })),
        };
        assert!(link.deliver(accepted()));
        assert!(link.deliver(accepted()));
        let first = stream.next().await.expect("item").expect("message");
        let second = stream.next().await.expect("item").expect("message");
        assert_eq!((first.request_id, second.request_id), (42, 0));
    }
}
