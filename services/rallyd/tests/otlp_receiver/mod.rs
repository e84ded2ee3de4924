//! An OTLP/gRPC receiver for tests: the collector's TraceService and MetricsService on
//! `127.0.0.1:0`, keeping every request it receives, with views of the spans and metric points
//! and a wait that wakes on each export (bounded by a deadline).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as NumberValue;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

/// Everything received so far, in arrival order.
#[derive(Default)]
pub struct Received {
    pub traces: Vec<ExportTraceServiceRequest>,
    pub metrics: Vec<ExportMetricsServiceRequest>,
}

/// A span with the service name of its resource.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub span: Span,
}

impl ReceivedSpan {
    /// An attribute's value as text.
    pub fn attribute(&self, key: &str) -> Option<String> {
        attribute(&self.span.attributes, key)
    }
}

/// One data point of a metric: its attributes and its value (a sum's or gauge's value, a
/// histogram's count), with the histogram's sum.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub attributes: BTreeMap<String, String>,
    pub value: f64,
    pub sum: Option<f64>,
}

impl Received {
    /// Every span, from every export.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let mut spans = Vec::new();
        for request in &self.traces {
            for resource_spans in &request.resource_spans {
                let service = service_name(resource_spans.resource.as_ref());
                for scope in &resource_spans.scope_spans {
                    for span in &scope.spans {
                        spans.push(ReceivedSpan {
                            service: service.clone(),
                            span: span.clone(),
                        });
                    }
                }
            }
        }
        spans
    }

    /// The points of metric `name` of `service` in the latest export that has it (values are
    /// cumulative, so the latest says everything).
    pub fn points(&self, service: &str, name: &str) -> Option<Vec<Point>> {
        for request in self.metrics.iter().rev() {
            for resource_metrics in &request.resource_metrics {
                if service_name(resource_metrics.resource.as_ref()) != service {
                    continue;
                }
                for scope in &resource_metrics.scope_metrics {
                    if let Some(metric) = scope.metrics.iter().find(|m| m.name == name) {
                        return Some(points(metric.data.as_ref()));
                    }
                }
            }
        }
        None
    }

    /// Every metric name of `service` received, with its unit.
    pub fn metric_names(&self, service: &str) -> BTreeMap<String, String> {
        let mut names = BTreeMap::new();
        for request in &self.metrics {
            for resource_metrics in &request.resource_metrics {
                if service_name(resource_metrics.resource.as_ref()) != service {
                    continue;
                }
                for scope in &resource_metrics.scope_metrics {
                    for metric in &scope.metrics {
                        names.insert(metric.name.clone(), metric.unit.clone());
                    }
                }
            }
        }
        names
    }

    /// A resource attribute of `service`'s metrics.
    pub fn resource_attribute(&self, service: &str, key: &str) -> Option<String> {
        self.metrics
            .iter()
            .flat_map(|request| &request.resource_metrics)
            .filter_map(|resource_metrics| resource_metrics.resource.as_ref())
            .filter(|resource| service_name(Some(resource)) == service)
            .find_map(|resource| attribute(&resource.attributes, key))
    }
}

fn points(data: Option<&Data>) -> Vec<Point> {
    let number = |attributes: &[KeyValue], value: Option<&NumberValue>| Point {
        attributes: attributes_of(attributes),
        value: match value {
            Some(NumberValue::AsDouble(value)) => *value,
            Some(NumberValue::AsInt(value)) => *value as f64,
            None => f64::NAN,
        },
        sum: None,
    };
    match data {
        Some(Data::Sum(sum)) => sum
            .data_points
            .iter()
            .map(|p| number(&p.attributes, p.value.as_ref()))
            .collect(),
        Some(Data::Gauge(gauge)) => gauge
            .data_points
            .iter()
            .map(|p| number(&p.attributes, p.value.as_ref()))
            .collect(),
        Some(Data::Histogram(histogram)) => histogram
            .data_points
            .iter()
            .map(|p| Point {
                attributes: attributes_of(&p.attributes),
                value: p.count as f64,
                sum: p.sum,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn text(value: Option<&AnyValue>) -> String {
    match value {
        Some(AnyValue::StringValue(text)) => text.clone(),
        Some(AnyValue::IntValue(int)) => int.to_string(),
        Some(AnyValue::BoolValue(flag)) => flag.to_string(),
        Some(AnyValue::DoubleValue(double)) => double.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes_of(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let value = kv.value.as_ref().and_then(|v| v.value.as_ref());
            (kv.key.clone(), text(value))
        })
        .collect()
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
}

fn service_name(resource: Option<&Resource>) -> String {
    resource
        .and_then(|resource| attribute(&resource.attributes, "service.name"))
        .unwrap_or_default()
}

#[derive(Clone)]
struct Collector {
    received: Arc<Mutex<Received>>,
    arrivals: Arc<watch::Sender<u64>>,
}

impl Collector {
    fn keep(&self, store: impl FnOnce(&mut Received)) {
        store(&mut self.received.lock().unwrap_or_else(PoisonError::into_inner));
        self.arrivals.send_modify(|count| *count += 1);
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        self.keep(|received| received.traces.push(request));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        self.keep(|received| received.metrics.push(request));
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// The running receiver; it stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    collector: Collector,
    arrivals: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let (arrivals_tx, arrivals) = watch::channel(0);
        let collector = Collector {
            received: Arc::default(),
            arrivals: Arc::new(arrivals_tx),
        };
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .add_service(MetricsServiceServer::new(collector.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener));
        let task = tokio::spawn(async move {
            if let Err(error) = server.await {
                eprintln!("the OTLP receiver stopped: {error}");
            }
        });
        Self {
            addr,
            collector,
            arrivals,
            task,
        }
    }

    /// The endpoint to export to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Reads what was received.
    pub fn with<T>(&self, read: impl FnOnce(&Received) -> T) -> T {
        read(
            &self
                .collector
                .received
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Waits until `found` finds something in what was received, checking after every export;
    /// panics naming `what` when `within` passes first.
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        within: Duration,
        mut found: impl FnMut(&Received) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            self.arrivals.borrow_and_update();
            if let Some(value) = self.with(&mut found) {
                return value;
            }
            match tokio::time::timeout_at(deadline, self.arrivals.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => panic!("the receiver stopped while waiting for {what}"),
                Err(_) => panic!("{what}: not received within {within:?}"),
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
