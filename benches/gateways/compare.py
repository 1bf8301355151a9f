#!/usr/bin/env python3
"""Side-by-side: osgate vs nginx stream, HAProxy and stunnel gateway pairs on loopback.

Every contender runs as a *pair* of processes (an outbound node that originates TLS, an
inbound node that terminates it) with two workers each, the same ECDSA P-256 certificate,
TLS 1.3, and session resumption off, so every new connection pays a full handshake:

    load generator -> [outbound] ==TLS 1.3==> [inbound] -> backend (iperf3 / nginx http)

Measured per pair, on the same machine, in one run:
  * bulk Gbit/s: iperf3 through the pair, client->server and server->client (-R);
  * new connections/s: wrk with `Connection: close` (one TCP connection and one full TLS
    handshake per request) against a small HTTP backend;
  * keep-alive requests/s and p99 latency: wrk with persistent connections.

Usage: benches/gateways/compare.py [--seconds N] [--only NAME,...]
Needs: nginx (+ libnginx-mod-stream), haproxy, stunnel4, iperf3, wrk, and
target/release/osgate (cargo build --release -p osgate-node).
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OSGATE = os.path.join(ROOT, "target", "release", "osgate")
NGINX_STREAM = "/usr/lib/nginx/modules/ngx_stream_module.so"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    """Whether some socket listens on `port`, read from /proc (a connect probe would open a
    tunnel through the pair and disturb backends such as iperf3)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def wait_port(port, proc=None, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}: {proc.args}")
        if listening(port):
            return
        time.sleep(0.02)
    raise RuntimeError(f"port {port} did not open")


class Procs:
    """Processes of one pair; stopped together."""

    def __init__(self, work):
        self.work = work
        self.procs = []

    def spawn(self, name, args, port, env=None):
        log = open(os.path.join(self.work, f"{name}.log"), "wb")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        self.procs.append(proc)
        wait_port(port, proc)
        return proc

    def stop(self):
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.procs = []


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


# ---------------------------------------------------------------- contenders

def osgate_pair(procs, work, backend, io, groups):
    out_port, in_port = free_port(), free_port()
    node = f'[node]\nio = "{io}"\nworkers = {os.environ.get("OSGATE_BENCH_WORKERS", "2")}\ntls_resumption = false\ntls_groups = {json.dumps(groups)}\n'
    inbound = write(os.path.join(work, "osgate-in.toml"), node + f"""
[[inbound]]
listen = "127.0.0.1:{in_port}"
backend = "127.0.0.1:{backend}"
certificate = "{work}/node.crt"
private_key = "{work}/node.key"
cleartext = "deny"
""")
    outbound = write(os.path.join(work, "osgate-out.toml"), node + f"""
[[outbound]]
listen = "127.0.0.1:{out_port}"
peer = "127.0.0.1:{in_port}"
policy = "encrypt"
""")
    env = dict(os.environ, OSGATE_LOG="info")
    procs.spawn("osgate-in", [OSGATE, "run", "-c", inbound], in_port, env)
    procs.spawn("osgate-out", [OSGATE, "run", "-c", outbound], out_port, env)
    return out_port


def nginx_pair(procs, work, backend):
    out_port, in_port = free_port(), free_port()

    def conf(name, server):
        return write(os.path.join(work, f"nginx-{name}.conf"), f"""
load_module {NGINX_STREAM};
worker_processes 2;
daemon off;
pid {work}/nginx-{name}.pid;
error_log {work}/nginx-{name}.err warn;
events {{ worker_connections 16384; }}
stream {{
  server {{
{server}
  }}
}}
""")

    inbound = conf("in", f"""    listen 127.0.0.1:{in_port} ssl reuseport;
    ssl_certificate {work}/node.crt;
    ssl_certificate_key {work}/node.key;
    ssl_protocols TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    proxy_pass 127.0.0.1:{backend};""")
    outbound = conf("out", f"""    listen 127.0.0.1:{out_port} reuseport;
    proxy_pass 127.0.0.1:{in_port};
    proxy_ssl on;
    proxy_ssl_protocols TLSv1.3;
    proxy_ssl_session_reuse off;""")
    procs.spawn("nginx-in", ["nginx", "-c", inbound, "-p", work], in_port)
    procs.spawn("nginx-out", ["nginx", "-c", outbound, "-p", work], out_port)
    return out_port


