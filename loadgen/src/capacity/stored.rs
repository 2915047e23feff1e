//! Server memory per stored message, on a relayhub target: durable
//! sessions are opened and left offline, one durable sender relays bodies
//! to them round robin (pipelined, every relay answered `Stored`), and the
//! server's RSS growth is divided by the messages stored. The sessions and
//! their inboxes stay on the hub afterwards, so the sweep measures this
//! last.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::BytesMut;

use super::StoredRow;
use crate::wire::{relayhub, Event};

/// Offline receivers the stored messages are spread over.
pub const STORED_RECEIVERS: usize = 64;

/// Relays the sender keeps unanswered at most.
const STORED_WINDOW: u64 = 256;

/// How long to let the server settle before reading its RSS.
const SETTLE: Duration = Duration::from_millis(500);

/// One blocking version-2 connection.
struct Conn {
    stream: TcpStream,
    decoder: relayhub_protocol::Decoder<relayhub_protocol::ClientSideV2>,
}

impl Conn {
    /// Connects and opens a new durable session: `(connection, user id)`.
    fn durable(address: SocketAddr) -> Result<(Conn, u64), String> {
        let stream = TcpStream::connect(address).map_err(|e| format!("{address}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut conn = Conn {
            stream,
            decoder: relayhub::new_decoder_v2(),
        };
        let mut hello = BytesMut::from(&relayhub::CLIENT_PREFACE_V2[..]);
        relayhub::encode_hello(&mut hello, 1, None).map_err(|e| e.to_string())?;
        conn.write(&hello)?;
        let mut user = None;
        conn.read_until(&mut |event| match event {
            Event::WelcomeV2 {
                user: id,
                durable: true,
                ..
            } => {
                user = Some(id);
                Ok(true)
            }
            Event::WelcomeV2 { .. } => Err("the hub granted an ephemeral session".into()),
            Event::HubError { code, detail, .. } => Err(format!("hub error {code} ({detail})")),
            _ => Ok(false),
        })?;
        Ok((conn, user.expect("welcomed")))
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream.write_all(bytes).map_err(|e| e.to_string())
    }

    /// Reads events until `each` says done.
    fn read_until(
        &mut self,
        each: &mut dyn FnMut(Event<'_>) -> Result<bool, String>,
    ) -> Result<(), String> {
        loop {
            while let Some(event) =
                relayhub::next_event_v2(&mut self.decoder).map_err(|e| e.to_string())?
            {
                if each(event)? {
                    return Ok(());
                }
            }
            let spare = self.decoder.spare();
            match self.stream.read(spare) {
                Ok(0) => return Err("the hub closed the connection".into()),
                Ok(read) => self.decoder.commit(read),
                Err(error) => return Err(error.to_string()),
            }
        }
    }
}

/// Stores `messages` bodies of `body_bytes` for offline sessions on the
/// hub at `address` (process `pid`) and measures RSS per message.
pub fn measure(
    label: &str,
    address: SocketAddr,
    pid: u32,
    messages: u64,
    body_bytes: usize,
) -> Result<StoredRow, String> {
    let rss = || crate::sys::process_rss_kib(pid).ok_or("cannot read the server's RSS");
    let mut receivers = Vec::with_capacity(STORED_RECEIVERS);
    for _ in 0..STORED_RECEIVERS {
        // Dropping the connection leaves the session offline.
        receivers.push(Conn::durable(address)?.1);
    }
    std::thread::sleep(SETTLE);
    let before = rss()?;
    let (mut sender, _) = Conn::durable(address)?;
    let body = vec![0x5a; body_bytes];
    let (mut sent, mut stored) = (0u64, 0u64);
    let mut out = BytesMut::new();
    while stored < messages {
        while sent < messages && sent - stored < STORED_WINDOW {
            let to = receivers[sent as usize % receivers.len()];
            relayhub::encode_relay_v2(&mut out, sent + 1, 0, &[to], &body)
                .map_err(|e| e.to_string())?;
            sent += 1;
        }
        sender.write(&out)?;
        out.clear();
        sender.read_until(&mut |event| match event {
            Event::Stored { .. } => {
                stored += 1;
                Ok(sent - stored < STORED_WINDOW / 2 || stored == messages)
            }
            Event::HubError { code, detail, .. } => Err(format!(
                "storing for offline sessions: hub error {code} ({:?}, detail {detail}): \
                 raise the hub's inbox limits or lower --stored-messages",
                relayhub_protocol::ErrorCodeV2::from_wire(code)
            )),
            _ => Ok(false),
        })?;
    }
    drop(sender);
    std::thread::sleep(SETTLE);
    let after = rss()?;
    Ok(StoredRow {
        label: label.to_string(),
        messages,
        body_bytes,
        bytes_per_message: (after as f64 - before as f64) * 1024.0 / messages as f64,
    })
}
