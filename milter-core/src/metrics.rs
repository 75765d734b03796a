//! What the server counts, emitted through the [`metrics`](https://docs.rs/metrics)
//! facade (feature `metrics`).
//!
//! # Why a facade, and why this one
//!
//! A library must not own a registry, a text renderer or a listener, for the same reason
//! it does not own a logger: the program decides where numbers go (Prometheus, StatsD,
//! OpenTelemetry, nowhere). The `metrics` crate is to metrics what `log` is to logging: the
//! library calls `counter!`/`gauge!`/`histogram!`, the program installs one recorder (for
//! Prometheus, `metrics-exporter-prometheus`), and with no recorder installed every call
//! is a no-op. `prometheus-client` was the alternative; it makes the library take a
//! `&mut Registry` from its caller and ties every user to Prometheus, which is the
//! coupling this module exists to avoid.
//!
//! # When handles are resolved
//!
//! The server resolves every series once, in
//! [`Builder::bind`](crate::server::Builder::bind), against the recorder current at that
//! moment (the global one, or a [`metrics::with_local_recorder`] around `bind`, which is
//! how tests read a server's numbers without a process-wide recorder). Recording is then
//! one call on a resolved handle: no key lookup, no allocation, no lock in this crate.
//! Install the recorder before binding.
//!
//! # Names
//!
//! | name | type | labels |
//! |---|---|---|
//! | `milter_connections_accepted_total` | counter | |
//! | `milter_connections_active` | gauge | |
//! | `milter_connections_closed_total` | counter | `reason`: quit, eof, shutdown, protocol_error, timeout, io_error, panic, usage_error |
//! | `milter_messages_total` | counter | |
//! | `milter_verdicts_total` | counter | `verdict` at end of message: continue, accept, reject, tempfail, discard, reply-4xx, reply-5xx, shutdown |
//! | `milter_rejections_total` | counter | `stage`: connect … eom, unknown (a reject, tempfail, 4xx/5xx reply or shutdown sent) |
//! | `milter_protocol_errors_total` | counter | `kind` |
//! | `milter_timeouts_total` | counter | `phase`: negotiation, command, content, idle |
//! | `milter_eom_duration_seconds` | histogram | (buckets: [`LATENCY_BUCKETS`]) |
//!
//! Every label value comes from a fixed list in this crate, never from the MTA, so the
//! number of series is bounded by construction. The facade carries no bucket bounds: an
//! exporter renders a histogram as a summary unless told otherwise, so give it
//! [`LATENCY_BUCKETS`] for [`EOM_DURATION`] (with metrics-exporter-prometheus,
//! `PrometheusBuilder::set_buckets_for_metric`).

/// Default bucket bounds (seconds) for latency histograms: 1 ms .. 30 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The end-of-message latency histogram's name (give it [`LATENCY_BUCKETS`]).
pub const EOM_DURATION: &str = "milter_eom_duration_seconds";

/// Registers the help text of the server's metrics with the installed recorder. The
/// server calls it when it binds; it is public for programs that want the `# HELP` lines
/// before the first server exists.
pub fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "milter_connections_accepted_total",
        "Milter connections accepted."
    );
    describe_gauge!("milter_connections_active", "Milter connections open.");
    describe_counter!(
        "milter_connections_closed_total",
        "Milter connections closed, by reason."
    );
    describe_counter!(
        "milter_messages_total",
        "Messages started (first MAIL or later event of a transaction)."
    );
    describe_counter!(
        "milter_verdicts_total",
        "Verdicts sent at end of message, by kind."
    );
    describe_counter!(
        "milter_rejections_total",
        "Rejects, tempfails, 4xx/5xx replies and shutdowns sent, by the stage they answered."
    );
    describe_counter!(
        "milter_protocol_errors_total",
        "Connections closed because the MTA broke the protocol, by kind."
    );
    describe_counter!(
        "milter_timeouts_total",
        "Connections closed because the MTA was silent too long, by phase."
    );
    describe_histogram!(
        EOM_DURATION,
        ::metrics::Unit::Seconds,
        "Time the handler's end-of-message callback took."
    );
}