def haproxy_pair(procs, work, backend):
    out_port, in_port = free_port(), free_port()
    pem = write(os.path.join(work, "node.pem"),
                open(os.path.join(work, "node.crt")).read() + open(os.path.join(work, "node.key")).read())
    common = """global
  nbthread 2
  maxconn 9000
  ssl-default-bind-options ssl-min-ver TLSv1.3 no-tls-tickets
  ssl-default-server-options ssl-min-ver TLSv1.3 no-tls-tickets
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
"""
    inbound = write(os.path.join(work, "haproxy-in.cfg"), common + f"""
frontend tls_in
  bind 127.0.0.1:{in_port} ssl crt {pem}
  default_backend app
backend app
  server app 127.0.0.1:{backend}
""")
    outbound = write(os.path.join(work, "haproxy-out.cfg"), common + f"""
frontend plain_in
  bind 127.0.0.1:{out_port}
  default_backend peer
backend peer
  server peer 127.0.0.1:{in_port} ssl verify none no-ssl-reuse
""")
    procs.spawn("haproxy-in", ["haproxy", "-db", "-f", inbound], in_port)
    procs.spawn("haproxy-out", ["haproxy", "-db", "-f", outbound], out_port)
    return out_port


def stunnel_pair(procs, work, backend):
    out_port, in_port = free_port(), free_port()
    common = "foreground = yes\npid =\nsyslog = no\ndebug = 3\n"
    inbound = write(os.path.join(work, "stunnel-in.conf"), common + f"""
[in]
accept = 127.0.0.1:{in_port}
connect = 127.0.0.1:{backend}
cert = {work}/node.crt
key = {work}/node.key
sslVersionMin = TLSv1.3
sessionResume = no
options = NO_TICKET
""")
    outbound = write(os.path.join(work, "stunnel-out.conf"), common + f"""
[out]
client = yes
accept = 127.0.0.1:{out_port}
connect = 127.0.0.1:{in_port}
verifyChain = no
sslVersionMin = TLSv1.3
sessionResume = no
""")
    procs.spawn("stunnel-in", ["stunnel4", inbound], in_port)
    procs.spawn("stunnel-out", ["stunnel4", outbound], out_port)
    return out_port


CONTENDERS = {
    "osgate-uring (x25519mlkem768)": lambda p, w, b: osgate_pair(p, w, b, "uring", ["x25519mlkem768", "x25519"]),
    "osgate-uring (x25519)": lambda p, w, b: osgate_pair(p, w, b, "uring", ["x25519"]),
    "osgate-epoll (x25519)": lambda p, w, b: osgate_pair(p, w, b, "epoll", ["x25519"]),
    "nginx stream (x25519)": nginx_pair,
    "haproxy (x25519)": haproxy_pair,
    "stunnel (x25519)": stunnel_pair,
}

# ---------------------------------------------------------------- backends and load

def start_backends(procs, work):
    http_port, iperf_port = free_port(), free_port()
    conf = write(os.path.join(work, "backend-nginx.conf"), f"""
worker_processes 1;
daemon off;
pid {work}/backend.pid;
error_log {work}/backend.err warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{http_port} reuseport backlog=4096;
    location / {{ return 200 "{"x" * 128}"; }}
  }}
}}
""")
    procs.spawn("backend-http", ["nginx", "-c", conf, "-p", work], http_port)
    procs.spawn("backend-iperf3", ["iperf3", "-s", "-p", str(iperf_port)], iperf_port)
    return http_port, iperf_port


def iperf(port, seconds, reverse):
    args = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J", "-l", "128K"]
    if reverse:
        args.append("-R")
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 30)
    data = json.loads(out.stdout)
    if "error" in data:
        raise RuntimeError(data["error"])
    return data["end"]["sum_received"]["bits_per_second"] / 1e9


