//! OTLP/gRPC export of a process's spans, set up once by the `haven` binary.
//!
//! The endpoint comes from `--otlp-endpoint`, else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! else `OTEL_EXPORTER_OTLP_ENDPOINT`; none (or `OTEL_SDK_DISABLED=true`) means no
//! export at all. Spans leave through the SDK's batch processor (a thread of its own
//! that sends every few seconds or when a batch fills; `OTEL_BSP_*` tune it, and
//! `OTEL_TRACES_SAMPLER` samples), so a slow or absent collector never blocks a job:
//! when the queue is full, spans are dropped and the SDK logs it. The rest of the
//! standard variables apply too (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `..._TIMEOUT`, `..._COMPRESSION` is not built in).

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

/// How long shutting down may wait for the last spans to leave: a dead collector must
/// not hold up a daemon's exit (or every one-shot command's) for the export timeout.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Which Haven component a process is: its traces' `service.name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `haven coordinator`.
    Coordinator,
    /// `haven worker`.
    Worker,
    /// `haven storage-node`.
    StorageNode,
    /// Every other command, `haven dev` (coordinator and worker in one process) too.
    Cli,
}

impl Service {
    /// The `service.name` resource attribute.
    pub fn name(self) -> &'static str {
        match self {
            Service::Coordinator => "haven-coordinator",
            Service::Worker => "haven-worker",
            Service::StorageNode => "haven-storage-node",
            Service::Cli => "haven",
        }
    }
}

/// Why export cannot start; the process stops before doing anything else, so a typo
/// in the endpoint is seen at once rather than as traces that never arrive.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// An `https` endpoint: the exporter is built without TLS.
    #[error(
        "OTLP endpoint {0}: https is not supported; export over http to an OpenTelemetry \
         Collector (a local agent can forward over TLS)"
    )]
    Https(String),
    /// The endpoint is not a URL the exporter can use.
    #[error("OTLP endpoint {endpoint}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A running exporter; dropping it (or [`Telemetry::shutdown`]) sends the spans
/// still queued.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Starts exporting `service`'s spans to `endpoint` (`--otlp-endpoint`), or to the
    /// standard variables' endpoint; `Ok(None)` when none is set: tracing stays off.
    /// The gRPC client runs on `runtime`, which must outlive the returned value.
    pub fn start(
        service: Service,
        endpoint: Option<&str>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Option<Telemetry>, TelemetryError> {
        if variable("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let Some(endpoint) = endpoint
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .or_else(|| variable("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
            .or_else(|| variable("OTEL_EXPORTER_OTLP_ENDPOINT"))
        else {
            return Ok(None);
        };
        if endpoint.starts_with("https:") {
            return Err(TelemetryError::Https(endpoint));
        }
        // The channel is created (lazily connected) on the runtime; exports run on it.
        let _entered = runtime.enter();
        let exporter = SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&endpoint)
            .build()
            .map_err(|error| TelemetryError::InvalidEndpoint {
                endpoint: endpoint.clone(),
                reason: error.to_string(),
            })?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource(service))
            .build();
        crate::context::enable();
        Ok(Some(Telemetry { provider }))
    }

    /// The layer that turns Haven's spans into OpenTelemetry spans for the exporter;
    /// add it to the process's subscriber beside the log output. It has its own
    /// filter (Haven's targets at `info`), independent of the log level.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        build_layer(&self.provider)
    }

    /// Sends the spans still queued and stops the exporter (at most a few seconds).
    pub fn shutdown(self) {
        // Drop does it.
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(%error, "could not send the last spans to the OTLP endpoint");
        }
    }
}

/// The layer over `provider`'s tracer, filtered to Haven's own spans and events.
fn build_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + use<S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("haven"))
        // Per-poll timing and thread attributes cost on every poll of an instrumented
        // future (the pipeline polls thousands per second) and say little here.
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_filter(Targets::new().with_target("haven", tracing::Level::INFO))
}

/// `service.name` and `service.version`, unless `OTEL_SERVICE_NAME` names the
/// process otherwise (the standard variables are read by the builder).
fn resource(service: Service) -> Resource {
    let builder = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    match variable("OTEL_SERVICE_NAME") {
        Some(_) => builder.build(),
        None => builder.with_service_name(service.name()).build(),
    }
}

/// A set, non-empty environment variable (compose passes unset ones on as empty).
fn variable(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SpanData, SpanExporter};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Keeps what it is given: the spans a test produced.
    #[derive(Debug, Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Recorder {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    /// Runs `body` under a subscriber with Haven's layer over a recording exporter;
    /// returns the spans it ended.
    pub(crate) fn with_recorded_spans(body: impl FnOnce()) -> Vec<SpanData> {
        let recorder = Recorder::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(recorder.clone())
            .build();
        crate::context::enable();
        let subscriber = tracing_subscriber::registry().with(build_layer(&provider));
        tracing::subscriber::with_default(subscriber, body);
        provider.shutdown().unwrap();
        recorder.0.lock().unwrap().clone()
    }

    #[test]
    fn only_havens_spans_are_exported() {
        let spans = with_recorded_spans(|| {
            drop(tracing::info_span!(target: "haven_worker::daemon", "job"));
            drop(tracing::debug_span!(target: "haven_worker::daemon", "detail"));
            drop(tracing::info_span!(target: "h2::proto", "connection"));
        });
        let names: Vec<&str> = spans.iter().map(|span| span.name.as_ref()).collect();
        assert_eq!(names, ["job"]);
    }

    #[test]
    fn no_endpoint_means_no_export() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // The variables may be set in the environment of whoever runs the tests.
        if variable("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
            && variable("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
        {
            let started = Telemetry::start(Service::Worker, None, runtime.handle()).unwrap();
            assert!(started.is_none());
        }
        let https = Telemetry::start(
            Service::Worker,
            Some("https://collector:4317"),
            runtime.handle(),
        );
        assert!(matches!(https, Err(TelemetryError::Https(_))), "{https:?}");
        let invalid = Telemetry::start(Service::Worker, Some("http://[::1"), runtime.handle());
        assert!(
            matches!(invalid, Err(TelemetryError::InvalidEndpoint { .. })),
            "{invalid:?}"
        );
    }
}
