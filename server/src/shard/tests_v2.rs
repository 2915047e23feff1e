//! Version 2 in memory: durable sessions, inboxes, the inflight window,
//! acks, redelivery, resume on another shard (hand-off), takeover, retry
//! dedup, expiry and mixed versions.

use bytes::BytesMut;
use relayhub_protocol::{
    encode, flags, preface_for, Ack, ErrorCodeV2, Hello, HubMessageV2, Identity, RelayRef,
    RelayV2Ref, ResumeToken, VERSION_2,
};

use super::tests::{decode_v2, limits, Client, Net};
use super::*;

/// A version-2 client as the tests see it.
#[derive(Clone, Copy, Debug)]
struct Session {
    client: Client,
    token: ResumeToken,
}

fn wire<M: relayhub_protocol::Message>(message: &M) -> BytesMut {
    let mut out = BytesMut::new();
    encode(message, &mut out).unwrap();
    out
}

impl Net {
    /// Opens a version-2 connection on `shard` with `hello`; runs a
    /// hand-off to the owner shard as the driver would.
    pub(super) fn hello(&mut self, shard: usize, hello: Hello) -> (Client, Vec<HubMessageV2>) {
        let id = self.accept(shard);
        let mut bytes = BytesMut::from(&preface_for(VERSION_2)[..]);
        bytes.extend_from_slice(&wire(&hello));
        self.send(shard, id, &bytes);
        let events = self.events(shard);
        let (shard, id) = if events.contains(&Event::HandOff(id)) {
            self.shards[shard].handle_handed_off(self.now_ms, id, Some(99));
            assert_eq!(self.shards[shard].poll_write(id), WriteReady::Done);
            assert_eq!(
                self.shards[shard].poll_read(self.now_ms, id),
                ReadReady::Stop
            );
            assert!(self.shards[shard].handle_closed(id).is_some());
            self.settle();
            let target = (0..self.shards.len())
                .find(|&target| self.shards[target].poll_event_peek_adopt())
                .expect("an owner adopted the connection");
            let adoption = self.shards[target].poll_adoption().expect("adoption");
            assert_eq!(adoption.fd, 99);
            let id = self.shards[target]
                .handle_adopt(self.now_ms, (), &adoption.buffered)
                .map_err(|_| "refused")
                .unwrap();
            (target, id)
        } else {
            (shard, id)
        };
        let user = self.shards[shard].conn(id).map_or(0, |conn| conn.user());
        let client = Client { shard, id, user };
        let messages = self.output_v2(client);
        (client, messages)
    }

    fn new_session(&mut self, shard: usize, durable: bool) -> Session {
        let (client, messages) = self.hello(shard, Hello::new_session(1, durable));
        let HubMessageV2::WelcomeV2(welcome) = &messages[0] else {
            panic!("expected WelcomeV2, got {messages:?}");
        };
        assert_eq!(welcome.user, client.user);
        assert_eq!(welcome.durable, durable);
        Session {
            client,
            token: welcome.token,
        }
    }

    fn resume(&mut self, shard: usize, session: Session) -> (Session, Vec<HubMessageV2>) {
        let (client, mut messages) =
            self.hello(shard, Hello::resume(2, session.client.user, session.token));
        let HubMessageV2::WelcomeV2(welcome) = messages.remove(0) else {
            panic!("expected WelcomeV2, got {messages:?}");
        };
        assert!(welcome.resumed);
        assert_ne!(welcome.token, session.token, "tokens rotate");
        let session = Session {
            client,
            token: welcome.token,
        };
        (session, messages)
    }

    pub(super) fn relay_v2(
        &mut self,
        from: Client,
        request: u64,
        message_id: u64,
        to: &[u64],
        body: &[u8],
    ) {
        self.send_message(
            from,
            &RelayV2Ref {
                request,
                message_id,
                flags: 0,
                receivers: to,
                body,
            },
        );
    }

    /// The client closes its connection; the driver's task ends.
    pub(super) fn disconnect(&mut self, client: Client) {
        let shard = &mut self.shards[client.shard];
        shard.handle_read(self.now_ms, client.id, Read::End);
        while shard.poll_write(client.id) == WriteReady::Write {
            let len = shard.outbound(client.id).unwrap().queued_bytes();
            shard.handle_written(client.id, len);
        }
        assert!(shard.handle_closed(client.id).is_some());
    }
}

