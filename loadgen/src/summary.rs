//! The result of one run against one target, as every output reads it.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::checker::SequenceCounts;
use crate::config::{Load, Scenario};
use crate::durable::DurableCounts;
use crate::plan::Pick;

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// 50th percentile.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p99_9_us: f64,
    /// 99.99th percentile.
    pub p99_99_us: f64,
    /// Largest.
    pub max_us: f64,
}

impl Percentiles {
    /// Reads the percentiles of a histogram in ns.
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        let us = |ns: u64| ns as f64 / 1000.0;
        if histogram.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: histogram.len(),
            mean_us: histogram.mean() / 1000.0,
            p50_us: us(histogram.value_at_quantile(0.50)),
            p90_us: us(histogram.value_at_quantile(0.90)),
            p99_us: us(histogram.value_at_quantile(0.99)),
            p99_9_us: us(histogram.value_at_quantile(0.999)),
            p99_99_us: us(histogram.value_at_quantile(0.9999)),
            max_us: us(histogram.max()),
        }
    }
}

/// Connection scenarios' numbers.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Connections {
    /// Connections completed (handshake done).
    pub connected: u64,
    /// Storm: seconds from the start until the last was ready.
    pub seconds: f64,
    /// Storm: connections per second.
    pub per_second: f64,
    /// Idle: server RSS before connecting, KiB.
    pub rss_before_kib: Option<u64>,
    /// Idle: server RSS with all connections open, KiB.
    pub rss_connected_kib: Option<u64>,
    /// Idle: server RSS after they closed, KiB.
    pub rss_after_kib: Option<u64>,
    /// Idle: (connected - before) / connections, bytes.
    pub bytes_per_connection: Option<f64>,
}

/// What a durable run adds (`--durable`).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct DurableSummary {
    /// What the server was asked for, in one line.
    pub setup: String,
    /// Acknowledgements, retries, reconnects, redeliveries, dedup.
    pub counts: DurableCounts,
    /// Send to server acknowledgement (relayhub `Stored`, JetStream
    /// publish ack) of the measured publications.
    pub stored_latency: Percentiles,
    /// Mean time from a drop to the new connection being ready, ms.
    pub reconnect_ms_mean: f64,
    /// Longest such time, ms.
    pub reconnect_ms_max: f64,
}

/// One run against one target.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Short target name (`relayhub`, `nats`, `redis-6390`).
    pub target: String,
    /// The URL as given.
    pub url: String,
    /// What the clients did.
    pub scenario: Scenario,
    /// Relay: receivers fixed for the run or drawn per message (`--pick`).
    pub pick: Pick,
    /// Closed or open loop.
    pub load: Load,
    /// Clients.
    pub clients: usize,
    /// Receivers per publication.
    pub fanout: usize,
    /// Body bytes sent, header included.
    pub body_bytes: usize,
    /// Measured seconds (after the warm-up).
    pub duration_s: f64,
    /// Publications sent over the whole run.
    pub sent: u64,
    /// Deliveries received in the measured window.
    pub deliveries: u64,
    /// Deliveries per second in the measured window.
    pub deliveries_per_s: f64,
    /// Body megabytes (10^6) delivered per second.
    pub megabytes_per_s: f64,
    /// Latency: delivery time minus intended send time (traffic), or
    /// connect-to-ready time (storm, idle).
    pub latency: Percentiles,
    /// Lost, duplicated, reordered deliveries over all (sender, receiver) pairs.
    pub sequence: SequenceCounts,
    /// Errors of every kind (server errors, closed connections, bad bodies).
    pub errors: u64,
    /// The first few error texts.
    pub error_samples: Vec<String>,
    /// Loadgen CPU time over wall time during the measured window, percent
    /// of one core (100 = one core busy).
    pub loadgen_cpu_percent: f64,
    /// The server's CPU time over wall time, percent of one core, when
    /// `--server-pid` was given.
    pub server_cpu_percent: Option<f64>,
    /// Traffic: loadgen CPU time per delivery, ns, from the start to the
    /// end of sending (warm-up included, drain excluded). Below the
    /// server's, the loadgen has headroom at the rate measured.
    pub loadgen_cpu_ns_per_delivery: Option<f64>,
    /// Traffic: the server's CPU time per delivery over the same span.
    pub server_cpu_ns_per_delivery: Option<f64>,
    /// Traffic, with `--server-pid`: the server's RSS before the clients
    /// connected, KiB.
    pub server_rss_before_kib: Option<u64>,
    /// Traffic, with `--server-pid`: the server's RSS when sending ended
    /// (every connection open), KiB.
    pub server_rss_kib: Option<u64>,
    /// Open loop: how late the loadgen sent messages (actual minus
    /// scheduled send time), measured messages only. Small next to the
    /// latencies: the loadgen kept the schedule.
    pub send_lag: Option<Percentiles>,
    /// Storm and idle only.
    pub connections: Option<Connections>,
    /// Durable runs only.
    pub durable: Option<DurableSummary>,
    /// The latency histogram (ns), for the .hgrm and .svg outputs.
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

#[cfg(test)]
impl Summary {
    /// A summary of nothing, for tests that fill in a few fields.
    pub fn empty_for_tests() -> Summary {
        Summary {
            target: "test".into(),
            url: "relayhub://127.0.0.1:1".into(),
            scenario: Scenario::Traffic(crate::plan::Topology::Relay),
            pick: Pick::Fixed,
            load: Load::Open { rate: 1.0 },
            clients: 2,
            fanout: 1,
            body_bytes: 64,
            duration_s: 1.0,
            sent: 0,
            deliveries: 0,
            deliveries_per_s: 0.0,
            megabytes_per_s: 0.0,
            latency: Percentiles::default(),
            sequence: SequenceCounts::default(),
            errors: 0,
            error_samples: Vec::new(),
            loadgen_cpu_percent: 0.0,
            server_cpu_percent: None,
            loadgen_cpu_ns_per_delivery: None,
            server_cpu_ns_per_delivery: None,
            server_rss_before_kib: None,
            server_rss_kib: None,
            send_lag: None,
            connections: None,
            durable: None,
            histogram: crate::engine::new_histogram(),
        }
    }
}
