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
//! - [`engine`]: per-executor traffic: writers (closed/open loop), readers,
//!   window accounting, drain.
//! - [`connections`]: the storm and idle scenarios.
//! - [`client`]: connect + handshake of one client, per protocol.
//! - [`conn`]: a glommio stream split into read and write halves.
//! - [`plan`]: who sends to whom (random permutation, fan-out sets).
//! - [`header`]: the 20-byte body header; [`checker`]: lost / duplicated /
//!   reordered detection per (sender, receiver).
//! - [`wire`]: sans-IO drivers: [`wire::nats`], [`wire::resp`] (Redis),
//!   [`wire::relayhub`] (over relayhub-protocol), [`wire::inbound`].
//! - [`summary`]: one target's result; [`report`]: table, hgrm, JSON, SVG.
//! - [`sys`]: getrusage, /proc CPU and RSS, the fd limit.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod checker;
pub mod cli;
pub mod client;
pub mod config;
pub mod conn;
pub mod connections;
pub mod engine;
pub mod error;
pub mod header;
pub mod plan;
pub mod report;
pub mod runner;
pub mod summary;
pub mod sys;
pub mod target;
pub mod wire;
