//! Handle casts, in one place (rustls-ffi's `Castable` idea): each opaque C type names the Rust
//! value behind its pointers and how the host holds it, and every entry point turns a pointer
//! into that value through the typed helpers below instead of casting raw pointers itself.
//!
//! - Box handles (`wspush_config`): made by `_new`, owned by the host, released by `_free`.
//! - Arc handles (`wspush_server`): the host owns one reference; callbacks get a borrowed one.
//! - Borrowed handles (`wspush_request`): live on an I/O thread's stack during one callback.

use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::sync::Arc;

use super::boundary::wspush_result;

/// A C handle type: `RustType` is what its pointers point to.
pub(crate) trait Castable {
    type RustType;
}

/// A handle owning a `Box<RustType>`.
pub(crate) trait BoxCastable: Castable {}

/// A handle owning one reference of an `Arc<RustType>`.
pub(crate) trait ArcCastable: Castable {}

/// Gives the host a new Box handle.
pub(crate) fn box_into_handle<C: BoxCastable>(value: C::RustType) -> *mut C {
    Box::into_raw(Box::new(value)).cast()
}

/// Releases a Box handle; NULL is a no-op.
///
/// # Safety
/// `handle` must be NULL or come from [`box_into_handle`] for the same `C`, not yet freed.
pub(crate) unsafe fn free_box<C: BoxCastable>(handle: *mut C) {
    if !handle.is_null() {
        // SAFETY: made by Box::into_raw of a `C::RustType` (contract), released once.
        drop(unsafe { Box::from_raw(handle.cast::<C::RustType>()) });
    }
}

/// Borrows the value behind any handle; NULL is NULL_ARGUMENT.
///
/// # Safety
/// `handle` must be NULL or a live handle of type `C` whose value outlives `'a`.
pub(crate) unsafe fn borrow<'a, C: Castable>(handle: *const C) -> Result<&'a C::RustType, wspush_result> {
    // SAFETY: a live handle of type C points to a C::RustType (contract).
    unsafe { handle.cast::<C::RustType>().as_ref() }.ok_or(wspush_result::NullArgument)
}

/// Borrows the value behind a Box handle for changing it; NULL is NULL_ARGUMENT.
///
/// # Safety
/// `handle` must be NULL or a live Box handle of type `C` that nothing else uses during `'a`.
pub(crate) unsafe fn borrow_mut<'a, C: BoxCastable>(handle: *mut C) -> Result<&'a mut C::RustType, wspush_result> {
    // SAFETY: a live, unaliased handle of type C points to a C::RustType (contract).
    unsafe { handle.cast::<C::RustType>().as_mut() }.ok_or(wspush_result::NullArgument)
}

/// Gives the host one reference of an Arc as a handle.
pub(crate) fn arc_into_handle<C: ArcCastable>(value: Arc<C::RustType>) -> *const C {
    Arc::into_raw(value).cast()
}

/// The handle for an Arc the caller keeps (e.g. the server passed to a callback).
pub(crate) fn arc_as_handle<C: ArcCastable>(value: &Arc<C::RustType>) -> *const C {
    Arc::as_ptr(value).cast()
}

/// A value holding a reference this did not take (an Arc borrowed from a handle without
/// touching its count, so publishers on many host threads don't contend on it): never dropped.
pub(crate) struct Borrowed<T>(ManuallyDrop<T>);

impl<T> Deref for Borrowed<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> Borrowed<T> {
    /// Wraps the borrowed value (e.g. an `Arc<Shared>` into a `ServerHandle`); `wrap` must not
    /// panic, or the reference would be released.
    pub(crate) fn map<U>(self, wrap: impl FnOnce(T) -> U) -> Borrowed<U> {
        Borrowed(ManuallyDrop::new(wrap(ManuallyDrop::into_inner(self.0))))
    }
}

/// Borrows the Arc behind a handle; NULL is NULL_ARGUMENT.
///
/// # Safety
/// `handle` must be NULL or a live Arc handle of type `C` (the host's reference, or one a
/// running callback was given) that stays live while the result is used.
pub(crate) unsafe fn borrow_arc<C: ArcCastable>(handle: *const C) -> Result<Borrowed<Arc<C::RustType>>, wspush_result> {
    if handle.is_null() {
        return Err(wspush_result::NullArgument);
    }
    // SAFETY: the pointer is Arc::into_raw/as_ptr of a live Arc (contract); ManuallyDrop never
    // releases the reference this did not take.
    Ok(Borrowed(ManuallyDrop::new(unsafe { Arc::from_raw(handle.cast::<C::RustType>()) })))
}

/// Takes back the host's reference of an Arc handle (its `_free`); NULL is `None`.
///
/// # Safety
/// `handle` must be NULL or come from [`arc_into_handle`] for the same `C`, and the host gives
/// its reference up: the pointer is not used again.
pub(crate) unsafe fn arc_from_handle<C: ArcCastable>(handle: *const C) -> Option<Arc<C::RustType>> {
    // SAFETY: the host's own reference, released once (contract).
    (!handle.is_null()).then(|| unsafe { Arc::from_raw(handle.cast::<C::RustType>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter {
        _opaque: [u8; 0],
    }
    impl Castable for Counter {
        type RustType = u64;
    }
    impl ArcCastable for Counter {}

    struct Builder {
        _opaque: [u8; 0],
    }
    impl Castable for Builder {
        type RustType = String;
    }
    impl BoxCastable for Builder {}

    #[test]
    fn borrowing_an_arc_handle_leaves_its_count_alone_and_free_releases_it() {
        let value = Arc::new(7_u64);
        let handle: *const Counter = arc_into_handle(Arc::clone(&value));
        // SAFETY: a live handle made just above; freed once at the end.
        unsafe {
            assert_eq!(**borrow_arc(handle).expect("non-NULL"), 7);
            assert_eq!(Arc::strong_count(&value), 2);
            assert_eq!(*borrow(handle).expect("non-NULL"), 7);
            drop(arc_from_handle(handle));
        }
        assert_eq!(Arc::strong_count(&value), 1);
        // SAFETY: NULL handles.
        unsafe {
            assert!(matches!(borrow_arc::<Counter>(std::ptr::null()), Err(wspush_result::NullArgument)));
            assert!(arc_from_handle::<Counter>(std::ptr::null()).is_none());
        }
    }

    #[test]
    fn a_box_handle_is_changed_in_place_and_freed_once() {
        let handle: *mut Builder = box_into_handle(String::from("a"));
        // SAFETY: a live handle made just above, used by this thread only, freed once.
        unsafe {
            borrow_mut(handle).expect("non-NULL").push('b');
            assert_eq!(borrow(handle.cast_const()).expect("non-NULL"), "ab");
            free_box(handle);
            free_box::<Builder>(std::ptr::null_mut());
            assert!(matches!(borrow_mut::<Builder>(std::ptr::null_mut()), Err(wspush_result::NullArgument)));
        }
    }
}
