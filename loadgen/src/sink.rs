//! The sink: the cheapest peer that can stand where a hub stands, to show
//! how fast the loadgen alone can drive traffic (its headroom).
//!
//! One thread, one epoll loop. A client says hello with its index and the
//! indices it will send to (see [`crate::wire::sink`]); from then on the
//! sink reads its bytes, finds whole frames by their 8-byte header (length
//! checked against the protocol limit, nothing else parsed, nothing
//! validated) and appends them unchanged to each route's outbound buffer;
//! after each round of reads every connection with something queued gets
//! one `send`. No allocation per message, no copy but the one into the
//! outbound buffer.
//!
//! A client whose hello names the one route [`ROUTE_BY_FRAME`] (its
//! receivers are drawn per message) has each `Relay` frame sent to the
//! client indices the frame lists: the sink reads the frame's receivers
//! (the protocol crate's validated view of the archive), and the rest is
//! as above, frames queued per receiver and sent once per loop turn.
//!
//! Run it as a process to pin it like a server
//! (`taskset -c 0 relayhub-loadgen --sink-listen 127.0.0.1:7880`), or in
//! process with [`Sink::start`] (tests).

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use relayhub_protocol::rkyv::util::AlignedVec;
use relayhub_protocol::{
    decode_frame, ClientFrame, DecodeError, Decoder, FrameHeader, HubSide, FRAME_ALIGN_BYTES,
};

use crate::poll::{self, Epoll, Io, Ready};
use crate::wire::sink::{encode_hello_reply, ROUTE_BY_FRAME};

/// The listener's token.
const LISTENER: u64 = u64::MAX;

/// Receive buffer of a forwarding connection; grows to fit a large frame.
const INPUT_BYTES: usize = 64 * 1024;

/// Most bytes queued for one connection before it is dropped as a slow
/// consumer (a closed-loop load never gets near it).
const OUTBOUND_BYTES_MAX: usize = 256 << 20;

/// Forwarded runs of at least this many bytes go straight from the input
/// buffer to an idle receiver's socket (no copy into its outbound buffer);
/// smaller ones are queued so that one `send` carries many.
const DIRECT_SEND_BYTES: usize = 64 * 1024;

/// How often the loop looks at its stop flag and deadline.
const TICK: Duration = Duration::from_millis(50);

enum Stage {
    /// Waiting for the client's hello.
    Hello(Box<Decoder<HubSide>>),
    /// Forwarding whole frames along the routes.
    Forward,
}

struct Conn {
    stream: TcpStream,
    generation: u64,
    stage: Stage,
    /// Client indices this connection's frames go to.
    routes: Vec<u64>,
    /// Each frame goes to the receivers it lists ([`ROUTE_BY_FRAME`]).
    by_frame: bool,
    /// `routes` resolved to (slot, generation), on the first frame.
    resolved: Option<Vec<(usize, u64)>>,
    input: Vec<u8>,
    filled: usize,
    out: Vec<u8>,
    out_pos: usize,
    /// In the flush list.
    queued: bool,
    /// Waiting for room (watched for writing).
    blocked: bool,
}

/// Counters of one sink, for its log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Bytes of whole frames forwarded (counted once per route).
    pub forwarded_bytes: u64,
    /// Connections closed for a protocol error, a missing route target or
    /// a full outbound buffer.
    pub refused: u64,
}

struct SinkLoop {
    epoll: Epoll,
    listener: TcpListener,
    slots: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Client index -> (slot, generation).
    clients: HashMap<u64, (usize, u64)>,
    next_generation: u64,
    flush: Vec<usize>,
    ready: Vec<Ready>,
    stats: SinkStats,
    /// Routing by frame: a frame that does not start 8-byte aligned in its
    /// input buffer is read from a copy here.
    aligned: AlignedVec,
    /// Routing by frame: one frame's receivers, resolved.
    targets: Vec<(usize, u64)>,
}

