//! Who holds a listening TCP port, from `/proc`: the socket in
//! `/proc/net/tcp{,6}`, the process whose file descriptors point at it,
//! and whether that process is on its way out.
//!
//! A killed process keeps its sockets until the kernel has torn down its
//! memory (a JVM with a large heap takes a while), so a port can stay taken
//! for a moment after its owner was killed. Invariants: parsing is pure;
//! the `/proc` reads are best effort (a process in another PID namespace,
//! such as the previous container of the same pod, or one sparkvisor may
//! not inspect, is [`Holder::Unseen`], never an error).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// `PF_EXITING` in the flags of `/proc/PID/stat`: the process is in exit.
const PF_EXITING: u64 = 0x4;
/// SIGKILL's bit in the `SigPnd`/`ShdPnd` masks of `/proc/PID/status`.
const SIGKILL_BIT: u64 = 1 << (9 - 1);

/// What holds a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// Nothing listens there (the bind failed for another reason, or the
    /// holder has just let go).
    Nobody,
    /// A listening socket exists, but no process this one can see owns it.
    Unseen,
    /// A visible process owns it.
    Process(Proc),
}

/// A process holding a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub comm: String,
    /// Killed (SIGKILL pending), exiting, or a zombie: it will let go.
    pub dying: bool,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Nobody => f.write_str("nothing listening"),
            Holder::Unseen => f.write_str("a process sparkvisor cannot see (another PID namespace, such as an earlier container of this pod)"),
            Holder::Process(p) if p.dying => write!(f, "pid {} ({}), which is exiting", p.pid, p.comm),
            Holder::Process(p) => write!(f, "pid {} ({})", p.pid, p.comm),
        }
    }
}

/// The holder of a listening socket on `port` (any address that overlaps
/// `ip`: the same one, or a wildcard on either side).
pub fn holder(ip: IpAddr, port: u16) -> Holder {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, ip, port));
        }
    }
    if inodes.is_empty() {
        return Holder::Nobody;
    }
    match owner(Path::new("/proc"), &inodes) {
        Some(p) => Holder::Process(p),
        None => Holder::Unseen,
    }
}

/// Inodes of the sockets in a `/proc/net/tcp{,6}` table that listen on
/// `port` at an address overlapping `ip`.
pub fn listening_inodes(table: &str, ip: IpAddr, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            if *state != "0A" {
                return None;
            }
            let (addr, p) = local.split_once(':')?;
            if u16::from_str_radix(p, 16).ok()? != port {
                return None;
            }
            let a = parse_addr(addr)?;
            let overlaps = a == ip || a.is_unspecified() || ip.is_unspecified() || same_v4(a, ip);
            overlaps.then(|| inode.parse().ok()).flatten()
        })
        .collect()
}

/// An IPv4-mapped IPv6 address and its IPv4 form are the same address.
fn same_v4(a: IpAddr, b: IpAddr) -> bool {
    let v4 = |x: IpAddr| match x {
        IpAddr::V4(v) => Some(v),
        IpAddr::V6(v) => v.to_ipv4_mapped(),
    };
    v4(a).is_some() && v4(a) == v4(b)
}

/// The kernel's hex form: IPv4 as one little-endian word, IPv6 as four.
fn parse_addr(hex: &str) -> Option<IpAddr> {
    match hex.len() {
        8 => {
            let n = u32::from_str_radix(hex, 16).ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(n.to_le_bytes())))
        }
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok()?;
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

/// The first process under `proc` with a descriptor on one of `inodes`.
fn owner(proc: &Path, inodes: &[u64]) -> Option<Proc> {
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir(proc).ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|l| wanted.iter().any(|w| l.as_os_str() == w.as_str()))
        });
        if holds {
            let read = |f: &str| std::fs::read_to_string(entry.path().join(f)).unwrap_or_default();
            return Some(Proc {
                pid,
                comm: read("comm").trim().to_string(),
                dying: is_dying(&read("stat"), &read("status")),
            });
        }
    }
    None
}

/// Whether a process (its `/proc/PID/stat` and `status`) is on its way
/// out: a zombie or dead, exiting (`PF_EXITING`), or with SIGKILL pending
/// (a frozen or stopped process that was killed).
pub fn is_dying(stat: &str, status: &str) -> bool {
    let after = stat.rfind(')').map(|i| &stat[i + 1..]).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state(0) ppid pgrp session tty tpgid flags(6).
    let state = fields.first().copied().unwrap_or("");
    let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
    let killed = status.lines().any(|l| {
        let mask = l
            .strip_prefix("SigPnd:")
            .or_else(|| l.strip_prefix("ShdPnd:"));
        mask.and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .is_some_and(|m| m & SIGKILL_BIT != 0)
    });
    matches!(state, "Z" | "X" | "x") || flags & PF_EXITING != 0 || killed
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0FC8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0
   2: 0100007F:0FC8 0100007F:D2B4 01 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0FC9 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5151 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:0FCA 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 6262 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn listening_sockets_by_port_and_address() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let other: IpAddr = "10.1.2.3".parse().unwrap();
        // 4040 on loopback; the established connection on it is not listening.
        assert_eq!(listening_inodes(TCP, lo, 4040), vec![4242]);
        assert_eq!(listening_inodes(TCP, any, 4040), vec![4242]);
        assert!(listening_inodes(TCP, other, 4040).is_empty());
        // 8080 on the wildcard overlaps every address.
        assert_eq!(listening_inodes(TCP, other, 8080), vec![777]);
        assert!(listening_inodes(TCP, lo, 4041).is_empty());
        // IPv6 loopback, and an IPv4-mapped loopback.
        assert_eq!(
            listening_inodes(TCP6, "::1".parse().unwrap(), 4041),
            vec![5151]
        );
        assert_eq!(listening_inodes(TCP6, lo, 4042), vec![6262]);
        assert!(listening_inodes("garbage\nnot a table", lo, 1).is_empty());
    }

    #[test]
    fn dying_processes() {
        let stat = |state: &str, flags: u64| format!("42 (ja va) {state} 1 42 42 0 -1 {flags} 0 0");
        let status =
            |pnd: &str| format!("Name:\tjava\nSigPnd:\t{pnd}\nShdPnd:\t0000000000000000\n");
        let live = status("0000000000000000");
        assert!(!is_dying(&stat("S", 0x400000), &live));
        assert!(is_dying(&stat("Z", 0), &live));
        assert!(is_dying(&stat("D", 0x400044), &live), "PF_EXITING");
        assert!(
            is_dying(&stat("D", 0x400040), &status("0000000000000100")),
            "SIGKILL pending"
        );
        assert!(
            !is_dying(&stat("S", 0), &status("0000000000004000")),
            "SIGTERM pending only"
        );
        assert!(!is_dying("", ""));
    }

    #[test]
    fn a_listener_of_this_process_is_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        match holder("127.0.0.1".parse().unwrap(), port) {
            Holder::Process(p) => {
                assert_eq!(p.pid, std::process::id() as i32);
                assert!(!p.dying);
            }
            other => panic!("{other:?}"),
        }
        drop(l);
        assert_eq!(holder("127.0.0.1".parse().unwrap(), port), Holder::Nobody);
    }
}
