//! A minimal readiness loop over raw sockets: `epoll` (level-triggered),
//! non-blocking `recv`/`send`, and a nanosecond wait (`epoll_pwait2`).
//!
//! Why not io_uring (glommio) for the traffic: glommio sets its ring up
//! without `IORING_SETUP_COOP_TASKRUN`, so every readiness completion
//! interrupts the thread with an IPI even while it is running, and the
//! sender of the bytes pays for waking it. With epoll, bytes that arrive
//! while the loop is busy cost the sender a list insertion, and the loop
//! picks them up on its next `epoll_wait` without being woken. The traffic
//! engine ([`crate::traffic`]) is the only user; connecting and the storm
//! and idle scenarios still run on glommio.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Readable, writable, or the peer is gone: what one event says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    /// The token given when the descriptor was added.
    pub token: u64,
    /// Bytes (or end of stream, or an error) to read.
    pub readable: bool,
    /// Room to write (only reported while asked for).
    pub writable: bool,
}

/// An epoll instance.
pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
    /// `epoll_pwait2` missing (kernel < 5.11): millisecond waits instead.
    no_pwait2: bool,
}

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

impl Epoll {
    /// A new epoll instance reporting up to `capacity` events per wait.
    pub fn new(capacity: usize) -> io::Result<Epoll> {
        // SAFETY: epoll_create1 has no memory preconditions.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll {
            // SAFETY: `fd` was just returned by epoll_create1 and is ours.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
            no_pwait2: false,
        })
    }

    fn control(&self, op: libc::c_int, fd: RawFd, token: u64, writable: bool) -> io::Result<()> {
        let mut flags = libc::EPOLLIN | libc::EPOLLRDHUP;
        if writable {
            flags |= libc::EPOLLOUT;
        }
        let mut event = libc::epoll_event {
            events: flags as u32,
            u64: token,
        };
        // SAFETY: `event` outlives the call; the kernel copies it.
        check(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut event) })?;
        Ok(())
    }

    /// Watches `fd` for reading (and writing if `writable`) under `token`.
    pub fn add(&self, fd: RawFd, token: u64, writable: bool) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_ADD, fd, token, writable)
    }

    /// Changes whether `fd` is also watched for writing.
    pub fn modify(&self, fd: RawFd, token: u64, writable: bool) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_MOD, fd, token, writable)
    }

    /// Stops watching `fd`.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_DEL, fd, 0, false)
    }

    /// Waits up to `timeout` (`None`: forever, zero: just look) and appends
    /// what is ready to `out`.
    pub fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Ready>) -> io::Result<()> {
        let capacity = self.events.len() as libc::c_int;
        let count = loop {
            let result = if self.no_pwait2 {
                let ms =
                    timeout.map_or(-1, |t| t.as_nanos().div_ceil(1_000_000).min(1 << 30) as i32);
                // SAFETY: `events` holds `capacity` entries the kernel may fill.
                unsafe {
                    libc::epoll_wait(self.fd.as_raw_fd(), self.events.as_mut_ptr(), capacity, ms)
                }
            } else {
                let spec = timeout.map(|t| libc::timespec {
                    tv_sec: t.as_secs().min(1 << 30) as libc::time_t,
                    tv_nsec: t.subsec_nanos() as libc::c_long,
                });
                let spec_ptr = spec
                    .as_ref()
                    .map_or(std::ptr::null(), |spec| spec as *const libc::timespec);
                // SAFETY: epoll_pwait2(epfd, events, maxevents, timeout,
                // sigmask, sigsetsize): `events` holds `capacity` entries,
                // `spec_ptr` is null or points at a live timespec, no mask.
                unsafe {
                    libc::syscall(
                        libc::SYS_epoll_pwait2,
                        self.fd.as_raw_fd(),
                        self.events.as_mut_ptr(),
                        capacity,
                        spec_ptr,
                        std::ptr::null::<libc::sigset_t>(),
                        0usize,
                    ) as libc::c_int
                }
            };
            if result >= 0 {
                break result as usize;
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOSYS) if !self.no_pwait2 => self.no_pwait2 = true,
                _ => return Err(error),
            }
        };
        out.extend(self.events[..count].iter().map(|event| {
            let flags = event.events as libc::c_int;
            Ready {
                token: event.u64,
                readable: flags
                    & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR)
                    != 0,
                writable: flags & (libc::EPOLLOUT | libc::EPOLLERR) != 0,
            }
        }));
        Ok(())
    }
}

/// What a non-blocking socket call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    /// Bytes moved (0 on a read: end of stream).
    Done(usize),
    /// Would block: wait for readiness.
    WouldBlock,
}

fn io_result(result: isize) -> io::Result<Io> {
    if result >= 0 {
        return Ok(Io::Done(result as usize));
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        // Interrupted: nothing moved; level-triggered readiness says again.
        Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(Io::WouldBlock),
        _ => Err(error),
    }
}

/// One non-blocking `recv` into `buf`.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<Io> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    io_result(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) })
}

/// One non-blocking `send` of `buf` (no SIGPIPE on a closed peer).
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<Io> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    io_result(unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    })
}

