//! Start-up checks and listener sockets, with errors that tell an operator
//! what to do.

use std::{
    fmt, io,
    net::{SocketAddr, TcpListener as StdListener},
    os::fd::{IntoRawFd, RawFd},
};

use socket2::{Domain, Protocol, Socket, Type};

/// Locked memory one shard needs: glommio's registered IO buffer
/// ([`IO_MEMORY_BYTES`]) plus its io_uring rings, with margin.
pub const MEMLOCK_PER_SHARD_BYTES: u64 = 1 << 20;

/// glommio's registered buffer per shard. The hub does no file IO, so this
/// stays small (glommio's default, 10 MiB, would not fit an 8 MiB
/// `ulimit -l`).
pub const IO_MEMORY_BYTES: usize = 256 << 10;

/// Most shards a hub runs (one per core).
pub const SHARDS_MAX: usize = 256;

/// Pending connections the kernel queues per listener.
pub const LISTEN_BACKLOG: i32 = 4096;

/// How long the start-up waits for a listening address another socket
/// holds before it says the address is in use: 1 s. A hub killed a moment
/// before (SIGKILL) keeps listening for a few milliseconds after its exit,
/// while the kernel tears its io_uring down (a pending accept holds the
/// socket); a restart at once waits that out instead of failing.
pub const ADDRESS_IN_USE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How often the start-up tries the address again meanwhile: 10 ms.
const ADDRESS_IN_USE_RETRY: std::time::Duration = std::time::Duration::from_millis(10);

/// Why the hub could not start.
#[derive(Debug)]
pub enum StartError {
    /// `--shards` was 0 or above [`SHARDS_MAX`].
    Shards(usize),
    /// RLIMIT_MEMLOCK is too low for the shards requested.
    MemLock {
        /// Current soft limit, bytes.
        limit_bytes: u64,
        /// What the shards need, bytes.
        needed_bytes: u64,
        /// Shards requested.
        shards: usize,
    },
    /// Another process listens on the address.
    AddressInUse(SocketAddr),
    /// Binding or listening failed otherwise.
    Bind(SocketAddr, io::Error),
    /// A shard's executor could not start (io_uring missing or refused).
    Executor(usize, String),
    /// A flag is outside its bounds.
    Config(crate::config::InvalidConfig),
    /// The data directory cannot be used.
    DataDir(crate::disk::DataDirError),
    /// A shard could not recover its log.
    Recovery(String),
    /// Not every shard reported ready within the start-up timeout.
    StartTimeout(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(invalid) => write!(f, "{invalid}"),
            StartError::DataDir(error) => write!(f, "data directory: {error}"),
            StartError::Recovery(error) => write!(f, "recovery failed: {error}"),
            StartError::StartTimeout(why) => write!(f, "start-up timed out: {why}"),
            StartError::Shards(shards) => {
                write!(f, "--shards must be between 1 and {SHARDS_MAX}, not {shards}")
            }
            StartError::MemLock { limit_bytes, needed_bytes, shards } => write!(
                f,
                "locked-memory limit (RLIMIT_MEMLOCK) is {} KiB but {shards} shards need {} KiB: \
                 raise it with `ulimit -l {}` (or LimitMEMLOCK= in a systemd unit), \
                 or run fewer shards with --shards",
                limit_bytes / 1024,
                needed_bytes / 1024,
                needed_bytes / 1024
            ),
            StartError::AddressInUse(addr) => write!(
                f,
                "{addr} is already in use by another process: stop it or pick another address with --listen"
            ),
            StartError::Bind(addr, error) => write!(f, "cannot listen on {addr}: {error}"),
            StartError::Executor(shard, error) => write!(
                f,
                "shard {shard} could not start its io_uring executor: {error} \
                 (relayhub needs Linux >= 5.8 with io_uring enabled: check the \
                 kernel.io_uring_disabled sysctl and seccomp/container policies)"
            ),
        }
    }
}

impl std::error::Error for StartError {}

/// Checks that `shards` executors fit the locked-memory limit.
pub fn check_memlock(shards: usize) -> Result<(), StartError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid pointer we pass.
    let result = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if result != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return Ok(());
    }
    let needed_bytes = shards as u64 * MEMLOCK_PER_SHARD_BYTES;
    if limit.rlim_cur < needed_bytes {
        return Err(StartError::MemLock {
            limit_bytes: limit.rlim_cur,
            needed_bytes,
            shards,
        });
    }
    Ok(())
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: we pass the size of the set we own; the kernel fills it.
    let result =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if result != 0 {
        let count = std::thread::available_parallelism().map_or(1, |n| n.get());
        return (0..count).collect();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the set's size.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Opens one listening socket per shard on `addr`, all with SO_REUSEPORT
/// so the kernel spreads connections across shards. Fails clearly when
/// another process already holds the address (SO_REUSEPORT alone would let
/// a second hub silently share the port).
pub fn listeners(addr: SocketAddr, shards: usize) -> Result<(SocketAddr, Vec<RawFd>), StartError> {
    if addr.port() != 0 {
        let started = std::time::Instant::now();
        loop {
            match StdListener::bind(addr) {
                Ok(probe) => break drop(probe),
                Err(error) if error.kind() == io::ErrorKind::AddrInUse => {
                    if started.elapsed() >= ADDRESS_IN_USE_WAIT {
                        return Err(StartError::AddressInUse(addr));
                    }
                    std::thread::sleep(ADDRESS_IN_USE_RETRY);
                }
                Err(error) => return Err(StartError::Bind(addr, error)),
            }
        }
    }
    let first = reuseport_listener(addr)?;
    let bound = first.local_addr().map_err(|e| StartError::Bind(addr, e))?;
    let bound = bound.as_socket().expect("an inet address");
    let mut fds = vec![first.into_raw_fd()];
    for _ in 1..shards {
        fds.push(reuseport_listener(bound)?.into_raw_fd());
    }
    Ok((bound, fds))
}

fn reuseport_listener(addr: SocketAddr) -> Result<Socket, StartError> {
    let bind_error = |error: io::Error| {
        if error.kind() == io::ErrorKind::AddrInUse {
            StartError::AddressInUse(addr)
        } else {
            StartError::Bind(addr, error)
        }
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(bind_error)?;
    socket.set_reuse_address(true).map_err(bind_error)?;
    socket.set_reuse_port(true).map_err(bind_error)?;
    socket.bind(&addr.into()).map_err(bind_error)?;
    socket.listen(LISTEN_BACKLOG).map_err(bind_error)?;
    Ok(socket)
}