impl<Io> Shard<Io> {
    /// True when an adoption is waiting (test helper).
    fn poll_event_peek_adopt(&self) -> bool {
        !self.adoptions.is_empty()
    }
}

fn delivers(messages: &[HubMessageV2]) -> Vec<(u64, u64, Vec<u8>, bool)> {
    messages
        .iter()
        .filter_map(|message| match message {
            HubMessageV2::DeliverV2(deliver) => Some((
                deliver.from,
                deliver.seq,
                deliver.body.clone(),
                deliver.flags & flags::REDELIVERY != 0,
            )),
            _ => None,
        })
        .collect()
}

fn stored(messages: &[HubMessageV2]) -> Vec<(u64, bool)> {
    messages
        .iter()
        .filter_map(|message| match message {
            HubMessageV2::Stored(stored) => Some((stored.request, stored.duplicate)),
            _ => None,
        })
        .collect()
}

fn errors(messages: &[HubMessageV2]) -> Vec<(u16, u64)> {
    messages
        .iter()
        .filter_map(|message| match message {
            HubMessageV2::Error(error) => Some((error.code, error.detail)),
            _ => None,
        })
        .collect()
}

#[test]
fn offline_messages_wait_in_the_inbox_and_come_in_order_on_resume_elsewhere() {
    let mut net = Net::new(2, limits());
    let sender = net.new_session(0, true);
    let receiver = net.new_session(1, true);
    net.disconnect(receiver.client);
    for request in 1..=3 {
        let body = format!("message {request}");
        net.relay_v2(
            sender.client,
            request,
            request,
            &[receiver.client.user],
            body.as_bytes(),
        );
    }
    net.settle();
    assert_eq!(
        stored(&net.output_v2(sender.client)),
        [(1, false), (2, false), (3, false)]
    );
    // Resume on the shard that does not own the session: handed over.
    let (receiver, messages) = net.resume(0, receiver);
    assert_eq!(receiver.client.shard, 1);
    let got = delivers(&messages);
    let expected: Vec<_> = (1..=3)
        .map(|seq| {
            (
                sender.client.user,
                seq,
                format!("message {seq}").into_bytes(),
                false,
            )
        })
        .collect();
    assert_eq!(got, expected);
    // Live messages follow.
    net.relay_v2(sender.client, 4, 4, &[receiver.client.user], b"live");
    net.settle();
    assert_eq!(delivers(&net.output_v2(receiver.client))[0].1, 4);
    net.send_message(receiver.client, &Ack { upto: 4 });
    assert_eq!(net.shards[1].inbox_len(receiver.client.user), Some(0));
}

#[test]
fn the_inflight_window_holds_and_a_full_inbox_refuses() {
    let mut net = Net::new(1, limits());
    let sender = net.new_session(0, true);
    let receiver = net.new_session(0, true);
    let inbox_max = limits().inbox_messages_max;
    for request in 1..=inbox_max + 1 {
        net.relay_v2(
            sender.client,
            request,
            request,
            &[receiver.client.user],
            b"x",
        );
    }
    let window = limits().inflight_messages_max as usize;
    assert_eq!(delivers(&net.output_v2(receiver.client)).len(), window);
    let answers = net.output_v2(sender.client);
    assert_eq!(
        errors(&answers),
        [(ErrorCodeV2::InboxFull.to_wire(), receiver.client.user)]
    );
    assert_eq!(
        stored(&answers).len() as u64,
        inbox_max + 1,
        "every relay gets Stored"
    );
    // An ack opens the window again.
    net.send_message(receiver.client, &Ack { upto: 2 });
    let more = delivers(&net.output_v2(receiver.client));
    assert_eq!(more.iter().map(|d| d.1).collect::<Vec<_>>(), [5, 6]);
}

#[test]
fn a_takeover_closes_the_old_connection_and_redelivers_what_it_did_not_ack() {
    let mut net = Net::new(1, limits());
    let sender = net.new_session(0, true);
    let receiver = net.new_session(0, true);
    for request in 1..=3 {
        net.relay_v2(
            sender.client,
            request,
            request,
            &[receiver.client.user],
            b"m",
        );
    }
    assert_eq!(delivers(&net.output_v2(receiver.client)).len(), 3);
    net.send_message(receiver.client, &Ack { upto: 1 });
    let old = receiver.client;
    let (receiver, messages) = net.resume(0, receiver);
    let old_messages = net.output_v2(old);
    assert_eq!(
        errors(&old_messages),
        [(ErrorCodeV2::SessionTakenOver.to_wire(), 0)]
    );
    assert_eq!(
        delivers(&messages)
            .iter()
            .map(|d| (d.1, d.3))
            .collect::<Vec<_>>(),
        [(2, true), (3, true)]
    );
    assert_eq!(net.shards[0].stats().takeovers.get(), 1);
    let _ = receiver;
}

