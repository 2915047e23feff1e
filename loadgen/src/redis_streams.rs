//! The Redis Streams setup of a durable Redis run, on one blocking
//! connection of the main thread: before the run, per client `i`, the
//! stream `ls.<i>` is deleted (a leftover) and created empty with its
//! consumer group `g` (`XGROUP CREATE ls.<i> g $ MKSTREAM`); after the
//! run the streams are deleted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::error::LoadgenError;
use crate::target::TargetKind;
use crate::wire::inbound::Inbound;
use crate::wire::{resp, Event};

/// Longest wait for the replies of one batch of commands.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Clients set up per pipelined batch.
const PIPELINE: u32 = 512;

fn handshake(address: SocketAddr, detail: String) -> LoadgenError {
    LoadgenError::Handshake {
        kind: TargetKind::Redis,
        address,
        detail,
    }
}

/// Sends `commands` and waits for `replies` replies; fails on an error
/// reply.
fn exchange(
    stream: &mut TcpStream,
    inbound: &mut Inbound,
    address: SocketAddr,
    commands: &[u8],
    replies: usize,
) -> Result<(), LoadgenError> {
    let io_error = |error| LoadgenError::io(TargetKind::Redis, address, error);
    stream.write_all(commands).map_err(io_error)?;
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let mut got = 0;
    while got < replies {
        while let Some(event) = inbound
            .next_event()
            .map_err(|error| handshake(address, error.to_string()))?
        {
            if let Event::ServerError(text) = event {
                return Err(handshake(
                    address,
                    String::from_utf8_lossy(text).into_owned(),
                ));
            }
            got += 1;
        }
        if got >= replies {
            break;
        }
        if Instant::now() >= deadline {
            return Err(handshake(
                address,
                format!("{got} of {replies} replies within {REPLY_TIMEOUT:?}"),
            ));
        }
        match stream.read(inbound.spare()) {
            Ok(0) => return Err(handshake(address, "the server closed".into())),
            Ok(read) => inbound.commit(read),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(error) => return Err(io_error(error)),
        }
    }
    Ok(())
}

fn connect(address: SocketAddr) -> Result<(TcpStream, Inbound), LoadgenError> {
    let io_error = |error| LoadgenError::io(TargetKind::Redis, address, error);
    let stream = TcpStream::connect(address).map_err(io_error)?;
    stream.set_nodelay(true).map_err(io_error)?;
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(io_error)?;
    Ok((stream, Inbound::durable(TargetKind::Redis)))
}

/// Creates an empty stream with its consumer group for each of `clients`.
pub fn setup(address: SocketAddr, clients: usize) -> Result<(), LoadgenError> {
    per_client(address, clients, 2, resp::encode_stream_setup)
}

/// Deletes the streams of `clients` clients.
pub fn teardown(address: SocketAddr, clients: usize) -> Result<(), LoadgenError> {
    per_client(address, clients, 1, resp::encode_stream_delete)
}

/// Sends `encode`'s commands for every client, [`PIPELINE`] clients at a
/// time, each answered by `replies` replies.
fn per_client(
    address: SocketAddr,
    clients: usize,
    replies: usize,
    encode: fn(&mut Vec<u8>, u32),
) -> Result<(), LoadgenError> {
    let (mut stream, mut inbound) = connect(address)?;
    let clients = clients as u32;
    for first in (0..clients).step_by(PIPELINE as usize) {
        let end = (first + PIPELINE).min(clients);
        let mut commands = Vec::new();
        for client in first..end {
            encode(&mut commands, client);
        }
        let expected = replies * (end - first) as usize;
        exchange(&mut stream, &mut inbound, address, &commands, expected)?;
    }
    Ok(())
}
