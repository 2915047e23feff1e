//! Targets: which server to drive and where, parsed from `--target` URLs.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

use crate::error::LoadgenError;

/// The kind of server behind a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// The relayhub hub, over its binary protocol.
    Relayhub,
    /// nats-server, over the NATS text protocol (one subject per client).
    Nats,
    /// redis-server pub/sub over RESP2 (one channel per client).
    Redis,
    /// The loadgen's own sink (`--sink-listen`): relayhub frames forwarded
    /// untouched, to measure the loadgen alone.
    Sink,
}

impl TargetKind {
    /// The URL scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            TargetKind::Relayhub => "relayhub",
            TargetKind::Nats => "nats",
            TargetKind::Redis => "redis",
            TargetKind::Sink => "sink",
        }
    }

    /// The server program's name, for messages.
    pub fn server_name(self) -> &'static str {
        match self {
            TargetKind::Relayhub => "relayhub",
            TargetKind::Nats => "nats-server",
            TargetKind::Redis => "redis-server",
            TargetKind::Sink => "sink",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            TargetKind::Relayhub => 7878,
            TargetKind::Nats => 4222,
            TargetKind::Redis => 6379,
            TargetKind::Sink => 7880,
        }
    }
}

/// One parsed `--target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Which server.
    pub kind: TargetKind,
    /// Where it listens.
    pub address: SocketAddr,
    /// The URL as given, for reports.
    pub url: String,
}

impl Target {
    /// Parses `scheme://host[:port]`; a missing port takes the server's default.
    ///
    /// ```
    /// use relayhub_loadgen::target::{Target, TargetKind};
    /// let target = Target::parse("nats://127.0.0.1").unwrap();
    /// assert_eq!(target.kind, TargetKind::Nats);
    /// assert_eq!(target.address.port(), 4222);
    /// ```
    pub fn parse(url: &str) -> Result<Target, LoadgenError> {
        let bad = |reason| LoadgenError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let (scheme, rest) = url.split_once("://").ok_or(bad("missing \"scheme://\""))?;
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "relayhub" => TargetKind::Relayhub,
            "nats" => TargetKind::Nats,
            "redis" => TargetKind::Redis,
            "sink" => TargetKind::Sink,
            _ => return Err(bad("unknown scheme")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() {
            return Err(bad("missing host"));
        }
        if authority.contains(['/', '?', '#', '@']) {
            return Err(bad("paths, queries and credentials are not supported"));
        }
        let with_port = if has_port(authority) {
            authority.to_string()
        } else {
            format!("{authority}:{}", kind.default_port())
        };
        let address = with_port
            .to_socket_addrs()
            .map_err(|_| bad("cannot resolve host or port"))?
            .next()
            .ok_or(bad("host resolves to no address"))?;
        Ok(Target {
            kind,
            address,
            url: url.to_string(),
        })
    }

    /// A short name for reports and file suffixes, e.g. `nats`, or
    /// `nats-4223` when the port is not the default.
    pub fn name(&self) -> String {
        if self.address.port() == self.kind.default_port() {
            self.kind.scheme().to_string()
        } else {
            format!("{}-{}", self.kind.scheme(), self.address.port())
        }
    }
}

fn has_port(authority: &str) -> bool {
    if let Some(end) = authority.rfind(']') {
        // [v6]:port
        return authority[end..].contains(':');
    }
    authority.contains(':')
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.kind.scheme(), self.address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_scheme() {
        let hub = Target::parse("relayhub://127.0.0.1:7878").unwrap();
        assert_eq!(hub.kind, TargetKind::Relayhub);
        assert_eq!(hub.address, "127.0.0.1:7878".parse::<SocketAddr>().unwrap());
        assert_eq!(hub.name(), "relayhub");
        let redis = Target::parse("REDIS://127.0.0.1:6390/").unwrap();
        assert_eq!(redis.kind, TargetKind::Redis);
        assert_eq!(redis.name(), "redis-6390");
        let nats = Target::parse("nats://localhost").unwrap();
        assert_eq!(nats.address.port(), 4222);
        let v6 = Target::parse("nats://[::1]:4333").unwrap();
        assert_eq!(v6.address, "[::1]:4333".parse::<SocketAddr>().unwrap());
        let v6_default = Target::parse("nats://[::1]").unwrap();
        assert_eq!(v6_default.address.port(), 4222);
    }

    #[test]
    fn refuses_bad_urls_with_a_reason() {
        for (url, reason) in [
            ("127.0.0.1:7878", "missing \"scheme://\""),
            ("http://127.0.0.1", "unknown scheme"),
            ("nats://", "missing host"),
            (
                "redis://127.0.0.1:6379/0",
                "paths, queries and credentials are not supported",
            ),
            (
                "redis://user@127.0.0.1",
                "paths, queries and credentials are not supported",
            ),
            ("nats://127.0.0.1:99999", "cannot resolve host or port"),
        ] {
            match Target::parse(url) {
                Err(LoadgenError::BadUrl { reason: got, .. }) => assert_eq!(got, reason, "{url}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        let message = Target::parse("http://x").unwrap_err().to_string();
        assert!(message.contains("relayhub://HOST:PORT"), "{message}");
    }

    #[test]
    fn refused_message_names_the_fix() {
        let address = "127.0.0.1:4222".parse::<SocketAddr>().unwrap();
        let error = LoadgenError::io(
            TargetKind::Nats,
            address,
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        );
        assert_eq!(
            error.to_string(),
            "nats-server not running on 127.0.0.1:4222: apt-get install nats-server; \
             nats-server -a 127.0.0.1 -p 4222"
        );
    }
}
