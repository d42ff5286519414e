"""Command lines that start a bwrap sandbox and enter it, and the thread that starts them.

Layout inside every sandbox: read-only ``/usr`` (and the merged-usr links), a small ``/etc``
(copies of host files programs need plus generated ``passwd``/``group``/``hosts``), the spec's extra
read-only paths, fresh ``/proc`` and minimal ``/dev``, and three size-capped tmpfs mounts:
``/home/agent`` (the workspace), ``/tmp`` and ``/dev/shm``. Everything else of the host --
``/root``, ``/home``, ``/work``, ``/tmp``, the harness, other sandboxes -- is absent. The root
directory is read-only.

Processes run as uid/gid 1000 ("agent") inside a user namespace that maps only that id, to the
sandbox's own unprivileged host uid; they have no capabilities, ``no_new_privs`` set, and cannot
create further user namespaces. PID 1 is ``catatonit -P``, which reaps orphans and cannot be
killed from inside (the kernel ignores signals to a namespace's init it does not handle).
"""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence

INSIDE_UID = 1000
INSIDE_USER = "agent"
HOME = "/home/agent"

#: Host /etc entries programs commonly need; bound read-only when present.
ETC_ALLOWLIST = (
    "alternatives", "bash.bashrc", "ca-certificates", "ca-certificates.conf", "debian_version",
    "inputrc", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "mime.types",
    "nsswitch.conf", "os-release", "profile", "protocols", "python3", "python3.11", "services",
    "ssl", "timezone",
)
#: Top-level links of a merged-/usr system (or real directories on older layouts).
USR_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")

#: Joins the cgroups named before "--" (as root), then execs the rest of its arguments.
JOIN_CGROUPS = 'for f; do shift; [ "$f" = -- ] && break; echo $$ > "$f"; done; exec "$@"'

HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _generated_etc_files(hostname: str) -> dict[str, str]:
    return {
        "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
                  f"{INSIDE_USER}:x:{INSIDE_UID}:{INSIDE_UID}:{INSIDE_USER}:{HOME}:/bin/bash\n"
                  "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "group": f"root:x:0:\n{INSIDE_USER}:x:{INSIDE_UID}:\nnogroup:x:65534:\n",
        "hosts": f"127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        "hostname": hostname + "\n",
    }


_etc_cache: dict[tuple[str, str], str] = {}
_etc_lock = threading.Lock()


def prepare_etc(state_root: str, hostname: str) -> str:
    """A read-only ``/etc`` for sandboxes: copies of the host's :data:`ETC_ALLOWLIST` entries
    (private keys excluded) plus generated ``passwd``, ``group``, ``hosts`` and ``hostname``.

    Built once per harness process and host content, under ``<state_root>/etc/<digest>``, and
    bound into every sandbox as a single mount (one bind per file costs ~4 ms per sandbox).
    """
    key = (state_root, hostname)
    with _etc_lock:
        if key in _etc_cache and os.path.isdir(_etc_cache[key]):
            return _etc_cache[key]
        parent = os.path.join(state_root, "etc")
        os.makedirs(parent, mode=0o711, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".build-", dir=parent)
        os.chmod(staging, 0o755)
        for name in ETC_ALLOWLIST:
            source, target = os.path.join("/etc", name), os.path.join(staging, name)
            if os.path.isdir(source) and not os.path.islink(source):
                shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns("private"))
            elif os.path.lexists(source):
                shutil.copy2(source, target, follow_symlinks=os.path.exists(source))
        for name, content in _generated_etc_files(hostname).items():
            with open(os.path.join(staging, name), "w", encoding="utf-8") as handle:
                handle.write(content)
        digest = _tree_digest(staging)
        final = os.path.join(parent, digest)
        if os.path.isdir(final):
            shutil.rmtree(staging)
        else:
            os.rename(staging, final)
        _etc_cache[key] = final
        return final


def _tree_digest(root: str) -> str:
    digest = hashlib.sha256()
    for directory, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(directory, name)
            digest.update(os.path.relpath(path, root).encode() + b"\0")
            if os.path.islink(path):
                digest.update(b"->" + os.readlink(path).encode())
            else:
                with open(path, "rb") as handle:
                    digest.update(handle.read())
    return digest.hexdigest()[:16]


