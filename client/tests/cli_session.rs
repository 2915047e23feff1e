//! relayhub-cli with `--session FILE` (protocol version 2) against the
//! scripted fake hub of tests/support/v2.rs: the session file's life, what
//! recv and send print, what they ack.

mod support;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use relayhub_client::session::SessionState;
use relayhub_protocol::{flags, ClientMessageV2, ErrorCodeV2, Hello};
use support::v2::{scripted_v2, token, HubConnV2};

const CLI: &str = env!("CARGO_BIN_EXE_relayhub-cli");

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "relayhub-cli-session-{name}-{}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir.join("bob.session")
}

fn cli(addr: std::net::SocketAddr, session: &Path) -> Command {
    let mut command = Command::new(CLI);
    command
        .env("RELAYHUB_ADDR", addr.to_string())
        .arg("--session")
        .arg(session)
        .stdin(Stdio::null());
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

/// Reads acks until the client closes; returns the last (0 if none),
/// checking that they increase.
fn acks_until_eof(hub: &mut HubConnV2) -> u64 {
    let mut last = 0;
    while let Some(frame) = hub.try_recv() {
        match frame {
            ClientMessageV2::Ack(ack) => {
                assert!(ack.upto > last, "acks increase");
                last = ack.upto;
            }
            other => panic!("expected acks only, got {other:?}"),
        }
    }
    last
}

#[test]
fn recv_resumes_and_prints_what_arrived_while_away_once() {
    let path = scratch("recv");
    let (addr, hub) = scripted_v2(|hub| {
        let mut first = hub.accept();
        first.accept_new(7, token(1));
        first.deliver(2, 1, 1, b"hello", false).flush();
        assert_eq!(acks_until_eof(&mut first), 1);

        let mut second = hub.accept();
        second.accept_resume(7, token(1), token(2));
        assert_eq!(second.ack(), 1, "the saved floor, acked again");
        second
            .deliver(2, 1, 1, b"hello", true)
            .deliver(2, 2, 2, b"while away", true)
            .deliver(3, 3, 1, b"new", false)
            .flush();
        assert_eq!(acks_until_eof(&mut second), 3);
    });
    let (code, out, err) = run(cli(addr, &path).args(["recv", "-n", "1", "--timeout-ms", "5000"]));
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "from 2: hello\n", "listening as user 7 (new session)\n")
    );
    let saved = SessionState::load(&path).unwrap();
    assert_eq!(
        (saved.user, saved.token, saved.delivered_seq),
        (7, token(1), 1)
    );

    let (code, out, err) = run(cli(addr, &path).args(["recv", "-n", "2", "--timeout-ms", "5000"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "from 2 (redelivered): while away\nfrom 3: new\n");
    assert_eq!(err, "listening as user 7 (resumed session)\n");
    let saved = SessionState::load(&path).unwrap();
    assert_eq!((saved.token, saved.delivered_seq), (token(2), 3));
    hub.join().unwrap();
    fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn send_waits_for_stored_prints_errors_and_receipts() {
    let path = scratch("send");
    let (addr, hub) = scripted_v2(|hub| {
        let mut first = hub.accept();
        first.accept_new(5, token(1));
        let relay = first.relay();
        assert_eq!(
            (
                relay.message_id,
                relay.receivers.as_slice(),
                relay.body.as_slice(),
                relay.flags
            ),
            (1, &[7, 9][..], &b"hi there"[..], flags::RECEIPT)
        );
        first
            .error(ErrorCodeV2::UnknownReceiver, relay.request, 9)
            .stored(relay.request, 1, false)
            .receipt(1, 7, 1)
            .flush();
        assert_eq!(acks_until_eof(&mut first), 1, "the printed receipt");

        // The next send resumes; an unread delivery comes first, so the
        // receipt after it is printed but not acked (acks are cumulative).
        let mut second = hub.accept();
        second.accept_resume(5, token(1), token(2));
        assert_eq!(second.ack(), 1);
        let relay = second.relay();
        assert_eq!(relay.message_id, 2, "the first send closed cleanly");
        second
            .deliver(2, 2, 4, b"for recv", false)
            .stored(relay.request, 2, false)
            .receipt(2, 7, 3)
            .flush();
        assert_eq!(acks_until_eof(&mut second), 0);
    });
    let (code, out, err) = run(cli(addr, &path).args([
        "send",
        "--to",
        "7,9",
        "--receipt",
        "--wait-ms",
        "5000",
        "hi",
        "there",
    ]));
    assert_eq!(code, 1, "a receiver was refused");
    assert_eq!(out, "sent message 1\nreceipt: user 7 got message 1\n");
    assert_eq!(
        err,
        "relayhub-cli: user 9 does not exist (not connected, no durable session)\n"
    );
    let (code, out, err) = run(cli(addr, &path).args(["send", "--to", "7", "--receipt", "again"]));
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(out, "sent message 2\nreceipt: user 7 got message 2\n");
    hub.join().unwrap();
    fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn a_forgotten_session_is_replaced_and_identity_prints_the_id() {
    let path = scratch("replace");
    SessionState {
        user: 7,
        token: token(1),
        delivered_seq: 4,
        next_message_id: 9,
    }
    .save(&path)
    .unwrap();
    let (addr, hub) = scripted_v2(|hub| {
        let mut first = hub.accept();
        let hello = first.hello();
        assert_eq!(hello, Hello::resume(1, 7, token(1)));
        first.refuse(ErrorCodeV2::ResumeRejected, hello.request, 0);
        let mut second = hub.accept();
        second.accept_new(8, token(3));
        match second.recv() {
            ClientMessageV2::Identity(identity) => second
                .queue(&relayhub_protocol::IdentityReply {
                    request: identity.request,
                    user: 8,
                })
                .flush(),
            other => panic!("{other:?}"),
        }
        assert_eq!(acks_until_eof(&mut second), 0);
    });
    let (code, out, err) = run(cli(addr, &path).arg("identity"));
    assert_eq!((code, out.as_str()), (0, "8\n"), "{err}");
    assert!(err.contains("no longer knows session 7"), "{err}");
    let saved = SessionState::load(&path).unwrap();
    assert_eq!(
        (saved.user, saved.token, saved.delivered_seq),
        (8, token(3), 0)
    );
    hub.join().unwrap();
    fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn session_usage_errors() {
    let output = Command::new(CLI)
        .args(["--session", "x", "-i"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8(output.stderr)
        .unwrap()
        .contains("not in interactive mode"));
    let output = Command::new(CLI)
        .args(["send", "--to", "2", "--receipt", "hi"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "--receipt needs --session");
}
