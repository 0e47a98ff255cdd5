//! Checks `run` makes against the live host before the first start (unlike
//! `plan`, which may run anywhere): the pod IP is an address of this host,
//! and the fixed ports Spark must bind (and the probe port) are free.
//!
//! Invariant: a failure is a [`ConfigError`] naming the key whose value
//! cannot work here (exit 2), so a misconfigured pod fails at once with a
//! clear line instead of a Spark stack trace in a restart loop. A port
//! held by a process that is exiting (a killed JVM unmapping its heap), or
//! by one sparkvisor cannot see (the previous container of the same pod,
//! in another PID namespace), is waited for, at most [`PORT_RELEASE_WAIT`];
//! a live process it can see is refused at once.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use tracing::info;

use crate::config::{ConfigError, Loaded, Resolved, parse_http_url};
use crate::listeners::{self, Holder};

/// Longest wait for a port an exiting or unseen process still holds.
pub const PORT_RELEASE_WAIT: Duration = Duration::from_secs(10);
/// How often a held port is tried again.
const PORT_POLL: Duration = Duration::from_millis(100);

/// Addresses of this host's interfaces.
pub fn local_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| {
            let sa = a.address?;
            if let Some(v4) = sa.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

/// Whether `ip:port` can be bound now.
fn port_free(ip: IpAddr, port: u16) -> Result<(), std::io::Error> {
    TcpListener::bind(SocketAddr::new(ip, port)).map(drop)
}

/// What to do about a port that cannot be bound, given who holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    /// It will be let go (or its holder cannot be seen): try again.
    Wait,
    /// A live process holds it: waiting would not help.
    Refuse,
}

/// The decision for a held port (pure).
pub fn taken(holder: &Holder) -> Taken {
    match holder {
        Holder::Process(p) if !p.dying => Taken::Refuse,
        Holder::Process(_) | Holder::Unseen | Holder::Nobody => Taken::Wait,
    }
}

/// Binds `addr` with `bind`, waiting (at most `limit`) while the port is
/// held by a process that is exiting or unseen. The error names the holder.
fn bind_when_released<T>(
    addr: SocketAddr,
    limit: Duration,
    mut bind: impl FnMut(SocketAddr) -> std::io::Result<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    let mut waiting = false;
    loop {
        let err = match bind(addr) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if err.kind() != std::io::ErrorKind::AddrInUse {
            return Err(err.to_string());
        }
        let holder = listeners::holder(addr.ip(), addr.port());
        let decision = taken(&holder);
        if decision == Taken::Refuse || Instant::now() >= deadline {
            let waited = if waiting {
                format!(" after waiting {}s for its release", limit.as_secs())
            } else {
                String::new()
            };
            return Err(format!("{err}: held by {holder}{waited}"));
        }
        if !waiting {
            info!(port = addr.port(), holder = %holder, wait_s = limit.as_secs(),
                "the port is still held by a process on its way out; waiting for its release");
            waiting = true;
        }
        std::thread::sleep(PORT_POLL);
    }
}

/// Binds the probe server's address (blocking: it may wait for a port an
/// exiting process still holds), non-blocking for the async runtime.
pub fn bind_probes(addr: SocketAddr) -> Result<TcpListener, String> {
    bind_when_released(addr, PORT_RELEASE_WAIT, listen)
}

/// A non-blocking listener on `addr` with a backlog of 1024 (std's
/// `TcpListener::bind` queues fewer, and a burst of connections would wait
/// for SYN retries before the server could shed them).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use nix::sys::socket::{
        self, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, sockopt,
    };
    use std::os::fd::AsRawFd;
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    socket::listen(&fd, Backlog::new(1024)?)?;
    Ok(TcpListener::from(fd))
}

/// The configuration error for a probe port that cannot be served.
pub fn probes_error(loaded: &Loaded, why: &str) -> ConfigError {
    ConfigError::at(
        "probes.listen",
        loaded.source_of(&["probes", "listen"]),
        Some(format!("{:?}", loaded.config.probes.listen)),
        format!("cannot listen there: {why}"),
    )
}

