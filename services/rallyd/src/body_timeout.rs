//! A deadline on request bodies: a call whose request has not fully arrived within the deadline
//! is answered `DEADLINE_EXCEEDED` and its stream freed, so that clients sending headers and
//! never a body, or trickling a message byte by byte, cannot hold streams and memory.
//!
//! Every gRPC request here but one is a single message followed by the end of the stream (unary
//! and server-streaming calls, and reflection, whose tools send their questions at once); the
//! exception is the broker's Attach, a stream for the whole session, which bounds itself (its
//! Hello must come within a timeout, then a message within every three keepalive intervals).
//! Hyper bounds the time to receive headers on its own (HTTP/2 keepalive, and the per-connection
//! stream limits).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use rally_auth::EndingBody;
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};

/// Gives every request body but those of `exempt` paths `deadline` to arrive whole.
#[derive(Debug, Clone)]
pub(crate) struct BodyTimeoutLayer {
    deadline: Duration,
    exempt: Arc<HashSet<&'static str>>,
}

impl BodyTimeoutLayer {
    pub(crate) fn new(deadline: Duration, exempt: &[&'static str]) -> Self {
        Self {
            deadline,
            exempt: Arc::new(exempt.iter().copied().collect()),
        }
    }
}

impl<S> Layer<S> for BodyTimeoutLayer {
    type Service = BodyTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyTimeout {
            inner,
            deadline: self.deadline,
            exempt: self.exempt.clone(),
        }
    }
}

/// The service [`BodyTimeoutLayer`] wraps.
#[derive(Debug, Clone)]
pub(crate) struct BodyTimeout<S> {
    inner: S,
    deadline: Duration,
    exempt: Arc<HashSet<&'static str>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What ends a response whose request had not arrived when the service answered.
type Expiry = Pin<Box<dyn Future<Output = tonic::Status> + Send>>;

impl<S, B, ResBody> Service<http::Request<B>> for BodyTimeout<S>
where
    S: Service<http::Request<Timed<B>>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<EndingBody<ResBody, Expiry>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let arrived = CancellationToken::new();
        let timed = !self.exempt.contains(request.uri().path());
        // For the log line of a late request only: a `Uri` clone shares its bytes.
        let uri = timed.then(|| request.uri().clone());
        let request = request.map(|body| Timed {
            inner: body,
            arrived: Some(arrived.clone()),
        });
        let call = self.inner.call(request);
        if !timed {
            return Box::pin(async move {
                let answer = call.await?;
                Ok(answer.map(|body| EndingBody::new(body, None)))
            });
        }
        let deadline = tokio::time::Instant::now() + self.deadline;
        let late = late_status(self.deadline);
        Box::pin(async move {
            tokio::pin!(call);
            let expired = expiry(arrived.clone(), deadline);
            tokio::select! {
                biased;
                answer = &mut call => {
                    let answer = answer?;
                    // A stream answered before its request arrived whole (reflection answers
                    // each question as it comes) still ends at the deadline.
                    let end = (!arrived.is_cancelled()).then(|| {
                        let expired: Expiry = Box::pin(async move {
                            expiry(arrived, deadline).await;
                            late
                        });
                        expired
                    });
                    Ok(answer.map(|body| EndingBody::new(body, end)))
                }
                () = expired => {
                    let path = uri.as_ref().map(http::Uri::path).unwrap_or_default();
                    tracing::debug!(%path, "request body did not arrive in time");
                    Ok(late.into_http())
                }
            }
        })
    }
}

/// Resolves at `deadline` unless the request arrived before.
async fn expiry(arrived: CancellationToken, deadline: tokio::time::Instant) {
    tokio::select! {
        () = arrived.cancelled() => std::future::pending::<()>().await,
        () = tokio::time::sleep_until(deadline) => {}
    }
}

fn late_status(deadline: Duration) -> tonic::Status {
    tonic::Status::deadline_exceeded(format!(
        "the request did not arrive within {} ms",
        deadline.as_millis()
    ))
}

pin_project! {
    /// A request body that says when it has arrived whole (or failed).
    pub(crate) struct Timed<B> {
        #[pin]
        inner: B,
        arrived: Option<CancellationToken>,
    }
}

impl<B: Body> Body for Timed<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        let done = match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => true,
            Poll::Ready(Some(Ok(frame))) => frame.is_trailers(),
            Poll::Pending => false,
        };
        if done && let Some(arrived) = this.arrived.take() {
            arrived.cancel();
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
