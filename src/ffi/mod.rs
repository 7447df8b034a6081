//! The C surface: every `extern "C"` function, type and constant of include/wspush.h, which
//! build.rs generates from this module with cbindgen (see cbindgen.toml for the header's
//! overview text: threading contract, ownership, conventions).
//!
//! Conventions (in the style of rustls-ffi): opaque handles made by `_new`/`_start` and
//! released by `_free` exactly once; one result enum with fixed values; every pointer is
//! NULL-checked; out-parameters are written only on success; a buffer pointer is followed by
//! its length; every entry point runs inside [`boundary::ffi_boundary`], so a panic returns
//! `WSPUSH_RESULT_PANIC` instead of unwinding into C.
//!
//! Files, one concept each: `types` (kinds, limits, callback typedefs), `boundary` (result
//! codes, panic boundary, argument checks), `handle` (typed handle casts), `config` (the
//! configuration builder), `server`, `request` (the upgrade/HTTP request view), `handler` (the
//! bridge from the engine's callbacks to the host's), `stats`.
//!
//! The functions are also callable from Rust (tests do), as `unsafe` functions.
#![allow(non_camel_case_types)]
#![deny(unsafe_op_in_unsafe_fn)]

mod boundary;
mod config;
mod handle;
mod handler;
mod limits;
mod request;
mod server;
mod stats;
mod types;

pub use boundary::{wspush_result, ALL_RESULTS};
pub use config::*;
pub use limits::*;
pub use request::*;
pub use server::*;
pub use stats::*;
pub use types::*;
