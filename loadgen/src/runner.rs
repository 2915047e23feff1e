//! The main thread's side of a run: start the executors, start the clock,
//! print progress, measure CPU and memory, collect the results.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

use crate::config::{RunConfig, Scenario};
use crate::engine::{run_executor, ExecutorResult, Shared};
use crate::error::LoadgenError;
use crate::summary::{Connections, DurableSummary, Percentiles, Summary};
use crate::sys;
use crate::target::TargetKind;

/// How long idle connections settle before the server's RSS is read.
const IDLE_SETTLE: Duration = Duration::from_secs(1);

/// Runs one scenario against one target and returns its summary.
pub fn run(config: RunConfig) -> Result<Summary, LoadgenError> {
    let jetstream = config
        .durable
        .as_ref()
        .filter(|_| config.target.kind == TargetKind::Nats)
        .map(|durable| durable.jetstream.clone());
    if let Some(jetstream) = &jetstream {
        crate::jetstream::setup(config.target.address, jetstream, config.clients)?;
    }
    let streams = config.durable.is_some() && config.target.kind == TargetKind::Redis;
    if streams {
        crate::redis_streams::setup(config.target.address, config.clients)?;
    }
    let (address, clients) = (config.target.address, config.clients);
    let outcome = run_inner(config);
    let teardown = match &jetstream {
        Some(jetstream) => crate::jetstream::teardown(address, jetstream),
        None if streams => crate::redis_streams::teardown(address, clients),
        None => Ok(()),
    };
    if let (Ok(_), Err(error)) = (&outcome, teardown) {
        eprintln!("relayhub-loadgen: after the run: {error}");
    }
    outcome
}

fn run_inner(config: RunConfig) -> Result<Summary, LoadgenError> {
    let config = Arc::new(config);
    let shared = Shared::new();
    let rss_before = config.server_pid.and_then(sys::process_rss_kib);
    let mut handles = Vec::with_capacity(config.cores);
    for index in 0..config.cores {
        let (config, shared) = (config.clone(), shared.clone());
        let handle = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("loadgen-{index}"))
            .io_memory(config.io_memory_bytes)
            .spawn(move || run_executor(config, shared, index))
            .map_err(|error| LoadgenError::Executor(error.to_string()))?;
        handles.push(handle);
    }
    let join = |handles: Vec<glommio::ExecutorJoinHandle<ExecutorResult>>| -> Result<Vec<ExecutorResult>, LoadgenError> {
        handles
            .into_iter()
            .map(|handle| handle.join().map_err(|error| LoadgenError::Executor(error.to_string())))
            .collect()
    };
    let wait_for = |counter: &std::sync::atomic::AtomicUsize| {
        while counter.load(Ordering::Acquire) < config.cores
            && !shared.abort.load(Ordering::Acquire)
        {
            sleep(Duration::from_millis(1));
        }
    };
    if !matches!(config.scenario, Scenario::Storm) {
        wait_for(&shared.ready);
    }
    if shared.abort.load(Ordering::Acquire) {
        shared.release.store(true, Ordering::Release);
        join(handles)?;
        let failure = shared.failure.lock().expect("failure lock").take();
        return Err(failure.unwrap_or_else(|| LoadgenError::Executor("an executor failed".into())));
    }

    let cpu_before = sys::own_cpu_time();
    let server_cpu_before = config.server_pid.and_then(sys::process_cpu_time);
    let wall = Instant::now();
    shared.start();
    let mut rss_connected = None;
    match config.scenario {
        Scenario::Traffic(_) => {
            progress_until_end(&config, &shared);
            // Sending just ended: every connection is open, queues hold
            // what the load left in them.
            rss_connected = config.server_pid.and_then(sys::process_rss_kib);
        }
        Scenario::Storm => wait_for(&shared.done),
        Scenario::Idle => {
            sleep(IDLE_SETTLE);
            rss_connected = config.server_pid.and_then(sys::process_rss_kib);
        }
    }
    let wall = wall.elapsed();
    let cpu = sys::own_cpu_time().saturating_sub(cpu_before);
    let server_cpu = server_cpu_before.and_then(|before| {
        Some(
            config
                .server_pid
                .and_then(sys::process_cpu_time)?
                .saturating_sub(before),
        )
    });
    shared.release.store(true, Ordering::Release);
    let results = join(handles)?;
    if config.scenario == Scenario::Idle {
        sleep(IDLE_SETTLE);
    }
    let percent = |time: Duration| 100.0 * time.as_secs_f64() / wall.as_secs_f64().max(1e-9);
    let run_deliveries: u64 = results.iter().map(|result| result.run_deliveries).sum();
    let mut summary = merge(&config, &shared, results);
    summary.loadgen_cpu_percent = percent(cpu);
    summary.server_cpu_percent = server_cpu.map(percent);
    if matches!(config.scenario, Scenario::Traffic(_)) && run_deliveries > 0 {
        let per_delivery = |time: Duration| time.as_nanos() as f64 / run_deliveries as f64;
        summary.loadgen_cpu_ns_per_delivery = Some(per_delivery(cpu));
        summary.server_cpu_ns_per_delivery = server_cpu.map(per_delivery);
        summary.server_rss_before_kib = rss_before;
        summary.server_rss_kib = rss_connected;
    }
    if let (Scenario::Idle, Some(connections)) = (config.scenario, summary.connections.as_mut()) {
        connections.rss_before_kib = rss_before;
        connections.rss_connected_kib = rss_connected;
        connections.rss_after_kib = config.server_pid.and_then(sys::process_rss_kib);
        if let (Some(before), Some(with)) = (rss_before, rss_connected) {
            if connections.connected > 0 {
                connections.bytes_per_connection =
                    Some((with as f64 - before as f64) * 1024.0 / connections.connected as f64);
            }
        }
    }
    Ok(summary)
}