impl SinkLoop {
    fn new(listener: TcpListener) -> io::Result<SinkLoop> {
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new(256)?;
        epoll.add(listener.as_raw_fd(), LISTENER, false)?;
        Ok(SinkLoop {
            epoll,
            listener,
            slots: Vec::new(),
            free: Vec::new(),
            clients: HashMap::new(),
            next_generation: 1,
            flush: Vec::new(),
            ready: Vec::new(),
            stats: SinkStats::default(),
            aligned: AlignedVec::new(),
            targets: Vec::new(),
        })
    }

    fn run(&mut self, stop: &AtomicBool, deadline: Option<Instant>) -> io::Result<SinkStats> {
        while !stop.load(Ordering::Acquire) && deadline.is_none_or(|d| Instant::now() < d) {
            self.ready.clear();
            let mut ready = std::mem::take(&mut self.ready);
            self.epoll.wait(Some(TICK), &mut ready)?;
            for event in &ready {
                if event.token == LISTENER {
                    self.accept()?;
                    continue;
                }
                let slot = event.token as usize;
                if event.writable {
                    self.send(slot);
                }
                if event.readable {
                    self.read(slot);
                }
            }
            self.ready = ready;
            while let Some(slot) = self.flush.pop() {
                if let Some(conn) = self.slots[slot].as_mut() {
                    conn.queued = false;
                }
                self.send(slot);
            }
        }
        Ok(self.stats)
    }

