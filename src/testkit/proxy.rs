//! A TCP fault proxy for tests: sits between the tool and a server and
//! makes the network misbehave on demand, so a fault hits mid-statement
//! (the middle of a COPY, an index build) instead of at a point a test
//! chose by stopping a server. It cuts connections ([`FaultProxy::cut_for`]),
//! stalls them with their sockets open ([`FaultProxy::stall_for`]), and
//! shapes the link: a fixed delay each way ([`FaultProxy::set_delay`]) and
//! a bandwidth cap ([`FaultProxy::set_bandwidth`]), both changeable while
//! connections are open (benchmarks use them as a slow WAN). It runs on a
//! thread of its own with its own runtime, so it outlives any test's
//! runtime and never stalls on it.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

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
    /// No byte is passed on, either way, until then; sockets stay open.
    stalled_until: Mutex<Option<Instant>>,
    /// Added to every byte's trip, each way (nanoseconds).
    delay_nanos: AtomicU64,
    /// Bytes per second each way of each connection; 0 is no cap.
    bandwidth: AtomicU64,
    /// Connections accepted and forwarded so far.
    forwarded: AtomicU64,
    /// Round trips so far, over every connection: see
    /// [`FaultProxy::round_trips`].
    round_trips: AtomicU64,
    /// Open connections by the port of their upstream side (what the
    /// server shows as `pg_stat_activity.client_port`), each with what
    /// closes it alone.
    open: Mutex<std::collections::HashMap<u16, tokio_util::sync::CancellationToken>>,
}