/// A list that waits for other shards when its session is taken over: the
/// reply is not sent to the new connection, which never asked (it once
/// was: replies went to the user's current connection). Found by the fuzz
/// harness.
#[test]
fn a_list_reply_does_not_follow_a_takeover_to_the_new_connection() {
    let mut net = Net::new(2, limits());
    let session = net.new_session(0, true);
    let owner = session.client.shard;
    net.send_message(
        session.client,
        &relayhub_protocol::List {
            request: 7,
            after: 0,
            limit: 0,
        },
    );
    // The other shard's answer has not come back yet.
    let (resumed, messages) = net.resume(owner, session);
    net.settle();
    let mut later = messages;
    later.extend(net.output_v2(resumed.client));
    assert!(
        !later
            .iter()
            .any(|message| matches!(message, HubMessageV2::ListReply(_))),
        "the new connection got the old one's list reply: {later:?}"
    );
    // Its own list is answered.
    net.send_message(
        resumed.client,
        &relayhub_protocol::List {
            request: 8,
            after: 0,
            limit: 0,
        },
    );
    net.settle();
    let replies: Vec<u64> = net
        .output_v2(resumed.client)
        .iter()
        .filter_map(|message| match message {
            HubMessageV2::ListReply(reply) => Some(reply.request),
            _ => None,
        })
        .collect();
    assert_eq!(replies, [8]);
}

#[test]
fn resumes_with_a_wrong_or_outdated_token_are_rejected() {
    let mut net = Net::new(1, limits());
    let first = net.new_session(0, true);
    net.disconnect(first.client);
    let mut wrong = first;
    wrong.token[0] ^= 1;
    let (_, messages) = net.hello(0, Hello::resume(7, wrong.client.user, wrong.token));
    assert_eq!(
        errors(&messages),
        [(ErrorCodeV2::ResumeRejected.to_wire(), 0)]
    );
    // Someone else's id with our token.
    let other = net.new_session(0, true);
    let (_, messages) = net.hello(0, Hello::resume(7, other.client.user, first.token));
    assert_eq!(
        errors(&messages),
        [(ErrorCodeV2::ResumeRejected.to_wire(), 0)]
    );
    // The current token works; the one before it stays valid until the
    // new one is used (a lost WelcomeV2 cannot lock the client out).
    let (second, _) = net.resume(0, first);
    net.disconnect(second.client);
    let (third, _) = net.resume(0, first);
    net.disconnect(third.client);
    // `second`'s token was replaced before it was ever used: refused.
    let (_, messages) = net.hello(0, Hello::resume(7, first.client.user, second.token));
    assert_eq!(
        errors(&messages),
        [(ErrorCodeV2::ResumeRejected.to_wire(), 0)]
    );
    let (fourth, _) = net.resume(0, third);
    net.disconnect(fourth.client);
    // Once the newest token was used, the ones before it are dead.
    for old in [first.token, second.token] {
        let (_, messages) = net.hello(0, Hello::resume(7, first.client.user, old));
        assert_eq!(
            errors(&messages),
            [(ErrorCodeV2::ResumeRejected.to_wire(), 0)]
        );
    }
}

#[test]
fn a_retried_message_id_is_stored_once() {
    let mut net = Net::new(2, limits());
    let sender = net.new_session(0, true);
    let receiver = net.new_session(1, true);
    net.relay_v2(sender.client, 1, 10, &[receiver.client.user], b"once");
    net.settle();
    net.relay_v2(sender.client, 2, 10, &[receiver.client.user], b"once");
    net.settle();
    assert_eq!(
        stored(&net.output_v2(sender.client)),
        [(1, false), (2, true)]
    );
    assert_eq!(delivers(&net.output_v2(receiver.client)).len(), 1);
    assert_eq!(net.shards[0].stats().duplicates.get(), 1);
}

