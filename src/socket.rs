//! The few socket calls std and mio don't offer, fenced in one place: a SO_REUSEPORT listener
//! group (one listener per I/O thread, balanced by the kernel), sends that can never raise
//! SIGPIPE in the host process (MSG_NOSIGNAL; the host's signal dispositions are left alone), and
//! a descriptor table sized at start for the connections to come.

use std::io::{self, IoSlice};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Asked of the kernel, which caps it at net.core.somaxconn: a reconnect storm should wait in
/// the accept queue, not have its SYNs dropped and retransmitted a second later all at once.
const BACKLOG: libc::c_int = 65_535;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn set_option(fd: RawFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is an open socket; the option value points to a live c_int of the given size.
    check(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn set_flag(fd: RawFd, option: libc::c_int) -> io::Result<()> {
    set_option(fd, option, 1)
}

fn to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data for which all-zero bytes are a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn bound_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = check(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_flag(fd.as_raw_fd(), libc::SO_REUSEADDR)?;
    if reuse_port {
        set_flag(fd.as_raw_fd(), libc::SO_REUSEPORT)?;
    }
    let (storage, len) = to_sockaddr(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes for this socket's family.
    check(unsafe { libc::bind(fd.as_raw_fd(), (&storage as *const libc::sockaddr_storage).cast(), len) })?;
    Ok(fd)
}

fn set_size(fd: RawFd, option: libc::c_int, bytes: usize) -> io::Result<()> {
    set_option(fd, option, libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX))
}

/// Socket buffer sizes for accepted connections; 0 leaves the kernel's default.
#[derive(Clone, Copy, Default)]
pub(crate) struct BufferSizes {
    pub send: usize,
    pub recv: usize,
}

/// Binds `count` listeners on one address, one per I/O thread, with SO_REUSEPORT so the kernel
/// spreads incoming connections among them. A busy address is refused first with a probe bind
/// without SO_REUSEPORT, so a second server on the same port fails instead of silently taking a
/// share of the connections. Accepted sockets inherit the listeners' buffer sizes.
pub(crate) fn bind_listeners(addr: SocketAddr, count: usize, buffers: BufferSizes) -> io::Result<Vec<TcpListener>> {
    let mut addr = addr;
    if addr.port() != 0 {
        drop(bound_socket(addr, false)?);
    }
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let fd = bound_socket(addr, true)?;
        if buffers.send > 0 {
            set_size(fd.as_raw_fd(), libc::SO_SNDBUF, buffers.send)?;
        }
        if buffers.recv > 0 {
            set_size(fd.as_raw_fd(), libc::SO_RCVBUF, buffers.recv)?;
        }
        // SAFETY: `fd` is a bound stream socket we own.
        check(unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) })?;
        let listener = TcpListener::from(fd);
        addr = listener.local_addr()?; // later listeners join the port the first one got
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Grows the process's descriptor table now so that it holds `more` descriptors above `above`
/// (at most RLIMIT_NOFILE). The kernel grows the table by doubling when a new descriptor does
/// not fit, and in a multi-threaded process each doubling waits for an RCU grace period while
/// every thread that opens a descriptor waits behind it: in a connection storm all I/O threads
/// stalled in accept(2) for 5-8 ms per doubling, and every publish waited with them. The table
/// never shrinks, so one growth at start is all it costs (8 bytes of kernel memory per slot).
/// Best effort: a failure only means the kernel grows the table later, as it would anyway.
pub(crate) fn reserve_descriptors(above: RawFd, more: usize) {
    let Some(limit) = open_files_limit() else { return };
    let wanted = (above.max(0) as usize).saturating_add(more).min(limit);
    let Some(highest) = wanted.checked_sub(1) else { return };
    // F_DUPFD answers with the lowest free descriptor >= `highest`, growing the table to hold it.
    // SAFETY: `above` is an open descriptor; the duplicate is ours and closed right away.
    let duplicate = unsafe { libc::fcntl(above, libc::F_DUPFD_CLOEXEC, highest as libc::c_int) };
    if duplicate >= 0 {
        // SAFETY: `duplicate` was just created and nothing else refers to it.
        drop(unsafe { OwnedFd::from_raw_fd(duplicate) });
    }
}

/// How many more descriptors this process may open now (RLIMIT_NOFILE less those open), when
/// /proc tells.
pub(crate) fn descriptors_left() -> Option<usize> {
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count().saturating_sub(1); // less the listing's own
    Some(open_files_limit()?.saturating_sub(open))
}

/// A descriptor kept in reserve so that, out of descriptors, an I/O thread can still accept a
/// waiting client to answer it 503 and close it, instead of leaving it in the backlog unanswered
/// (close the reserve, accept, answer, close, take the reserve again).
pub(crate) fn reserve_descriptor() -> Option<OwnedFd> {
    // SAFETY: open(2) of a constant NUL-terminated path; the result is checked before use.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    // SAFETY: a descriptor just returned by open(2), owned by nothing else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether an accept error means the process or system is out of descriptors.
pub(crate) fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The soft RLIMIT_NOFILE: one more than the highest descriptor number this process may open.
fn open_files_limit() -> Option<usize> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    Some(usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX).min(libc::c_int::MAX as usize))
}

/// Writes without blocking and without SIGPIPE.
pub(crate) fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes for the duration of the call.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Gathers several buffers into one sendmsg(2), without blocking and without SIGPIPE.
pub(crate) fn send_vectored(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is guaranteed ABI-compatible with iovec on Unix.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len().min(libc::UIO_MAXIOV as usize) as _;
    // SAFETY: `msg` points at `bufs`, which outlive the call; sendmsg only reads them.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The descriptor table's capacity, from /proc/self/status (it only ever grows).
    fn table_size() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
        let line = status.lines().find_map(|line| line.strip_prefix("FDSize:")).expect("FDSize line");
        line.trim().parse().expect("FDSize number")
    }

    #[test]
    fn reserving_descriptors_grows_the_table_once_and_leaves_no_descriptor_open() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let fd = listener.as_raw_fd();
        let wanted = (fd as usize + 3_000).min(open_files_limit().expect("RLIMIT_NOFILE"));
        reserve_descriptors(fd, 3_000);
        assert!(table_size() >= wanted, "table holds {} descriptors, wanted {wanted}", table_size());
        // The probe descriptor is closed again: the slot it took is free.
        // SAFETY: F_GETFD only inspects the descriptor number.
        assert_eq!(unsafe { libc::fcntl(wanted as libc::c_int - 1, libc::F_GETFD) }, -1);
        // Asking past the limit is capped, not an error, and the listener still works.
        reserve_descriptors(fd, usize::MAX);
        assert!(listener.local_addr().is_ok());
    }
}
