//! What the kernel says about another process's TCP sockets: /proc (state, timers, CPU time)
//! and, for socket options only the owner can read, a duplicate of its descriptor.
// pidfd_open/pidfd_getfd have no safe wrapper; the test process is root and the node its child.
#![allow(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

/// Clock ticks per second of /proc's timer and CPU fields (USER_HZ, 100 on Linux).
const TICKS: u64 = 100;

/// TCP state `ESTABLISHED` in /proc/net/tcp.
pub const ESTABLISHED: u8 = 0x01;
/// TCP state `CLOSE_WAIT` in /proc/net/tcp.
pub const CLOSE_WAIT: u8 = 0x08;
/// `tr` field of /proc/net/tcp: the keepalive timer is pending.
pub const TIMER_KEEPALIVE: u8 = 2;

/// One IPv4 TCP socket a process holds, as /proc/net/tcp shows it.
#[derive(Debug, Clone)]
pub struct TcpSocket {
    pub fd: i32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    /// Which timer is pending (0 none, 1 retransmit, 2 keepalive, …).
    pub timer: u8,
    /// Time until that timer fires.
    pub timer_left: Duration,
}

/// The IPv4 TCP sockets `pid` holds open.
pub fn tcp_sockets(pid: u32) -> Vec<TcpSocket> {
    let fds: std::collections::HashMap<u64, i32> = socket_inodes(pid).into_iter().collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let fd = *fds.get(&f[9].parse::<u64>().ok()?)?;
            let (timer, when) = f[5].split_once(':')?;
            Some(TcpSocket {
                fd,
                local: addr(f[1]),
                remote: addr(f[2]),
                state: u8::from_str_radix(f[3], 16).ok()?,
                timer: timer.parse().ok()?,
                timer_left: Duration::from_millis(
                    u64::from_str_radix(when, 16).ok()? * 1000 / TICKS,
                ),
            })
        })
        .collect()
}

/// (inode, descriptor) of every socket `pid` holds.
fn socket_inodes(pid: u32) -> Vec<(u64, i32)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let entry = entry.ok()?;
        let fd = entry.file_name().to_str()?.parse().ok()?;
        let link = std::fs::read_link(entry.path()).ok()?;
        let inode = link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?;
        Some((inode.parse().ok()?, fd))
    })
    .collect()
}

/// `0100007F:1F90` (address in network byte order printed as a host integer, port in hex).
fn addr(field: &str) -> SocketAddr {
    let (ip, port) = field.split_once(':').unwrap();
    let ip = u32::from_str_radix(ip, 16).unwrap();
    let port = u16::from_str_radix(port, 16).unwrap();
    SocketAddr::from((Ipv4Addr::from(ip.to_ne_bytes()), port))
}

/// How many descriptors `pid` holds open.
pub fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .unwrap_or(0)
}

/// User plus system CPU time `pid` has used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the `(comm)`, which may hold spaces: state is the 3rd field, utime the 14th.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 1000 / TICKS)
}

/// The keepalive settings of descriptor `fd` of `pid`: (on, idle, interval, probes).
pub fn keepalive(pid: u32, fd: i32) -> (bool, Duration, Duration, u32) {
    let socket = socket2::Socket::from(duplicate(pid, fd));
    (
        socket.keepalive().unwrap(),
        socket.tcp_keepalive_time().unwrap(),
        socket.tcp_keepalive_interval().unwrap(),
        socket.tcp_keepalive_retries().unwrap(),
    )
}

/// A descriptor of this process referring to `pid`'s descriptor `fd` (pidfd_getfd(2)).
fn duplicate(pid: u32, fd: i32) -> OwnedFd {
    // SAFETY: plain syscalls on integers; each returned descriptor is checked and then owned
    // exactly once.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        assert!(
            pidfd >= 0,
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        );
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let dup = libc::syscall(
            libc::SYS_pidfd_getfd,
            std::os::fd::AsRawFd::as_raw_fd(&pidfd),
            fd,
            0,
        );
        assert!(dup >= 0, "pidfd_getfd: {}", std::io::Error::last_os_error());
        OwnedFd::from_raw_fd(dup as i32)
    }
}
