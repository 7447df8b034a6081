//! Fault injection for tests, compiled only with `--features test-hooks` (never in a shipped
//! build): makes the engine panic at a chosen point so tests can check that a bug in wspush
//! surfaces as `WSPUSH_RESULT_PANIC` and the host process lives on, and holds it at the points
//! where a resume and a publish could race (tests/history_race.rs).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

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

/// Where a test may hold the engine to make a resume and a publish of one user race.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RacePoint {
    /// A resuming `wspush.v1` connection is registered under its user and has not read the
    /// history yet (the I/O thread, holding the user's order lock).
    ResumeRegistered,
    /// A publish has its offset and has not queued the message to the user's connections yet
    /// (the publishing thread, holding the user's order lock).
    PublishAppended,
}

type RaceHook = Arc<dyn Fn(RacePoint) + Send + Sync>;

static RACE_HOOK: Mutex<Option<RaceHook>> = Mutex::new(None);

/// Calls `hook` at every race point, on the thread that reaches it, until `clear_race_hook`.
/// The hook may block: that thread (and the user's order lock) waits with it.
pub fn set_race_hook(hook: impl Fn(RacePoint) + Send + Sync + 'static) {
    *RACE_HOOK.lock() = Some(Arc::new(hook));
}

pub fn clear_race_hook() {
    *RACE_HOOK.lock() = None;
}

/// Where the race hook fires.
pub(crate) fn race_point(point: RacePoint) {
    let hook = RACE_HOOK.lock().clone(); // not held while the hook runs
    if let Some(hook) = hook {
        hook(point);
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
