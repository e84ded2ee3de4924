//! Rooms and matchmaking for a signed-in [`Session`]: [`Rooms`] and [`Matchmaking`], one method
//! per RPC of `rally.rooms.v1.Rooms` and `rally.rooms.v1.Matchmaking`.
//!
//! The methods take and return the generated wire types (re-exported as
//! [`crate::proto::rooms::v1`]): a request message where it has several fields, plain ids where
//! it has one; the room or ticket itself where the answer holds only that. Refused calls are
//! [`Error::Rpc`] with the codes documented in `rooms.proto` and `matchmaking.proto`. The watches ([`Rooms::watch`],
//! [`Matchmaking::watch_ticket`]) resume by themselves when the server ends them with
//! `UNAVAILABLE` (a restart, or a watcher that fell behind) or the connection drops: a room watch
//! resumes after the last sequence it delivered, so nothing is lost or repeated.
//!
//! Not here: presence (the broker's [`crate::BrokerLink::room_presence`]).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use rally_proto::rooms::v1::matchmaking_client::MatchmakingClient;
use rally_proto::rooms::v1::rooms_client::RoomsClient;
use rally_proto::rooms::v1::watch_room_response::Payload;
use rally_proto::rooms::v1::{
    CancelRequest, CreateRoomRequest, CreateRoomResponse, EnqueueRequest, GetCurrentRoomRequest,
    GetRoomRequest, JoinRoomRequest, JoinRoomResponse, KickMemberRequest, LeaveRoomRequest,
    LeaveRoomResponse, ListRoomsRequest, ListRoomsResponse, Room, Ticket, UpdateRoomDataRequest,
    WatchRoomRequest, WatchRoomResponse, WatchTicketRequest, WatchTicketResponse,
};
use tonic::Streaming;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::broker::backoff::Backoff;
use crate::session::Authorized;
use crate::{Error, Result, Session};

/// Resuming a watch: ceilings from 250 ms doubling to 10 s.
const RESUME_FIRST: Duration = Duration::from_millis(250);
const RESUME_MAX: Duration = Duration::from_secs(10);
/// Failed re-opens in a row after which a watch gives up (with the last error).
const RESUME_ATTEMPTS: u32 = 10;

impl Session {
    /// The rooms of this session's user.
    pub fn rooms(&self) -> Rooms {
        Rooms {
            session: self.clone(),
        }
    }

    /// Matchmaking for this session's user.
    pub fn matchmaking(&self) -> Matchmaking {
        Matchmaking {
            session: self.clone(),
        }
    }
}

/// `rally.rooms.v1.Rooms` as the session's user.
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_dir, _server, url) = rally_client::doc_server!();
/// # let rally = rally_client::Rally::connect(&url).await?;
/// # let session = rally.device_login("doc-rooms-ada-0123456789", "Ada").await?;
/// use futures::StreamExt;
/// use rally_client::proto::rooms::v1::CreateRoomRequest;
/// let rooms = session.rooms();
/// let room = rooms
///     .create_room(CreateRoomRequest { capacity: 4, ..Default::default() })
///     .await?
///     .room
///     .expect("a room");
/// let mut watch = rooms.watch(&room.room_id, Some(room.sequence)).await?;
/// # let bob = rally.device_login("doc-rooms-bob-0123456789", "Bob").await?;
/// # bob.rooms().join_room(&room.room_id).await?;
/// while let Some(message) = watch.next().await {
///     println!("{:?}", message?);
/// #   break;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Rooms {
    session: Session,
}

type RoomsRpc = RoomsClient<InterceptedService<Channel, Authorized>>;

impl Rooms {
    fn client(&self) -> RoomsRpc {
        RoomsClient::with_interceptor(self.session.channel(), self.session.authorized())
    }

    /// Creates a room owned by the user (leaving its current room, if any).
    pub async fn create_room(&self, request: CreateRoomRequest) -> Result<CreateRoomResponse> {
        let answer = self.client().create_room(request).await;
        Ok(answer.map_err(|s| self.session.error(s))?.into_inner())
    }

    /// Joins a room (leaving the current one in the same transaction).
    pub async fn join_room(&self, room_id: &str) -> Result<JoinRoomResponse> {
        let request = JoinRoomRequest {
            room_id: room_id.to_owned(),
        };
        let answer = self.client().join_room(request).await;
        Ok(answer.map_err(|s| self.session.error(s))?.into_inner())
    }

    /// Leaves a room the user is a member of.
    pub async fn leave_room(&self, room_id: &str) -> Result<LeaveRoomResponse> {
        let request = LeaveRoomRequest {
            room_id: room_id.to_owned(),
        };
        let answer = self.client().leave_room(request).await;
        Ok(answer.map_err(|s| self.session.error(s))?.into_inner())
    }

    /// A room's current state.
    pub async fn get_room(&self, room_id: &str) -> Result<Room> {
        let request = GetRoomRequest {
            room_id: room_id.to_owned(),
        };
        let answer = self.client().get_room(request).await;
        room(answer.map_err(|s| self.session.error(s))?.into_inner().room)
    }

