//! Envoy's body timers: `stream_idle_timeout` (a stream whose body makes no progress for the
//! configured time is reset) and a route's `max_stream_duration` reached while the response body
//! streams (the stream is reset). The timers are only armed when the body actually waits, so a
//! body that is ready at once (most responses) costs no timer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::body::BoxError;

/// The body was idle longer than the stream idle timeout.
#[derive(Debug)]
pub struct StreamIdleTimeout;

impl std::fmt::Display for StreamIdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stream idle timeout")
    }
}

impl std::error::Error for StreamIdleTimeout {}

pin_project_lite::pin_project! {
    pub struct IdleTimeoutBody<B> {
        #[pin]
        inner: B,
        timeout: Duration,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<B> IdleTimeoutBody<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        IdleTimeoutBody { inner, timeout, timer: None }
    }
}

impl<B> Body for IdleTimeoutBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                // Progress: the next wait starts a fresh idle period.
                *this.timer = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = *this.timeout;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(StreamIdleTimeout)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The stream outlived the route's `max_stream_duration` while its response body was streaming.
#[derive(Debug)]
pub struct StreamDurationReached;

impl std::fmt::Display for StreamDurationReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("downstream duration timeout")
    }
}

impl std::error::Error for StreamDurationReached {}

pin_project_lite::pin_project! {
    /// A body that fails (resetting the stream) once `deadline` passes, as Envoy resets a stream
    /// whose max duration is reached after the response started. The timer is only armed when
    /// the body waits.
    pub struct DeadlineBody<B> {
        #[pin]
        inner: B,
        deadline: tokio::time::Instant,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<B> DeadlineBody<B> {
    pub fn new(inner: B, deadline: std::time::Instant) -> Self {
        DeadlineBody { inner, deadline: deadline.into(), timer: None }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let deadline = *this.deadline;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(StreamDurationReached)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
