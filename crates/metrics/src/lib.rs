//! One metrics registry and one HTTP server for Haven's `/metrics`, `/healthz` and
//! a component's own pages.
//!
//! Every Haven component that exports metrics (the coordinator, the storage node,
//! `haven replicate --watch`, and the worker when it gets some) registers them in a
//! [`Registry`] and serves them through this crate, so the exposition format, its
//! `Content-Type` and the HTTP handling exist once instead of once per component.
//! The registry is the official Prometheus client (`prometheus-client`); this crate
//! only fixes the choices below and adds what Haven needs on top.
//!
//! Invariants every user relies on:
//!
//! - **Format**: the Prometheus text format 0.0.4, served as [`CONTENT_TYPE`]
//!   (`text/plain; version=0.0.4; charset=utf-8`). Every scraper accepts it
//!   (Prometheus 2 and 3, VictoriaMetrics, the OpenTelemetry collector); it is the
//!   format Haven always wrote, so `# TYPE` lines and sample names stay exactly what
//!   dashboards and tests read; and Haven uses nothing OpenMetrics adds (exemplars,
//!   `_created` series, units in names).
//! - **Names**: a counter is registered *without* its `_total` suffix and the
//!   encoding appends it (`prometheus-client` refuses `_total` in debug builds);
//!   units stay in the name (`_seconds`, `_bytes`). Help strings have no final full
//!   stop: one is appended, the same for registered and scrape-time metrics.
//! - **Scrape-time values** (disk usage, replication lag, a coordinator's job
//!   counts) are written by a [`ScrapeTimeMetrics`] from the component's own state
//!   when the registry is encoded, never cached as gauges that could go stale.
//!   Values that need async I/O are brought up to date by [`Exporter::refresh`]
//!   first.
//! - **Every component** calls [`Registry::register_process_metrics`], so each
//!   exports `haven_build_info` and the `process_*` metrics Prometheus's own clients
//!   export, read from `/proc/self`.
//! - **Server** ([`MetricsServer`]): HTTP/1.1, one request per connection, a time
//!   limit on every connection, 404 for any other path, graceful shutdown on a
//!   `CancellationToken`. Plain HTTP only on loopback unless the operator says
//!   `insecure`; over TLS ([`HttpSecurity::Tls`]) `/metrics` needs a client
//!   certificate whose role covers `viewer`, while `/healthz` stays open to probes.
//!   Every other path goes to [`Exporter::route`] with the peer's verified identity
//!   (the coordinator's web console), so a component's pages share the listener, its
//!   TLS and its limits instead of starting a second server. A component with its own
//!   HTTP front (the storage node) answers its `/metrics` with [`exposition`] instead.
#![warn(missing_docs)]

mod process;
mod registry;
mod sample_writer;
mod server;

pub use prometheus_client::encoding::EncodeLabelSet;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
pub use registry::{CONTENT_TYPE, EncodeError, Registry, ScrapeTimeMetrics};
pub use sample_writer::{NO_LABELS, NoLabels, SampleWriter};
pub use server::{
    BindError, Exporter, HttpSecurity, MAX_BODY, MetricsServer, RouteRequest, RouteResponse,
    exposition, respond,
};
