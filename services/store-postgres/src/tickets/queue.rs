//! Enqueueing, cancelling and expiring tickets, each inside one READ COMMITTED transaction run by
//! its caller, locking the rows it decides on.

use std::collections::BTreeMap;

use rally_store::matchmaking::{Enqueued, NewTicket, Ticket, TicketError, TicketStatus};
use rally_store::{StoreError, UnixMillis};
use sqlx::PgConnection;
use uuid::Uuid;

use super::codec::{self, CANCELLED, EXPIRED, QUEUED};
use super::reads::{self, Lock, TICKET_COLUMNS, TicketRow};
use crate::error_mapping::map_error;
use crate::rooms::{corrupt, id_text, parse_id};

/// Stores `ticket`, queued, after cancelling its user's queued ticket if it has one.
///
/// Locks the user's row first (`FOR NO KEY UPDATE`, which foreign-key checks on the user do not
/// wait for), so concurrent enqueues of one user take turns: the later one finds and cancels the
/// earlier one's ticket instead of colliding with it at the one-queued-ticket index. Cancelling a
/// ticket that a round holds waits for the round; should the round match it, it is no longer
/// queued, and nothing is replaced.
pub(super) async fn enqueue(
    conn: &mut PgConnection,
    ticket: NewTicket,
) -> Result<Enqueued, TicketError> {
    let id = id_text(ticket.id);
    let user = id_text(ticket.user_id);
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE")
        .bind(&user)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_error)?
        .ok_or(TicketError::UserNotFound)?;
    // At most one: the `tickets_one_queued_per_user` index.
    let replaced = sqlx::query_scalar::<_, String>(&format!(
        "UPDATE tickets SET status = '{CANCELLED}' \
         WHERE user_id = $1 AND status = '{QUEUED}' RETURNING id"
    ))
    .bind(&user)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_error)?
    .map(|replaced| parse_id(&replaced).map_err(corrupt))
    .transpose()?;

    sqlx::query(&format!(
        "INSERT INTO tickets (id, user_id, pool, status, created_at, expires_at) \
         VALUES ($1, $2, $3, '{QUEUED}', $4, $5)"
    ))
    .bind(&id)
    .bind(&user)
    .bind(&ticket.pool)
    .bind(ticket.created_at)
    .bind(ticket.expires_at)
    .execute(&mut *conn)
    .await
    .map_err(map_error)?;
    insert_attributes(conn, &id, &ticket.numeric, &ticket.strings).await?;

    Ok(Enqueued {
        ticket: Ticket {
            id: ticket.id,
            user_id: ticket.user_id,
            pool: ticket.pool,
            numeric: ticket.numeric,
            strings: ticket.strings,
            status: TicketStatus::Queued,
            created_at: ticket.created_at,
            expires_at: ticket.expires_at,
            matched: None,
        },
        replaced,
    })
}

async fn insert_attributes(
    conn: &mut PgConnection,
    ticket_id: &str,
    numeric: &BTreeMap<String, f64>,
    strings: &BTreeMap<String, String>,
) -> Result<(), StoreError> {
    for (name, value) in numeric {
        sqlx::query(
            "INSERT INTO ticket_numeric_attributes (ticket_id, name, value) VALUES ($1, $2, $3)",
        )
        .bind(ticket_id)
        .bind(name)
        .bind(value)
        .execute(&mut *conn)
        .await
        .map_err(map_error)?;
    }
    for (name, value) in strings {
        sqlx::query(
            "INSERT INTO ticket_string_attributes (ticket_id, name, value) VALUES ($1, $2, $3)",
        )
        .bind(ticket_id)
        .bind(name)
        .bind(value)
        .execute(&mut *conn)
        .await
        .map_err(map_error)?;
    }
    Ok(())
}

/// Cancels `user`'s ticket `ticket_id`: a queued ticket becomes cancelled, or expired when it is
/// past its expiry at `now`; a cancelled or expired one stays as it is.
///
/// The ticket's row is locked (`FOR UPDATE`) before the decision: a round holding it is waited
/// for, and the ticket is then seen as that round left it (matched, or still queued).
pub(super) async fn cancel(
    conn: &mut PgConnection,
    ticket_id: Uuid,
    user: Uuid,
    now: UnixMillis,
) -> Result<Ticket, TicketError> {
    let id = id_text(ticket_id);
    let mut row = reads::ticket_row(conn, &id, Lock::ForUpdate)
        .await?
        .ok_or(TicketError::NotFound)?;
    if row.user_id != id_text(user) {
        return Err(TicketError::NotYours);
    }
    let next = match codec::parse_status(&row.status).map_err(corrupt)? {
        TicketStatus::Matched => return Err(TicketError::AlreadyMatched),
        TicketStatus::Cancelled | TicketStatus::Expired => None,
        TicketStatus::Queued if row.expires_at <= now => Some(TicketStatus::Expired),
        TicketStatus::Queued => Some(TicketStatus::Cancelled),
    };
    if let Some(next) = next {
        let next = codec::status_text(next);
        sqlx::query("UPDATE tickets SET status = $1 WHERE id = $2")
            .bind(next)
            .bind(&id)
            .execute(&mut *conn)
            .await
            .map_err(map_error)?;
        next.clone_into(&mut row.status);
    }
    let mut tickets = reads::whole_tickets(conn, vec![row]).await?;
    Ok(tickets
        .pop()
        .ok_or_else(|| corrupt("a ticket vanished within its transaction"))?)
}

/// Marks the queued tickets past their expiry at `now` as expired; them, oldest first.
///
/// Skips tickets another transaction holds (`FOR UPDATE SKIP LOCKED`): a round, which takes only
/// tickets unexpired at its own time and leaves the others queued, or a cancel, which expires an
/// overdue ticket itself. So expiring never waits behind a round, and two replicas expiring at
/// once never deadlock; a ticket skipped now is expired by the next call.
pub(super) async fn expire(
    conn: &mut PgConnection,
    now: UnixMillis,
) -> Result<Vec<Ticket>, StoreError> {
    let mut rows = sqlx::query_as::<_, TicketRow>(&format!(
        "UPDATE tickets SET status = '{EXPIRED}' \
         WHERE id IN (SELECT id FROM tickets WHERE status = '{QUEUED}' AND expires_at <= $1 \
                      FOR UPDATE SKIP LOCKED) \
         RETURNING {TICKET_COLUMNS}"
    ))
    .bind(now)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_error)?;
    rows.sort_unstable_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    reads::whole_tickets(conn, rows).await
}
