"""Command lines that start a bwrap sandbox and enter it, and the thread that starts them.

Layout inside every sandbox: read-only ``/usr`` (and the merged-usr links), a small ``/etc``
(copies of host files programs need plus generated ``passwd``/``group``/``hosts``), the spec's extra
read-only paths, fresh ``/proc`` and minimal ``/dev``, and three size-capped tmpfs mounts:
``/home/agent`` (the workspace), ``/tmp`` and ``/dev/shm``. Everything else of the host --
``/root``, ``/home``, ``/work``, ``/tmp``, the harness, other sandboxes -- is absent. The root
directory is read-only.

Devices: the spec's character devices (e.g. ``/dev/nvidia0``) are ``--dev-bind``-ed onto the
minimal ``/dev`` after it is made, one node each, so no other host device appears; the spec's
driver paths are bound read-only like its extra read-only paths. ``/dev`` itself stays the
sandbox's own ``nodev`` tmpfs, so nothing made there can act as a device.

Processes run as uid/gid 1000 ("agent") inside a user namespace that maps only that id, to the
sandbox's own unprivileged host uid; they have no capabilities, ``no_new_privs`` set, and cannot
create further user namespaces. PID 1 is ``catatonit -P``, which reaps orphans and cannot be
killed from inside (the kernel ignores signals to a namespace's init it does not handle).

Network: by default bwrap gives the sandbox a new network namespace with only ``lo``. In the
``attached`` mode bwrap is started inside a namespace the harness made (``nsenter --net``, as
root, before dropping to the sandbox's uid) and creates none; that namespace belongs to the
initial user namespace, so nothing inside holds CAP_NET_ADMIN over it.

Hidden paths: each directory that holds a hidden path is replaced by a tmpfs on which every
other entry is re-created (files and subdirectories bound read-only, symlinks re-made with the
same target), then made read-only. The view costs one mount per entry (about 0.9 s for
``/usr/bin``'s ~1,100 entries on 2 cores: bwrap re-reads the whole mount table after every
bind, so the cost grows with the square of the entries), so only sandboxes with hidden paths
pay it.
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

from redline.errors import UserError
from redline.sandbox import syscalls
from redline.sandbox.spec import WRITABLE_TREES

INSIDE_UID = 1000
INSIDE_USER = "agent"
HOME = WRITABLE_TREES[0]

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

#: Longest bwrap option list (bytes) put on the command line; longer ones (hidden-path views:
#: ~54 KiB for /usr/bin) go through ``--args``, well clear of ARG_MAX (a quarter of the stack limit).
INLINE_OPTIONS_LIMIT = 16 * 1024
#: bwrap refuses more than 9,000 arguments in all; this leaves room for the other options.
HIDDEN_VIEW_MAX_ARGS = 8_000


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


def bwrap_options(
    *,
    etc_dir: str,
    hostname: str,
    workspace_bytes: int,
    tmp_bytes: int,
    ro_paths: dict[str, str],
    hidden_paths: Sequence[str],
    devices: dict[str, str],
    driver_paths: dict[str, str],
    private_network: bool,
    info_fd: int,
    seccomp_fd: int | None = None,
) -> list[str]:
    """bwrap's options for a sandbox, up to (not including) the ``--`` before the command.
    ``ro_paths`` and ``driver_paths`` (host -> inside) are bound read-only; ``devices`` (host
    character device -> path under ``/dev``) are bound read-write onto the minimal ``/dev``, which
    holds nothing else of the host's. ``private_network`` false means bwrap creates no network
    namespace (``attached`` mode); ``seccomp_fd`` holds the syscall filter bwrap puts on the init
    (:mod:`redline.sandbox.syscalls`)."""
    views, make_read_only = hidden_path_views(hidden_paths)
    options = [
        "--unshare-user", "--unshare-pid", *(["--unshare-net"] if private_network else []),
        "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--disable-userns",
        "--die-with-parent", "--new-session", "--as-pid-1", "--cap-drop", "ALL",
        "--uid", str(INSIDE_UID), "--gid", str(INSIDE_UID), "--hostname", hostname, "--clearenv",
        "--ro-bind", "/usr", "/usr",
    ]
    for name in USR_LINKS:
        host = "/" + name
        if os.path.islink(host):
            options += ["--symlink", os.readlink(host), host]
        elif os.path.isdir(host):
            options += ["--ro-bind", host, host]
    options += views
    options += ["--ro-bind", etc_dir, "/etc"]
    for host, inside in sorted([*ro_paths.items(), *driver_paths.items()]):
        options += ["--ro-bind", host, inside]
    options += ["--proc", "/proc", "--dev", "/dev"]
    for host, inside in sorted(devices.items(), key=lambda item: item[1]):
        options += ["--dev-bind", host, inside]
    options += [
        "--perms", "1777", "--size", str(64 * 1024 * 1024), "--tmpfs", "/dev/shm",
        "--perms", "0755", "--dir", "/home",
        "--perms", "0755", "--size", str(workspace_bytes), "--tmpfs", HOME,
        "--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", "/tmp",
        "--dir", "/var", "--symlink", "/tmp", "/var/tmp",
        *make_read_only,
        "--remount-ro", "/",
        "--chdir", HOME,
        "--info-fd", str(info_fd),
        *(["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else []),
    ]
    return options


def _system_trees() -> list[str]:
    """Host directories bound read-only into the sandbox at the same path."""
    return ["/usr"] + [host for host in ("/" + name for name in USR_LINKS)
                       if os.path.isdir(host) and not os.path.islink(host)]


def hidden_path_views(hidden_paths: Sequence[str]) -> tuple[list[str], list[str]]:
    """bwrap options that show every directory holding one of ``hidden_paths`` without it, and
    the options that afterwards make those directories read-only (to go after all other mounts,
    so later mount points can still be created in them).

    Symlinked parents are resolved on the host (``/bin/ss`` is ``/usr/bin/ss`` on merged-/usr
    systems, and the sandbox's ``/bin`` link leads to the same view). Paths the host lacks are
    ignored. Raises :class:`UserError` if a path resolves outside the bound system directories
    or a directory has too many entries for bwrap."""
    trees = _system_trees()
    hidden: dict[str, set[str]] = {}
    for path in hidden_paths:
        directory = os.path.realpath(os.path.dirname(path))
        if not any(directory == tree or directory.startswith(tree + "/") for tree in trees):
            raise UserError(f"hidden path {path} resolves to {directory}, outside the sandbox's "
                            f"read-only system directories ({', '.join(trees)})")
        if os.path.lexists(os.path.join(directory, os.path.basename(path))):
            hidden.setdefault(directory, set()).add(os.path.basename(path))
    gone = {os.path.join(directory, name) for directory, names in hidden.items() for name in names}
    views: list[str] = []
    make_read_only: list[str] = []
    for directory in sorted(hidden, key=lambda d: (d.count("/"), d)):
        if any(directory.startswith(path + "/") for path in gone):
            continue  # inside a hidden directory: absent anyway
        views += ["--perms", format(os.stat(directory).st_mode & 0o7777, "04o"), "--tmpfs", directory]
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.name in hidden[directory]:
                    continue
                if entry.is_symlink():
                    views += ["--symlink", os.readlink(entry.path), entry.path]
                else:
                    views += ["--ro-bind", entry.path, entry.path]
        make_read_only += ["--remount-ro", directory]
    if len(views) > HIDDEN_VIEW_MAX_ARGS:
        raise UserError(f"hiding {', '.join(sorted(gone))} needs {len(views)} bwrap arguments, more than "
                        f"its limit allows ({HIDDEN_VIEW_MAX_ARGS}): hide paths in smaller directories")
    return views, make_read_only


def pass_options(options: list[str]) -> tuple[list[str], int | None]:
    """bwrap options as they go on its command line: unchanged when short, otherwise
    ``--args FD`` with the options NUL-separated in a memfd (bwrap reads it, then closes its
    copy). Returns the options and that fd, which the caller passes to bwrap and then closes."""
    data = b"".join(option.encode() + b"\0" for option in options)
    if len(data) <= INLINE_OPTIONS_LIMIT:
        return options, None
    fd = os.memfd_create("redline-bwrap-args")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return ["--args", str(fd)], fd


def start_argv(
    *,
    tools: dict[str, str],
    host_uid: int,
    cgroup_procs: Sequence[str],
    netns_path: str | None,
    options: Sequence[str],
) -> list[str]:
    """The full command that joins the cgroups, enters the network namespace ``netns_path``
    (if given; as root), drops to ``host_uid`` and starts bwrap with ``options`` and catatonit."""
    enter_network = [tools["nsenter"], f"--net={netns_path}", "--"] if netns_path else []
    return [
        "/bin/sh", "-c", JOIN_CGROUPS, "redline-start", *cgroup_procs, "--",
        *enter_network,
        tools["setpriv"], f"--reuid={host_uid}", f"--regid={host_uid}", "--clear-groups", "--",
        tools["bwrap"], *options, "--", tools["catatonit"], "-P",
    ]


def enter_argv(
    *,
    tools: dict[str, str],
    init_host_pid: int,
    cgroup_procs: Sequence[str],
    cwd: str,
    command: Sequence[str],
    syscall_filter: bool = True,
) -> list[str]:
    """The full command that runs ``command`` inside a running sandbox: join its cgroups, put the
    syscall filter on itself (``syscall_filter``; before entering, so nothing runs inside
    unfiltered: :mod:`redline.sandbox.syscalls`), enter all its namespaces as the inside user in
    ``cwd``, set ``no_new_privs``. The caller passes the sandbox environment as the process
    environment (the loader, nsenter and setpriv hand it on unchanged), so it must come from the
    harness, never from the AI."""
    return [
        "/bin/sh", "-c", JOIN_CGROUPS, "redline-exec", *cgroup_procs, "--",
        *(syscalls.loader_prefix() if syscall_filter else []),
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
