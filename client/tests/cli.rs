//! relayhub-cli end to end, against the model hub of tests/support.

mod support;

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    process::{Command, Output, Stdio},
    time::Duration,
};

use relayhub_client::{Client, Event};
use support::ModelHub;

const CLI: &str = env!("CARGO_BIN_EXE_relayhub-cli");

fn cli(hub: &ModelHub) -> Command {
    let mut command = Command::new(CLI);
    command.env("RELAYHUB_ADDR", hub.addr.to_string());
    command.stdin(Stdio::null());
    command
}

fn run(command: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().unwrap();
    let text = |bytes| String::from_utf8(bytes).unwrap();
    (status.code().unwrap_or(-1), text(stdout), text(stderr))
}

#[test]
fn identity_and_list() {
    let hub = ModelHub::start();
    let watcher = Client::connect(hub.addr).unwrap();
    let (code, out, err) = run(cli(&hub).arg("identity"));
    assert_eq!((code, err.as_str()), (0, ""));
    let me: u64 = out.trim().parse().unwrap();
    assert_ne!(me, watcher.user_id());
    let (code, out, _) = run(cli(&hub).arg("list"));
    assert_eq!(code, 0);
    assert_eq!(out, format!("{}\n", watcher.user_id()));
}

#[test]
fn send_delivers_and_reports_unknown_receivers() {
    let hub = ModelHub::start();
    let mut bob = Client::connect(hub.addr).unwrap();
    let to = format!("{},9999", bob.user_id());
    let (code, out, err) = run(cli(&hub).args(["send", "--to", &to, "hello", "world"]));
    assert_eq!(code, 1, "an unknown receiver makes send fail");
    assert_eq!(out, "");
    assert_eq!(err, "relayhub-cli: user 9999 is not connected\n");
    let delivered = bob.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        matches!(delivered, Some(Event::Deliver { ref body, .. }) if body[..] == *b"hello world"),
        "{delivered:?}"
    );
    let (code, _, err) = run(cli(&hub).args(["send", "--to", &bob.user_id().to_string(), "ok"]));
    assert_eq!((code, err.as_str()), (0, ""));
}

#[test]
fn send_reads_the_body_from_stdin() {
    let hub = ModelHub::start();
    let mut bob = Client::connect(hub.addr).unwrap();
    let mut child = cli(&hub)
        .args(["send", "--to", &bob.user_id().to_string(), "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"line one\nline two\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let delivered = bob.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        matches!(delivered, Some(Event::Deliver { ref body, .. }) if body[..] == *b"line one\nline two\n"),
        "{delivered:?}"
    );
}

#[test]
fn recv_prints_deliveries_then_exits_at_the_count() {
    let hub = ModelHub::start();
    let mut child = cli(&hub)
        .args(["recv", "--count", "2", "--timeout-ms", "10000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    BufReader::new(child.stderr.as_mut().unwrap())
        .read_line(&mut first_line)
        .unwrap();
    let user: u64 = first_line
        .trim()
        .strip_prefix("listening as user ")
        .unwrap()
        .parse()
        .unwrap();
    let mut alice = Client::connect(hub.addr).unwrap();
    alice.relay(&[user], b"hello").unwrap();
    alice.relay(&[user], b"two\nlines").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let from = alice.user_id();
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        format!("from {from}: hello\nfrom {from}: two\\nlines\n")
    );
}

#[test]
fn recv_fails_when_the_count_is_not_met_in_time() {
    let hub = ModelHub::start();
    let (code, out, err) = run(cli(&hub).args(["recv", "-n", "1", "--timeout-ms", "100", "--hex"]));
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.ends_with("received 0 of 1 deliveries in 100 ms\n"),
        "{err}"
    );
}

#[test]
fn echo_hex() {
    let hub = ModelHub::start();
    let (code, out, _) = run(cli(&hub).args(["--hex", "echo", "AB"]));
    assert_eq!((code, out.as_str()), (0, "4142\n"));
}

#[test]
fn interactive_session_from_a_pipe() {
    let hub = ModelHub::start();
    let mut bob = Client::connect(hub.addr).unwrap();
    let bob_id = bob.user_id();
    let mut child = cli(&hub)
        .arg("-i")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let script =
        format!("id\nlist\nsend {bob_id} hello bob\nsend 9999 anyone?\nbogus\necho ping\nquit\n");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let (out, err) = (
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    );
    assert!(output.status.success(), "{out}\n{err}");
    let me = bob_id + 1;
    assert_eq!(
        out,
        format!(
            "connected as user {me} (type `help` for commands)\n\
             you are user {me}\n\
             users: {bob_id}\n\
             echo: ping\n"
        )
    );
    // Two threads write stderr (the command loop, the event reader): the
    // order of their lines is not defined.
    let mut err_lines: Vec<&str> = err.lines().collect();
    err_lines.sort_unstable();
    assert_eq!(
        err_lines,
        [
            "error: user 9999 is not connected",
            "unknown command `bogus`: type `help`"
        ]
    );
    let delivered = bob.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        delivered,
        Some(Event::Deliver {
            from: me,
            body: "hello bob".into()
        })
    );
}

#[test]
fn interactive_prints_deliveries_as_they_arrive() {
    let hub = ModelHub::start();
    let mut child = cli(&hub)
        .arg("interactive")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let user: u64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    let mut alice = Client::connect(hub.addr).unwrap();
    alice.relay(&[user], b"are you there?").unwrap();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, format!("from {}: are you there?\n", alice.user_id()));
    drop(child.stdin.take()); // end of input: quit
    assert!(child.wait().unwrap().success());
}

#[test]
fn no_hub_is_a_clear_error() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let output = Command::new(CLI)
        .args(["--addr", &addr.to_string(), "list"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(output.stderr).unwrap(),
        format!(
            "relayhub-cli: connection refused: is the hub running on {addr}? \
             start it with `cargo run --release -p relayhub-server`\n"
        )
    );
}

#[test]
fn usage_errors_exit_2() {
    let output = Command::new(CLI)
        .args(["send", "--to", "x", "hi"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let output = Command::new(CLI).stdin(Stdio::null()).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8(output.stderr)
        .unwrap()
        .contains("pass -i"));
}
