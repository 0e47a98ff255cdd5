//! A throttling TCP proxy for the tests: slow links between sparkvisor and
//! the S3 server, as a new node far from its bucket sees them.
//!
//! Bytes from the server to the client are shaped (requests pass freely):
//! [`Link::Steady`] gives every connection its own steady rate;
//! [`Link::Shared`] gives all connections one rate together and makes
//! single streams stall for seconds (each connection, after every
//! `stall_every` bytes, stops for `stall` while others go on; at most
//! `max_stalled` at once). Every byte forwarded is counted, so a test can
//! tell a resumed download (bytes ≈ the data) from one started over.
//! [`Proxy::pause`] stops every byte until resumed (a link that died
//! without closing its connections).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// How the proxy shapes the server's bytes.
#[derive(Clone, Copy, Debug)]
pub enum Link {
    /// Every connection gets `rate` bytes per second.
    Steady { rate: u64 },
    /// All connections share `rate` bytes per second; a connection stops
    /// for `stall` after every `stall_every` bytes it carried, while fewer
    /// than `max_stalled` others are stopped.
    Shared {
        rate: u64,
        stall_every: u64,
        stall: Duration,
        max_stalled: usize,
    },
}

impl Link {
    fn rate(&self) -> u64 {
        match *self {
            Link::Steady { rate } | Link::Shared { rate, .. } => rate.max(1),
        }
    }
}

/// Paces sends at a rate: each reservation gets the next free slot.
struct Pacer {
    next: Mutex<Instant>,
    rate: u64,
}

impl Pacer {
    fn new(rate: u64) -> Pacer {
        Pacer {
            next: Mutex::new(Instant::now()),
            rate,
        }
    }

    /// Waits until `n` bytes may go out.
    async fn take(&self, n: usize) {
        let start = {
            let mut next = self.next.lock().await;
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(n as f64 / self.rate as f64);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

#[derive(Default)]
struct Counters {
    down: AtomicU64,
    up: AtomicU64,
    connections: AtomicU64,
    stalls: AtomicU64,
    stalled_now: AtomicUsize,
    paused: AtomicBool,
}

pub struct Proxy {
    pub port: u16,
    counters: Arc<Counters>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream`.
    pub fn start(upstream: u16, link: Link) -> Proxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("test-proxy")
            .enable_all()
            .build()
            .expect("a runtime for the proxy");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Pacer::new(link.rate()));
        let c = counters.clone();
        runtime.spawn(async move {
            let to: SocketAddr = ([127, 0, 0, 1], upstream).into();
            while let Ok((client, _)) = listener.accept().await {
                c.connections.fetch_add(1, Ordering::Relaxed);
                let pacer = match link {
                    Link::Steady { rate } => Arc::new(Pacer::new(rate.max(1))),
                    Link::Shared { .. } => shared.clone(),
                };
                tokio::spawn(connection(client, to, link, pacer, c.clone()));
            }
        });
        Proxy {
            port,
            counters,
            runtime: Some(runtime),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Bytes forwarded from the server to clients.
    pub fn bytes_down(&self) -> u64 {
        self.counters.down.load(Ordering::Relaxed)
    }

    /// Bytes forwarded from clients to the server.
    pub fn bytes_up(&self) -> u64 {
        self.counters.up.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u64 {
        self.counters.connections.load(Ordering::Relaxed)
    }

    /// Stalls imposed so far ([`Link::Shared`]).
    pub fn stalls(&self) -> u64 {
        self.counters.stalls.load(Ordering::Relaxed)
    }

    /// Stops (true) or resumes (false) every byte in both directions.
    pub fn pause(&self, on: bool) {
        self.counters.paused.store(on, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// One of the connections stalled at the moment.
struct StallSlot<'a> {
    c: &'a Counters,
    /// How many were stalled before this one.
    now: usize,
}

impl<'a> StallSlot<'a> {
    fn take(c: &'a Counters) -> StallSlot<'a> {
        let now = c.stalled_now.fetch_add(1, Ordering::SeqCst);
        StallSlot { c, now }
    }
}

impl Drop for StallSlot<'_> {
    fn drop(&mut self) {
        self.c.stalled_now.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn wait_unpaused(c: &Counters) {
    while c.paused.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn connection(
    client: TcpStream,
    to: SocketAddr,
    link: Link,
    pacer: Arc<Pacer>,
    c: Arc<Counters>,
) {
    let Ok(server) = TcpStream::connect(to).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let c_up = c.clone();
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            wait_unpaused(&c_up).await;
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
            c_up.up.fetch_add(n as u64, Ordering::Relaxed);
        }
        let _ = sw.shutdown().await;
    };
    let down = async move {
        // Small pieces, so the pace is smooth at low rates.
        let piece = (link.rate() / 20).clamp(1024, 16 * 1024) as usize;
        let mut buf = vec![0u8; piece];
        let mut since_stall = 0u64;
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Link::Shared {
                stall_every,
                stall,
                max_stalled,
                ..
            } = link
                && since_stall >= stall_every
            {
                since_stall = 0;
                // Released however this ends (a client giving up on the
                // stalled stream drops the whole connection mid-sleep).
                let slot = StallSlot::take(&c);
                if slot.now < max_stalled {
                    c.stalls.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(stall).await;
                }
                drop(slot);
            }
            wait_unpaused(&c).await;
            pacer.take(n).await;
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
            since_stall += n as u64;
            c.down.fetch_add(n as u64, Ordering::Relaxed);
        }
        let _ = cw.shutdown().await;
    };
    // Either side closing ends the connection.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}
