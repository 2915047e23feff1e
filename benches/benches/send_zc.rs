//! Whether `IORING_OP_SEND_ZC` would make 1 MiB deliveries cheaper than the
//! `IORING_OP_SEND` the hub uses (through glommio), on loopback TCP, the only
//! network this machine has.
//!
//! A sender thread pinned to core 0 (where the hub runs) keeps one 1 MiB
//! send in flight on each of `SEND_ZC_CONNECTIONS` loopback connections
//! through one io_uring; receiver threads pinned to core 1 (where the load
//! generator runs) read and discard. Each connection has two buffers: with
//! `SEND_ZC` a buffer is written again only after the kernel's notification
//! says it is done with it, as a hub would have to hold a delivery's body.
//! Both variants send the same bytes the same way; only the opcode differs.
//!
//! Per run: `SEND_ZC_MIB` MiB in all; reported: MB/s of the run (wall
//! clock), the sender thread's CPU per MiB (on loopback the receiving
//! socket's processing runs there too, as it does in the hub), and the
//! receivers' CPU per MiB. `SEND_ZC_ROUNDS` rounds alternate the variants,
//! and the table gives each figure's median over rounds with its range.
//!
//! Run: `cargo bench -p relayhub-benches --bench send_zc`. Results and the
//! machine they came from are in `docs/reports/send-zc.md`.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::Instant;

use io_uring::{cqueue, opcode, types, IoUring};
use relayhub_benches::{env_u64, pin_to_core};

/// One delivery's body, as in the 1 MiB row of `benches/compare.sh`.
const BODY_BYTES: usize = 1 << 20;
/// Buffers per connection: one in flight, one being refilled or released.
const BUFFERS_PER_CONNECTION: usize = 2;
/// Each receiver's `read` size.
const READ_BYTES: usize = 256 * 1024;
/// Core of the sender (the hub's) and of the receivers (the loadgen's).
const SENDER_CORE: usize = 0;
const RECEIVER_CORE: usize = 1;
/// `IORING_SEND_ZC_REPORT_USAGE` (linux/io_uring.h): have each notification
/// say whether the kernel ended up copying the data after all.
const SEND_ZC_REPORT_USAGE: u16 = 1 << 3;
/// `IORING_NOTIF_USAGE_ZC_COPIED`: set in a notification's result when the
/// kernel copied instead (on loopback it copies at the receiving socket).
const NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Opcode {
    Send,
    SendZc,
}

impl Opcode {
    fn name(self) -> &'static str {
        match self {
            Opcode::Send => "send",
            Opcode::SendZc => "send_zc",
        }
    }
}

/// One run's figures.
#[derive(Clone, Copy, Debug)]
struct Run {
    mb_per_s: f64,
    sender_cpu_us_per_mib: f64,
    receiver_cpu_us_per_mib: f64,
    /// `SEND_ZC` notifications, and those saying the kernel copied.
    notifications: usize,
    copied: usize,
}

fn thread_cpu_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the clock id is a
    // constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Where one connection's sending stands.
struct Connection {
    stream: TcpStream,
    buffers: Vec<Vec<u8>>,
    /// Per buffer, `SEND_ZC`s whose notification has not come: the kernel
    /// may still read the buffer, so it is not written or sent again.
    unreleased: [usize; BUFFERS_PER_CONNECTION],
    /// The buffer being sent and how much of it has gone.
    current: usize,
    offset: usize,
    in_flight: bool,
    bodies_started: usize,
    bodies_done: usize,
}

/// `user_data`: connection index and buffer index.
fn user_data(connection: usize, buffer: usize) -> u64 {
    ((connection as u64) << 8) | buffer as u64
}

/// Submits the connection's next send, if it has one and may.
fn submit_next(
    ring: &mut IoUring,
    index: usize,
    connection: &mut Connection,
    op: Opcode,
    bodies: usize,
) {
    if connection.in_flight {
        return;
    }
    if connection.offset == 0 {
        if connection.bodies_started == bodies || connection.unreleased[connection.current] > 0 {
            // Done, or the buffer is still the kernel's: its notification
            // comes back here.
            return;
        }
        connection.bodies_started += 1;
    }
    let buffer = &connection.buffers[connection.current][connection.offset..];
    let fd = types::Fd(connection.stream.as_raw_fd());
    let data = user_data(index, connection.current);
    let entry = match op {
        Opcode::Send => opcode::Send::new(fd, buffer.as_ptr(), buffer.len() as u32)
            .build()
            .user_data(data),
        Opcode::SendZc => opcode::SendZc::new(fd, buffer.as_ptr(), buffer.len() as u32)
            .zc_flags(SEND_ZC_REPORT_USAGE)
            .build()
            .user_data(data),
    };
    connection.in_flight = true;
    // SAFETY: the buffer lives in `connection.buffers`, which outlives the
    // ring's use of it: it is neither written nor freed until the send's
    // completion (and, for SEND_ZC, its notification) has been reaped,
    // and `run` reaps every one before it returns.
    unsafe { ring.submission().push(&entry) }.expect("the submission queue has room");
}

