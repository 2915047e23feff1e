//! The connection scenarios: `storm` (how fast can N clients connect) and
//! `idle` (what N idle connections cost the server).
//!
//! A connection counts once its handshake is complete: relayhub's
//! `Welcome`, NATS' `PONG` after `CONNECT`+`SUB`, Redis' `PONG` after
//! `SUBSCRIBE`, the sink's `Identity` after the hello (one connection per client: no publisher connection here).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::client::Handshake;
use crate::config::RunConfig;
use crate::engine::{connect_range, new_histogram, ExecutorResult, Shared};
use crate::error::LoadgenError;
use crate::plan::client_range;

/// Storm: connect this executor's share as fast as the concurrency allows,
/// recording each connect-to-ready time; hold them until released.
pub async fn storm(
    config: Arc<RunConfig>,
    shared: Arc<Shared>,
    index: usize,
) -> Result<ExecutorResult, LoadgenError> {
    let (first, count) = client_range(config.clients, config.cores, index);
    shared.ready.fetch_add(1, Ordering::AcqRel);
    let Ok(clock) = shared.wait_start().await else {
        return Ok(ExecutorResult::default());
    };
    let outcomes = connect_range(&config, first, count, false, &[], Handshake::Plain).await;
    let connect_ns = clock.now_ns();
    shared.done.fetch_add(1, Ordering::AcqRel);
    let mut result = ExecutorResult {
        connect_ns,
        ..ExecutorResult::default()
    };
    let mut histogram = new_histogram();
    let mut clients = Vec::with_capacity(count);
    for outcome in outcomes {
        match outcome {
            Ok((client, elapsed_ns)) => {
                histogram.saturating_record(elapsed_ns.max(1));
                clients.push(client);
            }
            Err(error) => {
                result.errors += 1;
                if result.error_samples.len() < crate::engine::ERROR_SAMPLES_MAX {
                    result.error_samples.push(error.to_string());
                }
            }
        }
    }
    result.connected = clients.len() as u64;
    shared
        .histogram
        .lock()
        .expect("histogram lock")
        .add(&histogram)
        .expect("same bounds");
    shared.wait_release().await;
    drop(clients);
    Ok(result)
}

/// Idle: connect this executor's share, report ready, hold until released.
pub async fn idle(
    config: Arc<RunConfig>,
    shared: Arc<Shared>,
    index: usize,
) -> Result<ExecutorResult, LoadgenError> {
    let (first, count) = client_range(config.clients, config.cores, index);
    let mut clients = Vec::with_capacity(count);
    let mut histogram = new_histogram();
    for outcome in connect_range(&config, first, count, false, &[], Handshake::Plain).await {
        let (client, elapsed_ns) = outcome?;
        histogram.saturating_record(elapsed_ns.max(1));
        clients.push(client);
    }
    shared
        .histogram
        .lock()
        .expect("histogram lock")
        .add(&histogram)
        .expect("same bounds");
    shared.ready.fetch_add(1, Ordering::AcqRel);
    shared.wait_release().await;
    let connected = clients.len() as u64;
    drop(clients);
    Ok(ExecutorResult {
        connected,
        ..ExecutorResult::default()
    })
}