#[test]
fn version_one_and_two_relay_to_each_other() {
    let mut net = Net::new(2, limits());
    let old = net.connect(0);
    let durable = net.new_session(1, true);
    net.relay(old, 5, &[durable.client.user], b"from v1");
    net.settle();
    let got = delivers(&net.output_v2(durable.client));
    assert_eq!(got, [(old.user, 1, b"from v1".to_vec(), false)]);
    net.relay_v2(durable.client, 6, 1, &[old.user], b"from v2");
    net.settle();
    let got = net.take_output(0, old.id);
    assert!(
        matches!(got.as_slice(), [relayhub_protocol::HubMessage::Deliver(d)] if d.body == b"from v2" && d.from == durable.client.user),
        "{got:?}"
    );
}

#[test]
fn a_detached_session_expires_and_its_id_is_unknown_after() {
    let mut net = Net::new(
        1,
        Limits {
            idle_timeout_ms: 0,
            ..limits()
        },
    );
    let sender = net.new_session(0, true);
    let receiver = net.new_session(0, true);
    net.disconnect(receiver.client);
    net.advance(limits().session_expiry_ms + SESSION_SWEEP_MS);
    assert_eq!(net.shards[0].stats().sessions_expired.get(), 1);
    net.relay_v2(sender.client, 1, 1, &[receiver.client.user], b"late");
    let answers = net.output_v2(sender.client);
    assert_eq!(
        errors(&answers),
        [(ErrorCodeV2::UnknownReceiver.to_wire(), receiver.client.user)]
    );
    let (_, messages) = net.hello(0, Hello::resume(3, receiver.client.user, receiver.token));
    assert_eq!(
        errors(&messages),
        [(ErrorCodeV2::ResumeRejected.to_wire(), 0)]
    );
}

#[test]
fn a_version_two_connection_must_say_hello_first() {
    let mut net = Net::new(1, limits());
    let id = net.accept(0);
    let mut bytes = BytesMut::from(&preface_for(VERSION_2)[..]);
    bytes.extend_from_slice(&wire(&Identity { request: 1 }));
    net.send(0, id, &bytes);
    let raw = net.take_bytes(0, id);
    assert!(raw.starts_with(&preface_for(VERSION_2)));
    assert_eq!(
        errors(&decode_v2(&raw)),
        [(
            ErrorCodeV2::HelloRequired.to_wire(),
            u64::from(relayhub_protocol::kind::IDENTITY)
        )]
    );
    assert_eq!(net.shards[0].stats().protocol_errors.get(), 1);
}

/// An `Ack` above the highest `seq` sent closes the connection with
/// `AckOutOfRange` (detail: that `seq`), counted as a protocol error; the
/// session lives on and resumes.
#[test]
fn an_ack_beyond_what_was_sent_closes_with_ack_out_of_range() {
    let mut net = Net::new(1, limits());
    let receiver = net.new_session(0, true);
    let sender = net.new_session(0, false);
    net.relay_v2(sender.client, 1, 1, &[receiver.client.user], b"one");
    let messages = net.output_v2(receiver.client);
    assert!(matches!(messages.as_slice(), [HubMessageV2::DeliverV2(d)] if d.seq == 1));
    net.send_message(receiver.client, &relayhub_protocol::Ack { upto: 5 });
    let messages = net.output_v2(receiver.client);
    assert_eq!(
        errors(&messages),
        [(ErrorCodeV2::AckOutOfRange.to_wire(), 1)]
    );
    assert_eq!(net.shards[0].stats().protocol_errors.get(), 1);
    net.disconnect(receiver.client);
    let (_, redelivered) = net.resume(0, receiver);
    assert!(
        matches!(redelivered.as_slice(), [HubMessageV2::DeliverV2(d)] if d.seq == 1 && d.body == b"one"),
        "{redelivered:?}"
    );
}

#[test]
fn a_version_one_relay_to_a_full_inbox_reads_receiver_dropped() {
    let mut net = Net::new(1, limits());
    let old = net.connect(0);
    let durable = net.new_session(0, true);
    for request in 0..=limits().inbox_messages_max {
        net.send_message(
            old,
            &RelayRef {
                request,
                receivers: &[durable.client.user],
                body: b"x",
            },
        );
    }
    let got = net.take_output(0, old.id);
    assert_eq!(got.len(), 1, "{got:?}");
    let relayhub_protocol::HubMessage::Error(error) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(error.code, ErrorCodeV2::ReceiverDropped.to_wire());
}