    fn accept(&mut self) -> io::Result<()> {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                // Out of descriptors and the like: refuse this one, go on.
                Err(_) => return Ok(()),
            };
            if stream.set_nonblocking(true).is_err() || stream.set_nodelay(true).is_err() {
                continue;
            }
            let slot = self.free.pop().unwrap_or_else(|| {
                self.slots.push(None);
                self.slots.len() - 1
            });
            if self
                .epoll
                .add(stream.as_raw_fd(), slot as u64, false)
                .is_err()
            {
                self.free.push(slot);
                continue;
            }
            self.stats.accepted += 1;
            self.next_generation += 1;
            self.slots[slot] = Some(Conn {
                stream,
                generation: self.next_generation,
                stage: Stage::Hello(Box::new(Decoder::new())),
                routes: Vec::new(),
                by_frame: false,
                resolved: None,
                input: Vec::new(),
                filled: 0,
                out: Vec::new(),
                out_pos: 0,
                queued: false,
                blocked: false,
            });
        }
    }

    fn close(&mut self, slot: usize, refused: bool) {
        let Some(conn) = self.slots[slot].take() else {
            return;
        };
        let _ = self.epoll.delete(conn.stream.as_raw_fd());
        self.clients
            .retain(|_, (at, generation)| !(*at == slot && *generation == conn.generation));
        self.free.push(slot);
        if refused {
            self.stats.refused += 1;
        }
    }

    fn read(&mut self, slot: usize) {
        loop {
            let Some(conn) = self.slots[slot].as_mut() else {
                return;
            };
            let fd = conn.stream.as_raw_fd();
            let buffer: &mut [u8] = match &mut conn.stage {
                Stage::Hello(decoder) => decoder.spare(),
                Stage::Forward => {
                    if conn.input.is_empty() {
                        conn.input = vec![0; INPUT_BYTES];
                    }
                    // Inside a large frame, read only up to its end: it is
                    // then forwarded whole from the start of the buffer,
                    // with no partial next frame to move to the front.
                    let end = match FrameHeader::check(&conn.input[..conn.filled]) {
                        Ok(header) if header.frame_len() > DIRECT_SEND_BYTES => {
                            header.frame_len().min(conn.input.len())
                        }
                        _ => conn.input.len(),
                    };
                    &mut conn.input[conn.filled..end]
                }
            };
            let room = buffer.len();
            let read = match poll::recv(fd, buffer) {
                Ok(Io::Done(0)) | Err(_) => return self.close(slot, false),
                Ok(Io::WouldBlock) => return,
                Ok(Io::Done(read)) => read,
            };
            let outcome = match &mut conn.stage {
                Stage::Hello(decoder) => {
                    decoder.commit(read);
                    self.hello(slot)
                }
                Stage::Forward => {
                    conn.filled += read;
                    self.forward(slot)
                }
            };
            if outcome.is_err() {
                return self.close(slot, true);
            }
            if read < room {
                return;
            }
        }
    }

    /// Reads the hello if it is complete; answers it.
    fn hello(&mut self, slot: usize) -> Result<(), ()> {
        let conn = self.slots[slot].as_mut().ok_or(())?;
        let Stage::Hello(decoder) = &mut conn.stage else {
            return Err(());
        };
        let (index, routes) = match decoder.poll_frame() {
            Ok(None) => return Ok(()),
            Ok(Some(ClientFrame::Relay(relay))) => (
                relay.request.to_native(),
                relay
                    .receivers
                    .iter()
                    .map(|receiver| receiver.to_native())
                    .collect::<Vec<u64>>(),
            ),
            Ok(Some(_)) | Err(_) => return Err(()),
        };
        if decoder.poll_frame().map_err(|_: DecodeError| ())?.is_some()
            || decoder.buffered_len() > 0
        {
            // The client sends nothing before the answer.
            return Err(());
        }
        conn.stage = Stage::Forward;
        conn.by_frame = routes == [ROUTE_BY_FRAME];
        conn.routes = if conn.by_frame { Vec::new() } else { routes };
        let mut reply = BytesMut::new();
        encode_hello_reply(&mut reply, index);
        conn.out.extend_from_slice(&reply);
        let generation = conn.generation;
        self.clients.insert(index, (slot, generation));
        self.queue(slot);
        Ok(())
    }

    fn queue(&mut self, slot: usize) {
        if let Some(conn) = self.slots[slot].as_mut() {
            if !conn.queued {
                conn.queued = true;
                self.flush.push(slot);
            }
        }
    }

    /// Forwards the whole frames buffered on `slot` to its routes.
    fn forward(&mut self, slot: usize) -> Result<(), ()> {
        let conn = self.slots[slot].as_mut().ok_or(())?;
        let mut complete = 0;
        let mut next_len = 0;
        loop {
            match FrameHeader::check(&conn.input[complete..conn.filled]) {
                Ok(header) if complete + header.frame_len() <= conn.filled => {
                    complete += header.frame_len();
                }
                Ok(header) => {
                    next_len = header.frame_len();
                    break;
                }
                Err(DecodeError::Incomplete { .. }) => break,
                Err(_) => return Err(()),
            }
        }
        if complete > 0 {
            let input = std::mem::take(&mut conn.input);
            let routes = match (conn.by_frame, conn.resolved.take()) {
                (true, _) => None,
                (false, Some(routes)) => Some(routes),
                (false, None) => Some(
                    conn.routes
                        .iter()
                        .map(|index| self.clients.get(index).copied().ok_or(()))
                        .collect::<Result<Vec<_>, ()>>()?,
                ),
            };
            match &routes {
                Some(routes) => {
                    for &(target, generation) in routes {
                        self.deliver(target, generation, &input[..complete]);
                    }
                }
                None => self.forward_each(&input[..complete])?,
            }
            let Some(conn) = self.slots[slot].as_mut() else {
                return Ok(());
            };
            conn.input = input;
            conn.resolved = routes;
            conn.input.copy_within(complete..conn.filled, 0);
            conn.filled -= complete;
        }
        let conn = self.slots[slot].as_mut().ok_or(())?;
        if next_len > conn.input.len() {
            conn.input.resize(next_len, 0);
        }
        Ok(())
    }

    /// Routing by frame: sends each of `frames` (whole frames) to the
    /// receivers it lists; a receiver that left is skipped (the loadgen
    /// counts its share lost). Anything but a `Relay` is refused.
    fn forward_each(&mut self, frames: &[u8]) -> Result<(), ()> {
        let mut targets = std::mem::take(&mut self.targets);
        let mut at = 0;
        while at < frames.len() {
            let len = FrameHeader::check(&frames[at..])
                .map_err(|_| ())?
                .frame_len();
            let frame = &frames[at..at + len];
            at += len;
            let view = if frame.as_ptr().align_offset(FRAME_ALIGN_BYTES) == 0 {
                frame
            } else {
                self.aligned.clear();
                self.aligned.extend_from_slice(frame);
                &self.aligned[..]
            };
            let Ok((ClientFrame::Relay(relay), _)) = decode_frame::<HubSide>(view) else {
                return Err(());
            };
            targets.clear();
            targets.extend(
                relay
                    .receivers
                    .iter()
                    .filter_map(|receiver| self.clients.get(&receiver.to_native()).copied()),
            );
            for &(target, generation) in &targets {
                self.deliver(target, generation, frame);
            }
        }
        self.targets = targets;
        Ok(())
    }

    /// Hands `bytes` (whole frames) to `target` if it is still the
    /// connection of `generation`: straight to its socket when large and
    /// nothing is queued before them, else into its outbound buffer.
    fn deliver(&mut self, target: usize, generation: u64, bytes: &[u8]) {
        let Some(to) = self.slots[target]
            .as_mut()
            .filter(|to| to.generation == generation)
        else {
            // The receiver left: its share is dropped (the loadgen counts
            // it lost).
            return;
        };
        self.stats.forwarded_bytes += bytes.len() as u64;
        let mut sent = 0;
        if bytes.len() >= DIRECT_SEND_BYTES && to.out.is_empty() && !to.blocked {
            match poll::send(to.stream.as_raw_fd(), bytes) {
                Ok(Io::Done(written)) => sent = written,
                Ok(Io::WouldBlock) => {}
                Err(_) => return self.close(target, false),
            }
        }
        if sent == bytes.len() {
            return;
        }
        to.out.extend_from_slice(&bytes[sent..]);
        if to.out.len() - to.out_pos > OUTBOUND_BYTES_MAX {
            self.close(target, true);
        } else {
            self.queue(target);
        }
    }

    /// Writes what is queued for `slot`, watching for room if it does not fit.
    fn send(&mut self, slot: usize) {
        let Some(conn) = self.slots[slot].as_mut() else {
            return;
        };
        while conn.out_pos < conn.out.len() {
            match poll::send(conn.stream.as_raw_fd(), &conn.out[conn.out_pos..]) {
                Ok(Io::Done(written)) => conn.out_pos += written,
                Ok(Io::WouldBlock) => break,
                Err(_) => return self.close(slot, false),
            }
        }
        let drained = conn.out_pos == conn.out.len();
        if drained {
            conn.out.clear();
            conn.out_pos = 0;
        }
        if drained == conn.blocked {
            conn.blocked = !drained;
            let fd = conn.stream.as_raw_fd();
            if self.epoll.modify(fd, slot as u64, !drained).is_err() {
                self.close(slot, false);
            }
        }
    }
}

