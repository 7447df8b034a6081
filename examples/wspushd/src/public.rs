//! What the public port does beyond the engine's WebSocket work: who a connection belongs to,
//! echo, and the demo page with the browser client it imports.

use wspush::{
    default_upgrade_decision, ConnId, Handler, HttpResponse, MessageKind, Request, ServerHandle, UpgradeDecision,
    MAX_USER_ID_LEN,
};

use crate::query::url_decode;

/// The engine callbacks.
pub struct Daemon {
    pub demo: bool,
    pub echo: bool,
    pub ws_path: String,
    /// The demo page with its configuration filled in (demo mode only).
    pub demo_page: Option<Vec<u8>>,
}

impl Handler for Daemon {
    fn on_upgrade(&self, _: &ServerHandle, request: &Request<'_>) -> UpgradeDecision {
        if !self.demo {
            // Token mode: the engine verified the token; its subject gets in, nobody else.
            return default_upgrade_decision(request);
        }
        // Demo mode: the user is whoever the client claims to be.
        let user = request.query_param("user").map(url_decode);
        match user {
            Some(Ok(user)) if !user.is_empty() && user.len() <= MAX_USER_ID_LEN => UpgradeDecision::Accept(user),
            _ => UpgradeDecision::Reject(400),
        }
    }

    fn on_message(&self, server: &ServerHandle, conn: ConnId, _: &[u8], kind: MessageKind, payload: &[u8]) {
        if self.echo {
            // Never too large (the command line makes every echo fit in the send queue), so this
            // fails only when the connection is already gone or the server is stopping.
            let _ = server.send(conn, payload, kind);
        }
    }

    fn on_http(&self, _: &ServerHandle, request: &Request<'_>) -> Option<HttpResponse> {
        let path = request.path();
        if path == self.ws_path {
            return None; // the engine's 426 Upgrade Required
        }
        let text = |status: u16, body: &str| HttpResponse {
            status,
            content_type: "text/plain; charset=utf-8".into(),
            body: body.as_bytes().to_vec(),
        };
        match (&self.demo_page, path) {
            (Some(page), "/" | "/index.html") if request.method() == "GET" => {
                Some(HttpResponse { status: 200, content_type: "text/html; charset=utf-8".into(), body: page.clone() })
            }
            (Some(_), "/wspush.js") if request.method() == "GET" => Some(HttpResponse {
                status: 200,
                content_type: "text/javascript; charset=utf-8".into(),
                body: crate::demo::CLIENT_JS.as_bytes().to_vec(),
            }),
            (Some(_), "/" | "/index.html" | "/wspush.js") => Some(text(405, "Method Not Allowed\n")),
            _ => Some(text(404, "Not Found\n")),
        }
    }
}
