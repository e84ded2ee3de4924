//! The broker's metrics: OpenTelemetry instruments on the global meter (no-ops until a program
//! installs a meter provider; `rallyd` does before it starts the broker).
//!
//! - `rally.broker.attached`: attachments open on this replica (up-down counter).
//! - `rally.broker.signals`: signals received, by `kind` (Ping is not a signal).
//! - `rally.broker.signals.refused`: signals answered with an error, by `kind` and `reason`.
//!
//! Every attribute value comes from a fixed list, never from a client.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, UpDownCounter};
use rally_proto::broker::v1::ErrorCode;
use rally_proto::broker::v1::attach_request::Body as Request;

/// The instrumentation scope of this crate's instruments.
pub const METER_NAME: &str = "rally-broker";

pub(crate) struct BrokerMetrics {
    attached: UpDownCounter<i64>,
    signals: Counter<u64>,
    refused: Counter<u64>,
}

impl BrokerMetrics {
    pub(crate) fn new() -> Self {
        let meter = opentelemetry::global::meter(METER_NAME);
        Self {
            attached: meter
                .i64_up_down_counter("rally.broker.attached")
                .with_unit("{client}")
                .with_description("Clients attached to this replica's broker")
                .build(),
            signals: meter
                .u64_counter("rally.broker.signals")
                .with_unit("{signal}")
                .with_description("Signals received from attached clients, by kind")
                .build(),
            refused: meter
                .u64_counter("rally.broker.signals.refused")
                .with_unit("{signal}")
                .with_description("Signals answered with an error, by kind and reason")
                .build(),
        }
    }

    /// An attachment opened (`+1`) or ended (`-1`).
    pub(crate) fn attached(&self, change: i64) {
        self.attached.add(change, &[]);
    }

    /// A signal of `kind` arrived.
    pub(crate) fn signal(&self, kind: &'static str) {
        self.signals.add(1, &[KeyValue::new("kind", kind)]);
    }

    /// A signal of `kind` was refused with `code`.
    pub(crate) fn refused(&self, kind: &'static str, code: ErrorCode) {
        self.refused.add(
            1,
            &[
                KeyValue::new("kind", kind),
                KeyValue::new("reason", reason(code)),
            ],
        );
    }
}

/// The `kind` attribute of a signal.
pub(crate) fn kind(signal: &Request) -> &'static str {
    match signal {
        Request::Hello(_) => "hello",
        Request::Ping(_) => "ping",
        Request::UpdateCandidates(_) => "update_candidates",
        Request::Connect(_) => "connect",
        Request::Accept(_) => "accept",
        Request::Reject(_) => "reject",
        Request::Close(_) => "close",
        Request::RequestRelayGrant(_) => "request_relay_grant",
        Request::QueryRoomPresence(_) => "query_room_presence",
        Request::Reauthenticate(_) => "reauthenticate",
    }
}

/// The `reason` attribute of a refusal: the error code's name without its prefix, lowercase.
fn reason(code: ErrorCode) -> String {
    let name = code.as_str_name();
    name.strip_prefix("ERROR_CODE_")
        .unwrap_or(name)
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_reasons_are_short_lowercase_code_names() {
        assert_eq!(reason(ErrorCode::RateLimited), "rate_limited");
        assert_eq!(reason(ErrorCode::UserOffline), "user_offline");
    }
}