/// The "same body to the same receiver within 5 s" rule, whoever sends it.
#[test]
fn content_dedup_drops_the_same_body_to_the_same_receiver_within_the_window() {
    let mut net = Net::new(
        2,
        Limits {
            content_dedup_window_ms: 5_000,
            idle_timeout_ms: 0,
            ..limits()
        },
    );
    let alice = net.new_session(0, true);
    let bob = net.new_session(1, false);
    let carol = net.new_session(0, true);
    let dave = net.new_session(1, true);
    let mut request = 0;
    let mut send = |net: &mut Net, from: Session, to: &[u64]| {
        request += 1;
        net.relay_v2(from.client, request, request, to, b"same words");
        net.settle();
        net.output_v2(from.client)
    };
    // 0 s: delivered. 4.9 s: dropped, the sender told, Stored still follows.
    assert!(errors(&send(&mut net, alice, &[carol.client.user])).is_empty());
    net.advance(4_900);
    let answers = send(&mut net, alice, &[carol.client.user]);
    assert_eq!(
        errors(&answers),
        [(ErrorCodeV2::DuplicateContent.to_wire(), carol.client.user)]
    );
    assert_eq!(stored(&answers).len(), 1);
    // From another sender (an ephemeral one, on the other shard): dropped.
    let answers = send(&mut net, bob, &[carol.client.user]);
    assert_eq!(
        errors(&answers),
        [(ErrorCodeV2::DuplicateContent.to_wire(), carol.client.user)]
    );
    // To two different receivers: both delivered.
    assert!(errors(&send(&mut net, alice, &[dave.client.user])).is_empty());
    // 5.1 s after the first: delivered again.
    net.advance(200);
    assert!(errors(&send(&mut net, alice, &[carol.client.user])).is_empty());
    let got = delivers(&net.output_v2(carol.client));
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(delivers(&net.output_v2(dave.client)).len(), 1);
    assert_eq!(net.shards[0].stats().content_duplicates.get(), 2);
}

/// A retry whose first attempt was stored, with the sender's high-water
/// mark lost (a crash before its record was durable), is still recognised
/// where it was stored.
#[test]
fn a_retry_is_recognised_by_the_receivers_shard_without_the_senders_mark() {
    let mut net = Net::new(2, limits());
    let sender = net.new_session(0, true);
    let receiver = net.new_session(1, true);
    net.relay_v2(sender.client, 1, 7, &[receiver.client.user], b"once");
    net.settle();
    assert_eq!(stored(&net.output_v2(sender.client)), [(1, false)]);
    // Forget the sender-side mark, as a crash before its record would.
    *net.shards[0].message_id_high(sender.client.id) = 0;
    net.relay_v2(sender.client, 2, 7, &[receiver.client.user], b"once");
    net.settle();
    assert_eq!(stored(&net.output_v2(sender.client)), [(2, true)]);
    assert_eq!(delivers(&net.output_v2(receiver.client)).len(), 1);
}

#[test]
fn an_over_limit_frame_before_hello_is_still_hello_required() {
    let mut net = Net::new(1, limits());
    let id = net.accept(0);
    let mut bytes = BytesMut::from(&preface_for(VERSION_2)[..]);
    let too_many: Vec<u64> = (1..=300).collect();
    bytes.extend_from_slice(&wire(&RelayV2Ref {
        request: 1,
        message_id: 0,
        flags: 0,
        receivers: &too_many,
        body: b"",
    }));
    net.send(0, id, &bytes);
    let raw = net.take_bytes(0, id);
    assert!(raw.starts_with(&preface_for(VERSION_2)));
    assert_eq!(
        errors(&decode_v2(&raw)),
        [(ErrorCodeV2::HelloRequired.to_wire(), 0)]
    );
}

/// The errors of a relay that another shard answers go to the connection
/// that sent it, like its `Stored`: when that connection closed and the
/// session was resumed meanwhile, the new connection is not told (its
/// request ids are its own; a stray error would name one of them).
#[test]
fn a_closed_connections_relay_errors_do_not_reach_the_resumed_one() {
    let mut net = Net::new(2, limits());
    let sender = net.new_session(0, true);
    let nobody = 1_000_001; // owned by shard 1, and nobody's
    net.relay_v2(sender.client, 1, 7, &[nobody], b"to nobody");
    net.disconnect(sender.client);
    let (resumed, messages) = net.resume(0, sender);
    assert!(messages.is_empty(), "{messages:?}");
    // Shard 1 answers the old connection's relay only now.
    net.settle();
    let stray = net.output_v2(resumed.client);
    assert!(stray.is_empty(), "{stray:?}");
    // The resumed connection's own relays get their errors as usual.
    net.relay_v2(resumed.client, 1, 8, &[nobody], b"to nobody");
    net.settle();
    let answers = net.output_v2(resumed.client);
    assert_eq!(
        errors(&answers),
        [(ErrorCodeV2::UnknownReceiver.to_wire(), nobody)]
    );
    assert_eq!(stored(&answers), [(1, false)]);
}

