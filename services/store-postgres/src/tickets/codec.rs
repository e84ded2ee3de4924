//! The one place where ticket statuses become stored words, and back. The words are the SQLite
//! backend's too, so a dump moves between the two.

use rally_store::matchmaking::TicketStatus;
use sqlx::error::BoxDynError;

/// The stored word for [`TicketStatus::Queued`], which queries name literally so that they match
/// the schema's partial indexes (`WHERE status = 'queued'`).
pub(super) const QUEUED: &str = "queued";
/// The stored word for [`TicketStatus::Matched`].
pub(super) const MATCHED: &str = "matched";
/// The stored word for [`TicketStatus::Cancelled`].
pub(super) const CANCELLED: &str = "cancelled";
/// The stored word for [`TicketStatus::Expired`].
pub(super) const EXPIRED: &str = "expired";

pub(super) fn status_text(status: TicketStatus) -> &'static str {
    match status {
        TicketStatus::Queued => QUEUED,
        TicketStatus::Matched => MATCHED,
        TicketStatus::Cancelled => CANCELLED,
        TicketStatus::Expired => EXPIRED,
    }
}

pub(super) fn parse_status(text: &str) -> Result<TicketStatus, BoxDynError> {
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
