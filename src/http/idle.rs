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

/// The stream outlived the route's `max_stream_duration` while its response body was streaming.
#[derive(Debug)]
pub struct StreamDurationReached;

impl std::fmt::Display for StreamDurationReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("downstream duration timeout")
    }
}

impl std::error::Error for StreamDurationReached {}

/// What a [`TimedBody`] times.
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// No progress for this long (each frame starts a new period): `StreamIdleTimeout`.
    Idle(std::time::Duration),
    /// This instant passes, whatever the progress: `StreamDurationReached`.
    Deadline(tokio::time::Instant),
}

pin_project_lite::pin_project! {
    /// A body that fails (resetting the stream) when its limit is hit. The timer is only armed
    /// when the body waits.
    pub struct TimedBody<B> {
        #[pin]
        inner: B,
        limit: Limit,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<B> TimedBody<B> {
    /// `stream_idle_timeout`: reset after `timeout` without progress.
    pub fn idle(inner: B, timeout: Duration) -> Self {
        TimedBody { inner, limit: Limit::Idle(timeout), timer: None }
    }

    /// `max_stream_duration` reached after the response started: reset at `deadline`.
    pub fn deadline(inner: B, deadline: std::time::Instant) -> Self {
        TimedBody { inner, limit: Limit::Deadline(deadline.into()), timer: None }
    }
}

impl<B> Body for TimedBody<B>
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
                if let Limit::Idle(_) = this.limit {
                    // Progress: the next wait starts a fresh idle period.
                    *this.timer = None;
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let limit = *this.limit;
                let timer = this.timer.get_or_insert_with(|| {
                    Box::pin(match limit {
                        Limit::Idle(timeout) => tokio::time::sleep(timeout),
                        Limit::Deadline(at) => tokio::time::sleep_until(at),
                    })
                });
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(match limit {
                        Limit::Idle(_) => Box::new(StreamIdleTimeout) as BoxError,
                        Limit::Deadline(_) => Box::new(StreamDurationReached),
                    }))),
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
