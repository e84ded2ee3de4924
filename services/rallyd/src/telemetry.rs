//! Logging and OpenTelemetry set-up: the one place where exporters are built.
//!
//! Logs: `tracing` lines, text or JSON, filtered by `RALLY_LOG` (or `RUST_LOG`), default `info`.
//!
//! OpenTelemetry: when the standard `OTEL_*` environment names an OTLP endpoint
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, or per signal `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` and
//! `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`), spans go out over OTLP/gRPC through a
//! `tracing-opentelemetry` layer (the spans at `INFO` and above, whatever `RALLY_LOG` says), and
//! metrics through the global meter provider that every crate's instruments use. The exporter
//! reads the rest of the `OTEL_EXPORTER_OTLP_*` variables itself (headers, timeout,
//! compression), the SDK reads `OTEL_BSP_*` and `OTEL_METRIC_EXPORT_*`, and the resource takes
//! `OTEL_SERVICE_NAME` (default `rallyd`) and `OTEL_RESOURCE_ATTRIBUTES`. With no endpoint, or
//! `OTEL_SDK_DISABLED=true`, no exporter is built: nothing leaves the process and the instruments
//! are no-ops. `docs/observability.md` lists the variables and the metrics.
//!
//! Not here: the per-call server spans and `rpc.server.duration` ([`crate::rpc_telemetry`]), and
//! the services' own instruments (in their crates, on the `opentelemetry` API only).

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::resource::{
    EnvResourceDetector, ResourceDetector, TelemetryResourceDetector,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::{LogFormat, RallydError};

/// The service name when `OTEL_SERVICE_NAME` does not give one.
pub const DEFAULT_SERVICE_NAME: &str = "rallyd";
/// The instrumentation scope of `rallyd`'s spans.
const TRACER_NAME: &str = "rallyd";
/// Spans at this level and above are exported (the RPC spans are `INFO`).
const EXPORTED_SPANS: LevelFilter = LevelFilter::INFO;
/// The metric export interval when `OTEL_METRIC_EXPORT_INTERVAL` does not say (the SDK's).
const DEFAULT_METRIC_INTERVAL: Duration = Duration::from_secs(60);

/// The metric export interval, once metrics are exported (set by [`init`]).
static METRIC_INTERVAL: OnceLock<Duration> = OnceLock::new();

/// What the `OTEL_*` environment asks to export: the endpoint of each signal, `None` when that
/// signal is not exported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportPlan {
    /// Where spans go.
    pub traces: Option<String>,
    /// Where metrics go.
    pub metrics: Option<String>,
}

impl ExportPlan {
    /// The plan of this process's environment.
    pub fn from_env() -> Result<Self, RallydError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The plan that the variables `var` returns describe. A signal is exported when its
    /// endpoint is set (its own `OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT`, else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`), unless `OTEL_SDK_DISABLED=true` or
    /// `OTEL_<SIGNAL>_EXPORTER=none`. Refused: another exporter than `otlp`, another protocol
    /// than `grpc`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, RallydError> {
        let set = |name: &str| {
            var(name)
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
        };
        if set("OTEL_SDK_DISABLED").is_some_and(|value| value.eq_ignore_ascii_case("true")) {
            return Ok(Self::default());
        }
        Ok(Self {
            traces: signal_endpoint(&set, "TRACES")?,
            metrics: signal_endpoint(&set, "METRICS")?,
        })
    }

    /// Whether nothing is exported.
    pub fn is_off(&self) -> bool {
        self.traces.is_none() && self.metrics.is_none()
    }
}

