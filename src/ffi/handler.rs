//! The bridge from the engine's [`Handler`] trait to the host's C function pointers.

use super::boundary::out_bytes;
use super::request::{Purpose, RequestView};
use super::server::server_ptr;
use super::types::{message_kind_to_c, wspush_callbacks};
use crate::handler::default_upgrade_decision;
use crate::{ConnId, Handler, HttpResponse, MessageKind, Request, ServerHandle, UpgradeDecision};

/// The host's callbacks, called from every I/O thread.
pub(crate) struct CallbackHandler {
    callbacks: wspush_callbacks,
}

// SAFETY: the only non-thread-safe part is the `userdata` pointer, which this type never
// dereferences; it only hands it back to the host's callbacks. The header makes the host
// promise that `userdata` and the callbacks may be used from any thread, concurrently.
unsafe impl Send for CallbackHandler {}
// SAFETY: as for Send; `&CallbackHandler` only reads the copied function pointers.
unsafe impl Sync for CallbackHandler {}

impl CallbackHandler {
    pub(crate) fn new(callbacks: wspush_callbacks) -> CallbackHandler {
        CallbackHandler { callbacks }
    }
}

// Each call below hands the host's function pointer the arguments its typedef documents:
// userdata as given, a server pointer valid for the call (the I/O thread holds a reference),
// and borrowed buffers that outlive the call.
impl Handler for CallbackHandler {
    fn on_upgrade(&self, server: &ServerHandle, request: &Request<'_>) -> UpgradeDecision {
        let Some(callback) = self.callbacks.on_upgrade else {
            return default_upgrade_decision(request);
        };
        let view = RequestView::new(request, Purpose::Upgrade, server.shared.config.max_queue_bytes);
        // SAFETY: see the comment on this impl; `view` lives until after the call.
        unsafe { callback(self.callbacks.userdata, server_ptr(server), view.as_c()) };
        view.into_decision()
    }

    fn on_open(&self, server: &ServerHandle, conn: ConnId, user: &[u8]) {
        if let Some(callback) = self.callbacks.on_open {
            let (user, user_len) = out_bytes(user);
            // SAFETY: see the comment on this impl.
            unsafe { callback(self.callbacks.userdata, server_ptr(server), conn, user, user_len) };
        }
    }

    fn on_message(&self, server: &ServerHandle, conn: ConnId, user: &[u8], kind: MessageKind, payload: &[u8]) {
        if let Some(callback) = self.callbacks.on_message {
            let (user, user_len) = out_bytes(user);
            let (payload, payload_len) = out_bytes(payload);
            // SAFETY: see the comment on this impl.
            unsafe {
                callback(
                    self.callbacks.userdata,
                    server_ptr(server),
                    conn,
                    user,
                    user_len,
                    message_kind_to_c(kind),
                    payload,
                    payload_len,
                )
            };
        }
    }

    fn on_close(&self, server: &ServerHandle, conn: ConnId, user: &[u8], code: u16) {
        if let Some(callback) = self.callbacks.on_close {
            let (user, user_len) = out_bytes(user);
            // SAFETY: see the comment on this impl.
            unsafe { callback(self.callbacks.userdata, server_ptr(server), conn, user, user_len, code) };
        }
    }

    fn on_drop(&self, server: &ServerHandle, conn: ConnId, user: &[u8], dropped_bytes: usize) {
        if let Some(callback) = self.callbacks.on_drop {
            let (user, user_len) = out_bytes(user);
            // SAFETY: see the comment on this impl.
            unsafe { callback(self.callbacks.userdata, server_ptr(server), conn, user, user_len, dropped_bytes) };
        }
    }

    fn on_http(&self, server: &ServerHandle, request: &Request<'_>) -> Option<HttpResponse> {
        let callback = self.callbacks.on_http?;
        let view = RequestView::new(request, Purpose::Http, server.shared.config.max_queue_bytes);
        // SAFETY: see the comment on this impl; `view` lives until after the call.
        unsafe { callback(self.callbacks.userdata, server_ptr(server), view.as_c()) };
        view.into_response()
    }
}
