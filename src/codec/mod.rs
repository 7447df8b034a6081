//! RFC 6455 frame codec, separate from I/O: header parse/format (tungstenite's `FrameHeader`),
//! masking, close-frame payloads, and [`decode_next`]: the whole client-stream decoder (frame rules,
//! reassembly, UTF-8) that the connection runs and the `frame_decoder` fuzz target checks.
//! - `frame.rs`: server frames, client headers, masking, close codes and payloads;
//! - `decoder.rs`: the client-stream decoder; `utf8.rs`: incremental UTF-8 validation.

mod decoder;
mod frame;
mod utf8;

pub use decoder::{decode_next, Decoded, DecoderState};
pub use frame::is_valid_close_code;
pub(crate) use frame::{
    close, close_frame, control, data_of, encode, encode_with, parse_header, Frame, Opcode, MAX_CLOSE_REASON,
};

/// Unmasking, measured by the benches on its own (`internals::apply_mask`).
#[cfg(feature = "bench-internals")]
pub(crate) use frame::apply_mask;

#[cfg(test)]
mod tests;
