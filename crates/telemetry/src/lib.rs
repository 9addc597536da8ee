//! Distributed tracing for every Haven process: `tracing` spans exported as
//! OpenTelemetry traces over OTLP/gRPC, and the W3C trace context carried from one
//! process to the next, so one backup job is one trace from the coordinator's
//! assignment through the worker's phases to the storage node's requests.
//!
//! Two halves, used from different places:
//! - [`Telemetry`] (`export.rs`) is set up once per process by the `haven` binary: it
//!   builds the OTLP exporter and hands back a `tracing-subscriber` layer to add next to
//!   the log output. Export is on only when an endpoint is given
//!   (`--otlp-endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT`).
//! - The context functions (`context.rs`) are called where a request leaves or
//!   enters a process: they write the current span's `traceparent` into a header, a
//!   gRPC metadata entry or a job record, and make a new span the child of one.
//!
//! Invariants:
//! - Off means free: without an endpoint no layer is installed and every context
//!   function returns at its first instruction (one relaxed atomic load), so the
//!   data path pays nothing for tracing it does not use.
//! - Only Haven's own spans are exported (targets `haven*` at `info`): the exporter's
//!   own gRPC client never traces itself into a feedback loop, and dependencies'
//!   per-connection spans stay out of the traces.
//! - Only `traceparent` travels (no `tracestate`, no baggage): Haven sets neither, and
//!   a process does not forward what it cannot vouch for.

mod context;
mod export;

pub use context::{
    TRACEPARENT, current_traceparent, inject_current, is_enabled, set_parent_from_headers,
    set_parent_from_traceparent, traceparent_of,
};
pub use export::{Service, Telemetry, TelemetryError};
