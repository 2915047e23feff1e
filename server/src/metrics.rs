//! `--metrics-listen`: `GET /metrics` in the OpenMetrics / Prometheus text
//! format (prometheus-client's encoder) and `GET /healthz`, served by one
//! thread of its own, off the shards. Each scrape reads every shard's
//! counters (single-writer atomics: nothing is shared on the hot path) and
//! labels them by shard.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

use crate::{
    driver::Shared,
    stats::{ShardStats, FSYNC_BUCKETS_US},
};

/// Default port of the metrics endpoint when one is asked for (the hub's
/// 7878 plus one). Off unless `--metrics-listen` is given.
pub const METRICS_PORT_DEFAULT: u16 = 7879;

/// How long the endpoint waits for a scraper's request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Counters that are gauges (they go down as well as up).
const GAUGES: &[&str] = &[
    "connections_open",
    "log_bytes",
    "recovered_records",
    "recovery_ms",
    "sessions_durable",
    "sessions_online",
    "inbox_entries",
    "inbox_bytes",
];

/// Every metric's name (after `relayhub_`, before `_total` for counters)
/// when it differs from its counter's, for base units.
fn metric_name(field: &str) -> String {
    match field {
        "bytes_in" => "received_bytes".into(),
        "bytes_out" => "sent_bytes".into(),
        "recovery_ms" => "recovery_milliseconds".into(),
        "log_appended" => "log_appended_bytes".into(),
        other => other.into(),
    }
}