/// A sink running on its own thread; stopped when dropped.
pub struct Sink {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<SinkStats>>>,
}

impl Sink {
    /// Listens on `listen` (port 0: any) and serves on a new thread.
    pub fn start(listen: SocketAddr) -> io::Result<Sink> {
        let listener = TcpListener::bind(listen)?;
        let address = listener.local_addr()?;
        let mut sink = SinkLoop::new(listener)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sink".into())
            .spawn(move || sink.run(&flag, None))?;
        Ok(Sink {
            address,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Stops the thread and returns its counters.
    pub fn stop(mut self) -> io::Result<SinkStats> {
        self.stop_thread()
    }

    fn stop_thread(&mut self) -> io::Result<SinkStats> {
        self.stop.store(true, Ordering::Release);
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| io::Error::other("the sink thread panicked"))?,
            None => Ok(SinkStats::default()),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.stop_thread();
    }
}

/// Serves on this thread until `duration` is over (forever if `None`);
/// prints the address it listens on.
pub fn serve(listen: SocketAddr, duration: Option<Duration>) -> io::Result<SinkStats> {
    let listener = TcpListener::bind(listen)?;
    eprintln!(
        "relayhub-loadgen: sink listening on {}",
        listener.local_addr()?
    );
    let mut sink = SinkLoop::new(listener)?;
    let deadline = duration.map(|duration| Instant::now() + duration);
    sink.run(&AtomicBool::new(false), deadline)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::sink::{encode_hello, new_decoder, next_event};
    use crate::wire::{relayhub, Event};
    use std::io::{Read, Write};

    fn hello(sink: &Sink, index: u32, routes: &[u64]) -> (TcpStream, Decoder<HubSide>) {
        let mut stream = TcpStream::connect(sink.local_addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut out = BytesMut::new();
        encode_hello(&mut out, index, routes).unwrap();
        stream.write_all(&out).unwrap();
        let mut decoder = new_decoder();
        let event = read_event(&mut stream, &mut decoder);
        assert_eq!(
            event,
            "Welcome { user: ".to_string() + &index.to_string() + " }"
        );
        (stream, decoder)
    }

    fn read_event(stream: &mut TcpStream, decoder: &mut Decoder<HubSide>) -> String {
        loop {
            if let Some(event) = next_event(decoder).unwrap() {
                return format!("{event:?}");
            }
            let read = stream.read(decoder.spare()).unwrap();
            assert!(read > 0, "closed");
            decoder.commit(read);
        }
    }

    #[test]
    fn forwards_whole_frames_along_routes() {
        let sink = Sink::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let (mut a, _) = hello(&sink, 1, &[2]);
        let (_b, mut b_in) = hello(&sink, 2, &[1]);
        let mut out = BytesMut::new();
        relayhub::encode_relay(&mut out, 9, &[2], b"first").unwrap();
        relayhub::encode_echo(&mut out, 10, b"second").unwrap();
        // A frame split across writes is forwarded once whole.
        let (head, tail) = out.split_at(13);
        a.write_all(head).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        a.write_all(tail).unwrap();
        let mut b = _b;
        assert_eq!(
            read_event(&mut b, &mut b_in),
            format!("{:?}", Event::Delivery(b"first"))
        );
        assert_eq!(
            read_event(&mut b, &mut b_in),
            format!("{:?}", Event::Delivery(b"second"))
        );
        drop((a, b));
        let stats = sink.stop().unwrap();
        assert_eq!(stats.accepted, 2);
        assert_eq!(stats.refused, 0);
        assert_eq!(stats.forwarded_bytes, out.len() as u64);
    }

    #[test]
    fn routes_by_frame_to_the_receivers_each_frame_lists() {
        let sink = Sink::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let (mut a, _) = hello(&sink, 1, &[ROUTE_BY_FRAME]);
        let (mut b, mut b_in) = hello(&sink, 2, &[ROUTE_BY_FRAME]);
        let (mut c, mut c_in) = hello(&sink, 3, &[ROUTE_BY_FRAME]);
        let mut out = BytesMut::new();
        relayhub::encode_relay(&mut out, 1, &[2], b"to b").unwrap();
        relayhub::encode_relay(&mut out, 2, &[3], b"to c").unwrap();
        // A receiver that is not connected is skipped, the others served.
        relayhub::encode_relay(&mut out, 3, &[3, 9, 2], b"to both").unwrap();
        let large = vec![7u8; 100_000];
        relayhub::encode_relay(&mut out, 4, &[2], &large).unwrap();
        a.write_all(&out).unwrap();
        let delivery = |body: &[u8]| format!("{:?}", Event::Delivery(body));
        for expected in [&b"to b"[..], b"to both", &large] {
            assert_eq!(read_event(&mut b, &mut b_in), delivery(expected));
        }
        for expected in [&b"to c"[..], b"to both"] {
            assert_eq!(read_event(&mut c, &mut c_in), delivery(expected));
        }
        // Only relays name their receivers: an echo is refused.
        let mut echo = BytesMut::new();
        relayhub::encode_echo(&mut echo, 5, b"me").unwrap();
        c.write_all(&echo).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(c.read(&mut buf).unwrap_or(0), 0);
        drop((a, b));
        assert_eq!(sink.stop().unwrap().refused, 1);
    }

    #[test]
    fn refuses_garbage_and_unknown_routes() {
        let sink = Sink::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut garbage = TcpStream::connect(sink.local_addr()).unwrap();
        garbage
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(garbage.read(&mut buf).unwrap_or(0), 0);
        let (mut lonely, _) = hello(&sink, 5, &[6]);
        let mut out = BytesMut::new();
        relayhub::encode_relay(&mut out, 1, &[6], b"nobody").unwrap();
        lonely.write_all(&out).unwrap();
        assert_eq!(lonely.read(&mut buf).unwrap_or(0), 0);
        assert_eq!(sink.stop().unwrap().refused, 2);
    }
}
