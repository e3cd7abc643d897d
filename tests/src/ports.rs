//! Free loopback ports for the services of a pool. A port is taken only when both its TCP and
//! UDP sides are free (SIP uses UDP, HTTP and AMQP use TCP), and never handed out twice by one
//! test process.

use std::collections::HashSet;
use std::net::{TcpListener, UdpSocket};
use std::sync::Mutex;

static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

pub fn free_port() -> u16 {
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..200 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = tcp.local_addr().unwrap().port();
        if given.contains(&port) || UdpSocket::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        given.insert(port);
        return port;
    }
    panic!("no free loopback port found");
}
