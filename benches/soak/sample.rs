//! What the kernel and the nodes' metrics say about a node process.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Resident set size, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Open descriptors.
pub fn descriptors(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Sockets in CLOSE_WAIT by owning pid (the peer closed, the owner has not): a leak if it
/// lasts. Uses `ss` (netlink sock_diag, filtered in the kernel), not the whole /proc table.
pub fn close_wait_by_pid() -> HashMap<u32, usize> {
    let mut by_pid = HashMap::new();
    let Ok(out) = std::process::Command::new("ss")
        .args(["-tanpH", "state", "close-wait"])
        .output()
    else {
        return by_pid;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // users:(("osgate",pid=123,fd=45)): one socket, counted once per owner.
        let mut owners: Vec<u32> = line
            .split("pid=")
            .skip(1)
            .filter_map(|rest| rest.split(',').next()?.parse().ok())
            .collect();
        owners.dedup();
        for pid in owners {
            *by_pid.entry(pid).or_default() += 1;
        }
    }
    by_pid
}

/// The sum of the samples of `name` (any labels) at `addr`'s /metrics.
pub fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let values = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| series.split('{').next() == Some(name))
        .filter_map(|(_, value)| value.parse::<f64>().ok());
    Some(values.sum())
}

/// User plus system CPU time (/proc/PID/stat, in clock ticks of 1/100 s).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After `(comm)` (which may hold spaces): utime and stime are the 12th and 13th fields.
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Time `pid`'s threads spent runnable but waiting for a CPU (/proc/PID/task/*/schedstat,
/// second field, ns): how much the machine's other load held the node back.
pub fn run_delay(pid: u32) -> Option<Duration> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let nanos: u64 = tasks
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            stat.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum();
    Some(Duration::from_nanos(nanos))
}
