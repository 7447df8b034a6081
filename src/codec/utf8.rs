//! Incremental UTF-8 validation for text messages that arrive in pieces.

/// Incremental UTF-8 validation of a text message arriving in pieces (fragments, or a frame's
/// payload as it trickles in): fails on the first byte that cannot belong to valid UTF-8, carries
/// an incomplete code point (at most 3 bytes) over to the next piece. Linear in the bytes fed.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Utf8Stream {
    carry: [u8; 4],
    carry_len: u8,
}

impl Utf8Stream {
    /// Feeds the next bytes of the message; false as soon as it cannot be valid.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> bool {
        if self.carry_len > 0 {
            let have = usize::from(self.carry_len);
            let width = match self.carry[0] {
                0xf0..=0xf4 => 4,
                0xe0..=0xef => 3,
                _ => 2,
            };
            let take = (width - have).min(bytes.len());
            let mut point = self.carry;
            point[have..have + take].copy_from_slice(&bytes[..take]);
            match std::str::from_utf8(&point[..have + take]) {
                Ok(_) => self.carry_len = 0,
                // Still short of its last byte(s), and `bytes` is used up.
                Err(e) if e.error_len().is_none() => {
                    self.carry = point;
                    self.carry_len = (have + take) as u8;
                    return true;
                }
                Err(_) => return false,
            }
            bytes = &bytes[take..];
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => true,
            Err(e) if e.error_len().is_none() => {
                let tail = &bytes[e.valid_up_to()..]; // an incomplete code point: 1 to 3 bytes
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len() as u8;
                true
            }
            Err(_) => false,
        }
    }

    /// No code point is left half-finished (a message may end here).
    pub(crate) fn is_complete(&self) -> bool {
        self.carry_len == 0
    }
}
