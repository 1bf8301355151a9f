#!/usr/bin/env python3
"""Side-by-side, SMTP: osgate's outbound STARTTLS path vs. Postfix's own smtp client with TLS.

Every message goes to one destination: a private Postfix smtpd on loopback that offers
STARTTLS (a test certificate, ECDSA P-256) and discards every message it accepts. Rows:

  queued (a sending Postfix queue in front, like a real MTA):
    smtp-source -> sending Postfix --TLS (its smtp client)----------------> destination
    smtp-source -> sending Postfix --plain--> osgate outbound --STARTTLS--> destination
  direct (no sending queue: every smtp-source session is one STARTTLS session):
    smtp-source --------------------------------------cleartext----------> destination (ceiling)
    smtp-source --> osgate outbound -------------------STARTTLS----------> destination

A measurement runs from the first injection until the destination's queue manager has taken
the last message (`queue active` lines in its log, which appear after the 250 to DATA).
Postfix's shipped defaults stay on unless a row names them: connection cache on demand,
`smtp_tls_security_level = encrypt` (encrypted, not authenticated), TLS session cache off
(upstream's default: `smtp_tls_session_cache_database` empty; Debian's packaged main.cf turns
it on, so a row has it on too). osgate runs with its defaults (TLS resumption on) and
`policy = "encrypt"`, and a row with resumption off.

Usage: benches/gateways/smtp.py [--messages N] [--size BYTES] [--sessions S] [--rounds R]
Needs: postfix (smtp-source ships with it), run as root; target/release/osgate
(cargo build --release -p osgate-node --bin osgate), or --osgate PATH.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # importing compare.py leaves no __pycache__ in the tree
from compare import OSGATE, Procs, free_port, wait_port, write  # noqa: E402

DOMAIN = "example.test"
RCPT = f"user@{DOMAIN}"
SENDER = "bench@sender.test"
DEADLINE = 300.0


class Postfix:
    """A private Postfix instance in its own folder (config, queue, data, log); `postfix -c`."""

    def __init__(self, work, name, main_cf, services):
        self.root = os.path.join(work, name)
        for sub in ("etc", "queue", "data"):
            os.makedirs(os.path.join(self.root, sub))
        os.chmod(self.root, 0o755)
        shutil.chown(os.path.join(self.root, "data"), "postfix")
        self.port = free_port()
        self.log_path = os.path.join(self.root, "maillog")
        write(os.path.join(self.root, "etc", "main.cf"), base_cf(self.root) + main_cf)
        write(os.path.join(self.root, "etc", "master.cf"), master_cf(self.port, services))
        # Postfix waits for a main.cf written this very second to settle: date it back.
        past = time.time() - 10
        for cf in ("main.cf", "master.cf"):
            os.utime(os.path.join(self.root, "etc", cf), (past, past))
        self.control("start")
        try:
            wait_port(self.port)
        except RuntimeError:
            self.stop()
            raise

    def control(self, command):
        out = subprocess.run(["postfix", "-c", os.path.join(self.root, "etc"), command],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"postfix {command}: {out.stderr}{self.log_text()}")

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self):
        self.control("stop")
        # `stop` returns before the master exits; wait for it before the folder goes.
        pid_file = os.path.join(self.root, "queue", "pid", "master.pid")
        try:
            pid = int(open(pid_file).read().strip() or 0)
        except (FileNotFoundError, ValueError):
            return
        deadline = time.monotonic() + 10
        while pid and os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.02)


class LogCounter:
    """Counts log lines containing `needle` written after it was made (reads only new bytes)."""

    def __init__(self, path, needle):
        self.path, self.needle, self.count, self.rest = path, needle, 0, ""
        self.offset = os.path.getsize(path) if os.path.exists(path) else 0

    def poll(self):
        if os.path.exists(self.path):
            with open(self.path, errors="replace") as f:
                f.seek(self.offset)
                chunk = f.read()
                self.offset = f.tell()
            lines = (self.rest + chunk).split("\n")
            self.rest = lines.pop()
            self.count += sum(self.needle in line for line in lines)
        return self.count


def base_cf(root):
    return (f"compatibility_level = 3.6\nqueue_directory = {root}/queue\n"
            f"data_directory = {root}/data\ninet_interfaces = loopback-only\ninet_protocols = ipv4\n"
            f"maillog_file = {root}/maillog\nmaillog_file_prefixes = {root}\nalias_maps =\n"
            "alias_database =\nsmtpd_banner = $myhostname ESMTP\n")


def master_cf(port, services):
    # Only what the role needs, none chrooted (the folder is not a jail).
    return (f"127.0.0.1:{port} inet n - n - - smtpd\n"
            "cleanup unix n - n - 0 cleanup\nqmgr unix n - n 300 1 qmgr\n"
            "rewrite unix - - n - - trivial-rewrite\nbounce unix - - n - 0 bounce\n"
            "defer unix - - n - 0 bounce\ntrace unix - - n - 0 bounce\nerror unix - - n - - error\n"
            "retry unix - - n - - error\nanvil unix - - n - 1 anvil\nscache unix - - n - 1 scache\n"
            "proxymap unix - - n - - proxymap\ntlsmgr unix - - n 1000? 1 tlsmgr\n"
            "postlog unix-dgram n - n - 1 postlogd\n" + services)


def destination(work):
    """Accepts every recipient at DOMAIN and discards it; STARTTLS with the test key."""
    return Postfix(work, "destination", f"""myhostname = dest.{DOMAIN}
