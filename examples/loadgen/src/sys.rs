//! Reading the machine: the shared monotonic clock, /proc figures for the server process and the
//! kernel, and the listener check.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

/// CLOCK_MONOTONIC in nanoseconds. Every process on the machine reads the same clock, so a
/// timestamp written by the parent into a payload can be compared with a worker's receive time.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    // CLOCK_MONOTONIC cannot fail on Linux; a zero reading would only distort latencies.
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A snapshot of memory figures taken around the idle phase.
#[derive(Clone, Debug, Default)]
pub struct MemSample {
    /// Servers' anonymous resident memory summed, KiB (None without --server-pid).
    pub rss_anon_kib: Option<u64>,
    /// Each server's (--server-pid order).
    pub rss_anon_kib_each: Vec<u64>,
    /// Redis's RssAnon, KiB (--redis-pid) and INFO used_memory, bytes (--redis-addr).
    pub redis_rss_anon_kib: Option<u64>,
    pub redis_used_memory: Option<u64>,
    /// Kernel slab, KiB (/proc/meminfo `Slab:`).
    pub slab_kib: u64,
    /// TCP sockets in use (/proc/net/sockstat).
    pub tcp_inuse: u64,
    /// Pages charged to TCP socket buffers (/proc/net/sockstat `mem`).
    pub tcp_mem_pages: u64,
}

pub fn sample_memory(
    server_pids: &[u32],
    redis_pid: Option<u32>,
    redis_addr: Option<SocketAddr>,
) -> io::Result<MemSample> {
    let rss_anon_kib_each = server_pids.iter().map(|&pid| self::rss_anon_kib(pid)).collect::<io::Result<Vec<_>>>()?;
    let redis_rss_anon_kib = redis_pid.map(self::rss_anon_kib).transpose()?;
    let rss_anon_kib = (!server_pids.is_empty()).then(|| rss_anon_kib_each.iter().sum());
    let redis_used_memory = redis_addr.map(redis_used_memory).transpose()?;
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let slab_kib = field_after(&meminfo, "Slab:").unwrap_or(0);
    let sockstat = std::fs::read_to_string("/proc/net/sockstat")?;
    let tcp_line = sockstat.lines().find(|line| line.starts_with("TCP:")).unwrap_or("");
    Ok(MemSample {
        rss_anon_kib,
        rss_anon_kib_each,
        redis_rss_anon_kib,
        redis_used_memory,
        slab_kib,
        tcp_inuse: field_after(tcp_line, "inuse").unwrap_or(0),
        tcp_mem_pages: field_after(tcp_line, "mem").unwrap_or(0),
    })
}

/// The number following the whitespace-separated word `name` in `text`.
fn field_after(text: &str, name: &str) -> Option<u64> {
    let mut words = text.split_whitespace();
    while let Some(word) = words.next() {
        if word == name {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// The server's anonymous resident memory, KiB (/proc/PID/status `RssAnon:`).
pub fn rss_anon_kib(pid: u32) -> io::Result<u64> {
    status_field_kib(pid, "RssAnon:")
}

/// How many file descriptors the process has open (entries of /proc/PID/fd).
pub fn open_fds(pid: u32) -> io::Result<u64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64)
}

fn status_field_kib(pid: u32, name: &str) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    field_after(&status, name)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no {name} in /proc/{pid}/status")))
}

/// User plus system CPU time the process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; fields after its closing ')' are plain.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state); utime and stime are fields 14 and 15.
    let parse = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let (Some(utime), Some(stime)) = (parse(11), parse(12)) else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad /proc/{pid}/stat")));
    };
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Ok((utime + stime) as f64 / ticks)
}

/// CPU seconds of each process, in order; None if any cannot be read (it exited).
pub fn cpu_seconds_each(pids: &[u32]) -> Option<Vec<f64>> {
    pids.iter().map(|&pid| cpu_seconds(pid).ok()).collect()
}

/// Redis's `used_memory` (bytes its allocator holds for data and buffers), from `INFO memory`
/// over a fresh connection (RESP inline command; no client library).
pub fn redis_used_memory(addr: SocketAddr) -> io::Result<u64> {
    let info = redis_info(addr, "memory")?;
    field_after(&info.replace(':', " "), "used_memory")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no used_memory in INFO memory"))
}

/// The text of `INFO section`.
pub fn redis_info(addr: SocketAddr, section: &str) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("INFO {section}\r\n").as_bytes())?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "Redis closed the connection"));
        }
        reply.extend_from_slice(&chunk[..n]);
        // A bulk string: $LEN\r\n then LEN bytes and \r\n.
        if let Some(end) = reply.windows(2).position(|w| w == b"\r\n") {
            let head = String::from_utf8_lossy(&reply[..end]).into_owned();
            let Some(len) = head.strip_prefix('$').and_then(|l| l.parse::<usize>().ok()) else {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("Redis answered {head:?}")));
            };
            if reply.len() >= end + 2 + len {
                return Ok(String::from_utf8_lossy(&reply[end + 2..end + 2 + len]).into_owned());
            }
        }
    }
}

/// How many sockets listen on TCP `port` (any address), per `ss`. None when ss can't be run.
pub fn listener_count(port: u16) -> Option<usize> {
    let output = Command::new("ss").args(["-tlnH", &format!("( sport = :{port} )")]).output().ok()?;
    if !output.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&output.stdout).lines().filter(|l| !l.trim().is_empty()).count())
}

/// Raises this process's soft open-file limit to the hard limit (workers hold up to 19,000
/// sockets). Returns the limit now in force.
pub fn raise_fd_limit() -> libc::rlim_t {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: `raised` is a valid rlimit; raising the soft limit up to the hard one is allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    limit.rlim_cur
}
