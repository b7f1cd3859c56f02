//! Body types shared by the router and local replies.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};

pub use crate::upstream::manager::{BoxError, UpstreamBody};

/// Every response body Remora returns downstream.
pub type ResponseBody = UpstreamBody;

pub fn full(data: impl Into<Bytes>) -> ResponseBody {
    Full::new(data.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> ResponseBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Boxes any body whose errors can be boxed.
pub fn boxed<B>(b: B) -> ResponseBody
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed()
}