/// The endpoint of `signal` (`TRACES`, `METRICS`) if it is exported.
fn signal_endpoint(
    set: &impl Fn(&str) -> Option<String>,
    signal: &str,
) -> Result<Option<String>, RallydError> {
    let exporter_var = format!("OTEL_{signal}_EXPORTER");
    if let Some(exporters) = set(&exporter_var) {
        let mut names = exporters.split(',').map(str::trim);
        if names.clone().any(|name| name.eq_ignore_ascii_case("none")) {
            return Ok(None);
        }
        if let Some(other) = names.find(|name| !name.eq_ignore_ascii_case("otlp")) {
            return Err(RallydError::Config(format!(
                "{exporter_var}={other} is not supported: rallyd exports with otlp (or none)"
            )));
        }
    }
    let Some(endpoint) = set(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))
        .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
    else {
        return Ok(None);
    };
    let protocol_var = format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL");
    let protocol = set(&protocol_var).or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"));
    if let Some(protocol) = protocol.filter(|protocol| protocol != "grpc") {
        return Err(RallydError::Config(format!(
            "OTLP protocol {protocol} ({protocol_var} or OTEL_EXPORTER_OTLP_PROTOCOL) is not \
             supported: rallyd exports OTLP over gRPC (grpc)"
        )));
    }
    Ok(Some(endpoint))
}

/// The installed exporters. [`Telemetry::shutdown`] exports what is still buffered.
#[derive(Debug, Default)]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exports_traces(&self) -> bool {
        self.tracer_provider.is_some()
    }

    /// Whether metrics are exported.
    pub fn exports_metrics(&self) -> bool {
        self.meter_provider.is_some()
    }

    /// Exports the spans and metrics not sent yet, then stops the exporters. Blocks until done
    /// (at most the export timeouts): call it from a blocking thread of the runtime the exporters
    /// were built in (`tokio::task::spawn_blocking`), whose other threads drive the gRPC calls.
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "exporting the last spans failed");
        }
        if let Some(provider) = self.meter_provider
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "exporting the last metrics failed");
        }
    }
}

/// The metric export interval, when metrics are exported: background work that only feeds
/// metrics (the room census) runs this often, and not at all when this is `None`.
pub fn metric_export_interval() -> Option<Duration> {
    METRIC_INTERVAL.get().copied()
}

/// Installs the global subscriber and, as the environment asks, the OpenTelemetry exporters
/// (see the module docs). Call once, from the binary, inside its Tokio runtime (the gRPC
/// exporters need it), before building the services (their instruments come from the meter
/// provider installed here). Tests leave logging alone.
///
/// Fails when the `OTEL_*` variables ask for something `rallyd` cannot do (another protocol
/// than gRPC, another exporter than OTLP) or the exporter cannot be built.
pub fn init(format: LogFormat) -> Result<Telemetry, RallydError> {
    let plan = ExportPlan::from_env()?;
    let resource = (!plan.is_off()).then(resource);
    let tracer_provider = match (&plan.traces, &resource) {
        (Some(_), Some(resource)) => Some(tracer_provider(resource.clone())?),
        _ => None,
    };
    let meter_provider = match (&plan.metrics, &resource) {
        (Some(_), Some(resource)) => Some(meter_provider(resource.clone())?),
        _ => None,
    };

    let log_filter = EnvFilter::try_from_env("RALLY_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let log_layer = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_target(true)
            .with_ansi(std::io::stdout().is_terminal())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .boxed(),
    };
    let span_layer = tracer_provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(TRACER_NAME))
            .with_filter(EXPORTED_SPANS)
    });
    let installed = tracing_subscriber::registry()
        .with(log_layer.with_filter(log_filter))
        .with(span_layer)
        .try_init();
    if let Err(error) = installed {
        eprintln!("rallyd: logging was already set up: {error}");
    }

    if let Some(provider) = &meter_provider {
        opentelemetry::global::set_meter_provider(provider.clone());
        let interval = std::env::var("OTEL_METRIC_EXPORT_INTERVAL")
            .ok()
            .and_then(|millis| millis.trim().parse::<u64>().ok())
            .filter(|millis| *millis > 0)
            .map_or(DEFAULT_METRIC_INTERVAL, Duration::from_millis);
        // A second `init` in one process keeps the first interval; there is one provider anyway.
        let _ = METRIC_INTERVAL.set(interval);
    }
    match plan.is_off() {
        true => tracing::info!(
            "OpenTelemetry export off (no OTEL_EXPORTER_OTLP_ENDPOINT, or OTEL_SDK_DISABLED)"
        ),
        false => tracing::info!(
            traces = plan.traces.as_deref().map(crate::config::redact_url),
            metrics = plan.metrics.as_deref().map(crate::config::redact_url),
            "OpenTelemetry export over OTLP/gRPC"
        ),
    }
    Ok(Telemetry {
        tracer_provider,
        meter_provider,
    })
}