impl State {
    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_nanos.load(Ordering::Relaxed))
    }

    /// Until a stall (set now or while waiting) is over.
    async fn unstalled(&self) {
        loop {
            let until = *self.stalled_until.lock().unwrap();
            match until {
                Some(t) if Instant::now() < t => tokio::time::sleep_until(t.into()).await,
                _ => return,
            }
        }
    }
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
            stalled_until: Mutex::new(None),
            delay_nanos: AtomicU64::new(0),
            bandwidth: AtomicU64::new(0),
            forwarded: Default::default(),
            round_trips: Default::default(),
            open: Default::default(),
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
                        st.forwarded.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(forward(client, upstream, st.clone()));
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

    /// Close the open connections whose server sessions came from
    /// `client_ports` (`pg_stat_activity.client_port`), and refuse new
    /// connections for `down`: a fault that hits some sessions (the
    /// workers in the middle of a COPY) and spares others (an idle one
    /// that sent nothing while the link was down would not notice).
    pub fn cut_ports_for(&self, client_ports: &[u16], down: Duration) {
        *self.state.down_until.lock().unwrap() = Some(Instant::now() + down);
        let open = self.state.open.lock().unwrap();
        for p in client_ports {
            if let Some(t) = open.get(p) {
                t.cancel();
            }
        }
    }

    /// Hold every byte, both ways, on every connection (open or new) for
    /// `d`, with the sockets left open: a link that hangs rather than
    /// breaks, as a stuck router or a full window looks to the client.
    /// The bytes held are passed on, in order, when it ends.
    pub fn stall_for(&self, d: Duration) {
        *self.state.stalled_until.lock().unwrap() = Some(Instant::now() + d);
    }

    /// Delay every byte by `d` each way (a round trip takes at least
    /// `2 * d` more), from now on, on open connections too.
    pub fn set_delay(&self, d: Duration) {
        self.state
            .delay_nanos
            .store(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// Cap each direction of each connection at `bytes_per_second`
    /// (`None`: no cap), from now on, on open connections too.
    pub fn set_bandwidth(&self, bytes_per_second: Option<u64>) {
        self.state
            .bandwidth
            .store(bytes_per_second.unwrap_or(0), Ordering::Relaxed);
    }

    /// Connections forwarded so far.
    pub fn connections(&self) -> u64 {
        self.state.forwarded.load(Ordering::Relaxed)
    }

    /// Round trips so far, over every connection: the times a server
    /// answered after its client had sent something since the server last
    /// spoke. A client that waits for each answer before it sends again
    /// counts one per statement (two for an unnamed prepare and execute);
    /// pipelined statements, a COPY's stream and its end count one. Each
    /// costs the link's round-trip time, which is what a migration across
    /// a distance pays for.
    pub fn round_trips(&self) -> u64 {
        self.state.round_trips.load(Ordering::Relaxed)
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

/// Pass bytes both ways until both sides close, one fails, or a cut comes.
async fn forward(client: TcpStream, upstream: SocketAddr, st: Arc<State>) {
    let mut cuts = st.cuts.subscribe();
    cuts.mark_unchanged();
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let port = server.local_addr().map(|a| a.port()).unwrap_or(0);
    let alone = tokio_util::sync::CancellationToken::new();
    st.open.lock().unwrap().insert(port, alone.clone());
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    // Who spoke last on this connection: a turn from the client to the
    // server is a round trip.
    let last = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let both = async {
        tokio::try_join!(
            pipe(cr, sw, st.clone(), Way::Up(last.clone())),
            pipe(sr, cw, st.clone(), Way::Down(last.clone()))
        )
    };
    tokio::select! {
        _ = both => {}
        _ = cuts.changed() => {}
        _ = alone.cancelled() => {}
    }
    st.open.lock().unwrap().remove(&port);
}

/// Which way a [`pipe`] carries bytes, with the connection's "the client
/// spoke last" flag.
enum Way {
    Up(Arc<std::sync::atomic::AtomicBool>),
    Down(Arc<std::sync::atomic::AtomicBool>),
}

/// One direction: a delay line. The reader stamps each chunk with when it
/// may leave (now + the delay), the writer holds it until then, through any
/// stall, and paces it to the bandwidth cap. The channel between them is
/// bounded, so a stalled or slow link pushes back on the sender as TCP
/// would, instead of buffering without end.
async fn pipe(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    st: Arc<State>,
    way: Way,
) -> io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(64);
    let reader = {
        let st = st.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = r.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, io::Error>(());
                }
                match &way {
                    // (`true`: the client spoke last.)
                    Way::Up(last) => last.store(true, Ordering::Relaxed),
                    Way::Down(last) => {
                        if last.swap(false, Ordering::Relaxed) {
                            st.round_trips.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                let due = Instant::now() + st.delay();
                if tx
                    .send((due, Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
        }
    };
    let writer = async move {
        // When the link is free again, under the bandwidth cap.
        let mut free_at = Instant::now();
        while let Some((due, data)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            st.unstalled().await;
            let bw = st.bandwidth.load(Ordering::Relaxed);
            if bw > 0 {
                free_at = free_at.max(Instant::now())
                    + Duration::from_secs_f64(data.len() as f64 / bw as f64);
                w.write_all(&data).await?;
                tokio::time::sleep_until(free_at.into()).await;
            } else {
                w.write_all(&data).await?;
            }
        }
        // The sender closed its side: close ours towards the receiver.
        w.shutdown().await
    };
    tokio::try_join!(reader, writer).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// An echo server on a port of its own.
    fn echo() -> SocketAddr {
        let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in echo.incoming() {
                let mut s = s.unwrap();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64 * 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn round_trip(c: &mut std::net::TcpStream, msg: &[u8]) -> Duration {
        let t0 = Instant::now();
        c.write_all(msg).unwrap();
        let mut buf = vec![0u8; msg.len()];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(buf, msg);
        t0.elapsed()
    }

    #[test]
    fn forwards_and_cuts() {
        let addr = echo();
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

    #[test]
    fn delays_each_way_changeable_while_open() {
        let proxy = FaultProxy::start(echo()).unwrap();
        let mut c = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert!(round_trip(&mut c, b"a") < Duration::from_millis(150));
        // On the connection already open: there and back, each delayed.
        proxy.set_delay(Duration::from_millis(150));
        let rtt = round_trip(&mut c, b"b");
        assert!(rtt >= Duration::from_millis(300), "{rtt:?}");
        assert!(rtt < Duration::from_secs(2), "{rtt:?}");
        proxy.set_delay(Duration::ZERO);
        assert!(round_trip(&mut c, b"c") < Duration::from_millis(150));
    }

    #[test]
    fn counts_round_trips_not_bytes() {
        let proxy = FaultProxy::start(echo()).unwrap();
        let mut c = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for _ in 0..5 {
            round_trip(&mut c, b"ask");
        }
        assert_eq!(proxy.round_trips(), 5);
        // A large message and its echo: counted by turns, not by bytes
        // (the echo answers while the rest still arrives, so a turn per
        // 64 kB read at most, not one per byte or write).
        round_trip(&mut c, &vec![1u8; 1_000_000]);
        let n = proxy.round_trips();
        assert!((6..=5 + 17).contains(&n), "{n}");
    }

    #[test]
    fn caps_bandwidth() {
        let proxy = FaultProxy::start(echo()).unwrap();
        let mut c = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let msg = vec![7u8; 400_000];
        proxy.set_bandwidth(Some(1_000_000));
        // 400 kB each way at 1 MB/s: about 0.4 s (the two ways overlap).
        let t = round_trip(&mut c, &msg);
        assert!(t >= Duration::from_millis(350), "{t:?}");
        proxy.set_bandwidth(None);
        let t = round_trip(&mut c, &msg);
        assert!(t < Duration::from_millis(300), "{t:?}");
    }

    #[test]
    fn stalls_with_the_socket_open_then_passes_the_bytes_on() {
        let proxy = FaultProxy::start(echo()).unwrap();
        let mut c = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        round_trip(&mut c, b"before");
        proxy.stall_for(Duration::from_millis(600));
        let t = round_trip(&mut c, b"held");
        assert!(t >= Duration::from_millis(500), "{t:?}");
        assert!(round_trip(&mut c, b"after") < Duration::from_millis(150));
        assert_eq!(proxy.connections(), 1, "the stall closed the connection");
    }
}
