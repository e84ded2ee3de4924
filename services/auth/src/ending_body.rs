//! A response body that can be ended early with a gRPC status.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame};
use pin_project_lite::pin_project;

pin_project! {
    /// A response body that, when its `end` future resolves first, ends the call with that
    /// status in trailers (dropping the rest of the inner body, and with it the service's side
    /// of a stream); without one, or until then, the inner body passes through unchanged.
    pub struct EndingBody<B, E> {
        #[pin]
        inner: B,
        end: Option<E>,
        finished: bool,
    }
}

impl<B, E> EndingBody<B, E> {
    /// `inner`, ended early by `end` when it resolves first.
    pub fn new(inner: B, end: Option<E>) -> Self {
        Self {
            inner,
            end,
            finished: false,
        }
    }
}

impl<B: Default, E> Default for EndingBody<B, E> {
    fn default() -> Self {
        Self::new(B::default(), None)
    }
}

impl<B, E> Body for EndingBody<B, E>
where
    B: Body,
    E: Future<Output = tonic::Status> + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.finished {
            return Poll::Ready(None);
        }
        if let Some(end) = this.end.as_mut()
            && let Poll::Ready(status) = Pin::new(end).poll(cx)
        {
            *this.end = None;
            *this.finished = true;
            let mut trailers = http::HeaderMap::new();
            if status.add_header(&mut trailers).is_err() {
                // Our own fixed messages always encode; keep the code if one did not.
                let code = http::HeaderValue::from(status.code() as i32);
                trailers.insert("grpc-status", code);
            }
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        this.inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.end {
            Some(_) => http_body::SizeHint::default(),
            None => self.inner.size_hint(),
        }
    }
}
