//! A one-way-addressed UDP forwarding proxy for network-partition tests.
//!
//! A proxy listens on its own loopback port and forwards every datagram it
//! receives to one target address from a dedicated socket; datagrams that
//! come back from the target are relayed to the last address that sent to
//! the proxy. Put one proxy on each directed link (coordinator i's view of
//! peer j) and switch it to drop everything to cut that link.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A running UDP proxy; its threads stop when it is dropped.
pub struct UdpProxy {
    addr: SocketAddr,
    target: SocketAddr,
    blocked: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpProxy {
    /// Starts a proxy on a free loopback port that forwards to `target`.
    pub fn start(target: SocketAddr) -> io::Result<Self> {
        let front = UdpSocket::bind("127.0.0.1:0")?;
        let back = UdpSocket::bind("127.0.0.1:0")?;
        back.connect(target)?;
        // Short timeouts so that the threads notice `stop`.
        front.set_read_timeout(Some(Duration::from_millis(100)))?;
        back.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = front.local_addr()?;
        let blocked = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));

        let forward = {
            let (front, back) = (front.try_clone()?, back.try_clone()?);
            let (blocked, stop, client) = (blocked.clone(), stop.clone(), client.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = front.recv_from(&mut buf) else {
                        continue;
                    };
                    if blocked.load(Ordering::Relaxed) {
                        continue;
                    }
                    *client.lock().unwrap_or_else(|e| e.into_inner()) = Some(from);
                    let _ = back.send(&buf[..n]);
                }
            })
        };
        let reply = {
            let (blocked, stop) = (blocked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(n) = back.recv(&mut buf) else {
                        continue;
                    };
                    if blocked.load(Ordering::Relaxed) {
                        continue;
                    }
                    let to = *client.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(to) = to {
                        let _ = front.send_to(&buf[..n], to);
                    }
                }
            })
        };
        Ok(UdpProxy {
            addr,
            target,
            blocked,
            stop,
            threads: vec![forward, reply],
        })
    }

    /// The address to send to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address datagrams are forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Drops every datagram in both directions while `blocked` is true.
    pub fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::Relaxed);
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_both_ways_and_drops_when_blocked() {
        let server = UdpSocket::bind("127.0.0.1:0").expect("bind server");
        server
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let proxy = UdpProxy::start(server.local_addr().expect("addr")).expect("proxy");
        assert_eq!(proxy.target(), server.local_addr().expect("addr"));
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind client");
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut buf = [0u8; 16];

        client.send_to(b"ping", proxy.addr()).expect("send");
        let (n, back) = server.recv_from(&mut buf).expect("forwarded");
        assert_eq!(&buf[..n], b"ping");
        server.send_to(b"pong", back).expect("reply");
        let (n, from) = client.recv_from(&mut buf).expect("relayed");
        assert_eq!(&buf[..n], b"pong");
        assert_eq!(from, proxy.addr());

        proxy.set_blocked(true);
        client.send_to(b"lost", proxy.addr()).expect("send");
        assert!(
            server.recv_from(&mut buf).is_err(),
            "blocked datagram arrived"
        );
        server.send_to(b"lost", back).expect("send");
        assert!(client.recv_from(&mut buf).is_err(), "blocked reply arrived");

        proxy.set_blocked(false);
        client.send_to(b"again", proxy.addr()).expect("send");
        let (n, _) = server.recv_from(&mut buf).expect("forwarded after unblock");
        assert_eq!(&buf[..n], b"again");
    }
}