def wrk(port, seconds, connections, close):
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/"]
    if close:
        args[1:1] = ["-H", "Connection: close"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    p99_ms = float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan")
    return rps, p99_ms, (errors.group(0) if errors else "")


def measure(name, start, work, args, iperf_port, http_port):
    row = {"name": name}
    for test, backend in [("bulk", iperf_port), ("http", http_port)]:
        if test not in args.tests.split(","):
            continue
        procs = Procs(work)
        try:
            port = start(procs, work, backend)
            if test == "bulk":
                row["up"] = iperf(port, args.seconds, reverse=False)
                row["down"] = iperf(port, args.seconds, reverse=True)
            else:
                wrk(port, 1, 32, close=False)  # warm-up, not measured
                row["new"], _, row["new_err"] = wrk(port, args.seconds, 32, close=True)
                row["ka"], row["p99"], row["ka_err"] = wrk(port, args.seconds, 64, close=False)
        finally:
            procs.stop()
    return row


def median_row(name, rows):
    out = {"name": name}
    for key in ("up", "down", "new", "ka", "p99"):
        values = sorted(r[key] for r in rows if key in r)
        if values:
            out[key] = values[len(values) // 2]
    for key in ("new_err", "ka_err"):
        out[key] = " ".join(r.get(key, "") for r in rows).strip()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--only", default="", help="comma-separated name prefixes")
    parser.add_argument("--tests", default="bulk,http", help="bulk, http, or both")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds, each in a rotated order; the table shows medians")
    args = parser.parse_args()
    for tool in ["nginx", "haproxy", "stunnel4", "iperf3", "wrk"]:
        if shutil.which(tool) is None:
            sys.exit(f"missing {tool}: apt-get install -y nginx-light libnginx-mod-stream haproxy stunnel4 iperf3 wrk")
    if not os.path.exists(OSGATE):
        sys.exit(f"missing {OSGATE}: cargo build --release -p osgate-node")

    # Every contender gets the highest descriptor limit this machine allows.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = tempfile.mkdtemp(prefix="osgate-compare-")
    subprocess.run([OSGATE, "keygen", "--cert", f"{work}/node.crt", "--key", f"{work}/node.key",
                    "--name", "gw.test"], check=True)
    backends = Procs(work)
    http_port, iperf_port = start_backends(backends, work)
    names = [n for n in CONTENDERS
             if not args.only or any(n.startswith(p) for p in args.only.split(","))]
    samples = {name: [] for name in names}
    try:
        for round_index in range(args.rounds):
            # Rotate the order each round, so drift over time does not favour one position.
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                row = measure(name, CONTENDERS[name], work, args, iperf_port, http_port)
                samples[name].append(row)
                print(f"round {round_index + 1}: {row}", file=sys.stderr, flush=True)
    finally:
        backends.stop()
        shutil.rmtree(work, ignore_errors=True)
    rows = [median_row(name, samples[name]) for name in names]

    print(f"\nloopback, 2 cores, {args.seconds}s per measurement, median of {args.rounds} round(s); "
          "every pair: 2 workers per node, TLS 1.3, no resumption\n")
    print("| pair | bulk up Gbit/s | bulk down Gbit/s | new conns/s (full handshake) | keep-alive req/s | keep-alive p99 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        cell = lambda key, fmt: format(r[key], fmt) if key in r else "-"
        print(f"| {r['name']} | {cell('up', '.2f')} | {cell('down', '.2f')} | {cell('new', '.0f')} | "
              f"{cell('ka', '.0f')} | {cell('p99', '.2f')} |")
    base = next((r for r in rows if r["name"].startswith("nginx")), None)
    if base and args.tests == "bulk,http":
        print("\nratios to nginx stream:")
        for r in rows:
            print(f"  {r['name']}: bulk {r['up'] / base['up']:.2f}x / {r['down'] / base['down']:.2f}x, "
                  f"new conns {r['new'] / base['new']:.2f}x, keep-alive {r['ka'] / base['ka']:.2f}x")
    errs = [f"{r['name']}: {r.get('new_err', '')} {r.get('ka_err', '')}" for r in rows if r.get("new_err") or r.get("ka_err")]
    if errs:
        print("\nwrk reported errors:\n  " + "\n  ".join(errs))


if __name__ == "__main__":
    main()
