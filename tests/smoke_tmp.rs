use std::net::TcpStream;
use wspush::*;
struct H;
impl Handler for H {
    fn on_upgrade(&self, _: &ServerHandle, r: &Request<'_>) -> UpgradeDecision {
        UpgradeDecision::Accept(r.query_param("user").unwrap_or("x").as_bytes().to_vec())
    }
    fn on_message(&self, s: &ServerHandle, c: ConnId, _u: &[u8], k: MessageKind, p: &[u8]) { s.send(c, p, k).unwrap(); }
}
#[test]
fn smoke() {
    let server = Server::start(Config { listen: "127.0.0.1:0".into(), threads: 2, ..Default::default() }, H).unwrap();
    let port = server.local_addr().port();
    let mut clients = vec![];
    for _ in 0..4 {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (ws, _) = tungstenite::client(format!("ws://127.0.0.1:{port}/ws?user=alice"), s).unwrap();
        clients.push(ws);
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(server.publish(b"alice", b"hello", MessageKind::Text).unwrap(), 4);
    for c in clients.iter_mut() { assert_eq!(c.read().unwrap().into_text().unwrap().as_str(), "hello"); }
    clients[0].send(tungstenite::Message::text("echo")).unwrap();
    assert_eq!(clients[0].read().unwrap().into_text().unwrap().as_str(), "echo");
    println!("{:?}", server.stats());
    server.stop();
    for c in clients.iter_mut() { println!("{:?}", c.read()); }
}
