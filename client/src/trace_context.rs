//! Trace context propagation: every gRPC call the SDK makes carries the W3C trace context
//! (`traceparent`, `tracestate`) of the current `tracing` span, so that `rallyd`'s server spans
//! join the game's trace.
//!
//! The context is the one `tracing-opentelemetry` keeps for the current span
//! ([`OpenTelemetrySpanExt::context`]). An application whose subscriber has no OpenTelemetry
//! layer (of the same `tracing-opentelemetry` version as the SDK's) has none, and then nothing
//! is added: the SDK needs no exporter and works the same without one. The format is always W3C
//! trace context, the one `rallyd` reads, whatever global propagator the application set.
//!
//! [`Authorized`](crate::Authorized) and [`Bearer`](crate::Bearer) propagate the context too;
//! [`TraceContext`] is for calls without a token.

use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{AsciiMetadataValue, MetadataKey, MetadataMap};
use tonic::service::Interceptor;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Adds the current span's trace context to `metadata` (nothing when there is none).
pub(crate) fn inject(metadata: &mut MetadataMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut MetadataInjector(metadata));
}

/// Writes propagation fields as gRPC metadata; a field that cannot be metadata is left out.
struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            AsciiMetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// A tonic interceptor that adds the current span's W3C trace context to every call, and
/// nothing else.
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_dir, _server, url) = rally_client::doc_server!();
/// use rally_client::proto::identity::v1::{identity_client::IdentityClient, DeviceLoginRequest};
/// let channel = rally_client::connect(&url).await?;
/// let mut identity = IdentityClient::with_interceptor(channel, rally_client::TraceContext);
/// identity
///     .device_login(DeviceLoginRequest {
///         device_id: "doc-trace-context-0123456789".into(),
///         display_name: "Ada".into(),
///     })
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContext;

impl Interceptor for TraceContext {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        inject(request.metadata_mut());
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };

    use super::*;

    #[test]
    fn without_an_opentelemetry_layer_nothing_is_added() {
        let span = tracing::info_span!("no layer");
        let _entered = span.enter();
        let request = TraceContext
            .call(tonic::Request::new(()))
            .expect("never refuses");
        assert!(request.metadata().get("traceparent").is_none());
    }

    #[test]
    fn a_context_is_written_as_a_w3c_traceparent() {
        let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex");
        let span_id = SpanId::from_hex("00f067aa0ba902b7").expect("hex");
        let context = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ));
        let mut metadata = MetadataMap::new();
        TraceContextPropagator::new()
            .inject_context(&context, &mut MetadataInjector(&mut metadata));
        assert_eq!(
            metadata.get("traceparent").and_then(|v| v.to_str().ok()),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
    }
}
