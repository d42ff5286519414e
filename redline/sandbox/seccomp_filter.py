"""Compile, load and probe redline's syscall filter with libseccomp.

Run by the host's ``/usr/bin/python3`` (Debian's ``python3-seccomp`` lives there), never imported
by the harness, whose environment does not have it. The policy comes as JSON
(:meth:`redline.sandbox.syscalls.SyscallPolicy.as_json`); see :mod:`redline.sandbox.syscalls`
for what it refuses and why.

    python3 -I seccomp_filter.py export POLICY        the BPF program on stdout (for bwrap --seccomp FD
                                                      and the entry loader, seccomp_exec.c)
    python3 -I seccomp_filter.py probe POLICY         call every refused syscall; print one JSON line

A syscall name this libseccomp does not know is left out (``export`` names it on stderr);
``probe`` reports a call that this architecture does not have as ``absent``.
"""

import ctypes
import errno
import json
import os
import sys

import seccomp


def build(policy: dict) -> tuple["seccomp.SyscallFilter", list]:
    """The filter for ``policy`` and the names libseccomp did not know."""
    refused = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)  # the native ABI only: others are killed
    unknown = []

    def add(action, name, *args):
        try:
            rules.add_rule(action, name, *args)
        except (RuntimeError, ValueError, OSError):
            unknown.append(name)

    for name in policy["refused"]:
        add(refused, name)
    for name in policy["unavailable"]:
        add(seccomp.ERRNO(errno.ENOSYS), name)
    for flag in policy["clone_flags"]:
        add(refused, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    for request in policy["ioctl_requests"]:
        add(refused, "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, request))
    for family in policy.get("socket_families", []):  # the kernel reads the family as an int
        add(refused, "socket", seccomp.Arg(0, seccomp.MASKED_EQ, 0xFFFFFFFF, family))
    return rules, sorted(set(unknown))


def export(policy: dict) -> int:
    rules, unknown = build(policy)
    sys.stdout.flush()
    rules.export_bpf(sys.stdout)
    if unknown:
        print("calls this libseccomp does not know, left out: " + ", ".join(unknown), file=sys.stderr)
    refused = len([name for name in policy["refused"] if name not in unknown])
    print(f"libseccomp (API level {seccomp.get_api()}): {refused} calls refused, {len(policy['unavailable'])} "
          f"unavailable, clone with namespace flags and {len(policy['ioctl_requests'])} ioctl requests refused",
          file=sys.stderr)
    return 0


def probe(policy: dict) -> int:
    """Call each refused (and unavailable) syscall with zero arguments and print, as JSON, its errno
    name (``absent``: not a call of this architecture) and this process's seccomp mode. Meant to run
    inside a sandbox only: unfiltered and privileged, some of these calls would act."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    arch = seccomp.Arch.NATIVE
    zeros = [ctypes.c_long(0)] * 6
    results = {}
    for name in [*policy["refused"], *policy["unavailable"]]:
        try:
            number = seccomp.resolve_syscall(arch, name)
        except (RuntimeError, ValueError, OSError, OverflowError):
            number = -1
        if number < 0:
            results[name] = "absent"
            continue
        ctypes.set_errno(0)
        returned = libc.syscall(ctypes.c_long(number), *zeros)
        results[name] = errno.errorcode.get(ctypes.get_errno(), "?") if returned == -1 else f"returned {returned}"
    ctypes.set_errno(0)
    child = libc.syscall(ctypes.c_long(seccomp.resolve_syscall(arch, "clone")),
                         ctypes.c_long(0x10000000 | 17), *zeros[:4])  # CLONE_NEWUSER | SIGCHLD
    if child == 0:
        os._exit(0)  # the child of a clone that should have been refused
    if child > 0:
        os.waitpid(child, 0)
    results["clone(CLONE_NEWUSER)"] = errno.errorcode.get(ctypes.get_errno(), "?") if child == -1 \
        else f"returned {child}"
    for family in policy.get("socket_families", []):
        ctypes.set_errno(0)
        made = libc.socket(family, 1, 0)  # SOCK_STREAM
        results[f"socket(family {family})"] = errno.errorcode.get(ctypes.get_errno(), "?") if made == -1 \
            else "returned a socket"
        if made >= 0:
            os.close(made)
    mode = ""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Seccomp:"):
                mode = line.split()[1]
    print(json.dumps({"seccomp_mode": mode, "calls": results}))
    return 0


def main(argv: list) -> int:
    if len(argv) != 2 or argv[0] not in ("export", "probe"):
        print("usage: seccomp_filter.py export|probe POLICY", file=sys.stderr)
        return 2
    policy = json.loads(argv[1])
    return export(policy) if argv[0] == "export" else probe(policy)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
