//! A TCP proxy on loopback in front of a test S3 server, for the faults the
//! server itself cannot show: [`Proxy::cut`] refuses new connections and
//! drops live ones (an outage that keeps the server's data), and
//! [`Mode::StripConditions`] removes `If-None-Match` / `If-Match` from
//! every request (a server that ignores conditional writes, as older
//! S3-compatible servers do). Threads only; stopped when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{free_port, wait_for};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Bytes through, both ways.
    Forward,
    /// One request per connection, its conditional headers removed.
    StripConditions,
}

struct Inner {
    upstream: u16,
    mode: Mode,
    up: AtomicBool,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
}

pub struct Proxy {
    pub port: u16,
    inner: Arc<Inner>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn start(upstream: u16, mode: Mode) -> Proxy {
        let port = free_port();
        let inner = Arc::new(Inner {
            upstream,
            mode,
            up: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let i = inner.clone();
        let thread = std::thread::spawn(move || accept_loop(port, i));
        let p = Proxy {
            port,
            inner,
            thread: Some(thread),
        };
        p.wait_listening(true);
        p
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Connections refused, live ones dropped, until [`Proxy::restore`].
    pub fn cut(&self) {
        self.inner.up.store(false, Ordering::SeqCst);
        self.wait_listening(false);
    }

    pub fn restore(&self) {
        self.inner.up.store(true, Ordering::SeqCst);
        self.wait_listening(true);
    }

    fn wait_listening(&self, listening: bool) {
        let port = self.port;
        wait_for("the proxy to change state", Duration::from_secs(10), || {
            (TcpStream::connect(("127.0.0.1", port)).is_ok() == listening).then_some(())
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        drop_all(&self.inner);
    }
}

fn drop_all(inner: &Inner) {
    let mut conns = inner.conns.lock().unwrap_or_else(|p| p.into_inner());
    for c in conns.drain(..) {
        let _ = c.shutdown(Shutdown::Both);
    }
}

fn accept_loop(port: u16, inner: Arc<Inner>) {
    let mut listener: Option<TcpListener> = None;
    while !inner.stop.load(Ordering::SeqCst) {
        let up = inner.up.load(Ordering::SeqCst);
        if up && listener.is_none() {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => {
                    l.set_nonblocking(true).expect("non-blocking listener");
                    listener = Some(l);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
            continue;
        }
        if !up && listener.is_some() {
            listener = None;
            drop_all(&inner);
            continue;
        }
        let accepted = listener.as_ref().and_then(|l| l.accept().ok());
        match accepted {
            Some((client, _)) => {
                let _ = client.set_nonblocking(false);
                let i = inner.clone();
                std::thread::spawn(move || handle(client, &i));
            }
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn handle(client: TcpStream, inner: &Inner) {
    let register = |s: &TcpStream| {
        if let Ok(c) = s.try_clone() {
            inner
                .conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(c);
        }
    };
    register(&client);
    // The upstream connection is opened only once there is something to
    // send: a single-threaded server would wait on an idle one.
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", inner.upstream))?;
        register(&s);
        Ok::<_, std::io::Error>(s)
    };
    let _ = match inner.mode {
        Mode::Forward => connect().map(|server| pipe(client.try_clone().unwrap(), server)),
        Mode::StripConditions => strip_one(client.try_clone().unwrap(), connect),
    };
    let _ = client.shutdown(Shutdown::Both);
    // Forget closed connections.
    inner
        .conns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|c| c.peer_addr().is_ok() && c.take_error().ok().flatten().is_none());
}

fn pipe(client: TcpStream, server: TcpStream) {
    let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let s3 = server.try_clone().ok();
    let up = std::thread::spawn(move || {
        let mut c = client;
        let mut s = server;
        let _ = std::io::copy(&mut c, &mut s);
        let _ = s.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut s2, &mut c2);
    let _ = c2.shutdown(Shutdown::Both);
    if let Some(s) = s3 {
        let _ = s.shutdown(Shutdown::Both);
    }
    let _ = up.join();
}

/// Forwards one request without its conditional headers (and with
/// `Connection: close`), then the whole response.
fn strip_one(
    client: TcpStream,
    connect: impl FnOnce() -> std::io::Result<TcpStream>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = String::new();
    let mut length = 0u64;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("if-none-match:")
            || lower.starts_with("if-match:")
            || lower.starts_with("connection:")
        {
            continue;
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        head.push_str(&line);
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut server = connect()?;
    let result = (|| {
        server.write_all(head.as_bytes())?;
        std::io::copy(&mut (&mut reader).take(length), &mut server)?;
        let mut client = client;
        std::io::copy(&mut server, &mut client)?;
        Ok(())
    })();
    let _ = server.shutdown(Shutdown::Both);
    result
}