pub fn check(loaded: &Loaded, resolved: &Resolved) -> Result<(), ConfigError> {
    let cfg = &loaded.config;
    let ui_ip: IpAddr = match &resolved.client {
        Some(client) => {
            let ip = client.pod_ip.value;
            let local = local_addresses();
            if !local.contains(&ip) {
                let shown: Vec<String> = local.iter().map(ToString::to_string).collect();
                return Err(ConfigError::at(
                    "spark.client.pod_ip",
                    client.pod_ip.source.clone(),
                    Some(format!("\"{ip}\"")),
                    format!(
                        "not an address of this host (it has {}); executors could not reach the driver",
                        shown.join(", ")
                    ),
                ));
            }
            let c = &cfg.spark.client;
            for (key, port) in [
                ("driver_port", c.driver_port),
                ("block_manager_port", c.block_manager_port),
            ] {
                let addr = SocketAddr::new(ip, port);
                if let Err(e) =
                    bind_when_released(addr, PORT_RELEASE_WAIT, |a| port_free(a.ip(), a.port()))
                {
                    return Err(ConfigError::at(
                        &format!("spark.client.{key}"),
                        loaded.source_of(&["spark", "client", key]),
                        Some(port.to_string()),
                        format!(
                            "cannot bind {ip}:{port}: {e} (spark.port.maxRetries = 0, so Spark would fail)"
                        ),
                    ));
                }
            }
            ip
        }
        None => IpAddr::from([127, 0, 0, 1]),
    };
    // Spark moves its UI to the next port when the configured one is taken,
    // and readiness would then ask the wrong port forever.
    if !cfg.spark.conf.contains_key("spark.ui.port")
        && let Ok((_, port)) = parse_http_url(&cfg.probes.spark_ui)
    {
        let bind_ip = if resolved.client.is_some() {
            ui_ip
        } else {
            IpAddr::from([0, 0, 0, 0])
        };
        let addr = SocketAddr::new(bind_ip, port);
        if let Err(e) = bind_when_released(addr, PORT_RELEASE_WAIT, |a| port_free(a.ip(), a.port()))
        {
            return Err(ConfigError::at(
                "probes.spark_ui",
                loaded.source_of(&["probes", "spark_ui"]),
                Some(format!("{:?}", cfg.probes.spark_ui)),
                format!(
                    "Spark's UI port {port} is taken ({e}); Spark would move to another port and readiness would never see it"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_local() {
        let l = local_addresses();
        assert!(l.contains(&IpAddr::from([127, 0, 0, 1])), "{l:?}");
        assert!(!l.contains(&IpAddr::from([203, 0, 113, 77])));
    }

    #[test]
    fn only_a_live_visible_holder_is_refused_at_once() {
        let p = |dying| {
            Holder::Process(listeners::Proc {
                pid: 7,
                comm: "java".into(),
                dying,
            })
        };
        assert_eq!(taken(&p(false)), Taken::Refuse);
        assert_eq!(taken(&p(true)), Taken::Wait);
        assert_eq!(taken(&Holder::Unseen), Taken::Wait);
        assert_eq!(taken(&Holder::Nobody), Taken::Wait);
    }

    #[test]
    fn a_live_holder_is_named_without_waiting() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let err =
            bind_when_released(addr, Duration::from_secs(3600), TcpListener::bind).unwrap_err();
        assert!(!err.contains("after waiting"), "{err}");
        assert!(
            err.contains(&format!("held by pid {}", std::process::id())),
            "{err}"
        );
    }

    #[test]
    fn taken_port_is_detected() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        assert!(port_free(IpAddr::from([127, 0, 0, 1]), port).is_err());
        drop(held);
        assert!(port_free(IpAddr::from([127, 0, 0, 1]), port).is_ok());
    }
}
