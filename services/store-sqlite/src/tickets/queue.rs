//! Enqueueing, cancelling and expiring tickets, each inside one `BEGIN IMMEDIATE` transaction run
//! by its caller, which holds SQLite's write lock from its first read on.

use std::collections::BTreeMap;

use rally_store::matchmaking::{Enqueued, NewTicket, Ticket, TicketError, TicketStatus};
use rally_store::{StoreError, UnixMillis};
use sqlx::SqliteConnection;
use uuid::Uuid;

use super::codec::{self, CANCELLED, EXPIRED, QUEUED};
use super::reads::{self, TICKET_COLUMNS, TicketRow};
use crate::error_mapping::map_error;
use crate::rooms::{corrupt, id_text, parse_id};

/// Stores `ticket`, queued, after cancelling its user's queued ticket if it has one.
pub(super) async fn enqueue(
    conn: &mut SqliteConnection,
    ticket: NewTicket,
) -> Result<Enqueued, TicketError> {
    let id = id_text(ticket.id);
    let user = id_text(ticket.user_id);
    let user_exists =
        sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM users WHERE id = ?1)")
            .bind(&user)
            .fetch_one(&mut *conn)
            .await
            .map_err(map_error)?;
    if !user_exists {
        return Err(TicketError::UserNotFound);
    }
    // At most one: the `tickets_one_queued_per_user` index.
    let replaced = sqlx::query_scalar::<_, String>(&format!(
        "UPDATE tickets SET status = '{CANCELLED}' \
         WHERE user_id = ?1 AND status = '{QUEUED}' RETURNING id"
    ))
    .bind(&user)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_error)?
    .map(|replaced| parse_id(&replaced).map_err(corrupt))
    .transpose()?;

    sqlx::query(&format!(
        "INSERT INTO tickets (id, user_id, pool, status, created_at, expires_at) \
         VALUES (?1, ?2, ?3, '{QUEUED}', ?4, ?5)"
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
    conn: &mut SqliteConnection,
    ticket_id: &str,
    numeric: &BTreeMap<String, f64>,
    strings: &BTreeMap<String, String>,
) -> Result<(), StoreError> {
    for (name, value) in numeric {
        sqlx::query(
            "INSERT INTO ticket_numeric_attributes (ticket_id, name, value) VALUES (?1, ?2, ?3)",
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
            "INSERT INTO ticket_string_attributes (ticket_id, name, value) VALUES (?1, ?2, ?3)",
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
pub(super) async fn cancel(
    conn: &mut SqliteConnection,
    ticket_id: Uuid,
    user: Uuid,
    now: UnixMillis,
) -> Result<Ticket, TicketError> {
    let id = id_text(ticket_id);
    let mut row = reads::ticket_row(conn, &id)
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
        sqlx::query("UPDATE tickets SET status = ?1 WHERE id = ?2")
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
pub(super) async fn expire(
    conn: &mut SqliteConnection,
    now: UnixMillis,
) -> Result<Vec<Ticket>, StoreError> {
    let mut rows = sqlx::query_as::<_, TicketRow>(&format!(
        "UPDATE tickets SET status = '{EXPIRED}' \
         WHERE status = '{QUEUED}' AND expires_at <= ?1 RETURNING {TICKET_COLUMNS}"
    ))
    .bind(now)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_error)?;
    rows.sort_unstable_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    reads::whole_tickets(conn, rows).await
}
