//! The RPC telemetry layer: for every gRPC call, a server span that continues the caller's
//! trace, and the `rpc.server.duration` histogram.
//!
//! The caller's trace context comes as W3C trace context (`traceparent`, `tracestate`) in the
//! request's metadata, as the Rally client SDK sends it; the call's span is made a child of it.
//! Span and metric follow the OpenTelemetry semantic conventions for RPC: span name
//! `package.Service/Method`, kind server, attributes `rpc.system` (`grpc`), `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code`, `network.peer.address`; status ERROR for the codes a
//! server is to blame for (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
//! DATA_LOSS). The histogram (milliseconds) has `rpc.system`, `rpc.service`, `rpc.method` and
//! `rpc.grpc.status_code`.
//!
//! A call ends with its status: in the response headers (a trailers-only answer, such as a
//! refusal by the authentication layer), else in the trailers after the last message; a
//! response dropped before either (the client went away) counts as CANCELLED. For a streaming
//! method the span and the duration cover the whole stream.
//!
//! Method names come from the request path, which anyone can send: only paths of the methods in
//! the descriptor sets given to [`RpcTelemetryLayer::new`] are named; every other path is
//! `_OTHER`, so that the metric's attributes stay few. Health checks get no span (probes call
//! them every few seconds), only the metric.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use opentelemetry::KeyValue;
use opentelemetry::metrics::Histogram;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use pin_project_lite::pin_project;
use prost::Message as _;
use tower::{Layer, Service};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The instrumentation scope of the histogram.
const METER_NAME: &str = "rallyd";
/// What stands for a method not in the descriptor sets.
const OTHER: &str = "_OTHER";
/// Services whose calls get no span.
const UNTRACED_SERVICES: &[&str] = &["grpc.health.v1.Health"];

/// gRPC status codes used here.
const CANCELLED: i32 = 1;
const UNKNOWN: i32 = 2;

/// The tower layer; see the module docs.
#[derive(Clone)]
pub struct RpcTelemetryLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RpcTelemetryLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcTelemetryLayer")
            .field("methods", &self.shared.methods.len())
            .finish_non_exhaustive()
    }
}

struct Shared {
    /// Known methods by request path (`/package.Service/Method`).
    methods: HashMap<String, Method>,
    unknown: Method,
    duration: Histogram<f64>,
    propagator: TraceContextPropagator,
}

/// A method's names, ready for the span and the metric.
#[derive(Clone)]
struct Method {
    /// `package.Service/Method`: the span name.
    name: Arc<str>,
    /// `rpc.system`, `rpc.service`, `rpc.method`.
    attributes: [KeyValue; 3],
    traced: bool,
}

impl Method {
    fn new(service: &str, method: &str) -> Self {
        Self {
            name: format!("{service}/{method}").into(),
            attributes: [
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", Arc::<str>::from(service)),
                KeyValue::new("rpc.method", Arc::<str>::from(method)),
            ],
            traced: !UNTRACED_SERVICES.contains(&service),
        }
    }
}

impl RpcTelemetryLayer {
    /// A layer that names the methods of `descriptor_sets` (encoded `FileDescriptorSet`s, as
    /// the generated code exports them). Its histogram comes from the global meter: build the
    /// layer after the meter provider is installed.
    pub fn new(descriptor_sets: &[&[u8]]) -> Self {
        let duration = opentelemetry::global::meter(METER_NAME)
            .f64_histogram("rpc.server.duration")
            .with_unit("ms")
            .with_description("How long gRPC calls took on the server, by method and status")
            .build();
        Self {
            shared: Arc::new(Shared {
                methods: known_methods(descriptor_sets),
                unknown: Method::new(OTHER, OTHER),
                duration,
                propagator: TraceContextPropagator::new(),
            }),
        }
    }
}

/// Every method of `descriptor_sets`, by request path.
fn known_methods(descriptor_sets: &[&[u8]]) -> HashMap<String, Method> {
    let mut methods = HashMap::new();
    for encoded in descriptor_sets {
        let set = match prost_types::FileDescriptorSet::decode(*encoded) {
            Ok(set) => set,
            Err(error) => {
                tracing::warn!(%error, "a descriptor set does not decode; its methods count as _OTHER");
                continue;
            }
        };
        for file in &set.file {
            for service in &file.service {
                let service_name = match file.package() {
                    "" => service.name().to_owned(),
                    package => format!("{package}.{}", service.name()),
                };
                for method in &service.method {
                    methods.insert(
                        format!("/{service_name}/{}", method.name()),
                        Method::new(&service_name, method.name()),
                    );
                }
            }
        }
    }
    methods
}

impl<S> Layer<S> for RpcTelemetryLayer {
    type Service = RpcTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTelemetry {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`RpcTelemetryLayer`] makes.
#[derive(Clone)]
pub struct RpcTelemetry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for RpcTelemetry<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcTelemetry")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RpcTelemetry<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<TracedBody<ResBody>>;
    type Error = S::Error;
    type Future = TracedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = Call::start(self.shared.clone(), &request);
        let inner = call.span.in_scope(|| self.inner.call(request));
        TracedFuture {
            inner,
            call: Some(call),
        }
    }
}

/// One call being measured. Dropped before its status was seen, it counts as CANCELLED.
struct Call {
    shared: Arc<Shared>,
    method: Method,
    started: Instant,
    span: Span,
    /// The status from the response headers (a trailers-only answer).
    status: Option<i32>,
    finished: bool,
}