def bwrap_argv(
    *,
    tools: dict[str, str],
    host_uid: int,
    cgroup_procs: Sequence[str],
    etc_dir: str,
    hostname: str,
    workspace_bytes: int,
    tmp_bytes: int,
    ro_paths: dict[str, str],
    info_fd: int,
) -> list[str]:
    """The full command that joins the cgroups, drops to ``host_uid`` and starts bwrap."""
    args = [
        tools["bwrap"],
        "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
        "--unshare-cgroup-try", "--disable-userns",
        "--die-with-parent", "--new-session", "--as-pid-1", "--cap-drop", "ALL",
        "--uid", str(INSIDE_UID), "--gid", str(INSIDE_UID), "--hostname", hostname, "--clearenv",
        "--ro-bind", "/usr", "/usr",
    ]
    for name in USR_LINKS:
        host = "/" + name
        if os.path.islink(host):
            args += ["--symlink", os.readlink(host), host]
        elif os.path.isdir(host):
            args += ["--ro-bind", host, host]
    args += ["--ro-bind", etc_dir, "/etc"]
    for host, inside in sorted(ro_paths.items()):
        args += ["--ro-bind", host, inside]
    args += [
        "--proc", "/proc", "--dev", "/dev",
        "--perms", "1777", "--size", str(64 * 1024 * 1024), "--tmpfs", "/dev/shm",
        "--perms", "0755", "--dir", "/home",
        "--perms", "0755", "--size", str(workspace_bytes), "--tmpfs", HOME,
        "--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", "/tmp",
        "--dir", "/var", "--symlink", "/tmp", "/var/tmp",
        "--remount-ro", "/",
        "--chdir", HOME,
        "--info-fd", str(info_fd),
        "--", tools["catatonit"], "-P",
    ]
    return [
        "/bin/sh", "-c", JOIN_CGROUPS, "redline-start", *cgroup_procs, "--",
        tools["setpriv"], f"--reuid={host_uid}", f"--regid={host_uid}", "--clear-groups", "--",
        *args,
    ]


def enter_argv(
    *,
    tools: dict[str, str],
    init_host_pid: int,
    cgroup_procs: Sequence[str],
    cwd: str,
    command: Sequence[str],
) -> list[str]:
    """The full command that runs ``command`` inside a running sandbox: join its cgroups, enter
    all its namespaces as the inside user in ``cwd``, set ``no_new_privs``. The caller passes the
    sandbox environment as the process environment (nsenter and setpriv hand it on unchanged), so
    it must come from the harness, never from the AI."""
    return [
        "/bin/sh", "-c", JOIN_CGROUPS, "redline-exec", *cgroup_procs, "--",
        tools["nsenter"], f"--target={init_host_pid}", "--user", "--mount", "--pid", "--net",
        "--ipc", "--uts", "--cgroup", "--root", f"--wdns={cwd}",
        f"--setuid={INSIDE_UID}", f"--setgid={INSIDE_UID}", "--",
        "/usr/bin/setpriv", "--no-new-privs", "--", *command,
    ]


class Spawner:
    """Starts bwrap processes from one long-lived thread.

    bwrap's ``--die-with-parent`` fires when the *thread* that forked it exits, so sandboxes
    created from short-lived worker threads would die with them. Forking from this thread ties
    every sandbox's life to the harness process instead (and kills them if it is SIGKILLed).
    """

    def __init__(self) -> None:
        self._requests: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="redline-bwrap-spawner", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            argv, kwargs, reply = self._requests.get()
            try:
                reply.put((subprocess.Popen(argv, **kwargs), None))
            except BaseException as error:  # handed back to the caller's thread
                reply.put((None, error))

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        """``subprocess.Popen(argv, **kwargs)``, forked from a thread that lives as long as the
        process: the main thread itself, or else the spawner thread."""
        if threading.current_thread() is threading.main_thread():
            return subprocess.Popen(argv, **kwargs)
        reply: queue.Queue = queue.Queue(maxsize=1)
        self._requests.put((argv, kwargs, reply))
        process, error = reply.get()
        if error is not None:
            raise error
        return process
