//! The one place where ticket statuses become stored words, and back. The words are the Postgres
//! backend's too, so a dump moves between the two.

use crate::backend::BoxError;
use crate::matchmaking::TicketStatus;

/// The stored word for [`TicketStatus::Queued`], which queries name literally so that they match
/// the schema's partial indexes (`WHERE status = 'queued'`).
pub const QUEUED: &str = "queued";
/// The stored word for [`TicketStatus::Matched`].
pub const MATCHED: &str = "matched";
/// The stored word for [`TicketStatus::Cancelled`].
pub const CANCELLED: &str = "cancelled";
/// The stored word for [`TicketStatus::Expired`].
pub const EXPIRED: &str = "expired";

/// The stored word of a ticket status.
pub fn status_text(status: TicketStatus) -> &'static str {
    match status {
        TicketStatus::Queued => QUEUED,
        TicketStatus::Matched => MATCHED,
        TicketStatus::Cancelled => CANCELLED,
        TicketStatus::Expired => EXPIRED,
    }
}

/// Parses a stored ticket status.
pub fn parse_status(text: &str) -> Result<TicketStatus, BoxError> {
    match text {
        QUEUED => Ok(TicketStatus::Queued),
        MATCHED => Ok(TicketStatus::Matched),
        CANCELLED => Ok(TicketStatus::Cancelled),
        EXPIRED => Ok(TicketStatus::Expired),
        other => Err(format!("unknown ticket status {other:?}").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_as_the_schemas_words() {
        let all = [
            (TicketStatus::Queued, "queued"),
            (TicketStatus::Matched, "matched"),
            (TicketStatus::Cancelled, "cancelled"),
            (TicketStatus::Expired, "expired"),
        ];
        for (status, word) in all {
            assert_eq!(status_text(status), word);
            assert_eq!(parse_status(word).expect("parses"), status);
        }
        assert!(parse_status("Queued").is_err());
        assert!(parse_status("lost").is_err());
    }
}
