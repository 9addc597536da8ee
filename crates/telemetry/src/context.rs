//! The W3C trace context (`traceparent`) across process boundaries: written from the
//! current span where a request leaves (HTTP headers, gRPC metadata, a job record),
//! read where it arrives to make the receiving span a child.
//!
//! Every function here is a no-op until [`crate::Telemetry::start`] turned export on,
//! and costs one relaxed atomic load then: the data path calls them per request.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C Trace Context header (and gRPC metadata key) that carries a span's identity.
pub const TRACEPARENT: &str = "traceparent";

/// Whether spans are exported in this process (set once, by [`crate::Telemetry::start`]).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces: callers skip building what only a trace needs.
pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Turns the context functions on; called once the exporting layer exists.
pub(crate) fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// The `traceparent` of `span` (`00-TRACE-SPAN-FLAGS`), to hand to another process;
/// `None` when tracing is off or the span is not recorded.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    if !is_enabled() || span.is_disabled() {
        return None;
    }
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = OneValue::default();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.0
}

/// The `traceparent` of the span the caller runs in.
pub fn current_traceparent() -> Option<String> {
    if !is_enabled() {
        return None;
    }
    traceparent_of(&tracing::Span::current())
}

/// Adds the current span's `traceparent` to an outgoing HTTP request's headers.
pub fn inject_current(headers: &mut http::HeaderMap) {
    let Some(traceparent) = current_traceparent() else {
        return;
    };
    // Always ASCII (hex digits and dashes); a value that is not is simply not sent.
    if let Ok(value) = http::HeaderValue::from_str(&traceparent) {
        headers.insert(TRACEPARENT, value);
    }
}

/// Makes `span` a child of the span `traceparent` names (another process's). Call it
/// right after creating `span`, before it is entered: a started span keeps its parent.
/// An empty or malformed value leaves `span` where it was (a root, usually): a bad
/// header from a client must not fail its request.
pub fn set_parent_from_traceparent(span: &tracing::Span, traceparent: &str) {
    if !is_enabled() || traceparent.is_empty() {
        return;
    }
    // Extracted onto an empty context: `extract` would start from the current one, and
    // a malformed value would then silently yield the caller's own span.
    let parent = TraceContextPropagator::new().extract_with_context(
        &opentelemetry::Context::new(),
        &OneValue(Some(traceparent.to_owned())),
    );
    if !parent.span().span_context().is_valid() {
        tracing::debug!(traceparent, "ignoring a malformed traceparent");
        return;
    }
    if let Err(error) = span.set_parent(parent) {
        tracing::debug!(%error, "cannot set the parent of a span");
    }
}

/// [`set_parent_from_traceparent`] with the `traceparent` header of an incoming
/// HTTP request, if it has one.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    if !is_enabled() {
        return;
    }
    if let Some(traceparent) = headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()) {
        set_parent_from_traceparent(span, traceparent);
    }
}

/// A carrier of the one field Haven propagates: `traceparent`.
#[derive(Default)]
struct OneValue(Option<String>);

impl Injector for OneValue {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

impl Extractor for OneValue {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0.as_deref()).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::tests::with_recorded_spans;

    #[test]
    fn nothing_travels_while_tracing_is_off() {
        // No layer and not enabled: the functions do nothing and return nothing.
        let span = tracing::info_span!("job");
        assert_eq!(traceparent_of(&span), None);
        let mut headers = http::HeaderMap::new();
        inject_current(&mut headers);
        assert!(headers.is_empty());
    }

    #[test]
    fn a_child_in_another_process_joins_the_parents_trace() {
        let spans = with_recorded_spans(|| {
            let assign = tracing::info_span!(parent: None, "assign");
            let traceparent = traceparent_of(&assign).expect("a traced span has a traceparent");
            assert!(traceparent.starts_with("00-"), "{traceparent}");
            // The receiving side: a root span by construction, given the parent.
            let job = tracing::info_span!(parent: None, "job");
            set_parent_from_traceparent(&job, &traceparent);
            let _entered = job.enter();
            let mut headers = http::HeaderMap::new();
            inject_current(&mut headers);
            let request = tracing::info_span!(parent: None, "request");
            set_parent_from_headers(&request, &headers);
            drop(request);
            // A malformed value leaves a span a root of its own trace.
            let stray = tracing::info_span!(parent: None, "stray");
            set_parent_from_traceparent(&stray, "00-not-a-trace");
            drop(stray);
        });
        let find = |name: &str| {
            spans
                .iter()
                .find(|span| span.name == name)
                .unwrap_or_else(|| panic!("no span {name} in {spans:?}"))
        };
        let (assign, job, request, stray) =
            (find("assign"), find("job"), find("request"), find("stray"));
        let trace = assign.span_context.trace_id();
        assert_eq!(job.span_context.trace_id(), trace);
        assert_eq!(job.parent_span_id, assign.span_context.span_id());
        assert_eq!(request.span_context.trace_id(), trace);
        assert_eq!(request.parent_span_id, job.span_context.span_id());
        assert_ne!(stray.span_context.trace_id(), trace);
        assert_eq!(stray.parent_span_id, opentelemetry::trace::SpanId::INVALID);
    }
}