mydestination = {DOMAIN}
local_recipient_maps =
local_transport = discard
default_transport = discard
smtpd_tls_security_level = may
smtpd_tls_cert_file = {work}/dest.crt
smtpd_tls_key_file = {work}/dest.key
smtpd_tls_loglevel = 1
""", "discard unix - - n - - discard\n")


def sender(work, name, relay_port, tls_level, extra=""):
    return Postfix(work, name, f"""myhostname = sender.test
mydestination =
relayhost = [127.0.0.1]:{relay_port}
smtp_tls_security_level = {tls_level}
smtp_tls_loglevel = {os.environ.get("POSTFIX_TLS_LOGLEVEL", "1")}
smtpd_tls_security_level = none
""" + extra, "smtp unix - - n - - smtp\nrelay unix - - n - - smtp\ntlsproxy unix - - n - 0 tlsproxy\n")


def osgate_outbound(procs, work, osgate, dest_port, resumption):
    port = free_port()
    # Its own state folder: TOFU pins and TLS-RPT counts of a bench stay in the bench.
    state = os.path.join(work, f"osgate-{port}.state")
    os.makedirs(state)
    cfg = write(os.path.join(work, f"osgate-{port}.toml"), f"""[node]
state_dir = "{state}"
workers = {os.environ.get("OSGATE_BENCH_WORKERS", "2")}
tls_resumption = {"true" if resumption else "false"}

[smtp]
helo_name = "gw.sender.test"

