//! Listening sockets: one SO_REUSEPORT socket per worker, built with socket2.
//!
//! SO_REUSEPORT lets a second process that also sets it share the port silently. So before the
//! per-worker sockets are bound, a probe binds the address *without* it: if anything else
//! holds the port, that fails, and the node refuses to start with a clear error.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Binding failed: which address, and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {reason}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub reason: String,
}

/// Binds `workers` sockets sharing `addr` (a port 0 is resolved once, for all of them).
pub fn bind_reuseport(
    addr: SocketAddr,
    workers: usize,
) -> Result<Vec<std::net::TcpListener>, BindError> {
    let error = |addr, e: io::Error| BindError {
        addr,
        reason: match e.kind() {
            io::ErrorKind::AddrInUse => "the address is already in use by another process".into(),
            _ => e.to_string(),
        },
    };
    if addr.port() != 0 {
        probe_exclusive(addr).map_err(|e| error(addr, e))?;
    }
    let mut sockets = Vec::with_capacity(workers);
    let mut bound = addr;
    for _ in 0..workers.max(1) {
        let socket = listen_socket(bound).map_err(|e| error(bound, e))?;
        bound = socket.local_addr().map_err(|e| error(bound, e))?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Fails with `AddrInUse` if any socket — with or without SO_REUSEPORT — holds `addr`.
fn probe_exclusive(addr: SocketAddr) -> io::Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1)
}

fn listen_socket(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_held_by_another_socket_is_a_clear_error() {
        let first = bind_reuseport(([127, 0, 0, 1], 0).into(), 2).unwrap();
        let taken = first[0].local_addr().unwrap();
        assert_eq!(
            first[1].local_addr().ok(),
            Some(taken),
            "workers share one port"
        );
        let err = bind_reuseport(taken, 2).err().map(|e| e.to_string());
        assert_eq!(
            err,
            Some(format!(
                "cannot listen on {taken}: the address is already in use by another process"
            ))
        );
    }
}