impl Call {
    fn start<B>(shared: Arc<Shared>, request: &http::Request<B>) -> Self {
        let method = shared
            .methods
            .get(request.uri().path())
            .unwrap_or(&shared.unknown)
            .clone();
        let span = match method.traced {
            true => server_span(&shared, &method, request),
            false => Span::none(),
        };
        Self {
            shared,
            method,
            started: Instant::now(),
            span,
            status: None,
            finished: false,
        }
    }

    /// Records the call's end with gRPC status `code` (once).
    fn finish(&mut self, code: i32) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let millis = self.started.elapsed().as_secs_f64() * 1e3;
        self.span.record("rpc.grpc.status_code", i64::from(code));
        if is_server_error(code) {
            self.span.record("otel.status_code", "ERROR");
        }
        let [system, service, method] = self.method.attributes.clone();
        self.shared.duration.record(
            millis,
            &[
                system,
                service,
                method,
                KeyValue::new("rpc.grpc.status_code", i64::from(code)),
            ],
        );
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(self.status.unwrap_or(CANCELLED));
    }
}

/// The call's span: a child of the caller's context when the request carries one.
fn server_span<B>(shared: &Shared, method: &Method, request: &http::Request<B>) -> Span {
    let span = tracing::info_span!(
        target: "rallyd::rpc",
        "rpc",
        otel.name = &*method.name,
        otel.kind = "server",
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let parent = shared
        .propagator
        .extract(&HeaderExtractor(request.headers()));
    // Without an OpenTelemetry layer (no exporter) there is nothing to link: the span is for
    // the logs only.
    let _ = span.set_parent(parent);
    for attribute in &method.attributes {
        span.set_attribute(attribute.key.clone(), attribute.value.clone());
    }
    if let Some(peer) = request
        .extensions()
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|info| info.remote_addr())
    {
        span.set_attribute("network.peer.address", peer.ip().to_string());
    }
    span
}

/// Whether a server span with gRPC status `code` is an error (the semantic conventions' list).
fn is_server_error(code: i32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// The `grpc-status` of `headers`, when there is one; an unreadable one is UNKNOWN.
fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    let value = headers.get("grpc-status")?;
    Some(
        value
            .to_str()
            .ok()
            .and_then(|text| text.parse::<i32>().ok())
            .filter(|code| (0..=16).contains(code))
            .unwrap_or(UNKNOWN),
    )
}

/// Reads trace context from HTTP/2 headers (gRPC metadata).
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

pin_project! {
    /// The response future of [`RpcTelemetry`]: polls the call inside its span.
    pub struct TracedFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, ResBody, E> Future for TracedFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<TracedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.call.as_ref().map(|call| call.span.enter());
            ready!(this.inner.poll(cx))
        };
        let mut call = this.call.take();
        Poll::Ready(match result {
            Ok(response) => {
                if let (Some(call), Some(code)) = (call.as_mut(), grpc_status(response.headers())) {
                    call.status = Some(code);
                }
                Ok(response.map(|inner| TracedBody { inner, call }))
            }
            Err(error) => {
                if let Some(call) = call.as_mut() {
                    call.finish(UNKNOWN);
                }
                Err(error)
            }
        })
    }
}

pin_project! {
    /// The response body of [`RpcTelemetry`]: passes every frame on, reads the status in the
    /// trailers and ends the call there (or at the end of a trailers-only answer).
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: Body> Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = {
            let _entered = this.call.as_ref().map(|call| call.span.enter());
            this.inner.poll_frame(cx)
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status)
                    && let Some(mut call) = this.call.take()
                {
                    call.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut call) = this.call.take() {
                    call.finish(UNKNOWN);
                }
            }
            Poll::Ready(None) => {
                if let Some(mut call) = this.call.take() {
                    // A trailers-only answer had its status in the headers; no status at all
                    // is a broken answer.
                    let code = call.status.unwrap_or(UNKNOWN);
                    call.finish(code);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_methods_of_the_descriptor_sets_are_named() {
        let methods = known_methods(&[
            rally_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ]);
        let create = methods
            .get("/rally.rooms.v1.Rooms/CreateRoom")
            .expect("a known method");
        assert_eq!(&*create.name, "rally.rooms.v1.Rooms/CreateRoom");
        assert_eq!(
            create.attributes[1],
            KeyValue::new("rpc.service", "rally.rooms.v1.Rooms")
        );
        assert_eq!(
            create.attributes[2],
            KeyValue::new("rpc.method", "CreateRoom")
        );
        assert!(create.traced);
        assert!(methods.contains_key("/rally.broker.v1.Broker/Attach"));
        assert!(methods.contains_key("/rally.identity.v1.Identity/DeviceLogin"));
        let health = methods.get("/grpc.health.v1.Health/Check").expect("health");
        assert!(!health.traced, "health checks get no span");
        assert!(!methods.contains_key("/rally.rooms.v1.Rooms/Junk"));
        assert!(!methods.contains_key("rally.rooms.v1.Rooms/CreateRoom"));
    }

    #[test]
    fn statuses_are_read_from_headers_and_bounded() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("16"));
        assert_eq!(grpc_status(&headers), Some(16));
        headers.insert("grpc-status", http::HeaderValue::from_static("99"));
        assert_eq!(grpc_status(&headers), Some(UNKNOWN));
        headers.insert("grpc-status", http::HeaderValue::from_static("x"));
        assert_eq!(grpc_status(&headers), Some(UNKNOWN));
    }

    #[test]
    fn only_server_faults_mark_a_span_as_an_error() {
        let errors: Vec<i32> = (0..=16).filter(|code| is_server_error(*code)).collect();
        assert_eq!(errors, vec![2, 4, 12, 13, 14, 15]);
    }
}
