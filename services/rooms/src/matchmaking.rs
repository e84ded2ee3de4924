//! The `rally.rooms.v1.Matchmaking` handlers, and the matchmaker that forms matches.
//!
//! Handlers validate, write one ticket transaction, announce the ticket change on the ticket hub
//! and wake the matchmaker. The matchmaker runs rounds per pool when woken and once a tick (windows
//! widen and tickets expire with time): each round is one store transaction that locks the pool's
//! free waiting tickets, plans groups with [`crate::planner::plan`], and creates each match's room
//! with its users joined. Rounds on several replicas take disjoint tickets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rally_auth::Caller;
use rally_proto::rooms::v1 as pb;
use rally_proto::rooms::v1::matchmaking_server::{Matchmaking, MatchmakingServer};
use rally_store::matchmaking::{MatchRoom, NewTicket, Ticket, TicketStatus};
use rally_store::{TicketStore, UnixMillis};
use tokio::sync::{Notify, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::clock::now;
use crate::metrics::MatchmakingMetrics;
use crate::pools::Pools;
use crate::{Hub, RoomsError, convert, planner, rules};

/// Most attributes of each kind on a ticket.
const MAX_ATTRIBUTES: usize = 16;
/// Longest string attribute value in bytes.
const MAX_STRING_VALUE_BYTES: usize = 256;
/// Most tickets one round considers per pool.
const ROUND_LIMIT: u32 = 512;

type TicketStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<pb::WatchTicketResponse, Status>> + Send>>;

/// Forms matches; see the module docs.
pub struct Matchmaker {
    store: Arc<dyn TicketStore>,
    pools: Arc<Pools>,
    rooms: Arc<Hub>,
    tickets: Arc<Hub>,
    wake: Notify,
    metrics: MatchmakingMetrics,
}

impl std::fmt::Debug for Matchmaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matchmaker")
            .field("pools", &self.pools)
            .finish()
    }
}

impl Matchmaker {
    /// Starts the matchmaker: a round when woken, and at least once per `tick`, until `shutdown`.
    pub fn spawn(
        store: Arc<dyn TicketStore>,
        pools: Arc<Pools>,
        rooms: Arc<Hub>,
        tickets: Arc<Hub>,
        tick: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let matchmaker = Arc::new(Self {
            store,
            pools,
            rooms,
            tickets,
            wake: Notify::new(),
            metrics: MatchmakingMetrics::new(),
        });
        let this = matchmaker.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(tick);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = this.wake.notified() => {}
                    _ = ticker.tick() => {}
                }
                this.round(now()).await;
            }
        });
        matchmaker
    }

    /// Asks for a round soon (a ticket was enqueued).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Expires overdue tickets, then forms every match the pools allow now.
    pub async fn round(&self, now: UnixMillis) {
        match self.store.expire_tickets(now).await {
            Ok(expired) => {
                for ticket in expired {
                    self.tickets.announce(ticket.id, 0).await;
                }
            }
            Err(error) => tracing::warn!(%error, "expiring tickets failed"),
        }
        for pool in self.pools.iter() {
            loop {
                // How many tickets the round saw (a backend need not plan with none).
                let candidates = AtomicUsize::new(0);
                let planner = |tickets: &[Ticket]| {
                    candidates.store(tickets.len(), Ordering::Relaxed);
                    planner::plan(pool, tickets, now)
                };
                let room = MatchRoom {
                    capacity: pool.match_size,
                };
                let formed = match self
                    .store
                    .match_round(&pool.name, now, ROUND_LIMIT, room, &planner)
                    .await
                {
                    Ok(formed) => formed,
                    Err(error) => {
                        tracing::warn!(%error, pool = pool.name, "match round failed");
                        break;
                    }
                };
                for formed_match in &formed {
                    self.metrics.matched(
                        &pool.name,
                        formed_match.tickets.iter().map(|ticket| {
                            let matched_at = ticket.matched.as_ref().map_or(now, |m| m.matched_at);
                            matched_at.saturating_sub(ticket.created_at)
                        }),
                    );
                    self.rooms.announce_events(&formed_match.room.events).await;
                    for ticket in &formed_match.tickets {
                        self.tickets.announce(ticket.id, 0).await;
                    }
                    tracing::info!(pool = pool.name, room = %formed_match.room.room.id, "match formed");
                }
                // A full round may leave more to match among tickets it could not see.
                let seen = formed.iter().map(|m| m.tickets.len()).sum::<usize>();
                if formed.is_empty() || seen < ROUND_LIMIT as usize {
                    let waiting = candidates.into_inner().saturating_sub(seen);
                    self.metrics
                        .queue(&pool.name, u64::try_from(waiting).unwrap_or(u64::MAX));
                    break;
                }
            }
        }
    }
}

