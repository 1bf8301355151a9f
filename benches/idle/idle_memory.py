#!/usr/bin/env python3
"""Userspace memory per idle tunnel: N connections held open through an osgate pair.

Starts an inbound and an outbound osgate node (io driver from --io), a backend that accepts
and holds connections, opens N client connections through the pair (each one a TLS tunnel
between the nodes), waits until the backend holds all N, and reports each node's growth in
anonymous memory (RssAnon) per connection. Then closes everything.

Usage: benches/idle/idle_memory.py [--connections 10000] [--io uring|epoll]

The outbound node holds two descriptors per tunnel; where the hard descriptor limit is lower
than twice the count (20,000 in some sandboxes), the count is lowered to fit and said so.
"""

import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OSGATE = os.path.join(ROOT, "target", "release", "osgate")


# The backend: accepts and holds connections; prints "held" once it holds N of them.
HOLD_SERVER = """
import asyncio, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
held = []
async def hold(reader, writer):
    held.append(writer)
    if len(held) == n:
        print("held", flush=True)
    await reader.read()
async def main():
    server = await asyncio.start_server(hold, "127.0.0.1", port, backlog=4096)
    await server.serve_forever()
asyncio.run(main())
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_anon_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise RuntimeError("no RssAnon")


def wait_port(port):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"port {port} did not open")


def scrape(port, direction):
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    for line in text.splitlines():
        if line.startswith(f'osgate_connections_active{{direction="{direction}"}}'):
            return float(line.split()[-1])
    return 0.0


async def active(port, direction, n):
    """Waits until the node's active-connections gauge shows all `n` tunnels."""
    deadline = time.monotonic() + 60
    while scrape(port, direction) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{direction} node never reached {n} active connections")
        await asyncio.sleep(0.1)


async def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--io", default="uring")
    args = parser.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    n = min(args.connections, (hard - 200) // 2)
    if n < args.connections:
        print(f"descriptor limit {hard}: measuring {n} tunnels instead of {args.connections}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    backend_port = free_port()
    backend = subprocess.Popen([sys.executable, "-c", HOLD_SERVER, str(backend_port), str(n)],
                               stdout=subprocess.PIPE, text=True)
    wait_port(backend_port)

    work = tempfile.mkdtemp(prefix="osgate-idle-")
    subprocess.run([OSGATE, "keygen", "--cert", f"{work}/n.crt", "--key", f"{work}/n.key", "--name", "gw.test"], check=True)
    in_port, out_port, in_metrics, out_metrics = free_port(), free_port(), free_port(), free_port()
    node = f'[node]\nio = "{args.io}"\nworkers = 2\nidle_timeout_ms = 600000\n'
    with open(f"{work}/in.toml", "w") as f:
        f.write(node + f'metrics_listen = "127.0.0.1:{in_metrics}"\n[[inbound]]\nlisten = "127.0.0.1:{in_port}"\nbackend = "127.0.0.1:{backend_port}"\n'
                f'certificate = "n.crt"\nprivate_key = "n.key"\n')
    with open(f"{work}/out.toml", "w") as f:
        f.write(node + f'metrics_listen = "127.0.0.1:{out_metrics}"\n[[outbound]]\nlisten = "127.0.0.1:{out_port}"\npeer = "127.0.0.1:{in_port}"\npolicy = "encrypt"\n')
    env = dict(os.environ, OSGATE_LOG="warn")
    limit = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    nodes = {
        "inbound": subprocess.Popen([OSGATE, "run", "-c", f"{work}/in.toml"], env=env, preexec_fn=limit),
        "outbound": subprocess.Popen([OSGATE, "run", "-c", f"{work}/out.toml"], env=env, preexec_fn=limit),
    }
    try:
        wait_port(in_port)
        wait_port(out_port)
        # Warm up: one tunnel, so start-up allocations are not counted.
        r, w = await asyncio.open_connection("127.0.0.1", out_port)
        w.write(b"x")
        await w.drain()
        before = {name: rss_anon_kib(p.pid) for name, p in nodes.items()}
        clients = [(r, w)]
        for i in range(n - 1):
            clients.append(await asyncio.open_connection("127.0.0.1", out_port))
        # A first byte on each, so every tunnel is past the inbound peek and fully relaying.
        for _, w in clients[1:]:
            w.write(b"x")
        line = await asyncio.wait_for(asyncio.to_thread(backend.stdout.readline), timeout=120)
        assert line.strip() == "held", line
        await active(out_metrics, "outbound", n)
        await active(in_metrics, "inbound", n)
        after = {name: rss_anon_kib(p.pid) for name, p in nodes.items()}
        print(f"{n} idle tunnels through an osgate pair (io = {args.io}):")
        for name in nodes:
            grown = after[name] - before[name]
            print(f"  {name:8} node: RssAnon {before[name]} -> {after[name]} KiB, "
                  f"{grown * 1024 / (n - 1) / 1024:.2f} KiB per connection")
        if os.environ.get("IDLE_HOLD"):
            input("holding; press Enter to close")  # for inspecting the nodes by hand
        for _, w in clients:
            w.close()
    finally:
        for p in nodes.values():
            p.kill()
            p.wait()
        backend.kill()
        backend.wait()


if __name__ == "__main__":
    asyncio.run(main())
