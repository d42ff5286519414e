"""The syscall filter every sandboxed process runs under: what it refuses, and how it is applied.

The policy is modelled on the default seccomp profiles of Docker, containerd and Flatpak: it
allows everything else (a deny-list over the calls those profiles refuse, so ordinary programs --
the AI system, pip, ssh, compilers -- are unaffected) and refuses, with ``EPERM``:

* io_uring (``io_uring_setup``/``enter``/``register``): a second syscall interface that bypassed
  seccomp and LSM checks, and the way into many kernel privilege escalations; Docker, containerd
  and Flatpak refuse it;
* eBPF and perf (``bpf``, ``perf_event_open``), ``userfaultfd`` (used to win kernel races);
* the kernel keyrings (``add_key``, ``keyctl``, ``request_key``): not namespaced;
* kexec and kernel modules; the mount family (old and new mount API), ``pivot_root``,
  ``chroot``, ``unshare`` and ``setns``; file handles (``open_by_handle_at``: the "shocker"
  escape);
* host administration: clocks, reboot, swap, accounting, quotas, ``syslog``, ``vhangup``;
  legacy and raw I/O calls (``iopl``, ``ioperm``, ``uselib``, ``_sysctl``, ...); moving another
  process's pages (``move_pages``, ``migrate_pages``); ``fanotify_init``;
* ``clone`` with any namespace flag, and ``ioctl`` ``TIOCSTI``/``TIOCLINUX`` (typing into a
  terminal); the ioctl request is compared on its low 32 bits, as the kernel reads it
  (CVE-2019-10063);
* ``socket`` of the families ``AF_ALG`` (the kernel crypto API: CVE-2026-31431, a page-cache
  write, and the sandbox's ``/usr`` is the host's page cache) and ``AF_VSOCK`` (not scoped by
  network namespace: a sandbox with only ``lo`` would share the host VM's vsock address space),
  as Docker and containerd refuse them;
* ``clone3`` gets ``ENOSYS`` (its flags are in memory, which seccomp cannot read), so libc falls
  back to ``clone``, whose flags are checked -- as Docker does.

Only the native ABI is allowed: a call through another ABI (i386 ``int 0x80``, x32) kills the
thread (libseccomp's bad-architecture action).

Calls a profile allows that we also allow: ``ptrace`` and ``process_vm_*`` (Docker allows them on
kernels >= 4.8: a sandboxed process can only reach its own sandbox's processes, all of which are
filtered from their first instruction, see below), ``personality``, ``get_mempolicy``/``mbind``/
``set_mempolicy`` (per-process NUMA hints that libnuma and llama.cpp may use).

The filter is compiled by libseccomp (Debian's ``python3-seccomp``, under the host's
``/usr/bin/python3``; :mod:`redline.sandbox.seccomp_filter` is that program). It is applied:

* to the sandbox's init (catatonit) and so to everything it starts: bwrap's ``--seccomp FD``,
  loaded after bwrap's own setup, right before it executes catatonit;
* to every process the harness enters into the sandbox (``exec``, ``spawn``): installed by the
  entry loader (``seccomp_exec.c``, compiled on first use: :func:`loader_prefix`) on the host
  *before* ``nsenter`` enters the namespaces, so the process never runs a single instruction inside
  the sandbox unfiltered (loading it inside, after entering, would leave a window in which another
  sandboxed process of the same uid could ptrace the loader). ``nsenter`` itself needs ``setns``
  and ``chroot`` (``--root``), so the entry filter (:data:`ENTRY_POLICY`) allows those two; the
  kernel refuses both to processes without capabilities, which every sandboxed process is.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, replace

from redline.errors import HarnessError
from redline.sandbox.base import ContainmentItem

#: the program that compiles the filter and probes it (run by the host's Python, which has libseccomp)
FILTER_PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seccomp_filter.py")
#: the entry loader's source: it installs a compiled program on its own process, then executes
LOADER_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seccomp_exec.c")
#: the host's Python with Debian's python3-seccomp
SYSTEM_PYTHON = "/usr/bin/python3"
#: the containment report's item for the filter
ITEM_NAME = "syscall filter"
#: what an entry names when the filter could not be applied (the harness's failure, never run unfiltered)
LOADER_FAILURE_PREFIX = b"redline-seccomp: "

CLONE_NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
AF_ALG, AF_VSOCK = 38, 40


@dataclass(frozen=True)
class SyscallPolicy:
    """A deny-list filter: every call is allowed except these."""

    refused: tuple[str, ...]  # EPERM
    unavailable: tuple[str, ...]  # ENOSYS
    clone_flags: tuple[int, ...]  # clone with any of these flag bits: EPERM
    ioctl_requests: tuple[int, ...]  # ioctl with one of these requests (low 32 bits): EPERM
    socket_families: tuple[int, ...] = ()  # socket() of one of these address families: EPERM

    def allowing(self, *names: str) -> SyscallPolicy:
        """This policy with ``names`` no longer refused."""
        return replace(self, refused=tuple(name for name in self.refused if name not in names))

    def as_json(self) -> str:
        """The form :mod:`redline.sandbox.seccomp_filter` reads."""
        return json.dumps({"refused": self.refused, "unavailable": self.unavailable,
                           "clone_flags": self.clone_flags, "ioctl_requests": self.ioctl_requests,
                           "socket_families": self.socket_families})


REFUSED_GROUPS: dict[str, tuple[str, ...]] = {
    "io_uring": ("io_uring_setup", "io_uring_enter", "io_uring_register"),
    "eBPF, perf and userfaultfd": ("bpf", "perf_event_open", "userfaultfd"),
    "kernel keyrings": ("add_key", "keyctl", "request_key"),
    "kexec and kernel modules": ("kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
                                 "create_module", "get_kernel_syms", "query_module"),
    "mounts and namespaces": ("mount", "umount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount",
                              "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "unshare", "setns"),
    "file handles": ("name_to_handle_at", "open_by_handle_at"),
    "host administration": ("reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog",
                            "settimeofday", "stime", "clock_settime", "clock_adjtime", "vhangup", "fanotify_init"),
    "legacy and raw I/O": ("iopl", "ioperm", "uselib", "ustat", "sysfs", "_sysctl", "nfsservctl", "lookup_dcookie",
                           "vm86", "vm86old"),
    "other processes' memory placement": ("move_pages", "migrate_pages"),
}

POLICY = SyscallPolicy(
    refused=tuple(name for names in REFUSED_GROUPS.values() for name in names),
    unavailable=("clone3",),
    clone_flags=tuple(CLONE_NAMESPACE_FLAGS.values()),
    ioctl_requests=(TIOCSTI, TIOCLINUX),
    socket_families=(AF_ALG, AF_VSOCK),
)
#: the filter of processes the harness enters into a sandbox (see the module docstring)
ENTRY_POLICY = POLICY.allowing("setns", "chroot")


@dataclass(frozen=True)
class FilterSupport:
    """Whether this host can apply the filter: the compiled programs and the entry loader, or why not."""

    bpf: bytes | None  # POLICY, for bwrap's --seccomp (None: ``problem`` says why)
    entry_bpf: bytes | None = None  # ENTRY_POLICY, for the entry loader
    loader: str = ""  # the entry loader binary (LOADER_SOURCE, compiled)
    problem: str | None = None  # None when everything is there
    detail: str = ""  # libseccomp's summary of what it compiled


def _export(policy: SyscallPolicy) -> tuple[bytes | None, str]:
    """``policy`` compiled by the host's libseccomp: (the BPF program, libseccomp's summary), or
    (None, why not)."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return None, f"{SYSTEM_PYTHON} is missing: install it with 'apt-get install python3'"
    try:
        done = subprocess.run([SYSTEM_PYTHON, "-I", FILTER_PROGRAM, "export", policy.as_json()],
                              capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"could not run libseccomp's compiler: {error}"
    message = " ".join(done.stderr.decode(errors="replace").split())
    if done.returncode != 0 or not done.stdout:
        if "No module named 'seccomp'" in message:
            return None, "libseccomp's Python bindings are missing: install them with 'apt-get install python3-seccomp'"
        return None, f"libseccomp could not compile the filter: {message[-300:] or 'no message'}"
    return done.stdout, done.stderr.decode(errors="replace").strip().splitlines()[-1]


def _loader() -> tuple[str, str | None]:
    """The entry loader, compiled from :data:`LOADER_SOURCE` once per source version into the state
    directory (root's, mode 0711): (its path, None), or ("", why not)."""
    from redline.sandbox.bwrap.state import state_root

    with open(LOADER_SOURCE, "rb") as handle:
        source = handle.read()
    directory = os.path.join(state_root(), "bin")
    path = os.path.join(directory, f"redline-seccomp-exec-{hashlib.sha256(source).hexdigest()[:16]}")
    if os.access(path, os.X_OK):
        return path, None
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return "", "no C compiler to build the seccomp loader: install it with 'apt-get install gcc libc6-dev'"
    os.makedirs(directory, mode=0o711, exist_ok=True)
    partial = f"{path}.{os.getpid()}.tmp"
    done = subprocess.run([compiler, "-O2", "-Wall", "-Werror", "-static", "-o", partial, LOADER_SOURCE],
                          capture_output=True)  # static: no dynamic loader to run at every entry
    if done.returncode != 0:  # no static libc here: a dynamic one
        done = subprocess.run([compiler, "-O2", "-Wall", "-Werror", "-o", partial, LOADER_SOURCE], capture_output=True)
    if done.returncode != 0:
        why = " ".join(done.stderr.decode(errors="replace").split())[-300:]
        return "", f"the seccomp loader did not compile: {why}"
    os.chmod(partial, 0o755)
    os.replace(partial, path)
    return path, None


@functools.lru_cache(maxsize=1)
def support() -> FilterSupport:
    """Compile :data:`POLICY` and :data:`ENTRY_POLICY` with the host's libseccomp and build the
    entry loader, once (cached for the process)."""
    bpf, detail = _export(POLICY)
    if bpf is None:
        return FilterSupport(None, problem=detail)
    entry_bpf, problem = _export(ENTRY_POLICY)
    if entry_bpf is None:
        return FilterSupport(None, problem=problem)
    loader, problem = _loader()
    if problem:
        return FilterSupport(None, problem=problem)
    return FilterSupport(bpf, entry_bpf, loader, None, detail)


def containment_item() -> ContainmentItem:
    """The containment report's line for the filter on this host."""
    compiled = support()
    if compiled.bpf is None:
        return ContainmentItem(ITEM_NAME, False, f"no seccomp filter: {compiled.problem}")
    groups = ", ".join(REFUSED_GROUPS)
    return ContainmentItem(ITEM_NAME, True,
                           f"seccomp (libseccomp) on every process, from its first instruction: refuses {groups}; "
                           "clone with namespace flags, TIOCSTI/TIOCLINUX, AF_ALG and AF_VSOCK sockets; clone3 "
                           "unavailable; native ABI only")


def loader_prefix() -> list[str]:
    """The start of a command line that puts :data:`ENTRY_POLICY` on its own process, then
    executes the rest of the command line; the process must inherit :func:`entry_fd`."""
    compiled = support()
    if compiled.entry_bpf is None:
        raise HarnessError(f"the syscall filter cannot be applied: {compiled.problem}")
    return [compiled.loader, str(entry_fd())]


def _memfd(data: bytes, name: str) -> int:
    fd = os.memfd_create(name)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


@functools.lru_cache(maxsize=1)
def entry_fd() -> int:
    """A memfd holding the compiled :data:`ENTRY_POLICY`, made once per process and kept open
    (close-on-exec: an entry passes it on explicitly; the loader reads it with ``pread``, so one
    descriptor serves concurrent entries)."""
    compiled = support()
    if compiled.entry_bpf is None:
        raise HarnessError(f"the syscall filter cannot be applied: {compiled.problem}")
    return _memfd(compiled.entry_bpf, "redline-seccomp-entry")


def bpf_fd() -> int:
    """A memfd holding the compiled :data:`POLICY`, positioned at its start (for bwrap's
    ``--seccomp``, which reads it to the end); :class:`HarnessError` if this host cannot compile
    it. The caller closes it."""
    compiled = support()
    if compiled.bpf is None:
        raise HarnessError(f"the syscall filter cannot be applied: {compiled.problem}")
    return _memfd(compiled.bpf, "redline-seccomp")