/// Prints a progress line per second until sending ends.
fn progress_until_end(config: &RunConfig, shared: &Shared) {
    let end = Duration::from_nanos(config.end_ns());
    let started = Instant::now();
    let mut last_deliveries = 0;
    let mut second = 1;
    loop {
        let next = Duration::from_secs(second).min(end);
        if let Some(wait) = next.checked_sub(started.elapsed()) {
            sleep(wait);
        }
        let deliveries = shared.deliveries.load(Ordering::Relaxed);
        if config.progress && next < end {
            let p99 = shared
                .histogram
                .lock()
                .expect("histogram lock")
                .value_at_quantile(0.99);
            let phase = if next <= config.warmup {
                " (warm-up)"
            } else {
                ""
            };
            eprintln!(
                "[{:>3}s] {}: {:>10.0} deliveries/s  p99 {:>10}  errors {}{}",
                second,
                config.target.name(),
                (deliveries - last_deliveries) as f64,
                crate::report::table::format_us(p99 as f64 / 1000.0),
                shared.errors.load(Ordering::Relaxed),
                phase,
            );
        }
        last_deliveries = deliveries;
        if next >= end {
            return;
        }
        second += 1;
    }
}

fn merge(config: &RunConfig, shared: &Shared, results: Vec<ExecutorResult>) -> Summary {
    let mut total = ExecutorResult::default();
    for result in results {
        total.counts.add(&result.counts);
        total.sent += result.sent;
        total.deliveries += result.deliveries;
        total.bytes += result.bytes;
        total.errors += result.errors;
        total.connected += result.connected;
        total.connect_ns = total.connect_ns.max(result.connect_ns);
        if let Some(lag) = result.send_lag {
            match total.send_lag.as_mut() {
                Some(sum) => sum.add(&lag).expect("same bounds"),
                None => total.send_lag = Some(lag),
            }
        }
        total.durable.add(&result.durable);
        if let Some(stored) = result.stored_latency {
            match total.stored_latency.as_mut() {
                Some(sum) => sum.add(&stored).expect("same bounds"),
                None => total.stored_latency = Some(stored),
            }
        }
        for sample in result.error_samples {
            if total.error_samples.len() < crate::engine::ERROR_SAMPLES_MAX {
                total.error_samples.push(sample);
            }
        }
    }
    let histogram = shared.histogram.lock().expect("histogram lock").clone();
    let seconds = config.duration.as_secs_f64();
    let fanout = match config.scenario {
        Scenario::Traffic(topology) => topology.fanout(),
        Scenario::Storm | Scenario::Idle => 0,
    };
    let connections = match config.scenario {
        Scenario::Traffic(_) => None,
        Scenario::Storm | Scenario::Idle => {
            let seconds = total.connect_ns as f64 / 1e9;
            let per_second = if seconds > 0.0 {
                total.connected as f64 / seconds
            } else {
                0.0
            };
            Some(Connections {
                connected: total.connected,
                seconds,
                per_second,
                ..Connections::default()
            })
        }
    };
    let durable = config.durable.as_ref().map(|durable| {
        let counts = total.durable;
        let ms = |ns: f64| ns / 1e6;
        DurableSummary {
            setup: match config.target.kind {
                TargetKind::Nats => format!(
                    "JetStream: {:?} stream, interest retention, durable push consumers, ack {:?}, ack_wait {:?}, max_ack_pending {}",
                    durable.jetstream.storage,
                    durable.jetstream.ack,
                    durable.jetstream.ack_wait,
                    durable.jetstream.max_ack_pending
                ),
                TargetKind::Redis => "Redis Streams: a stream and consumer group per receiver, XADD acks, XREADGROUP, XACK + XDEL per read".into(),
                _ => "relayhub protocol v2: durable sessions, Stored, cumulative Ack per read batch".into(),
            },
            counts,
            stored_latency: total
                .stored_latency
                .as_ref()
                .map(Percentiles::of)
                .unwrap_or_default(),
            reconnect_ms_mean: if counts.reconnects > 0 {
                ms(counts.reconnect_ns_total as f64 / counts.reconnects as f64)
            } else {
                0.0
            },
            reconnect_ms_max: ms(counts.reconnect_ns_max as f64),
        }
    });
    let target = match (&config.durable, config.target.kind) {
        (None, _) => config.target.name(),
        (Some(durable), TargetKind::Nats) => {
            let storage = match durable.jetstream.storage {
                crate::config::JetStreamStorage::Memory => "",
                crate::config::JetStreamStorage::File => "-file",
            };
            format!("{}-jetstream{storage}", config.target.name())
        }
        (Some(_), TargetKind::Redis) => format!("{}-streams", config.target.name()),
        (Some(_), _) => format!("{}-durable", config.target.name()),
    };
    Summary {
        target,
        url: config.target.url.clone(),
        scenario: config.scenario,
        pick: config.pick,
        load: config.load,
        clients: config.clients,
        fanout,
        body_bytes: config.body_bytes,
        duration_s: seconds,
        sent: total.sent,
        deliveries: total.deliveries,
        deliveries_per_s: total.deliveries as f64 / seconds,
        megabytes_per_s: total.bytes as f64 / seconds / 1e6,
        latency: Percentiles::of(&histogram),
        sequence: total.counts,
        errors: total.errors,
        error_samples: total.error_samples,
        loadgen_cpu_percent: 0.0,
        server_cpu_percent: None,
        loadgen_cpu_ns_per_delivery: None,
        server_cpu_ns_per_delivery: None,
        server_rss_before_kib: None,
        server_rss_kib: None,
        send_lag: total.send_lag.as_ref().map(Percentiles::of),
        connections,
        durable,
        histogram,
    }
}
