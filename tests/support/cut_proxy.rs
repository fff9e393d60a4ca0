//! A loopback TCP proxy that can cut every connection through it and refuse new ones
//! until restored: a network partition between one process and its server, made
//! without touching either (the cluster tests cut one ringmq node from NATS with it).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct CutProxy {
    port: u16,
    cut: Arc<AtomicBool>,
    /// Both ends of every connection made so far (a cut shuts them all down).
    live: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl CutProxy {
    /// Forwards 127.0.0.1:<its port> to 127.0.0.1:`to`.
    pub fn start(to: u16) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("proxy addr").port();
        let p = CutProxy {
            port,
            cut: Arc::new(AtomicBool::new(false)),
            live: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (cut, live, stop) = (p.cut.clone(), p.live.clone(), p.stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let client = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                if cut.load(Ordering::Acquire) {
                    // Refused while cut: closed at once.
                    continue;
                }
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                if let Ok(mut l) = live.lock() {
                    for s in [&client, &server] {
                        if let Ok(c) = s.try_clone() {
                            l.push(c);
                        }
                    }
                }
                for (mut from, mut to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ]
                .into_iter()
                .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        p
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every connection through the proxy ends now; new ones are refused until
    /// `restore`.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        if let Ok(mut l) = self.live.lock() {
            for s in l.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::Release);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.cut();
    }
}
