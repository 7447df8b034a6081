//! One module per phase, each an `impl Run` block returning the phase's result.

mod broadcast;
mod connect;
mod echo;
mod idle;
mod publish;
mod resume;
pub mod soak;
pub mod storm;