/// What each metric means (the counter's doc, in short).
fn metric_help(field: &str) -> &'static str {
    match field {
        "connections_accepted" => "Connections welcomed (a valid preface)",
        "connections_open" => "Connections open now",
        "connections_refused" => "Connections refused with ServerFull",
        "frames_in" => "Frames received from clients",
        "bytes_in" => "Bytes received from clients",
        "bytes_out" => "Bytes written to clients",
        "relays" => "Relay requests routed",
        "deliveries" => "Deliveries queued to receivers on this shard",
        "unknown_receivers" => "Receivers that were not there (UnknownReceiver)",
        "slow_consumers" => "Clients cut off past --outbound-bytes-max",
        "limit_errors" => "Frames refused for a protocol limit (connection kept)",
        "protocol_errors" => "Connections closed for a fatal protocol error",
        "idle_timeouts" => "Connections closed by the idle timeout",
        "frame_timeouts" => "Connections closed by the frame timeout",
        "flush_timeouts" => "Closing connections dropped at their flush deadline",
        "fd_refusals" => "Clients refused for want of file descriptors",
        "mesh_sent" => "Messages sent to other shards",
        "mesh_received" => "Messages received from other shards",
        "ring_full" => "Times a ring to another shard was full or out of byte budget",
        "backpressure_waits" => "Times a connection's input paused on mesh backpressure or lists",
        "sessions_created" => "Durable sessions created",
        "sessions_resumed" => "Durable sessions resumed",
        "resumes_rejected" => "Resumes refused (ResumeRejected)",
        "takeovers" => "Resumes that took a session over (SessionTakenOver)",
        "sessions_expired" => "Durable sessions expired",
        "stored" => "Inbox entries stored",
        "acked" => "Inbox entries acked",
        "messages_expired" => "Inbox entries expired or dropped with their session",
        "inbox_full" => "Relays refused for a full inbox (InboxFull)",
        "duplicates" => "Relays recognised as retries of a stored message",
        "content_duplicates" => "Relays dropped by content dedup (DuplicateContent)",
        "receipts_dropped" => "Receipts that could not be delivered",
        "storage_full" => "Relays refused for a full or failing log (StorageFull)",
        "log_write_errors" => "Log writes the disk refused (retried)",
        "bodies_read" => "Bodies of offline sessions read back from the log",
        "body_reads_shared" => "Bodies read back with another entry's read of the same record",
        "body_read_errors" => "Records read back from the log that did not check out",
        "compactions" => "Log compactions",
        "log_bytes" => "Bytes in the shard's log",
        "log_appended" => {
            "Bytes appended to the shard's log since start (records and compaction copies)"
        }
        "recovered_records" => "Log records read at start-up",
        "recovery_ms" => "Time the start-up recovery took",
        "sessions_durable" => "Durable sessions on the shard, connected or not",
        "sessions_online" => "Durable sessions with a connection",
        "inbox_entries" => "Entries waiting in inboxes",
        "inbox_bytes" => "Body bytes waiting in inboxes",
        "fsyncs" => "fdatasync calls of the log",
        "handoffs_out" => "Connections handed to the shard owning their session",
        "handoffs_in" => "Connections taken over from another shard",
        _ => "A relayhub counter (docs/operations.md)",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabel {
    shard: String,
}

impl ShardLabel {
    fn of(index: usize) -> ShardLabel {
        ShardLabel {
            shard: index.to_string(),
        }
    }
}

/// One shard's fsync latency histogram, as read at scrape time.
#[derive(Debug)]
struct FsyncLatency {
    buckets: Vec<(f64, u64)>,
    count: u64,
    sum_seconds: f64,
}

impl FsyncLatency {
    fn read(stats: &ShardStats) -> FsyncLatency {
        let (counts, sum_us) = stats.fsync_latency.snapshot();
        let mut buckets: Vec<(f64, u64)> = FSYNC_BUCKETS_US
            .iter()
            .zip(counts)
            .map(|(&bound, count)| (bound as f64 / 1e6, count))
            .collect();
        buckets.push((f64::INFINITY, counts[FSYNC_BUCKETS_US.len()]));
        FsyncLatency {
            count: counts.iter().sum(),
            buckets,
            sum_seconds: sum_us as f64 / 1e6,
        }
    }
}

impl EncodeMetric for FsyncLatency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<ShardLabel>(self.sum_seconds, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The exposition of every shard's counters, now.
pub fn render(stats: &[Arc<ShardStats>]) -> String {
    let mut registry = Registry::with_prefix("relayhub");
    // Each shard's counters, read once: `shards[shard][field]`.
    let shards: Vec<Vec<(&'static str, u64)>> =
        stats.iter().map(|s| s.snapshot().fields()).collect();
    let Some(first) = shards.first() else {
        return String::new();
    };
    for (column, &(field, _)) in first.iter().enumerate() {
        let kind = if GAUGES.contains(&field) {
            MetricType::Gauge
        } else {
            MetricType::Counter
        };
        let samples = shards
            .iter()
            .enumerate()
            .map(|(index, fields)| (ShardLabel::of(index), fields[column].1))
            .collect();
        registry.register(
            metric_name(field),
            metric_help(field),
            PerShard { kind, samples },
        );
    }
    let latencies = stats
        .iter()
        .enumerate()
        .map(|(index, shard)| (ShardLabel::of(index), FsyncLatency::read(shard)))
        .collect();
    registry.register_with_unit(
        "fsync_duration",
        "Latency of the log's fdatasync calls",
        prometheus_client::registry::Unit::Seconds,
        FsyncLatencies(latencies),
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// One counter or gauge of every shard, in shard order (`shard="0"` first:
/// a `Family` keeps its samples in a hash map, in no fixed order).
#[derive(Debug)]
struct PerShard {
    kind: MetricType,
    samples: Vec<(ShardLabel, u64)>,
}

impl EncodeMetric for PerShard {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (label, value) in &self.samples {
            let mut sample = encoder.encode_family(label)?;
            if self.kind == MetricType::Gauge {
                sample.encode_gauge(value)?;
            } else {
                sample.encode_counter::<NoLabelSet, _, u64>(value, None)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        self.kind
    }
}

/// Every shard's fsync histogram, one metric family labelled by shard.
#[derive(Debug)]
struct FsyncLatencies(Vec<(ShardLabel, FsyncLatency)>);

impl EncodeMetric for FsyncLatencies {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (label, latency) in &self.0 {
            latency.encode(encoder.encode_family(label)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Binds the endpoint (so a bad address fails the start) and serves it on a
/// thread of its own until the hub shuts down.
pub fn serve(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("relayhub-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                if shared.stopped.load(Ordering::Acquire) {
                    break;
                }
                if let Ok(stream) = stream {
                    if let Err(error) = answer(stream, &shared) {
                        tracing::debug!(%error, "metrics request failed");
                    }
                }
            }
        })?;
    Ok(bound)
}

fn answer(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(&shared.stats),
        ),
        ("GET", "/healthz") if !shared.shutdown.load(Ordering::Acquire) => {
            ("200 OK", "text/plain", "ok\n".to_string())
        }
        ("GET", "/healthz") => (
            "503 Service Unavailable",
            "text/plain",
            "shutting down\n".into(),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics or /healthz\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
