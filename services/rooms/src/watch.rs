//! WatchRoom: a room's events, in order, each once, resumable by sequence number.
//!
//! The stream task subscribes to the [`RoomHub`] before its first read, then alternates between
//! draining the store (`events_after` the last sequence sent, page by page) and waiting for a
//! wake-up. Because every read goes to the store, a wake-up lost or merged costs nothing but the
//! wait; order and exactly-once come from the sequence numbers alone.

use std::pin::Pin;
use std::sync::Arc;

use rally_proto::rooms::v1 as pb;
use rally_store::RoomStore;
use rally_store::rooms::{EventsAfter, Room, RoomEventKind};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

use crate::{RoomHub, RoomsError, convert};

/// The stream type WatchRoom answers with.
pub(crate) type WatchStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchRoomResponse, Status>> + Send + 'static>>;

/// Events read from the store per query.
const PAGE: u32 = 256;
/// Messages buffered per watcher; a slower watcher holds its task back, not memory.
const BUFFER: usize = 64;

/// Starts a watch of `room_id`. Errors found before the first message come back as the call's
/// status; later ones end the stream.
pub(crate) async fn watch_room(
    store: Arc<dyn RoomStore>,
    hub: Arc<RoomHub>,
    shutdown: CancellationToken,
    room_id: Uuid,
    after: Option<u64>,
) -> Result<WatchStream, Status> {
    let wake = hub.subscribe(room_id);
    let room = store
        .room(room_id)
        .await
        .map_err(RoomsError::from)?
        .ok_or(RoomsError::Room(rally_store::rooms::RoomError::NotFound))?;
    let start = match after {
        Some(asked) if asked > room.sequence => {
            return Err(RoomsError::AheadOfRoom {
                asked,
                latest: room.sequence,
            }
            .into());
        }
        Some(asked) => Start::After(asked),
        None if room.closed_at.is_some() => {
            return Err(RoomsError::Room(rally_store::rooms::RoomError::NotFound).into());
        }
        None => Start::Snapshot(Box::new(room)),
    };
    let (tx, rx) = mpsc::channel(BUFFER);
    let watcher = Watcher {
        store,
        tx,
        shutdown,
        room_id,
    };
    tokio::spawn(watcher.run(start, wake));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

enum Start {
    Snapshot(Box<Room>),
    After(u64),
}

struct Watcher {
    store: Arc<dyn RoomStore>,
    tx: mpsc::Sender<Result<pb::WatchRoomResponse, Status>>,
    shutdown: CancellationToken,
    room_id: Uuid,
}

/// Whether the stream goes on after a step.
enum Step {
    More,
    End,
}

impl Watcher {
    async fn run(self, start: Start, mut wake: tokio::sync::watch::Receiver<u64>) {
        let mut last = match start {
            Start::Snapshot(room) => {
                let sequence = room.sequence;
                if let Step::End = self.send_snapshot(&room).await {
                    return;
                }
                sequence
            }
            Start::After(sequence) => sequence,
        };
        loop {
            match self.drain(&mut last).await {
                Step::End => return,
                Step::More => {}
            }
            tokio::select! {
                () = self.shutdown.cancelled() => {
                    self.fail(Status::unavailable(format!(
                        "server shutting down; resume with after_sequence = {last}"
                    )))
                    .await;
                    return;
                }
                () = self.tx.closed() => return,
                changed = wake.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Sends everything after `last` that the store has now.
    async fn drain(&self, last: &mut u64) -> Step {
        loop {
            let found = match self.store.events_after(self.room_id, *last, PAGE).await {
                Ok(found) => found,
                Err(error) => {
                    self.fail(RoomsError::from(error).into()).await;
                    return Step::End;
                }
            };
            match found {
                None => {
                    self.fail(Status::not_found("room not found")).await;
                    return Step::End;
                }
                Some(EventsAfter::Ahead { latest }) => {
                    // Only possible if the room's history was rewritten under us.
                    self.fail(
                        RoomsError::AheadOfRoom {
                            asked: *last,
                            latest,
                        }
                        .into(),
                    )
                    .await;
                    return Step::End;
                }
                Some(EventsAfter::Snapshot(room)) => {
                    if room.closed_at.is_some() {
                        self.fail(Status::not_found(
                            "room closed and its events before the close are no longer retained",
                        ))
                        .await;
                        return Step::End;
                    }
                    *last = room.sequence;
                    if let Step::End = self.send_snapshot(&room).await {
                        return Step::End;
                    }
                }
                Some(EventsAfter::Events(events)) => {
                    let full_page = events.len() >= PAGE as usize;
                    for event in &events {
                        let message =
                            pb::watch_room_response::Payload::Event(convert::event(event));
                        if let Step::End = self.send(message).await {
                            return Step::End;
                        }
                        *last = event.sequence;
                        if event.kind == RoomEventKind::RoomClosed {
                            return Step::End;
                        }
                    }
                    if events.is_empty() {
                        return self.end_if_closed(*last).await;
                    }
                    if !full_page {
                        return Step::More;
                    }
                }
            }
        }
    }

    /// A resumed watch of a closed room that has seen everything ends here.
    async fn end_if_closed(&self, last: u64) -> Step {
        match self.store.room(self.room_id).await {
            Ok(Some(room)) if room.closed_at.is_some() && room.sequence <= last => Step::End,
            Ok(Some(_)) => Step::More,
            Ok(None) => Step::End,
            Err(error) => {
                self.fail(RoomsError::from(error).into()).await;
                Step::End
            }
        }
    }

    async fn send_snapshot(&self, room: &Room) -> Step {
        self.send(pb::watch_room_response::Payload::Snapshot(convert::room(
            room,
        )))
        .await
    }

    async fn send(&self, payload: pb::watch_room_response::Payload) -> Step {
        let message = Ok(pb::WatchRoomResponse {
            payload: Some(payload),
        });
        tokio::select! {
            sent = self.tx.send(message) => match sent {
                Ok(()) => Step::More,
                Err(_) => Step::End,
            },
            () = self.shutdown.cancelled() => {
                // The buffer is full and the server is stopping: the client resumes later.
                Step::End
            }
        }
    }

    async fn fail(&self, status: Status) {
        let _ = self.tx.try_send(Err(status));
    }
}
