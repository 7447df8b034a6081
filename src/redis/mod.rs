//! Redis, the pieces below the engine: the wire protocol (`resp`), the URL (`url`), what wspush
//! keeps there and the scripts that keep it (`keys`), and the queue into the bridge thread
//! (`outbox`). The bridge itself, which talks to Redis for the engine, is `cluster`.

pub(crate) mod keys;
pub(crate) mod outbox;
pub(crate) mod resp;
pub(crate) mod url;

pub(crate) use outbox::{Done, Outbox, Request};
pub(crate) use url::RedisUrl;
