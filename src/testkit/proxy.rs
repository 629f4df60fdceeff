//! A TCP fault proxy for tests: sits between the tool and a server and cuts
//! its connections on demand, so a fault hits mid-statement (the middle of
//! a COPY, an index build) instead of at a point a test chose by stopping a
//! server. It runs on a thread of its own with its own runtime, so it
//! outlives any test's runtime and never stalls on it.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy; stopped when dropped.
pub struct FaultProxy {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct State {
    /// Bumped by every cut: open connections watch it and close.
    cuts: watch::Sender<u64>,
    /// New connections are refused (accepted and closed) until then.
    down_until: Mutex<Option<Instant>>,
    /// Connections accepted and forwarded so far.
    forwarded: std::sync::atomic::AtomicU64,
}

impl FaultProxy {
    /// Forward 127.0.0.1:<new port> to `upstream`.
    pub fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let port = std_listener.local_addr()?.port();
        let state = Arc::new(State {
            cuts: watch::channel(0).0,
            down_until: Mutex::new(None),
            forwarded: Default::default(),
        });
        let (shutdown, mut shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{port}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("proxy listener");
                    loop {
                        let (client, _) = tokio::select! {
                            _ = &mut shutdown_rx => return,
                            r = listener.accept() => match r {
                                Ok(c) => c,
                                Err(_) => continue,
                            },
                        };
                        let down = st
                            .down_until
                            .lock()
                            .unwrap()
                            .is_some_and(|t| Instant::now() < t);
                        if down {
                            drop(client);
                            continue;
                        }
                        st.forwarded
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tokio::spawn(forward(client, upstream, st.cuts.subscribe()));
                    }
                });
            })?;
        Ok(FaultProxy {
            port,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// Close every open connection now and refuse new ones for `down`: a
    /// network partition of that length, as the client sees it.
    pub fn cut_for(&self, down: Duration) {
        *self.state.down_until.lock().unwrap() = Some(Instant::now() + down);
        self.state.cuts.send_modify(|n| *n += 1);
    }

    /// Connections forwarded so far.
    pub fn connections(&self) -> u64 {
        self.state
            .forwarded
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `conninfo` (key=value, as [`super::Server::conninfo`] writes it) with
    /// its port replaced by the proxy's.
    pub fn route(&self, conninfo: &str) -> String {
        conninfo
            .split(' ')
            .map(|kv| {
                if kv.starts_with("port=") {
                    format!("port={}", self.port)
                } else {
                    kv.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        self.state.cuts.send_modify(|n| *n += 1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Copy both ways until either side closes or a cut comes.
async fn forward(mut client: TcpStream, upstream: SocketAddr, mut cuts: watch::Receiver<u64>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    cuts.mark_unchanged();
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cuts.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn forwards_and_cuts() {
        let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in echo.incoming() {
                let mut s = s.unwrap();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let proxy = FaultProxy::start(addr).unwrap();
        let mut c = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        c.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        proxy.cut_for(Duration::from_millis(300));
        // The open connection is closed...
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = c.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "the connection survived the cut");
        // ...new ones are refused while down, and forwarded again after.
        let mut d = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        d.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = d.write_all(b"x");
        assert_eq!(d.read(&mut buf).unwrap_or(0), 0, "accepted while down");
        std::thread::sleep(Duration::from_millis(400));
        let mut e = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        e.write_all(b"pong").unwrap();
        e.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");
        assert_eq!(proxy.connections(), 2);
    }
}
