//! Every request to an S3 server carries the caller's W3C `traceparent` while traces
//! are exported, so a Haven storage node's request spans join the worker's job trace.
//!
//! `object_store` has no per-request header option, but it takes the HTTP client as
//! a connector: this one is its own reqwest client (built from the same options)
//! behind a service that adds the header. The call runs in the caller's task, so the
//! current span is the one that asked for the object. The header is not signed
//! (SigV4 covers only the headers it lists), and a server that does not trace ignores it.

use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};

/// Builds `object_store`'s reqwest client wrapped in [`TraceContextService`].
#[derive(Debug, Default)]
pub(crate) struct TraceContextConnector;

impl HttpConnector for TraceContextConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(TraceContextService(inner)))
    }
}

/// Adds `traceparent` to each request, then sends it with the inner client.
#[derive(Debug)]
struct TraceContextService(HttpClient);

#[async_trait::async_trait]
impl HttpService for TraceContextService {
    async fn call(&self, mut request: HttpRequest) -> Result<HttpResponse, HttpError> {
        haven_telemetry::inject_current(request.headers_mut());
        self.0.execute(request).await
    }
}
