#!/usr/bin/python3
"""Runs a command under a container seccomp profile (the OCI JSON a kubelet's Localhost
profile is), as runc would: the filter is loaded last, then the command is exec'd under it.

    seccomp_exec.py PROFILE [--block NAME,...] -- COMMAND ARGS...

--block removes syscalls from the profile's allow rules (to stand in for the runtime's
default profile, which does not allow io_uring). Needs Debian's python3-seccomp.
Only the native architecture's rules are loaded.
"""
import errno
import json
import os
import sys

import seccomp

OPS = {
    "SCMP_CMP_EQ": seccomp.EQ,
    "SCMP_CMP_NE": seccomp.NE,
    "SCMP_CMP_LT": seccomp.LT,
    "SCMP_CMP_LE": seccomp.LE,
    "SCMP_CMP_GT": seccomp.GT,
    "SCMP_CMP_GE": seccomp.GE,
    "SCMP_CMP_MASKED_EQ": seccomp.MASKED_EQ,
}


def action(name, errno_ret):
    if name == "SCMP_ACT_ALLOW":
        return seccomp.ALLOW
    if name == "SCMP_ACT_ERRNO":
        return seccomp.ERRNO(errno_ret)
    if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS"):
        return seccomp.KILL_PROCESS
    if name == "SCMP_ACT_LOG":
        return seccomp.LOG
    sys.exit(f"seccomp_exec: unsupported action {name}")


def build(profile, blocked):
    default_errno = profile.get("defaultErrnoRet", errno.EPERM)
    f = seccomp.SyscallFilter(defaction=action(profile["defaultAction"], default_errno))
    for rule in profile.get("syscalls", []):
        act = action(rule["action"], rule.get("errnoRet", errno.EPERM))
        args = [
            seccomp.Arg(a["index"], OPS[a["op"]], a["value"], a.get("valueTwo", 0))
            for a in rule.get("args", [])
        ]
        for name in rule["names"]:
            if name in blocked and rule["action"] == "SCMP_ACT_ALLOW":
                continue
            f.add_rule(act, name, *args)
    return f


def main(argv):
    if "--" not in argv or len(argv) < 3:
        sys.exit(__doc__)
    split = argv.index("--")
    options, command = argv[1:split], argv[split + 1 :]
    blocked = set()
    if len(options) == 3 and options[1] == "--block":
        blocked = set(options[2].split(","))
    elif len(options) != 1:
        sys.exit(__doc__)
    with open(options[0]) as file:
        profile = json.load(file)
    build(profile, blocked).load()
    os.execv(command[0], command)


main(sys.argv)
