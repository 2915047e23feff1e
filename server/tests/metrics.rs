//! `--metrics-listen` scraped as Prometheus would: the exposition parses,
//! counters are labelled by shard and move with traffic, /healthz answers.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
};

use common::{connect, expect_deliver, start};

fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: hub\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a full response");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The scrape parsed with a Prometheus text-format parser: `(name, shard
/// label, value)` samples.
fn scrape(addr: SocketAddr) -> Vec<(String, Option<String>, f64)> {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        body.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    let lines = body.lines().map(|line| Ok(line.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("a valid exposition");
    scrape
        .samples
        .into_iter()
        .map(|sample| {
            let value = match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            };
            (
                sample.metric,
                sample.labels.get("shard").map(str::to_string),
                value,
            )
        })
        .collect()
}

fn total(samples: &[(String, Option<String>, f64)], name: &str) -> f64 {
    samples
        .iter()
        .filter(|(metric, _, _)| metric == name)
        .map(|(_, _, value)| value)
        .sum()
}

#[test]
fn counters_move_with_traffic_and_carry_shard_labels() {
    let hub = start(2, |config| {
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap())
    });
    let addr = hub.metrics_addr().expect("metrics are on");
    assert_eq!(get(addr, "/healthz").0, "HTTP/1.1 200 OK");
    assert_eq!(get(addr, "/nothing").0, "HTTP/1.1 404 Not Found");
    let before = scrape(addr);
    assert_eq!(total(&before, "relayhub_relays_total"), 0.0);
    let shards: std::collections::BTreeSet<_> = before
        .iter()
        .filter(|(name, _, _)| name == "relayhub_relays_total")
        .filter_map(|(_, shard, _)| shard.clone())
        .collect();
    assert_eq!(shards.len(), 2, "one series per shard: {shards:?}");
    // Every family lists its shards in order, `shard="0"` first (read off
    // the text: the parser groups histogram samples in a map).
    let (_, body) = get(addr, "/metrics");
    let mut order: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
    for line in body.lines().filter(|line| !line.starts_with('#')) {
        let (name, labels) = line.split_once('{').expect("every sample has labels");
        let shard = labels
            .split_once("shard=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(shard, _)| shard.parse::<u64>().expect("a shard index"))
            .expect("every sample has a shard");
        order.entry(name).or_default().push(shard);
    }
    assert!(order.len() > 40, "{order:?}");
    for (name, shards) in &order {
        assert!(
            shards.is_sorted(),
            "{name}: samples in shard order {shards:?}"
        );
        assert_eq!(
            (shards.first(), shards.last()),
            (Some(&0), Some(&1)),
            "{name}"
        );
    }
    // Every metric follows the conventions: prefix, and _total on counters.
    assert!(before
        .iter()
        .all(|(name, _, _)| name.starts_with("relayhub_")));

    let mut a = connect(&hub);
    let mut b = connect(&hub);
    for _ in 0..5 {
        a.relay(&[b.user_id()], b"counted").unwrap();
        expect_deliver(&mut b, a.user_id(), b"counted");
    }
    a.relay(&[999_999], b"to nobody").unwrap();
    common::expect_error(
        &mut a,
        relayhub_protocol::ErrorCode::UnknownReceiver,
        6,
        999_999,
    );
    let after = scrape(addr);
    assert_eq!(total(&after, "relayhub_relays_total"), 6.0);
    assert_eq!(total(&after, "relayhub_deliveries_total"), 5.0);
    assert_eq!(total(&after, "relayhub_unknown_receivers_total"), 1.0);
    assert_eq!(total(&after, "relayhub_connections_open"), 2.0);
    assert!(total(&after, "relayhub_received_bytes_total") > 0.0);
    let _ = &mut b;
    hub.shutdown();
}

/// The answers docs/operations.md gives, byte for byte, and the exposition's
/// shape a strict OpenMetrics parser needs: one family per metric (the
/// fsync histogram too, with two shards), help texts ending in one period.
#[test]
fn answers_are_as_documented_and_healthz_says_503_while_shutting_down() {
    let hub = start(2, |config| {
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap())
    });
    let addr = hub.metrics_addr().expect("metrics are on");
    assert_eq!(
        get(addr, "/healthz"),
        ("HTTP/1.1 200 OK".to_string(), "ok\n".to_string())
    );
    assert_eq!(
        get(addr, "/metrics?x"),
        (
            "HTTP/1.1 404 Not Found".to_string(),
            "try /metrics or /healthz\n".to_string()
        )
    );
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "HEAD /healthz HTTP/1.1\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
    assert!(response.ends_with("\r\n\r\nGET only\n"), "{response:?}");

    let (_, body) = get(addr, "/metrics");
    let fsync_types = body
        .lines()
        .filter(|line| line.starts_with("# TYPE relayhub_fsync_duration_seconds "))
        .count();
    assert_eq!(fsync_types, 1, "one fsync family for both shards");
    for shard in ["0", "1"] {
        assert!(
            body.contains(&format!(
                "relayhub_fsync_duration_seconds_count{{shard=\"{shard}\"}}"
            )),
            "shard {shard}'s fsync samples"
        );
    }
    let helps: Vec<&str> = body.lines().filter(|l| l.starts_with("# HELP ")).collect();
    assert!(!helps.is_empty());
    for help in helps {
        assert!(
            help.ends_with('.') && !help.ends_with(".."),
            "help ends in one period: {help}"
        );
    }

    // From the moment shutdown is asked for until the shards have stopped,
    // /healthz answers 503; /metrics keeps answering.
    hub.request_shutdown();
    assert_eq!(
        get(addr, "/healthz"),
        (
            "HTTP/1.1 503 Service Unavailable".to_string(),
            "shutting down\n".to_string()
        )
    );
    assert_eq!(get(addr, "/metrics").0, "HTTP/1.1 200 OK");
    hub.shutdown();
    // The metrics thread closes its port right after the hub has stopped.
    let closing = std::time::Instant::now();
    while TcpStream::connect(addr).is_ok() {
        assert!(
            closing.elapsed() < std::time::Duration::from_secs(5),
            "the endpoint closes once the hub has stopped"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