    /// One page of public rooms, newest first.
    pub async fn list_rooms(&self, request: ListRoomsRequest) -> Result<ListRoomsResponse> {
        let answer = self.client().list_rooms(request).await;
        Ok(answer.map_err(|s| self.session.error(s))?.into_inner())
    }

    /// Removes `user` from the room (owner only); returns the room after.
    pub async fn kick_member(&self, room_id: &str, user: Uuid) -> Result<Room> {
        let request = KickMemberRequest {
            room_id: room_id.to_owned(),
            user_id: user.to_string(),
        };
        let answer = self.client().kick_member(request).await;
        room(answer.map_err(|s| self.session.error(s))?.into_inner().room)
    }

    /// Changes room data and invitations (owner only); returns the room after.
    pub async fn update_room_data(&self, request: UpdateRoomDataRequest) -> Result<Room> {
        let answer = self.client().update_room_data(request).await;
        room(answer.map_err(|s| self.session.error(s))?.into_inner().room)
    }

    /// The user's current room, or `None`.
    pub async fn current_room(&self) -> Result<Option<Room>> {
        let answer = self
            .client()
            .get_current_room(GetCurrentRoomRequest {})
            .await;
        Ok(answer.map_err(|s| self.session.error(s))?.into_inner().room)
    }

    /// Follows a room's events: without `after_sequence`, a snapshot first and then every event
    /// after it; with it, the events after that sequence (or a snapshot, if it is older than the
    /// server keeps). The stream ends after `RoomClosed`. It resumes by itself after an
    /// interruption (see the module documentation); an item is an error only when resuming
    /// failed for good, and the stream ends after it.
    ///
    /// Errors (of the call): [`Error::Rpc`] with `NOT_FOUND` or `OUT_OF_RANGE`.
    pub async fn watch(
        &self,
        room_id: &str,
        after_sequence: Option<u64>,
    ) -> Result<impl Stream<Item = Result<WatchRoomResponse>> + Send + Unpin + 'static> {
        let resume = RoomResume {
            client: self.client(),
            room_id: room_id.to_owned(),
            after_sequence,
        };
        let first = resume.open().await.map_err(|s| self.session.error(s))?;
        Ok(follow(resume, first, self.session.clone()))
    }
}

/// `rally.rooms.v1.Matchmaking` as the session's user.
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_dir, _server, url) = rally_client::doc_server!();
/// # let rally = rally_client::Rally::connect(&url).await?;
/// # let session = rally.device_login("doc-match-ada-0123456789", "Ada").await?;
/// # let bob = rally.device_login("doc-match-bob-0123456789", "Bob").await?;
/// # bob.matchmaking().enqueue(rally_client::proto::rooms::v1::EnqueueRequest { pool: "default".into(), ..Default::default() }).await?;
/// use futures::StreamExt;
/// use rally_client::proto::rooms::v1::{EnqueueRequest, TicketStatus};
/// let matchmaking = session.matchmaking();
/// let ticket = matchmaking
///     .enqueue(EnqueueRequest { pool: "default".into(), ..Default::default() })
///     .await?;
/// let mut watch = matchmaking.watch_ticket(&ticket.ticket_id).await?;
/// while let Some(ticket) = watch.next().await {
///     let ticket = ticket?;
///     if ticket.status() == TicketStatus::Matched {
///         println!("matched into {:?}", ticket.match_result.map(|m| m.room_id));
/// #       break;
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Matchmaking {
    session: Session,
}

type MatchmakingRpc = MatchmakingClient<InterceptedService<Channel, Authorized>>;

impl Matchmaking {
    fn client(&self) -> MatchmakingRpc {
        MatchmakingClient::with_interceptor(self.session.channel(), self.session.authorized())
    }

    /// Queues the user in a pool; returns its ticket, QUEUED (an older QUEUED ticket of the user
    /// is cancelled).
    pub async fn enqueue(&self, request: EnqueueRequest) -> Result<Ticket> {
        let answer = self.client().enqueue(request).await;
        ticket(
            answer
                .map_err(|s| self.session.error(s))?
                .into_inner()
                .ticket,
        )
    }

    /// Cancels a ticket; returns it, CANCELLED (or EXPIRED).
    pub async fn cancel(&self, ticket_id: &str) -> Result<Ticket> {
        let request = CancelRequest {
            ticket_id: ticket_id.to_owned(),
        };
        let answer = self.client().cancel(request).await;
        ticket(
            answer
                .map_err(|s| self.session.error(s))?
                .into_inner()
                .ticket,
        )
    }

    /// Follows a ticket: its current state, then every change; the stream ends after a final
    /// status. It resumes by itself after an interruption (the current state is then sent
    /// again); an item is an error only when resuming failed for good, and the stream ends
    /// after it.
    ///
    /// Errors (of the call): [`Error::Rpc`] with `NOT_FOUND` or `PERMISSION_DENIED`.
    pub async fn watch_ticket(
        &self,
        ticket_id: &str,
    ) -> Result<impl Stream<Item = Result<Ticket>> + Send + Unpin + 'static> {
        let resume = TicketResume {
            client: self.client(),
            ticket_id: ticket_id.to_owned(),
        };
        let first = resume.open().await.map_err(|s| self.session.error(s))?;
        let tickets = follow(resume, first, self.session.clone())
            .map(|answer| answer.and_then(|a: WatchTicketResponse| ticket(a.ticket)));
        Ok(tickets)
    }
}

