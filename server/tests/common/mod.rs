//! Helpers shared by the hub's integration tests: a real hub on an
//! ephemeral loopback port, driven with the client library.
#![allow(dead_code)]

pub mod v2;

use std::time::Duration;

use relayhub_client::{Client, Event, HubError};
use relayhub_protocol::ErrorCode;
use relayhub_server::{ids::owner, Config, Hub};

/// How long a test waits for something the hub should send.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a hub with `shards` shards, adjusted by `tweak`.
pub fn start(shards: usize, tweak: impl FnOnce(&mut Config)) -> Hub {
    raise_fd_limit();
    let mut config = Config::for_tests(shards);
    tweak(&mut config);
    Hub::start(config).expect("hub starts")
}

/// Connects a client to `hub`.
pub fn connect(hub: &Hub) -> Client {
    Client::connect(hub.local_addr()).expect("client connects")
}

/// Connects clients until every shard owns at least `per_shard` of them;
/// returns them grouped by owning shard.
pub fn clients_per_shard(hub: &Hub, shards: usize, per_shard: usize) -> Vec<Vec<Client>> {
    let mut groups: Vec<Vec<Client>> = (0..shards).map(|_| Vec::new()).collect();
    for _ in 0..1000 {
        if groups.iter().all(|group| group.len() >= per_shard) {
            return groups;
        }
        let client = connect(hub);
        let shard = owner(client.user_id(), shards);
        if groups[shard].len() < per_shard {
            groups[shard].push(client);
        }
    }
    panic!("the kernel never spread connections across all {shards} shards");
}

/// The next event, failing the test if none comes in time.
pub fn next_event(client: &mut Client) -> Event {
    match client.recv_timeout(EVENT_TIMEOUT) {
        Ok(Some(event)) => event,
        Ok(None) => panic!(
            "user {}: no event within {EVENT_TIMEOUT:?}",
            client.user_id()
        ),
        Err(error) => panic!("user {}: {error}", client.user_id()),
    }
}

/// Asserts the next event is a delivery of `body` from `from`.
pub fn expect_deliver(client: &mut Client, from: u64, body: &[u8]) {
    match next_event(client) {
        Event::Deliver {
            from: got,
            body: got_body,
        } => {
            assert_eq!(got, from, "sender of the delivery to {}", client.user_id());
            assert!(
                got_body == body,
                "body delivered to {} differs ({} bytes, expected {})",
                client.user_id(),
                got_body.len(),
                body.len()
            );
        }
        other => panic!(
            "user {}: expected a delivery, got {other:?}",
            client.user_id()
        ),
    }
}

/// Asserts the next event is a hub error with `code`, `request`, `detail`.
pub fn expect_error(client: &mut Client, code: ErrorCode, request: u64, detail: u64) {
    match next_event(client) {
        Event::HubError(error) => assert_eq!(
            error,
            HubError {
                code,
                request,
                detail
            }
        ),
        other => panic!(
            "user {}: expected {code:?}, got {other:?}",
            client.user_id()
        ),
    }
}

/// Asserts nothing arrives within `wait`.
pub fn expect_silence(client: &mut Client, wait: Duration) {
    if let Some(event) = client.recv_timeout(wait).expect("connection healthy") {
        panic!("user {}: unexpected {event:?}", client.user_id());
    }
}

/// Lets the process open thousands of sockets (both ends live here).
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

// ----- the hub binary as a child process, raw sockets, measurements -----

/// The `relayhub` binary running as a child process, its stderr collected
/// line by line. Killed when dropped.
pub struct HubProcess {
    child: std::process::Child,
    /// Where it listens (from its "relayhub listening address=..." line).
    pub addr: std::net::SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    log_reader: Option<std::thread::JoinHandle<()>>,
}

impl HubProcess {
    /// Starts `relayhub` with `args` (after `--listen 127.0.0.1:0 --pin false`).
    pub fn start(args: &[&str]) -> HubProcess {
        HubProcess::start_with_nofile(None, args)
    }

