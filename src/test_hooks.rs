//! Fault injection for tests, compiled only with `--features test-hooks` (never in a shipped
//! build): makes the engine panic at a chosen point so tests can check that a bug in wspush
//! surfaces as `WSPUSH_RESULT_PANIC` and the host process lives on.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    static PANIC_IN_NEXT_FFI_CALL: Cell<bool> = const { Cell::new(false) };
}

/// The next C-ABI call on this thread that takes a server panics inside wspush, after it has
/// borrowed the server and before it does anything else. One call only.
pub fn panic_in_next_ffi_call() {
    PANIC_IN_NEXT_FFI_CALL.with(|armed| armed.set(true));
}

/// Where an armed hook fires.
pub(crate) fn ffi_call_point() {
    if PANIC_IN_NEXT_FFI_CALL.with(|armed| armed.replace(false)) {
        panic!("wspush test hook: panic inside a C-ABI call");
    }
}

static PANIC_IN_NEXT_COMMAND: AtomicBool = AtomicBool::new(false);

/// The next command an I/O thread executes (a publish, send, close, ...) panics inside the
/// engine's event loop, outside any callback. One command only, whichever server runs it.
pub fn panic_in_next_io_command() {
    PANIC_IN_NEXT_COMMAND.store(true, Ordering::SeqCst);
}

/// Where the armed I/O-thread hook fires.
pub(crate) fn io_thread_point() {
    if PANIC_IN_NEXT_COMMAND.swap(false, Ordering::SeqCst) {
        panic!("wspush test hook: panic on an I/O thread");
    }
}