/// The matchmaking service.
pub struct MatchmakingService {
    store: Arc<dyn TicketStore>,
    pools: Arc<Pools>,
    tickets: Arc<Hub>,
    matchmaker: Arc<Matchmaker>,
    shutdown: CancellationToken,
}

impl MatchmakingService {
    /// A service over `store` with `pools`, announcing ticket changes on `tickets` and waking
    /// `matchmaker`; watch streams end (UNAVAILABLE) when `shutdown` is cancelled.
    pub fn new(
        store: Arc<dyn TicketStore>,
        pools: Arc<Pools>,
        tickets: Arc<Hub>,
        matchmaker: Arc<Matchmaker>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            pools,
            tickets,
            matchmaker,
            shutdown,
        }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> MatchmakingServer<Self> {
        MatchmakingServer::new(self).max_decoding_message_size(64 * 1024)
    }
}

fn status(status: TicketStatus) -> pb::TicketStatus {
    match status {
        TicketStatus::Queued => pb::TicketStatus::Queued,
        TicketStatus::Matched => pb::TicketStatus::Matched,
        TicketStatus::Cancelled => pb::TicketStatus::Cancelled,
        TicketStatus::Expired => pb::TicketStatus::Expired,
    }
}

fn ticket_reply(ticket: &Ticket) -> pb::Ticket {
    pb::Ticket {
        ticket_id: ticket.id.to_string(),
        user_id: ticket.user_id.to_string(),
        pool: ticket.pool.clone(),
        numeric_attributes: ticket.numeric.clone().into_iter().collect(),
        string_attributes: ticket.strings.clone().into_iter().collect(),
        status: status(ticket.status) as i32,
        created_at: Some(convert::timestamp(ticket.created_at)),
        expires_at: Some(convert::timestamp(ticket.expires_at)),
        match_result: ticket.matched.as_ref().map(|m| pb::Match {
            room_id: m.room_id.to_string(),
            user_ids: m.user_ids.iter().map(Uuid::to_string).collect(),
            matched_at: Some(convert::timestamp(m.matched_at)),
        }),
    }
}

fn attribute_name(field: &'static str, name: &str) -> Result<(), RoomsError> {
    if (1..=64).contains(&name.len()) {
        Ok(())
    } else {
        Err(RoomsError::invalid(
            field,
            format!("name {name:.64?} must be 1 to 64 bytes"),
        ))
    }
}

fn numeric_attributes(
    raw: std::collections::HashMap<String, f64>,
) -> Result<BTreeMap<String, f64>, RoomsError> {
    const FIELD: &str = "numeric_attributes";
    if raw.len() > MAX_ATTRIBUTES {
        return Err(RoomsError::invalid(FIELD, "at most 16 entries"));
    }
    for (name, value) in &raw {
        attribute_name(FIELD, name)?;
        if !value.is_finite() {
            return Err(RoomsError::invalid(
                FIELD,
                format!("{name:?} must be finite"),
            ));
        }
    }
    Ok(raw.into_iter().collect())
}

