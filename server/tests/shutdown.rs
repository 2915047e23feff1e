//! Graceful shutdown: queued deliveries reach their receivers, sessions get
//! ShuttingDown, and the binary exits 0 on SIGTERM.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use common::*;
use relayhub_client::{Client, ClientError, Event};
use relayhub_protocol::ErrorCode;

/// Reads every delivery, then the closing error.
fn drain_until_closed(client: &mut Client) -> (usize, ErrorCode) {
    let mut delivered = 0;
    loop {
        match client.recv_timeout(EVENT_TIMEOUT) {
            Ok(Some(Event::Deliver { .. })) => delivered += 1,
            Err(ClientError::Hub(error)) => return (delivered, error.code),
            other => panic!("expected deliveries then ShuttingDown, got {other:?}"),
        }
    }
}

#[test]
fn shutdown_delivers_what_is_queued_then_says_why() {
    const MESSAGES: usize = 2000;
    let hub = start(2, |_| {});
    let groups = clients_per_shard(&hub, 2, 1);
    let mut clients = groups.into_iter().flatten();
    let mut sender = clients.next().unwrap();
    let mut receiver = clients.next().unwrap();
    for i in 0..MESSAGES as u32 {
        sender
            .send_relay(&[receiver.user_id()], &i.to_le_bytes())
            .unwrap();
    }
    sender.flush().unwrap();
    // Make sure the hub has read them all (an echo after them is answered
    // only once the relays before it were handled).
    sender.echo(b"barrier").unwrap();
    let stats = hub.shutdown();
    assert_eq!(stats.deliveries, MESSAGES as u64);
    assert_eq!(
        drain_until_closed(&mut receiver),
        (MESSAGES, ErrorCode::ShuttingDown)
    );
    assert_eq!(
        drain_until_closed(&mut sender),
        (0, ErrorCode::ShuttingDown)
    );
}

/// Kills the child hub if the test fails before it exits by itself.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_binary_exits_zero_on_sigterm_after_delivering() {
    let hub = Command::new(env!("CARGO_BIN_EXE_relayhub"))
        .args(["--listen", "127.0.0.1:0", "--shards", "2", "--pin", "false"])
        .env("RELAYHUB_LOG", "info")
        .env("RELAYHUB_STORAGE", "memory")
        .stderr(Stdio::piped())
        .spawn()
        .expect("relayhub starts");
    let mut hub = KillOnDrop(hub);
    let mut log = BufReader::new(hub.0.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert_ne!(
            log.read_line(&mut line).unwrap(),
            0,
            "relayhub exited early"
        );
        if let Some(rest) = line.split("address=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let mut sender = Client::connect(addr.as_str()).unwrap();
    let mut receiver = Client::connect(addr.as_str()).unwrap();
    for i in 0..500u32 {
        sender
            .send_relay(&[receiver.user_id()], &i.to_le_bytes())
            .unwrap();
    }
    sender.flush().unwrap();
    sender.echo(b"barrier").unwrap();
    // SAFETY: kill sends a signal to the child we started.
    unsafe { libc::kill(hub.0.id() as i32, libc::SIGTERM) };
    assert_eq!(
        drain_until_closed(&mut receiver),
        (500, ErrorCode::ShuttingDown)
    );
    let status = hub.0.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    let rest: String = log
        .lines()
        .map_while(Result::ok)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        rest.contains("final counters"),
        "prints its counters: {rest}"
    );
}
