//! Panic containment: a panic in a host callback or in an engine thread must end neither the
//! I/O thread nor the host process.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `body`, catching a panic (`None`). `AssertUnwindSafe` is right for the engine's uses:
/// its locks are parking_lot (no poisoning) and a panicking callback leaves no half-built engine
/// state behind.
pub(crate) fn guarded<R>(body: impl FnOnce() -> R) -> Option<R> {
    catch_unwind(AssertUnwindSafe(body)).map_err(drop_panic_payload).ok()
}

/// Drops a caught panic's payload without letting its Drop unwind further: a Drop that panics
/// yields another payload, dropped the same way; a chain that never ends is cut and leaked.
pub(crate) fn drop_panic_payload(mut payload: Box<dyn std::any::Any + Send>) {
    for _ in 0..8 {
        match catch_unwind(AssertUnwindSafe(|| drop(payload))) {
            Ok(()) => return,
            Err(next) => payload = next,
        }
    }
    std::mem::forget(payload);
}