fn room(room: Option<Room>) -> Result<Room> {
    room.ok_or_else(|| Error::protocol("the answer has no room"))
}

fn ticket(ticket: Option<Ticket>) -> Result<Ticket> {
    ticket.ok_or_else(|| Error::protocol("the answer has no ticket"))
}

type Opening<T> = Pin<Box<dyn Future<Output = Result<Streaming<T>, tonic::Status>> + Send>>;

/// How to (re-)open a server stream, and what to remember of its items to resume it.
trait Resume: Send + 'static {
    type Item: Send + 'static;
    /// Opens the stream from where the items so far leave off.
    fn open(&self) -> Opening<Self::Item>;
    /// Remembers what `item` says about where the stream is.
    fn note(&mut self, item: &Self::Item);
}

struct RoomResume {
    client: RoomsRpc,
    room_id: String,
    after_sequence: Option<u64>,
}

impl Resume for RoomResume {
    type Item = WatchRoomResponse;

    fn open(&self) -> Opening<WatchRoomResponse> {
        let mut client = self.client.clone();
        let request = WatchRoomRequest {
            room_id: self.room_id.clone(),
            after_sequence: self.after_sequence,
        };
        Box::pin(async move { Ok(client.watch_room(request).await?.into_inner()) })
    }

    fn note(&mut self, item: &WatchRoomResponse) {
        match &item.payload {
            Some(Payload::Snapshot(room)) => self.after_sequence = Some(room.sequence),
            Some(Payload::Event(event)) => self.after_sequence = Some(event.sequence),
            None => {}
        }
    }
}

struct TicketResume {
    client: MatchmakingRpc,
    ticket_id: String,
}

impl Resume for TicketResume {
    type Item = WatchTicketResponse;

    fn open(&self) -> Opening<WatchTicketResponse> {
        let mut client = self.client.clone();
        let request = WatchTicketRequest {
            ticket_id: self.ticket_id.clone(),
        };
        Box::pin(async move { Ok(client.watch_ticket(request).await?.into_inner()) })
    }

    fn note(&mut self, _item: &WatchTicketResponse) {}
}

/// A followed stream's state.
struct Following<R: Resume> {
    resume: R,
    stream: Option<Streaming<R::Item>>,
    /// The session's token generation when the stream opened.
    opened_with: u64,
    session: Session,
    backoff: Backoff,
    failures: u32,
    done: bool,
}

/// Whether an interruption is worth resuming from. `UNAUTHENTICATED` while the session lives
/// is the stream's access token expiring (the server ends watches then): resume with the fresh
/// one. Once the session ended, it is [`Error::SessionEnded`] and ends the watch.
fn interrupted(error: &Error) -> bool {
    matches!(
        error,
        Error::Unreachable(_)
            | Error::Rpc {
                code: tonic::Code::Unavailable | tonic::Code::Unauthenticated,
                ..
            }
    )
}

/// The items of `first`, re-opened through `resume` after interruptions.
fn follow<R: Resume>(
    resume: R,
    first: Streaming<R::Item>,
    session: Session,
) -> Pin<Box<dyn Stream<Item = Result<R::Item>> + Send>> {
    let state = Following {
        resume,
        opened_with: session.token_generation(),
        stream: Some(first),
        session,
        backoff: Backoff::new(RESUME_FIRST, RESUME_MAX),
        failures: 0,
        done: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        loop {
            let Some(stream) = state.stream.as_mut() else {
                tokio::time::sleep(state.backoff.next_delay()).await;
                let generation = state.session.token_generation();
                match state.resume.open().await {
                    Ok(stream) => {
                        state.stream = Some(stream);
                        state.opened_with = generation;
                    }
                    Err(status) => {
                        if status.code() == tonic::Code::Unauthenticated {
                            state.session.refresh_now();
                        }
                        let error = state.session.error(status);
                        state.failures += 1;
                        if !interrupted(&error) || state.failures >= RESUME_ATTEMPTS {
                            state.done = true;
                            return Some((Err(error), state));
                        }
                    }
                }
                continue;
            };
            match stream.message().await {
                Ok(Some(item)) => {
                    state.failures = 0;
                    state.backoff.reset();
                    state.resume.note(&item);
                    return Some((Ok(item), state));
                }
                Ok(None) => return None,
                Err(status) => {
                    if status.code() == tonic::Code::Unauthenticated
                        && state.session.token_generation() == state.opened_with
                    {
                        // Refused with the current token: it expired unrefreshed, or the
                        // session ended on the server. A refresh tells which.
                        state.session.refresh_now();
                    }
                    let error = state.session.error(status);
                    if !interrupted(&error) {
                        state.done = true;
                        return Some((Err(error), state));
                    }
                    tracing::debug!(%error, "a watch was interrupted; resuming");
                    state.stream = None;
                }
            }
        }
    })
    .boxed()
}
