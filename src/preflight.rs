//! Checks `run` makes against the live host before the first start (unlike
//! `plan`, which may run anywhere): the pod IP is an address of this host,
//! and the fixed ports Spark must bind are free.
//!
//! Invariant: a failure is a [`ConfigError`] naming the key whose value
//! cannot work here (exit 2), so a misconfigured pod fails at once with a
//! clear line instead of a Spark stack trace in a restart loop.

use std::net::{IpAddr, SocketAddr, TcpListener};

use crate::config::{ConfigError, Loaded, Resolved, parse_http_url};

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
                if let Err(e) = port_free(ip, port) {
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
        if let Err(e) = port_free(bind_ip, port) {
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
    fn taken_port_is_detected() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        assert!(port_free(IpAddr::from([127, 0, 0, 1]), port).is_err());
        drop(held);
        assert!(port_free(IpAddr::from([127, 0, 0, 1]), port).is_ok());
    }
}
