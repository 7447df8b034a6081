//! SIGINT and SIGTERM: blocked in every thread and taken with sigwait in main, so that a signal
//! starts the graceful stop instead of killing the process mid-drain.

use std::process::exit;

use crate::RUNTIME_ERROR;

/// Blocks SIGINT and SIGTERM in the calling thread and every thread it starts afterwards; returns
/// the set to wait for. Call before any other thread exists.
pub fn block_shutdown_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it before any other use, and
    // pthread_sigmask only reads it. Called from main before any other thread exists.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            eprintln!("wspushd: cannot block SIGINT/SIGTERM: {}", std::io::Error::from_raw_os_error(rc));
            exit(RUNTIME_ERROR);
        }
        set
    }
}

/// Blocks until one of the signals in `set` (blocked in every thread) is pending, and takes it.
pub fn wait_for_signal(set: &libc::sigset_t) -> libc::c_int {
    loop {
        let mut signal: libc::c_int = 0;
        // SAFETY: `set` is an initialized signal set and `signal` a valid place for the result.
        if unsafe { libc::sigwait(set, &mut signal) } == 0 {
            return signal;
        }
    }
}

pub fn signal_name(signal: libc::c_int) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}
