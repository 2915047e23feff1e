//! Typed errors of the loadgen. The binary turns them into messages at its
//! edge; each one says what to do about it.

use std::fmt;
use std::net::SocketAddr;

use crate::target::TargetKind;

/// Everything that can stop a run.
#[derive(Debug)]
pub enum LoadgenError {
    /// A `--target` that could not be parsed.
    BadUrl { url: String, reason: &'static str },
    /// Nothing listens at the target's address.
    ConnectionRefused {
        kind: TargetKind,
        address: SocketAddr,
    },
    /// Connecting or talking to the target failed otherwise.
    Io {
        kind: TargetKind,
        address: SocketAddr,
        source: std::io::Error,
    },
    /// The target answered something the driver did not expect during setup.
    Handshake {
        kind: TargetKind,
        address: SocketAddr,
        detail: String,
    },
    /// The options ask for something the scenario cannot do.
    BadOptions(String),
    /// The executors could not be started (io_memory, RLIMIT_MEMLOCK, ...).
    Executor(String),
}

impl LoadgenError {
    /// Wraps an IO error, turning "connection refused" into advice.
    pub fn io(kind: TargetKind, address: SocketAddr, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::ConnectionRefused
            || source.raw_os_error() == Some(libc::ECONNREFUSED)
        {
            return LoadgenError::ConnectionRefused { kind, address };
        }
        LoadgenError::Io {
            kind,
            address,
            source,
        }
    }
}

impl fmt::Display for LoadgenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadgenError::BadUrl { url, reason } => write!(
                f,
                "bad target URL {url:?}: {reason} (expected relayhub://HOST:PORT, \
                 nats://HOST:PORT, redis://HOST:PORT or sink://HOST:PORT)"
            ),
            LoadgenError::ConnectionRefused { kind, address } => {
                let ip = address.ip();
                let port = address.port();
                let hint = match kind {
                    TargetKind::Relayhub => {
                        format!("cargo build --release -p relayhub-server; target/release/relayhub --port {port}")
                    }
                    TargetKind::Nats => {
                        format!("apt-get install nats-server; nats-server -a {ip} -p {port}")
                    }
                    TargetKind::Sink => {
                        format!("relayhub-loadgen --sink-listen {address}")
                    }
                    TargetKind::Redis => format!(
                        "apt-get install redis-server; redis-server --bind {ip} --port {port} --save '' --appendonly no"
                    ),
                };
                write!(f, "{} not running on {address}: {hint}", kind.server_name())
            }
            LoadgenError::Io {
                kind,
                address,
                source,
            } => {
                write!(f, "{} at {address}: {source}", kind.server_name())
            }
            LoadgenError::Handshake {
                kind,
                address,
                detail,
            } => {
                write!(
                    f,
                    "{} at {address}: unexpected handshake: {detail}",
                    kind.server_name()
                )
            }
            LoadgenError::BadOptions(message) => write!(f, "bad options: {message}"),
            LoadgenError::Executor(message) => write!(f, "cannot start executors: {message}"),
        }
    }
}

impl std::error::Error for LoadgenError {}