[[outbound]]
listen = "127.0.0.1:{port}"
peer = "127.0.0.1:{dest_port}"
protocol = "smtp"
policy = "encrypt"
""")
    procs.spawn(f"osgate-{port}", [osgate, "run", "-c", cfg], port,
                dict(os.environ, OSGATE_LOG=os.environ.get("OSGATE_LOG", "warn")))
    return port


# ---------------------------------------------------------------- contenders
# Each returns the port smtp-source injects into; what it starts is stopped by `run.stop`.

SESSION_CACHE = "smtp_tls_session_cache_database = btree:$data_directory/smtp_scache\n"
TLS_REUSE = "smtp_tls_connection_reuse = yes\n"


def queued_postfix(extra):
    def start(run):
        return run.sender(run.dest.port, "encrypt", extra)
    return start


def queued_osgate(resumption):
    def start(run):
        return run.sender(run.osgate(resumption), "none")
    return start


def direct_osgate(resumption):
    return lambda run: run.osgate(resumption)


# name -> (start, many messages per smtp-source session)
CONTENDERS = {
    "queued: postfix smtp TLS (as shipped: session cache off)": (queued_postfix(""), True),
    "queued: postfix smtp TLS (session cache on, Debian main.cf)": (queued_postfix(SESSION_CACHE), True),
    "queued: postfix smtp TLS (session cache on, tls_connection_reuse)":
        (queued_postfix(SESSION_CACHE + TLS_REUSE), True),
    "queued: postfix -> osgate (resumption on, default)": (queued_osgate(True), True),
    "queued: postfix -> osgate (resumption off)": (queued_osgate(False), True),
    "direct: smtp-source -d -> destination, cleartext (ceiling, sessions reused)": (lambda run: run.dest.port, True),
    "direct: smtp-source -> destination, cleartext (ceiling)": (lambda run: run.dest.port, False),
    "direct: smtp-source -> osgate (resumption on, default)": (direct_osgate(True), False),
    "direct: smtp-source -> osgate (resumption off)": (direct_osgate(False), False),
}

# ratio rows: (osgate row, the row it is compared with)
RATIOS = [
    ("queued: postfix -> osgate (resumption off)", "queued: postfix smtp TLS (as shipped: session cache off)"),
    ("queued: postfix -> osgate (resumption on, default)", "queued: postfix smtp TLS (session cache on, Debian main.cf)"),
    ("queued: postfix -> osgate (resumption on, default)", "queued: postfix smtp TLS (session cache on, tls_connection_reuse)"),
    ("direct: smtp-source -> osgate (resumption off)", "direct: smtp-source -> destination, cleartext (ceiling)"),
    ("direct: smtp-source -> osgate (resumption on, default)", "direct: smtp-source -> destination, cleartext (ceiling)"),
]


class Run:
    """What one measurement started: sending Postfix instances and osgate processes."""

    serial = 0

    def __init__(self, work, dest, osgate):
        self.work, self.dest, self.osgate_bin = work, dest, osgate
        self.procs = Procs(work)
        self.postfixes = []

    def sender(self, relay_port, tls_level, extra=""):
        Run.serial += 1
        pf = sender(self.work, f"sender-{Run.serial}", relay_port, tls_level, extra)
        self.postfixes.append(pf)
        return pf.port

    def osgate(self, resumption):
        return osgate_outbound(self.procs, self.work, self.osgate_bin, self.dest.port, resumption)

    def osgate_cpu(self):
        """CPU seconds (user + system) the osgate processes have used so far, start-up included;
        None without osgate."""
        if not self.procs.procs:
            return None
        ticks = 0
        for proc in self.procs.procs:
            with open(f"/proc/{proc.pid}/stat") as f:
                # Fields after the parenthesised command name; utime and stime are 14 and 15.
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self):
        for pf in self.postfixes:
            pf.stop()
        self.procs.stop()


def wait_count(counter, want, what):
    deadline = time.monotonic() + DEADLINE
    while counter.poll() < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: {counter.count} of {want} after {DEADLINE:.0f}s")
        time.sleep(0.01)
    return time.monotonic()


def inject(port, args, reuse):
    cmd = ["smtp-source", "-s", str(args.sessions), "-m", str(args.messages), "-l", str(args.size),
           "-M", "client.test", "-f", SENDER, "-t", RCPT]
    if reuse:
        cmd.append("-d")
    out = subprocess.run(cmd + [f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=DEADLINE)
    if out.returncode != 0:
        raise RuntimeError(f"smtp-source exited {out.returncode}: {out.stderr.strip()}")


def measure(name, contender, run, args):
    start, reuse = contender
    accepted = LogCounter(run.dest.log_path, "(queue active)")
    removed = LogCounter(run.dest.log_path, ": removed")
    tls = LogCounter(run.dest.log_path, "TLS connection established from")
    sessions = LogCounter(run.dest.log_path, ": connect from")
    try:
        port = start(run)
        began = time.monotonic()
        # Into a sending queue each smtp-source session carries many messages (-d); straight
        # to osgate, one session is one STARTTLS per message.
        inject(port, args, reuse or args.reuse)
        injected = time.monotonic()
        done = wait_count(accepted, args.messages, f"{name}: accepted by the destination")
        wait_count(removed, args.messages, f"{name}: discarded by the destination")
        cpu = run.osgate_cpu()
    finally:
        run.stop()
    row = {"name": name, "rate": args.messages / (done - began), "inject": injected - began,
           "total": done - began, "sessions": sessions.poll(), "tls": tls.poll(),
           "osgate_ms": None if cpu is None else cpu * 1000 / args.messages}
    # A TLS row whose every destination session did not start TLS measured something else.
    if "cleartext" not in name and row["tls"] != row["sessions"]:
        raise RuntimeError(f"{name}: {row['tls']} TLS sessions of {row['sessions']} at the destination")
    return row


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def osgate_cell(rows):
    values = [r["osgate_ms"] for r in rows if r["osgate_ms"] is not None]
    return f"{median(values):.2f}" if values else "-"


def print_table(args, names, samples):
    print(f"\nloopback, {args.messages} messages of {args.size} B, {args.sessions} smtp-source sessions, "
          f"median of {args.rounds} round(s), queues in {args.dir}; destination: Postfix smtpd, "
          "STARTTLS, discard\n")
    print("| path | messages/s | s to last accepted | s to inject | sessions / TLS at the destination "
          "| osgate CPU ms per message |")
    print("|---|---:|---:|---:|---:|---:|")
    rates = {}
    for name in names:
        rows = samples[name]
        rates[name] = median(r["rate"] for r in rows)
        print(f"| {name} | {rates[name]:.0f} | {median(r['total'] for r in rows):.2f} | "
              f"{median(r['inject'] for r in rows):.2f} | "
              f"{median(r['sessions'] for r in rows)} / {median(r['tls'] for r in rows)} | "
              f"{osgate_cell(rows)} |")
    lines = [f"  {a} / {b}: {rates[a] / rates[b]:.2f}x" for a, b in RATIOS if a in rates and b in rates]
    if lines:
        print("\nratios (messages/s):\n" + "\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4096, help="payload bytes per message")
    parser.add_argument("--sessions", type=int, default=8, help="parallel smtp-source sessions")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds, each in a rotated order; the table shows medians")
    parser.add_argument("--only", default="", help="comma-separated name prefixes")
    parser.add_argument("--reuse", action="store_true",
                        help="direct rows too: many messages per smtp-source session (-d)")
    parser.add_argument("--osgate", default=OSGATE)
    parser.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                        help="where the queues live (default tmpfs: disk syncs are not what is measured)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: each Postfix instance is started with `postfix -c DIR`")
    for tool in ["postfix", "smtp-source"]:
        if shutil.which(tool) is None:
            sys.exit(f"missing {tool}: apt-get install -y postfix")
    if not os.path.exists(args.osgate):
        sys.exit(f"missing {args.osgate}: cargo build --release -p osgate-node --bin osgate")

    work = tempfile.mkdtemp(prefix="osgate-smtp-", dir=args.dir)
    os.chmod(work, 0o755)
    subprocess.run([args.osgate, "keygen", "--cert", f"{work}/dest.crt", "--key", f"{work}/dest.key",
                    "--name", f"dest.{DOMAIN}"], check=True)
    names = [n for n in CONTENDERS if not args.only or any(n.startswith(p) for p in args.only.split(","))]
    samples = {name: [] for name in names}
    dest = destination(work)
    try:
        for round_index in range(args.rounds):
            # Rotate the order each round, so drift over time does not favour one position.
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                row = measure(name, CONTENDERS[name], Run(work, dest, args.osgate), args)
                samples[name].append(row)
                print(f"round {round_index + 1}: {row}", file=sys.stderr, flush=True)
    finally:
        dest.stop()
        if not os.environ.get("OSGATE_BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    print_table(args, names, samples)


if __name__ == "__main__":
    main()
