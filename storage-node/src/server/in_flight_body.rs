//! A response body that keeps its connection marked busy until it is dropped, so
//! a long download is never taken for an idle connection.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::ResponseBody;
use super::connections::InFlight;

/// [`ResponseBody`] with the [`InFlight`] guard of its request.
pub struct InFlightBody {
    inner: ResponseBody,
    _in_flight: InFlight,
}

impl InFlightBody {
    /// Wraps `inner`; the request counts as in flight until the body is dropped.
    pub fn new(inner: ResponseBody, in_flight: InFlight) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl Body for InFlightBody {
    type Data = Bytes;
    type Error = s3s::StdError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