/// A half-close before the answers from another shard came: the
/// connection stays writable until its `Stored`, its receivers' errors and
/// its list reply are queued, then ends cleanly.
#[test]
fn a_half_closed_connection_gets_the_answers_other_shards_owe_it() {
    let mut net = Net::new(2, limits());
    let sender = net.new_session(0, true);
    let receiver = loop {
        let session = net.new_session(1, true);
        if session.client.shard != sender.client.shard {
            break session;
        }
    };
    let nobody = 1_000_001; // owned by shard 1, and nobody's
    let from = sender.client;
    net.relay_v2(from, 1, 7, &[receiver.client.user], b"across");
    net.relay_v2(from, 2, 8, &[nobody], b"to nobody");
    net.send_message(
        from,
        &relayhub_protocol::List {
            request: 3,
            after: 0,
            limit: 0,
        },
    );
    net.shards[from.shard].handle_read(net.now_ms, from.id, Read::End);
    assert!(
        net.output_v2(from).is_empty(),
        "answered before the mesh ran"
    );
    assert_eq!(
        net.shards[from.shard].poll_write(from.id),
        WriteReady::Idle,
        "ended before its answers came"
    );
    net.settle();
    let answers = net.output_v2(from);
    assert_eq!(stored(&answers), [(1, false), (2, false)]);
    assert_eq!(
        errors(&answers),
        [(ErrorCodeV2::UnknownReceiver.to_wire(), nobody)]
    );
    assert!(answers
        .iter()
        .any(|message| matches!(message, HubMessageV2::ListReply(reply) if reply.request == 3)));
    assert_eq!(net.shards[from.shard].poll_write(from.id), WriteReady::Done);
    assert_eq!(delivers(&net.output_v2(receiver.client)).len(), 1);
}

/// An inbox that remembers `RETRY_DEDUP_SENDERS_MAX` senders and refuses a
/// new sender's message keeps that refusal: the sender's next message is
/// stored, and its retry of the refused one is stored too, not taken for a
/// retry of something stored (the refusal's mark was the one forgotten to
/// make room, and the refused message was lost).
#[test]
fn a_refusal_at_the_sender_bound_is_not_forgotten() {
    let senders = sessions::RETRY_DEDUP_SENDERS_MAX as u64;
    let mut net = Net::new(
        1,
        Limits {
            connections_max: 2 * senders as usize,
            inbox_messages_max: senders,
            inflight_messages_max: 2 * senders,
            ..limits()
        },
    );
    let receiver = net.new_session(0, true);
    for _ in 0..senders {
        net.now_ms += 1;
        let (sender, _) = net.hello(0, Hello::new_session(1, false));
        net.relay_v2(sender, 1, 1, &[receiver.client.user], b"fills");
        assert_eq!(stored(&net.output_v2(sender)), [(1, false)]);
    }
    // The inbox is full and remembers as many senders as it can.
    net.now_ms += 1;
    let (late, _) = net.hello(0, Hello::new_session(1, false));
    net.relay_v2(late, 1, 1, &[receiver.client.user], b"refused first");
    assert_eq!(
        errors(&net.output_v2(late)),
        [(ErrorCodeV2::InboxFull.to_wire(), receiver.client.user)]
    );
    let delivered = delivers(&net.output_v2(receiver.client));
    assert_eq!(delivered.len() as u64, senders);
    net.send_message(receiver.client, &Ack { upto: senders });
    net.now_ms += 1;
    net.relay_v2(late, 2, 2, &[receiver.client.user], b"second");
    net.relay_v2(late, 3, 1, &[receiver.client.user], b"refused first");
    let answers = net.output_v2(late);
    assert_eq!(stored(&answers), [(2, false), (3, false)], "{answers:?}");
    let bodies: Vec<Vec<u8>> = delivers(&net.output_v2(receiver.client))
        .into_iter()
        .map(|(_, _, body, _)| body)
        .collect();
    assert_eq!(bodies, [b"second".to_vec(), b"refused first".to_vec()]);
}