fn run(op: Opcode, connections: usize, total_mib: usize) -> Run {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().unwrap();
    let bodies = total_mib.div_ceil(connections);
    let bytes_per_connection = bodies * BODY_BYTES;
    let receivers: Vec<_> = (0..connections)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).expect("connect");
            thread::spawn(move || {
                pin_to_core(RECEIVER_CORE);
                let started = thread_cpu_ns();
                let mut buffer = vec![0u8; READ_BYTES];
                let mut read = 0;
                while read < bytes_per_connection {
                    let n = stream.read(&mut buffer).expect("read");
                    assert!(n > 0, "the sender closed early");
                    read += n;
                }
                thread_cpu_ns() - started
            })
        })
        .collect();
    let mut accepted: Vec<Connection> = (0..connections)
        .map(|index| {
            let (stream, _) = listener.accept().expect("accept");
            Connection {
                stream,
                buffers: (0..BUFFERS_PER_CONNECTION)
                    .map(|b| vec![(index * BUFFERS_PER_CONNECTION + b) as u8; BODY_BYTES])
                    .collect(),
                unreleased: [0; BUFFERS_PER_CONNECTION],
                current: 0,
                offset: 0,
                in_flight: false,
                bodies_started: 0,
                bodies_done: 0,
            }
        })
        .collect();

    let sender = thread::spawn(move || {
        pin_to_core(SENDER_CORE);
        let mut ring = IoUring::new(64).expect("io_uring");
        let started = Instant::now();
        let cpu_started = thread_cpu_ns();
        for (index, connection) in accepted.iter_mut().enumerate() {
            submit_next(&mut ring, index, connection, op, bodies);
        }
        let mut unfinished = connections;
        let mut notifications = 0usize;
        let (mut notified, mut copied) = (0usize, 0usize);
        while unfinished > 0 || notifications > 0 {
            ring.submit_and_wait(1).expect("io_uring_enter");
            let completions: Vec<_> = ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags()))
                .collect();
            for (data, result, flags) in completions {
                let (index, buffer) = ((data >> 8) as usize, (data & 0xff) as usize);
                let connection = &mut accepted[index];
                if cqueue::notif(flags) {
                    connection.unreleased[buffer] -= 1;
                    notifications -= 1;
                    notified += 1;
                    if result as u32 & NOTIF_USAGE_ZC_COPIED != 0 {
                        copied += 1;
                    }
                } else {
                    assert!(result >= 0, "send failed: errno {}", -result);
                    if cqueue::more(flags) {
                        // A SEND_ZC whose notification follows.
                        connection.unreleased[buffer] += 1;
                        notifications += 1;
                    }
                    connection.in_flight = false;
                    connection.offset += result as usize;
                    if connection.offset == BODY_BYTES {
                        connection.offset = 0;
                        connection.current = (connection.current + 1) % BUFFERS_PER_CONNECTION;
                        connection.bodies_done += 1;
                        if connection.bodies_done == bodies {
                            unfinished -= 1;
                        }
                    }
                }
                submit_next(&mut ring, index, connection, op, bodies);
            }
        }
        (thread_cpu_ns() - cpu_started, started, notified, copied)
    });
    let (sender_cpu_ns, started, notifications, copied) = sender.join().expect("the sender");
    let receiver_cpu_ns: u64 = receivers
        .into_iter()
        .map(|r| r.join().expect("a receiver"))
        .sum();
    let elapsed = started.elapsed().as_secs_f64();
    let mib = (bodies * connections) as f64;
    Run {
        mb_per_s: mib * BODY_BYTES as f64 / 1e6 / elapsed,
        sender_cpu_us_per_mib: sender_cpu_ns as f64 / 1e3 / mib,
        receiver_cpu_us_per_mib: receiver_cpu_ns as f64 / 1e3 / mib,
        notifications,
        copied,
    }
}

fn median_and_range(mut values: Vec<f64>) -> String {
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    format!(
        "{median:.0} ({:.0}-{:.0})",
        values[0],
        values[values.len() - 1]
    )
}

fn main() {
    let connections = env_u64("SEND_ZC_CONNECTIONS", 4) as usize;
    let total_mib = env_u64("SEND_ZC_MIB", 4096) as usize;
    let rounds = env_u64("SEND_ZC_ROUNDS", 5) as usize;
    assert!(connections > 0 && total_mib > 0 && rounds > 0);
    let ops = [Opcode::Send, Opcode::SendZc];
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); ops.len()];
    for round in 1..=rounds {
        for (slot, &op) in ops.iter().enumerate() {
            let result = run(op, connections, total_mib);
            eprintln!(
                "round {round}/{rounds} {:<8} {:>6.0} MB/s, sender {:>5.0} us/MiB, receivers {:>5.0} us/MiB, \
                 notifications {} ({} copied)",
                op.name(),
                result.mb_per_s,
                result.sender_cpu_us_per_mib,
                result.receiver_cpu_us_per_mib,
                result.notifications,
                result.copied
            );
            runs[slot].push(result);
        }
    }
    println!(
        "{connections} connections, {total_mib} MiB per run, {rounds} rounds; medians (range)"
    );
    println!("| opcode | MB/s | sender CPU us/MiB | receivers CPU us/MiB |");
    println!("| --- | ---: | ---: | ---: |");
    for (slot, op) in ops.iter().enumerate() {
        let column = |f: fn(&Run) -> f64| median_and_range(runs[slot].iter().map(f).collect());
        println!(
            "| {} | {} | {} | {} |",
            op.name(),
            column(|r| r.mb_per_s),
            column(|r| r.sender_cpu_us_per_mib),
            column(|r| r.receiver_cpu_us_per_mib)
        );
    }
}
