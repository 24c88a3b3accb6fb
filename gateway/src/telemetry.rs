//! Logging and metrics set-up. Only `main` installs the log subscriber; the metrics
//! recorder is process-wide and installed once, however many gateways a test starts.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus handle, installing the recorder on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let latency = [
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0,
        ];
        let batch = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                &latency,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full("relay_journal_group_records".into()),
                    &batch,
                )
            })
            .expect("bucket lists are non-empty constants")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding application); our
        // handle then renders only what reaches ours, which is still correct.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Installs the `tracing` subscriber: `RUST_LOG` filter (default `info`), text or JSON,
/// to standard error.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// A connection refused at accept: counted, and said in the log at most once a minute per
/// reason and transport (never the address).
pub(crate) fn connection_refused(reason: &'static str, transport: &'static str) {
    metrics::counter!("relay_connections_refused_total", "reason" => reason, "transport" => transport).increment(1);
    static LOGGED: relay_net::throttle::Throttle = relay_net::throttle::Throttle::per_minute();
    if LOGGED.due(&format!("{reason}/{transport}")) {
        let what = match reason {
            "limit" => "limits.max_connections connections are open",
            _ => "one address holds limits.max_connections_per_address connections",
        };
        tracing::warn!(
            reason,
            transport,
            "a connection was refused: {what} (more counted in relay_connections_refused_total, not logged, for a minute)"
        );
    }
}