/// One non-blocking `sendmsg` of `slices`, in order (no SIGPIPE).
pub fn send_vectored(fd: RawFd, slices: &[std::io::IoSlice<'_>]) -> io::Result<Io> {
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is guaranteed ABI-compatible with iovec on Unix.
    message.msg_iov = slices.as_ptr() as *mut libc::iovec;
    message.msg_iovlen = slices.len() as _;
    // SAFETY: `message` points at `slices`, valid for reads for the call;
    // the kernel only reads through msg_iov.
    io_result(unsafe { libc::sendmsg(fd, &message, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) })
}

/// A second descriptor for the socket behind `fd` (close-on-exec).
pub fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) only reads its integer arguments.
    let new = check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: `new` was just returned by fcntl and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Starts a non-blocking TCP connect to `address` (close-on-exec,
/// `TCP_NODELAY` set). The socket turns writable once the connect is
/// done; [`connect_result`] then says whether it worked.
pub fn connect_start(address: std::net::SocketAddr) -> io::Result<OwnedFd> {
    let family = match address {
        std::net::SocketAddr::V4(_) => libc::AF_INET,
        std::net::SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: socket() only reads its integer arguments.
    let fd = check(unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: `fd` was just returned by socket() and is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: `one` lives across the call; the kernel reads an int from it.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    let result = match address {
        std::net::SocketAddr::V4(v4) => {
            let raw = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `raw` is a valid sockaddr_in for the call's duration.
            unsafe {
                libc::connect(
                    fd.as_raw_fd(),
                    (&raw as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        std::net::SocketAddr::V6(v6) => {
            let raw = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: `raw` is a valid sockaddr_in6 for the call's duration.
            unsafe {
                libc::connect(
                    fd.as_raw_fd(),
                    (&raw as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if result < 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(error);
        }
    }
    Ok(fd)
}

/// The outcome of a connect started by [`connect_start`], once the socket
/// is writable (`SO_ERROR`).
pub fn connect_result(fd: RawFd) -> io::Result<()> {
    let mut error: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `error` and `len` live across the call; the kernel writes at
    // most `len` bytes into `error`.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut error as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    if error != 0 {
        return Err(io::Error::from_raw_os_error(error));
    }
    Ok(())
}

/// Sets this thread's timer slack (the kernel's default of 50 us would
/// make every short open-loop sleep 50 us late).
pub fn set_timer_slack_ns(ns: u64) {
    // SAFETY: PR_SET_TIMERSLACK takes an integer and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, ns.max(1) as libc::c_ulong, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn readiness_and_nonblocking_io() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let mut epoll = Epoll::new(8).unwrap();
        epoll.add(server.as_raw_fd(), 7, false).unwrap();
        let mut ready = Vec::new();
        epoll
            .wait(Some(Duration::from_millis(1)), &mut ready)
            .unwrap();
        assert!(ready.is_empty());
        let mut buf = [0u8; 16];
        assert_eq!(recv(server.as_raw_fd(), &mut buf).unwrap(), Io::WouldBlock);
        client.write_all(b"hello").unwrap();
        epoll
            .wait(Some(Duration::from_secs(5)), &mut ready)
            .unwrap();
        assert_eq!(ready[0].token, 7);
        assert!(ready[0].readable && !ready[0].writable);
        assert_eq!(recv(server.as_raw_fd(), &mut buf).unwrap(), Io::Done(5));
        let copy = dup(server.as_raw_fd()).unwrap();
        assert_eq!(send(copy.as_raw_fd(), b"back").unwrap(), Io::Done(4));
        epoll.modify(server.as_raw_fd(), 7, true).unwrap();
        ready.clear();
        epoll.wait(Some(Duration::ZERO), &mut ready).unwrap();
        assert!(ready[0].writable);
        epoll.delete(server.as_raw_fd()).unwrap();
        drop(client);
    }

    #[test]
    fn nonblocking_connect() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = connect_start(listener.local_addr().unwrap()).unwrap();
        let mut epoll = Epoll::new(4).unwrap();
        epoll.add(fd.as_raw_fd(), 1, true).unwrap();
        let mut ready = Vec::new();
        epoll
            .wait(Some(Duration::from_secs(5)), &mut ready)
            .unwrap();
        assert!(ready[0].writable);
        connect_result(fd.as_raw_fd()).unwrap();
        let (mut accepted, _) = listener.accept().unwrap();
        assert_eq!(send(fd.as_raw_fd(), b"hi").unwrap(), Io::Done(2));
        let mut buf = [0u8; 2];
        std::io::Read::read_exact(&mut accepted, &mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        // Nobody listens: the connect fails, and says so.
        let port = listener.local_addr().unwrap().port();
        drop((listener, accepted));
        let refused = connect_start(([127, 0, 0, 1], port).into()).unwrap();
        epoll.add(refused.as_raw_fd(), 2, true).unwrap();
        ready.clear();
        epoll
            .wait(Some(Duration::from_secs(5)), &mut ready)
            .unwrap();
        assert!(ready.iter().any(|event| event.token == 2));
        assert!(connect_result(refused.as_raw_fd()).is_err());
    }
}
