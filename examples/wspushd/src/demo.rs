//! The demo inbox page served at GET / on the public port in demo mode: one HTML file with its
//! configuration (WebSocket path, admin URL for its curl hint) filled in at start, and the
//! wspush.v1 browser client it imports, served at GET /wspush.js.

use std::net::SocketAddr;

const DEMO_PAGE: &str = include_str!("demo.html");

/// bindings/js/wspush.js, the browser client the page imports: the page shows the shipped client
/// at work, not a copy of it.
pub const CLIENT_JS: &str = include_str!("../../../bindings/js/wspush.js");

/// The demo page with the WebSocket path and the admin URL filled in.
pub fn demo_page(ws_path: &str, admin_addr: SocketAddr) -> Vec<u8> {
    let config = format!(
        "const CONFIG = {{\"path\": {}, \"admin\": {}}};",
        js_string(ws_path),
        js_string(&format!("http://{admin_addr}"))
    );
    DEMO_PAGE.replacen("/*CONFIG*/", &config, 1).into_bytes()
}

/// A JavaScript string literal safe inside a <script> element.
fn js_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '<' => out.push_str("\\u003c"), // no "</script>" inside the literal
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_page_configuration_cannot_break_out_of_its_script() {
        assert_eq!(js_string("/ws"), "\"/ws\"");
        assert_eq!(js_string("/a\"b\\c</script>\n"), "\"/a\\\"b\\\\c\\u003c/script>\\u000a\"");
        let page = String::from_utf8(demo_page("/push", "127.0.0.1:9".parse().unwrap())).unwrap();
        assert!(page.contains("const CONFIG = {\"path\": \"/push\", \"admin\": \"http://127.0.0.1:9\"};"));
        assert!(!page.contains("/*CONFIG*/"));
    }

    #[test]
    fn demo_page_imports_the_served_client() {
        let page = String::from_utf8(demo_page("/ws", "127.0.0.1:9".parse().unwrap())).unwrap();
        assert!(page.contains(r#"import { WspushClient } from "./wspush.js";"#));
        assert!(CLIENT_JS.contains("export class WspushClient"));
        assert!(CLIENT_JS.contains(r#"export const PROTOCOL = "wspush.v1";"#));
    }
}