fn string_attributes(
    raw: std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>, RoomsError> {
    const FIELD: &str = "string_attributes";
    if raw.len() > MAX_ATTRIBUTES {
        return Err(RoomsError::invalid(FIELD, "at most 16 entries"));
    }
    for (name, value) in &raw {
        attribute_name(FIELD, name)?;
        if value.len() > MAX_STRING_VALUE_BYTES {
            return Err(RoomsError::invalid(
                FIELD,
                format!("{name:?} is over 256 bytes"),
            ));
        }
    }
    Ok(raw.into_iter().collect())
}

#[tonic::async_trait]
impl Matchmaking for MatchmakingService {
    async fn enqueue(
        &self,
        request: Request<pb::EnqueueRequest>,
    ) -> Result<Response<pb::EnqueueResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let pool = self.pools.get(&request.pool).ok_or_else(|| {
            Status::not_found(format!("no matchmaking pool named {:.64?}", request.pool))
        })?;
        let numeric = numeric_attributes(request.numeric_attributes)?;
        let strings = string_attributes(request.string_attributes)?;
        pool.check_attributes(&numeric, &strings)?;
        let created_at = now();
        let max_wait_ms =
            i64::try_from(pool.max_wait_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let enqueued = self
            .store
            .enqueue(NewTicket {
                id: Uuid::new_v4(),
                user_id: caller.user_id,
                pool: pool.name.clone(),
                numeric,
                strings,
                created_at,
                expires_at: created_at.saturating_add(max_wait_ms),
            })
            .await
            .map_err(RoomsError::from)?;
        if let Some(replaced) = enqueued.replaced {
            self.tickets.announce(replaced, 0).await;
        }
        self.tickets.announce(enqueued.ticket.id, 0).await;
        self.matchmaker.wake();
        Ok(Response::new(pb::EnqueueResponse {
            ticket: Some(ticket_reply(&enqueued.ticket)),
        }))
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let caller = Caller::of(&request)?;
        let id = rules::parse_id("ticket_id", &request.get_ref().ticket_id)?;
        let ticket = self
            .store
            .cancel(id, caller.user_id, now())
            .await
            .map_err(RoomsError::from)?;
        self.tickets.announce(ticket.id, 0).await;
        Ok(Response::new(pb::CancelResponse {
            ticket: Some(ticket_reply(&ticket)),
        }))
    }

    async fn watch_ticket(
        &self,
        request: Request<pb::WatchTicketRequest>,
    ) -> Result<Response<TicketStream>, Status> {
        let caller = Caller::of(&request)?;
        let id = rules::parse_id("ticket_id", &request.get_ref().ticket_id)?;
        let mut wake = self.tickets.subscribe(id);
        let first = self
            .store
            .ticket(id)
            .await
            .map_err(RoomsError::from)?
            .ok_or_else(|| Status::not_found("ticket not found"))?;
        if first.user_id != caller.user_id {
            return Err(Status::permission_denied(
                "that ticket belongs to another user",
            ));
        }
        let (tx, rx) = mpsc::channel(4);
        let store = self.store.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut last = first;
            let first = Ok(pb::WatchTicketResponse {
                ticket: Some(ticket_reply(&last)),
            });
            if tx.try_send(first).is_err() {
                return;
            }
            while last.status == TicketStatus::Queued {
                tokio::select! {
                    () = shutdown.cancelled() => {
                        let _ = tx.try_send(Err(Status::unavailable("server shutting down; watch the ticket again")));
                        return;
                    }
                    () = tx.closed() => return,
                    changed = wake.changed() => if changed.is_err() { return },
                }
                match store.ticket(id).await {
                    Ok(Some(ticket)) if ticket != last => {
                        if tx
                            .send(Ok(pb::WatchTicketResponse {
                                ticket: Some(ticket_reply(&ticket)),
                            }))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        last = ticket;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        let _ = tx.try_send(Err(RoomsError::from(error).into()));
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