    /// Like [`start`](Self::start), with RLIMIT_NOFILE set to `nofile` in
    /// the child (soft and hard) before it runs.
    pub fn start_with_nofile(nofile: Option<u64>, args: &[&str]) -> HubProcess {
        use std::{
            io::BufRead,
            os::unix::process::CommandExt,
            process::{Command, Stdio},
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_relayhub"));
        command
            .args(["--listen", "127.0.0.1:0", "--pin", "false"])
            .args(args)
            .env("RELAYHUB_LOG", "info")
            .env("RELAYHUB_STORAGE", "memory")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(nofile) = nofile {
            // SAFETY: the closure runs in the forked child before exec and
            // only calls setrlimit, which is async-signal-safe.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: nofile,
                        rlim_max: nofile,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().expect("relayhub starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        let log_reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("address=").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = addr_tx.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let mut hub = HubProcess {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            log,
            log_reader: Some(log_reader),
        };
        match addr_rx.recv_timeout(EVENT_TIMEOUT) {
            Ok(addr) => hub.addr = addr.parse().expect("a socket address in the log"),
            Err(_) => panic!("relayhub did not say where it listens: {:?}", hub.log()),
        }
        hub
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the child now (VmRSS), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes_of(self.pid())
    }

    /// File descriptors the child has open now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|dir| dir.count())
            .unwrap_or(0)
    }

    /// File descriptors the child has open now on `target` (a path such as
    /// "/dev/null").
    pub fn open_fds_to(&self, target: &str) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter(|entry| {
                        std::fs::read_link(entry.path())
                            .is_ok_and(|link| link == std::path::Path::new(target))
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// Every stderr line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM (a graceful shutdown) without waiting.
    pub fn request_shutdown(&self) {
        // SAFETY: kill sends a signal to the child we started and have not
        // reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }

    /// Sends SIGTERM and waits (at most `EVENT_TIMEOUT`) for the exit;
    /// returns the exit status and the whole log.
    pub fn terminate(self) -> (std::process::ExitStatus, Vec<String>) {
        self.request_shutdown();
        self.wait_exit()
    }

    /// Waits (at most `EVENT_TIMEOUT`) for the exit; returns the exit
    /// status and the whole log.
    pub fn wait_exit(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waitpid") {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "relayhub did not exit within {EVENT_TIMEOUT:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        if let Some(reader) = self.log_reader.take() {
            let _ = reader.join();
        }
        (status, self.log())
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of process `pid`, in bytes.
pub fn rss_bytes_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("a VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS in kB");
    kib * 1024
}

/// The counter `name` in a "final counters: a=1 b=2" log line.
pub fn counter_in(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|field| field.strip_prefix(name)?.strip_prefix('='))
        .and_then(|value| value.trim_matches('"').parse().ok())
}

/// Connects clients to `addr` until every one of `shards` shards owns at
/// least `per_shard` of them; returns them grouped by owning shard.
pub fn clients_per_shard_at(
    addr: std::net::SocketAddr,
    shards: usize,
    per_shard: usize,
) -> Vec<Vec<Client>> {
    let mut groups: Vec<Vec<Client>> = (0..shards).map(|_| Vec::new()).collect();
    for _ in 0..100 * shards * per_shard.max(1) {
        if groups.iter().all(|group| group.len() >= per_shard) {
            return groups;
        }
        let client = Client::connect(addr).expect("client connects");
        let shard = owner(client.user_id(), shards);
        if groups[shard].len() < per_shard {
            groups[shard].push(client);
        }
    }
    panic!("the kernel never spread connections across all {shards} shards");
}

/// What one read of a [`RawClient`] came to.
#[derive(Debug)]
pub enum RawRead {
    /// A complete hub frame.
    Frame(relayhub_protocol::HubMessage),
    /// The hub closed the connection (end of stream).
    Eof,
    /// The socket failed (a reset, say).
    Failed(std::io::Error),
    /// Nothing complete arrived in time.
    Timeout,
}

/// A client on a bare TCP socket: it writes whatever bytes a test wants
/// and decodes what the hub sends (the hub's preface first).
pub struct RawClient {
    /// The socket.
    pub stream: std::net::TcpStream,
    decoder: relayhub_protocol::Decoder<relayhub_protocol::ClientSide>,
    /// Bytes read so far.
    pub bytes_read: usize,
}

impl RawClient {
    /// Connects without sending anything.
    pub fn connect(addr: std::net::SocketAddr) -> RawClient {
        let stream = std::net::TcpStream::connect(addr).expect("tcp connect");
        stream.set_nodelay(true).unwrap();
        RawClient::from_stream(stream)
    }

    /// Wraps a connected socket.
    pub fn from_stream(stream: std::net::TcpStream) -> RawClient {
        RawClient {
            stream,
            decoder: relayhub_protocol::Decoder::new(),
            bytes_read: 0,
        }
    }

    /// Connects, sends the preface and waits for the `Welcome`; returns the
    /// client and its user id.
    pub fn welcomed(addr: std::net::SocketAddr) -> (RawClient, u64) {
        let mut client = RawClient::connect(addr);
        client.write(&relayhub_protocol::PREFACE);
        match client.next(EVENT_TIMEOUT) {
            RawRead::Frame(relayhub_protocol::HubMessage::Welcome(welcome)) => {
                (client, welcome.user)
            }
            other => panic!("expected a Welcome, got {other:?}"),
        }
    }

    /// Writes all of `bytes`, failing the test if the socket refuses.
    pub fn write(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream.write_all(bytes).expect("raw write");
    }

    /// The next frame, end of stream, failure, or a timeout after `timeout`.
    pub fn next(&mut self, timeout: Duration) -> RawRead {
        use std::io::Read;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.decoder.poll_frame() {
                Ok(Some(frame)) => return RawRead::Frame(frame.to_owned()),
                Ok(None) => {}
                Err(error) => panic!("the hub sent an undecodable stream: {error}"),
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return RawRead::Timeout;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(self.decoder.spare()) {
                Ok(0) => {
                    return if self.decoder.buffered_len() == 0 {
                        RawRead::Eof
                    } else {
                        panic!(
                            "end of stream inside a frame ({} bytes buffered)",
                            self.decoder.buffered_len()
                        )
                    }
                }
                Ok(len) => {
                    self.bytes_read += len;
                    self.decoder.commit(len);
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => return RawRead::Failed(error),
            }
        }
    }

    /// Every frame until the hub closes (or `timeout` passes: a failure).
    pub fn frames_until_closed(&mut self, timeout: Duration) -> Vec<relayhub_protocol::HubMessage> {
        let deadline = std::time::Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.next(left) {
                RawRead::Frame(frame) => frames.push(frame),
                RawRead::Eof => return frames,
                RawRead::Failed(error) => panic!("socket failed after {frames:?}: {error}"),
                RawRead::Timeout => panic!("not closed within {timeout:?}; got {frames:?}"),
            }
        }
    }
}

/// `(code, request, detail)` of an `Error` frame; `None` for other frames.
pub fn error_fields(message: &relayhub_protocol::HubMessage) -> Option<(ErrorCode, u64, u64)> {
    match message {
        relayhub_protocol::HubMessage::Error(error) => Some((
            ErrorCode::from_wire(error.code).expect("a known error code"),
            error.request,
            error.detail,
        )),
        _ => None,
    }
}

/// One encoded client frame.
pub fn frame_bytes<M: relayhub_protocol::Message>(message: &M) -> Vec<u8> {
    let mut wire = bytes::BytesMut::new();
    relayhub_protocol::encode(message, &mut wire).expect("the frame encodes");
    wire.to_vec()
}

/// The `p`-th percentile (0..=100) of `samples` (sorted in place).
pub fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    assert!(!samples.is_empty(), "no samples");
    samples.sort_unstable();
    let index = (samples.len() * p).div_ceil(100).clamp(1, samples.len()) - 1;
    samples[index]
}
