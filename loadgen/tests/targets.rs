//! End-to-end runs of the loadgen against real servers on ephemeral
//! loopback ports: the relayhub hub in-process, nats-server and
//! redis-server as child processes (nats-server with JetStream for the
//! durable mode). The tests that need those two are
//! `#[ignore]`d so that a plain `cargo test` passes without them; CI
//! installs them and runs `cargo test -p relayhub-loadgen --test targets --
//! --ignored`, where a missing binary fails the test
//! (`apt-get install -y nats-server redis-server`).

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use relayhub_loadgen::cli::{run, Args};
use relayhub_loadgen::plan::Pick;
use relayhub_loadgen::summary::Summary;

const SHORT: &str = "--duration 1s --warmup 200ms --drain 3s -q";

fn loadgen(line: &str) -> Vec<Summary> {
    loadgen_for(SHORT, line)
}

/// `loadgen` with its own timing flags instead of [`SHORT`].
fn loadgen_for(timing: &str, line: &str) -> Vec<Summary> {
    let line = format!("relayhub-loadgen {timing} {line}");
    let args = Args::try_parse_from(line.split_whitespace()).expect("valid flags");
    run(&args, line.clone()).unwrap_or_else(|error| panic!("{line}: {error}"))
}

/// Every delivery accounted for, no errors, something delivered.
fn assert_clean(summaries: &[Summary]) {
    for summary in summaries {
        let sequence = &summary.sequence;
        assert_eq!(
            (
                sequence.lost,
                sequence.duplicated,
                sequence.reordered,
                summary.errors
            ),
            (0, 0, 0, 0),
            "{}: {sequence:?}, errors {:?}",
            summary.target,
            summary.error_samples
        );
        assert!(
            summary.deliveries > 0,
            "{}: nothing delivered",
            summary.target
        );
        assert_eq!(
            sequence.received,
            summary.sent * summary.fanout as u64,
            "{}",
            summary.target
        );
        assert!(summary.latency.count > 0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A peer server child process, killed on drop.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Starts `program args` and waits until `port` accepts. Panics when the
/// program is not installed: the tests that call this are ignored by
/// default and must not pass without their peer.
fn start_peer(program: &str, args: &[String], port: u16) -> Peer {
    assert!(
        on_path(program),
        "{program} is not on PATH: this test needs it (apt-get install -y nats-server redis-server)"
    );
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {program}: {error}"));
    let peer = Peer(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{program} did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    peer
}

fn nats() -> (Peer, String) {
    let port = free_port();
    let args = ["-a", "127.0.0.1", "-p", &port.to_string()].map(String::from);
    (
        start_peer("nats-server", &args, port),
        format!("nats://127.0.0.1:{port}"),
    )
}

/// nats-server with JetStream, its store in a fresh temporary directory
/// (removed on drop, after the server).
struct JetStream {
    peer: Option<Peer>,
    store: std::path::PathBuf,
    url: String,
}

impl Drop for JetStream {
    fn drop(&mut self) {
        drop(self.peer.take());
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

fn jetstream() -> JetStream {
    let port = free_port();
    let store =
        std::env::temp_dir().join(format!("relayhub-loadgen-js-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&store).unwrap();
    let args = [
        "-a",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-js",
        "-sd",
        &store.display().to_string(),
    ]
    .map(String::from);
    JetStream {
        peer: Some(start_peer("nats-server", &args, port)),
        store,
        url: format!("nats://127.0.0.1:{port}"),
    }
}

fn redis() -> (Peer, String) {
    let port = free_port();
    let args = [
        "--bind",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .map(String::from);
    (
        start_peer("redis-server", &args, port),
        format!("redis://127.0.0.1:{port}"),
    )
}

#[test]
fn relayhub_traffic_is_clean() {
    let hub =
        relayhub_server::Hub::start(relayhub_server::Config::for_tests(1)).expect("hub starts");
    let url = format!("relayhub://{}", hub.local_addr());
    assert_clean(&loadgen(&format!("--target {url} --clients 16 --window 8")));
    assert_clean(&loadgen(&format!(
        "--target {url} --clients 8 --scenario fanout --fanout 7 --body-bytes 1024"
    )));
    assert_clean(&loadgen(&format!(
        "--target {url} --clients 4 --scenario echo --rate 2000 --body-bytes 0"
    )));
    assert_clean(&loadgen(&format!(
        "--target {url} --clients 4 --window 2 --body-bytes 1048576"
    )));
    assert_clean(&loadgen(&format!(
        "--target {url} --clients 256 --window 1 --scenario fanout --fanout 255 --body-bytes 64"
    )));
    let storm = loadgen(&format!("--target {url} --clients 200 --scenario storm"));
    assert_eq!(storm[0].connections.as_ref().unwrap().connected, 200);
    hub.shutdown();
}

/// `--pick random`: each message goes to a receiver drawn for it, against
/// the sink (which then routes each frame by the receivers it lists) and
/// the hub, closed loop, open loop on two loadgen cores, 1 MiB bodies:
/// every message delivered once, in order within its (sender, receiver)
/// pair, and the windows still drain.
#[test]
fn random_receivers_are_clean() {
    let sink = relayhub_loadgen::sink::Sink::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let hub =
        relayhub_server::Hub::start(relayhub_server::Config::for_tests(1)).expect("hub starts");
    let targets = format!(
        "--target sink://{} --target relayhub://{}",
        sink.local_addr(),
        hub.local_addr()
    );
    for load in [
        "--clients 16 --window 8",
        "--clients 8 --rate 4000 --cores 2",
        "--clients 4 --window 2 --body-bytes 1048576",
    ] {
        let summaries = loadgen(&format!("{targets} --pick random {load}"));
        assert_eq!(summaries.len(), 2, "{load}");
        assert_clean(&summaries);
        assert!(summaries.iter().all(|s| s.pick == Pick::Random), "{load}");
    }
    assert_eq!(sink.stop().unwrap().refused, 0);
    hub.shutdown();
}

/// A durable run is clean (above) and every publication was acknowledged
/// by the server: nothing left unstored, one acknowledgement each.
fn assert_durable_clean(summaries: &[Summary], reconnects: bool) {
    assert_clean(summaries);
    for summary in summaries {
        let durable = summary.durable.as_ref().expect("a durable summary");
        let counts = &durable.counts;
        assert_eq!(counts.unstored, 0, "{}: {counts:?}", summary.target);
        assert_eq!(
            counts.stored, summary.sent,
            "{}: {counts:?}",
            summary.target
        );
        assert!(durable.stored_latency.count > 0, "{}", summary.target);
        assert!(counts.acks > 0, "{}: {counts:?}", summary.target);
        if reconnects {
            assert!(counts.reconnects > 0, "{}: {counts:?}", summary.target);
        }
    }
}

/// relayhub protocol v2 on a two-shard hub: durable sessions, Stored,
/// acks; then with a quarter of the receivers dropping their connection
/// every ~300 ms and resuming (on either shard: the hub hands the socket
/// to the session's owner), retrying unacknowledged relays, dropping
/// redelivered copies by seq: still nothing lost, duplicated or reordered.
#[test]
fn relayhub_durable_is_clean_with_reconnects() {
    let hub =
        relayhub_server::Hub::start(relayhub_server::Config::for_tests(2)).expect("hub starts");
    let url = format!("relayhub://{}", hub.local_addr());
    let plain = loadgen(&format!("--target {url} --durable --clients 16 --window 8"));
    assert!(plain[0].target.ends_with("-durable"), "{}", plain[0].target);
    assert_durable_clean(&plain, false);
    let reconnecting = loadgen_for(
        "--duration 2s --warmup 200ms --drain 3s -q",
        &format!(
            "--target {url} --durable --clients 16 --window 8 \
             --reconnect-share 0.25 --reconnect-every 300ms"
        ),
    );
    assert_durable_clean(&reconnecting, true);
    let counts = reconnecting[0].durable.as_ref().unwrap().counts;
    // 4 receivers, ~300 ms apart, for 2.2 s.
    assert!(counts.reconnects >= 8, "{counts:?}");
    assert_durable_clean(
        &loadgen(&format!(
            "--target {url} --durable --clients 9 --scenario fanout --fanout 8 --window 4 \
             --body-bytes 1024 --reconnect-share 0.3 --reconnect-every 250ms"
        )),
        true,
    );
    assert_durable_clean(
        &loadgen(&format!(
            "--target {url} --durable --clients 8 --rate 4000 --reconnect-share 0.5 \
             --reconnect-every 200ms"
        )),
        true,
    );
    hub.shutdown();
}

/// `--receipts`: every stored relay to a fan-out of 4 comes back as 4
/// receipts, once each after dedup by the sender's inbox seq, with a third
/// of the clients (senders and receivers both: one connection each)
/// dropping and resuming mid-run.
#[test]
fn relayhub_receipts_are_counted_once_per_receiver() {
    let hub =
        relayhub_server::Hub::start(relayhub_server::Config::for_tests(2)).expect("hub starts");
    let url = format!("relayhub://{}", hub.local_addr());
    for reconnect in ["", "--reconnect-share 0.3 --reconnect-every 250ms"] {
        let summaries = loadgen(&format!(
            "--target {url} --durable --receipts --clients 12 --scenario fanout --fanout 4 \
             --window 4 {reconnect}"
        ));
        assert_durable_clean(&summaries, !reconnect.is_empty());
        let counts = summaries[0].durable.as_ref().unwrap().counts;
        assert_eq!(counts.receipts, counts.stored * 4, "{counts:?}");
        assert_eq!(counts.receipts_missing, 0, "{counts:?}");
    }
    hub.shutdown();
}

#[test]
#[ignore = "needs nats-server/redis-server on PATH; CI runs them with --ignored"]
fn nats_and_redis_traffic_is_clean_and_compared() {
    let (_nats, nats_url) = nats();
    let (_redis, redis_url) = redis();
    let summaries = loadgen(&format!(
        "--compare --target {nats_url} --target {redis_url} --clients 16 --window 8"
    ));
    assert_eq!(summaries.len(), 2);
    assert_clean(&summaries);
    let fanout = loadgen(&format!(
        "--target {nats_url} --target {redis_url} --clients 17 --scenario fanout --fanout 16 --body-bytes 1024 --rate 500"
    ));
    assert_clean(&fanout);
    assert_clean(&loadgen(&format!(
        "--target {nats_url} --target {redis_url} --clients 2 --window 1 --body-bytes 1048576"
    )));
    // Receivers drawn per message: subjects and channels named per message.
    assert_clean(&loadgen(&format!(
        "--target {nats_url} --target {redis_url} --clients 16 --window 8 --pick random"
    )));
}

/// The JetStream peer of the durable mode: memory and file streams, 1:1
/// and fan-out, then with receivers reconnecting (explicit acks; the
/// deliveries lost with a connection come back after ack_wait, so they
/// may arrive out of order: JetStream's semantics, counted as reordered,
/// never lost or duplicated).
#[test]
#[ignore = "needs nats-server on PATH; CI runs it with --ignored"]
fn jetstream_durable_is_clean() {
    let js = jetstream();
    let url = &js.url;
    let memory = loadgen(&format!("--target {url} --durable --clients 16 --window 8"));
    assert!(
        memory[0].target.ends_with("-jetstream"),
        "{}",
        memory[0].target
    );
    assert_durable_clean(&memory, false);
    assert_durable_clean(
        &loadgen(&format!(
            "--target {url} --durable --jetstream-storage file --clients 9 \
             --scenario fanout --fanout 8 --window 2 --body-bytes 1024"
        )),
        false,
    );
    let reconnecting = loadgen_for(
        "--duration 1500ms --warmup 200ms --drain 3s -q",
        &format!(
            "--target {url} --durable --clients 8 --window 4 --reconnect-share 0.25 \
             --reconnect-every 400ms --jetstream-ack-wait 500ms"
        ),
    );
    let summary = &reconnecting[0];
    let sequence = &summary.sequence;
    assert_eq!(
        (sequence.lost, sequence.duplicated, summary.errors),
        (0, 0, 0),
        "{sequence:?} {:?}",
        summary.error_samples
    );
    assert_eq!(sequence.received, summary.sent);
    let counts = summary.durable.as_ref().unwrap().counts;
    assert!(counts.reconnects > 0, "{counts:?}");
    assert_eq!(counts.unstored, 0, "{counts:?}");
    // The stream is gone afterwards: a second run creates it again.
    assert_durable_clean(
        &loadgen(&format!("--target {url} --durable --clients 2 --window 1")),
        false,
    );
}

/// The Redis Streams peer of the durable mode: 1:1, fan-out, then with
/// receivers reconnecting (their pending entries are read again first, in
/// order): clean, every XADD acknowledged, the streams gone afterwards.
#[test]
#[ignore = "needs redis-server on PATH; CI runs it with --ignored"]
fn redis_streams_durable_is_clean() {
    let (_redis, url) = redis();
    let plain = loadgen(&format!("--target {url} --durable --clients 16 --window 8"));
    assert!(plain[0].target.ends_with("-streams"), "{}", plain[0].target);
    assert_durable_clean(&plain, false);
    assert_durable_clean(
        &loadgen(&format!(
            "--target {url} --durable --clients 9 --scenario fanout --fanout 8 --window 2 \
             --body-bytes 1024"
        )),
        false,
    );
    assert_durable_clean(
        &loadgen_for(
            "--duration 1500ms --warmup 200ms --drain 3s -q",
            &format!(
                "--target {url} --durable --clients 8 --window 4 --reconnect-share 0.25 \
                 --reconnect-every 300ms"
            ),
        ),
        true,
    );
}

#[test]
#[ignore = "needs nats-server on PATH; CI runs it with --ignored"]
fn jetstream_needs_dash_js() {
    let (_nats, url) = nats();
    let line = format!("relayhub-loadgen {SHORT} --target {url} --durable --clients 2");
    let args = Args::try_parse_from(line.split_whitespace()).unwrap();
    let error = run(&args, line).unwrap_err().to_string();
    assert!(error.contains("start it with -js"), "{error}");
}

#[test]
#[ignore = "needs nats-server/redis-server on PATH; CI runs them with --ignored"]
fn idle_reports_memory_per_connection() {
    let (peer, url) = nats();
    let pid = peer.0.id();
    let summaries = loadgen(&format!(
        "--target {url} --scenario idle --clients 300 --server-pid {pid}"
    ));
    let connections = summaries[0].connections.clone().unwrap();
    assert_eq!(connections.connected, 300);
    assert!(connections.rss_connected_kib.unwrap() > 0);
    let per_connection = connections.bytes_per_connection.unwrap();
    assert!(
        per_connection > 0.0 && per_connection < 1_000_000.0,
        "{per_connection}"
    );
}

#[test]
fn refused_connection_names_the_fix() {
    let port = free_port();
    let line = format!("relayhub-loadgen -q --duration 1s --target nats://127.0.0.1:{port}");
    let args = Args::try_parse_from(line.split_whitespace()).unwrap();
    let error = run(&args, line).unwrap_err().to_string();
    assert_eq!(
        error,
        format!("nats-server not running on 127.0.0.1:{port}: apt-get install nats-server; nats-server -a 127.0.0.1 -p {port}")
    );
}

#[test]
fn sink_traffic_is_clean() {
    let sink = relayhub_loadgen::sink::Sink::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("sink://{}", sink.local_addr());
    assert_clean(&loadgen(&format!("--target {url} --clients 16 --window 8")));
    assert_clean(&loadgen(&format!(
        "--target {url} --clients 17 --scenario fanout --fanout 16 --body-bytes 1024 --cores 1"
    )));
    let open = loadgen(&format!(
        "--target {url} --clients 8 --scenario echo --rate 4000 --body-bytes 0"
    ));
    assert_clean(&open);
    let lag = open[0]
        .send_lag
        .as_ref()
        .expect("open loop reports its send lag");
    assert!(lag.count > 0 && lag.count <= open[0].sent, "{lag:?}");
    assert_clean(&loadgen(&format!(
        "--target {url} --clients 4 --window 4 --body-bytes 1048576"
    )));
    assert_clean(&loadgen(&format!(
        "--target {url} --clients 8 --window 4 --cores 2"
    )));
    let idle = loadgen(&format!("--target {url} --clients 100 --scenario idle"));
    assert_eq!(idle[0].connections.as_ref().unwrap().connected, 100);
    let stats = sink.stop().unwrap();
    assert_eq!(stats.refused, 0);
    assert!(stats.forwarded_bytes > 0);
}
