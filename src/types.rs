//! The ground floor: plain types and rules every other module may use, importing nothing above.

use crate::error::Error;

/// Connection IDs are unique for the server's life: an ID is never given to a second connection.
pub type ConnId = u64;

/// WebSocket message type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// UTF-8 text (opcode 1). Payloads from clients are validated; payloads you publish are not.
    Text,
    /// Binary (opcode 2).
    Binary,
}

/// What a publish did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// Connections the message was queued to. With Redis (`Config::redis_url`) it is instead the
    /// number of nodes that hold a connection of the user (each got it from Redis), known only
    /// once Redis confirmed the publish: 0 from the non-waiting `publish`.
    pub delivered: usize,
    /// Its offset in the user's stream; `None` with history off (or not yet known: the
    /// non-waiting `publish` with Redis).
    pub offset: Option<u64>,
}

/// Longest user ID, in bytes. A user ID is 1 to this many bytes and never contains NUL (a C
/// host reading it as a C string would see a different, shorter user).
pub const MAX_USER_ID_LEN: usize = 255;

/// The one rule for user IDs, wherever they come from (host, JWT `sub`): 1 to 255 bytes and no
/// NUL byte. NUL is refused because C hosts commonly treat an ID as a C string: "ali\0ce" would
/// be logged, compared or published to as "ali", another user.
pub(crate) fn check_user_id(user: &[u8]) -> Result<(), Error> {
    if user.is_empty() || user.len() > MAX_USER_ID_LEN || user.contains(&0) {
        Err(Error::InvalidUserId)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_1_to_255_bytes_without_nul() {
        assert!(check_user_id(b"a").is_ok());
        assert!(check_user_id(&[b'u'; MAX_USER_ID_LEN]).is_ok());
        assert!(check_user_id(b"").is_err());
        assert!(check_user_id(&[b'u'; MAX_USER_ID_LEN + 1]).is_err());
        for with_nul in [&b"ali\0ce"[..], b"\0", b"alice\0"] {
            assert!(matches!(check_user_id(with_nul), Err(Error::InvalidUserId)), "{with_nul:?}");
        }
    }
}
