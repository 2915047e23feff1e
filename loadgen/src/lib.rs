//! relayhub-loadgen: a load generator for relayhub, nats-server and
//! redis-server, with latency histograms and side-by-side reports.
//! docs/loadgen.md tells how to use it and how it measures.
//!
//! # Layout
//! - [`cli`]: flags, their checks, running each target, writing outputs.
//! - [`config`]: one run's settings ([`config::RunConfig`]).
//! - [`target`]: `--target` URLs; [`error`]: typed errors with advice.
//! - [`runner`]: the main thread: executors, start signal, progress, CPU
//!   and memory readings, merging results.
//! - [`engine`]: executors, what they share, connecting their clients.
//! - [`traffic`]: per-executor traffic as one epoll loop ([`poll`]): reads,
//!   checks, window accounting, pacing, batched writes, drain.
//! - [`connections`]: the storm and idle scenarios.
//! - [`client`]: connect + handshake of one client, per protocol.
//! - [`plan`]: who sends to whom (random permutation, fan-out sets).
//! - [`header`]: the 20-byte body header; [`checker`]: lost / duplicated /
//!   reordered detection per (sender, receiver).
//! - [`durable`]: `--durable` bookkeeping: unacknowledged publications,
//!   client-side dedup, the durable counters.
//! - [`jetstream`]: the stream and consumers of a durable NATS run, over
//!   the JetStream API; [`redis_streams`]: the streams and consumer groups
//!   of a durable Redis run.
//! - [`wire`]: sans-IO drivers: [`wire::nats`], [`wire::resp`] (Redis),
//!   [`wire::relayhub`] (over relayhub-protocol), [`wire::sink`],
//!   [`wire::inbound`], [`wire::template`] (pre-encoded messages).
//! - [`sink`]: the trivial peer that measures the loadgen alone.
//! - [`summary`]: one target's result; [`report`]: table, hgrm, JSON, SVG.
//! - [`sys`]: getrusage, /proc CPU and RSS, the fd limit.
//! - [`capacity`]: `sweep` (highest rate held per workload) and `plan`
//!   (cores, memory, disk, machines for a population from a sweep).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod capacity;
pub mod checker;
pub mod cli;
pub mod client;
pub mod config;
pub mod connections;
pub mod durable;
pub mod engine;
pub mod error;
pub mod header;
pub mod jetstream;
pub mod outbound;
pub mod plan;
pub mod poll;
pub mod redis_streams;
pub mod report;
pub mod runner;
pub mod sink;
pub mod summary;
pub mod sys;
pub mod target;
pub mod traffic;
pub mod wire;