fn tracer_provider(resource: Resource) -> Result<SdkTracerProvider, RallydError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| RallydError::Config(format!("building the OTLP span exporter: {e}")))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

fn meter_provider(resource: Resource) -> Result<SdkMeterProvider, RallydError> {
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| RallydError::Config(format!("building the OTLP metric exporter: {e}")))?;
    Ok(SdkMeterProvider::builder()
        .with_periodic_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The resource: `service.name` (`OTEL_SERVICE_NAME`, else `rallyd`), `service.version`, a
/// `service.instance.id` per process (so that the replicas' series stay apart) and the SDK's own
/// attributes; `OTEL_RESOURCE_ATTRIBUTES` overrides these, and `OTEL_SERVICE_NAME` the name.
fn resource() -> Resource {
    let detectors: [Box<dyn ResourceDetector>; 2] = [
        Box::new(TelemetryResourceDetector),
        Box::new(EnvResourceDetector::new()),
    ];
    let builder = Resource::builder_empty()
        .with_service_name(DEFAULT_SERVICE_NAME)
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", uuid::Uuid::new_v4().to_string()),
        ])
        .with_detectors(&detectors);
    let builder = match std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.trim().is_empty())
    {
        Some(name) => builder.with_service_name(name),
        None => builder,
    };
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(vars: &[(&str, &str)]) -> Result<ExportPlan, RallydError> {
        ExportPlan::from_vars(|name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        })
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        let off = plan(&[
            ("OTEL_SERVICE_NAME", "x"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", " "),
        ])
        .expect("valid");
        assert!(off.is_off(), "{off:?}");
    }

    #[test]
    fn the_common_endpoint_serves_both_signals_and_a_signal_endpoint_wins() {
        let both =
            plan(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]).expect("valid");
        assert_eq!(both.traces.as_deref(), Some("http://collector:4317"));
        assert_eq!(both.metrics.as_deref(), Some("http://collector:4317"));
        let split = plan(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://metrics:4317"),
        ])
        .expect("valid");
        assert_eq!(split.traces.as_deref(), Some("http://collector:4317"));
        assert_eq!(split.metrics.as_deref(), Some("http://metrics:4317"));
        let traces_only =
            plan(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4317")]).expect("valid");
        assert_eq!(traces_only.metrics, None);
    }

    #[test]
    fn the_sdk_can_be_disabled_whole_or_per_signal() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        assert!(
            plan(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")])
                .expect("valid")
                .is_off()
        );
        let no_traces = plan(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]).expect("valid");
        assert_eq!(no_traces.traces, None);
        assert!(no_traces.metrics.is_some());
        let otlp = plan(&[endpoint, ("OTEL_METRICS_EXPORTER", "otlp")]).expect("valid");
        assert!(otlp.metrics.is_some());
        assert!(
            !plan(&[endpoint, ("OTEL_SDK_DISABLED", "false")])
                .expect("valid")
                .is_off()
        );
    }

    #[test]
    fn other_exporters_and_protocols_are_refused() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        let err = plan(&[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")])
            .expect_err("zipkin")
            .to_string();
        assert!(err.contains("OTEL_TRACES_EXPORTER=zipkin"), "{err}");
        let err = plan(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")])
            .expect_err("http")
            .to_string();
        assert!(err.contains("http/protobuf"), "{err}");
        assert!(
            plan(&[endpoint, ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc")]).is_ok(),
            "grpc is what rallyd speaks"
        );
        assert!(
            plan(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])
                .expect("no endpoint, nothing to refuse")
                .is_off()
        );
    }
}
