"""A running bwrap sandbox: exec, spawn, files, inspection, teardown."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence

from redline.errors import UserError
from redline.sandbox import cgroups, netns, procfs, syscalls
from redline.sandbox.base import (
    ContainmentReport,
    ExecResult,
    ListeningSocket,
    OutputCallback,
    ProcessInfo,
    ResourceUsage,
    Sandbox,
    SandboxProcess,
    TcpConnection,
)
from redline.sandbox.bwrap import launch
from redline.sandbox.bwrap.host import HostFacts
from redline.sandbox.bwrap.state import Slot, claim_slot, run_label, state_root
from redline.sandbox.capture import CappedStream, pump
from redline.sandbox.errors import NoSuchProcess, SandboxError, SandboxGone, SandboxUnavailable
from redline.sandbox.spec import SandboxSpec
from redline.sandbox.watchdog import WATCHDOG

_START_TIMEOUT_S = 10.0
#: Lines nsenter/setpriv print when the harness cannot enter the sandbox.
_ENTRY_FAILURE_PREFIXES = (b"nsenter: ", b"setpriv: ", syscalls.LOADER_FAILURE_PREFIX)
#: variables the host-side entry helpers (sh, the seccomp loader, nsenter, setpriv: all root on the
#: host) would act on besides LD_*: refused in a sandbox's environment
_HOST_READ_VARIABLES = frozenset({"BASH_ENV", "ENV", "GCONV_PATH", "HOSTALIASES", "LOCALDOMAIN", "MALLOC_CHECK_",
                                  "NLSPATH", "RES_OPTIONS", "GLIBC_TUNABLES"})


def _shell_exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class BwrapProcess(SandboxProcess):
    """A background process; a reader thread moves its output into a bounded buffer."""

    def __init__(self, popen: subprocess.Popen, inside_pid: int, host_pid: int, cap: int) -> None:
        self._popen = popen
        self._pid = inside_pid
        try:
            self._pidfd = os.pidfd_open(host_pid)
        except ProcessLookupError:  # it has already run and been reaped: nothing left to signal
            self._pidfd = -1
        self._cap = cap
        self._buffer = bytearray()
        self._dropped = 0
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read_loop, daemon=True, name=f"redline-out-{inside_pid}")
        self._reader.start()

    def _read_loop(self) -> None:
        stream = self._popen.stdout
        assert stream is not None
        while chunk := stream.read1(65536):
            with self._lock:
                self._buffer += chunk
                excess = len(self._buffer) - self._cap
                if excess > 0:
                    del self._buffer[:excess]
                    self._dropped += excess
        stream.close()

    @property
    def pid(self) -> int:
        return self._pid

    def read_output(self) -> bytes:
        with self._lock:
            data = bytes(self._buffer)
            self._buffer.clear()
            dropped, self._dropped = self._dropped, 0
        if dropped:
            data = f"[redline: {dropped} bytes dropped before this point]\n".encode() + data
        return data

    def poll(self) -> int | None:
        returncode = self._popen.poll()
        return None if returncode is None else _shell_exit_code(returncode)

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        return self.poll()

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self._pidfd >= 0 and self._popen.poll() is None:
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Reap the entry helper and release the pidfd (called by destroy)."""
        try:
            self._popen.wait(5)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait()
        self._reader.join(timeout=1)
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


class BwrapSandbox(Sandbox):
    """See :class:`redline.sandbox.base.Sandbox` for the contract of each method."""

    backend = "bwrap"

    def __init__(self, spec: SandboxSpec, host: HostFacts, report: ContainmentReport,
                 spawner: launch.Spawner) -> None:
        self.spec = spec
        self._host = host
        self._report = report
        self._filtered = report.enforces(syscalls.ITEM_NAME)
        self._lock = threading.RLock()
        self._destroyed_reason: str | None = None
        self._processes: list[BwrapProcess] = []
        self._exec_lock = threading.Lock()
        self._execs: set[subprocess.Popen] = set()
        self._slot: Slot = claim_slot()
        self.id = f"{self._slot.number}-{secrets.token_hex(4)}"
        self._cgroup: cgroups.SandboxCgroup | None = None
        self._bwrap: subprocess.Popen | None = None
        self._timer: int | None = None
        try:
            self._start(spawner)
        except BaseException:
            self._teardown()
            raise

    # -- lifecycle ---------------------------------------------------------------------------

    def _start(self, spawner: launch.Spawner) -> None:
        support = self._host.cgroups
        name = f"sbx-{self.id}"
        planned = [os.path.join(parent, name) for parent in dict.fromkeys(support.mounts.values())]
        self._slot.record(id=self.id, owner_pid=os.getpid(), cgroups=planned, created=time.time(),
                          run=run_label())
        if support.version:
            self._cgroup = cgroups.create(name, self.spec.limits, support)
        etc_dir = launch.prepare_etc(state_root(), self.spec.hostname)
        network = self.spec.network
        info_read, info_write = os.pipe()
        args_fd = None
        seccomp_fd = syscalls.bpf_fd() if self._filtered else None
        try:
            options, args_fd = launch.pass_options(launch.bwrap_options(
                etc_dir=etc_dir, hostname=self.spec.hostname,
                workspace_bytes=self.spec.limits.workspace_bytes, tmp_bytes=self.spec.limits.tmp_bytes,
                ro_paths=self.spec.ro_paths, hidden_paths=self.spec.hidden_paths,
                devices=self.spec.devices, driver_paths=self.spec.driver_paths,
                private_network=network.mode == "loopback", info_fd=info_write, seccomp_fd=seccomp_fd,
            ))
            argv = launch.start_argv(tools=self._host.tools, host_uid=self._slot.host_uid,
                                     cgroup_procs=self._procs_files, netns_path=network.netns_path,
                                     options=options)
            # stderr is a pipe read only if the start fails; afterwards it is closed, so nothing
            # inside the sandbox holds a descriptor to a harness file (bwrap closes the args fd).
            self._bwrap = spawner.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE,
                                        pass_fds=tuple(fd for fd in (info_write, args_fd, seccomp_fd)
                                                       if fd is not None),
                                        env={"PATH": launch.HOST_PATH})
        except BaseException:
            os.close(info_read)
            raise
        finally:
            os.close(info_write)
            for fd in (args_fd, seccomp_fd):
                if fd is not None:
                    os.close(fd)
        try:
            info = self._read_info(info_read)
        finally:
            os.close(info_read)
        self._init_pid = int(info["child-pid"])
        self._await_init()
        if network.netns_path is not None:
            self._check_network_namespace(network.netns_path)
        assert self._bwrap.stderr is not None
        self._bwrap.stderr.close()
        self._pidns = procfs.pid_namespace(self._init_pid)
        self._timer = WATCHDOG.schedule(self.spec.limits.wall_time_s, self._expire)

    def _read_info(self, fd: int) -> dict:
        data = b""
        while chunk := os.read(fd, 4096):
            data += chunk
            if data.rstrip().endswith(b"}"):
                break
        if not data:
            raise self._start_failure()
        return json.loads(data)

    def _await_init(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        catatonit = self._host.tools["catatonit"]
        while time.monotonic() < deadline:
            try:
                if os.readlink(f"/proc/{self._init_pid}/exe") == catatonit:
                    return
            except OSError:
                pass
            if self._bwrap is not None and self._bwrap.poll() is not None:
                raise self._start_failure()
            time.sleep(0.0002)
        raise SandboxError(f"sandbox {self.id} did not start within {_START_TIMEOUT_S:.0f} s")

    def _check_network_namespace(self, netns_path: str) -> None:
        """Verify that the sandbox's init really is in the namespace it was attached to."""
        wanted, actual = os.stat(netns_path), os.stat(f"/proc/{self._init_pid}/ns/net")
        if (wanted.st_dev, wanted.st_ino) != (actual.st_dev, actual.st_ino):
            raise SandboxError(f"sandbox {self.id} is not in the network namespace {netns_path}")

    def _start_failure(self) -> SandboxError:
        if self._bwrap is not None:
            try:
                self._bwrap.wait(2)
            except subprocess.TimeoutExpired:
                self._bwrap.kill()
                self._bwrap.wait()
        stderr = self._bwrap.stderr if self._bwrap is not None else None
        message = " ".join(stderr.read().decode(errors="replace").split()) if stderr else ""
        lowered = message.lower()
        if "namespace" in lowered or "uid map" in lowered or "permission denied" in lowered:
            return SandboxUnavailable(f"bubblewrap could not create the sandbox's namespaces: {message}")
        return SandboxError(f"bubblewrap failed to start the sandbox: {message or 'no message'}")

    def _expire(self) -> None:
        self._destroy("wall-clock limit")

    @property
    def _procs_files(self) -> list[str]:
        return self._cgroup.procs_files if self._cgroup else []

    @property
    def containment(self) -> ContainmentReport:
        return self._report

    @property
    def alive(self) -> bool:
        if self._destroyed_reason is not None:
            return False
        if self._bwrap is None or self._bwrap.poll() is not None:
            return False
        return procfs.pid_namespace(self._init_pid) == self._pidns

    @property
    def destroyed_reason(self) -> str | None:
        if self._destroyed_reason is None and self._bwrap is not None and not self.alive:
            return "collapsed"
        return self._destroyed_reason

    def _check_alive(self) -> None:
        if not self.alive:
            raise SandboxGone(f"sandbox {self.id} is gone ({self.destroyed_reason})")

    def destroy(self) -> None:
        self._destroy("destroyed")

    def _destroy(self, reason: str) -> None:
        with self._lock:
            if self._destroyed_reason is not None:
                return
            self._destroyed_reason = reason
            self._teardown()

    def _teardown(self) -> None:
        if self._timer is not None:
            WATCHDOG.cancel(self._timer)
        if self._bwrap is not None and self._bwrap.poll() is None and hasattr(self, "_init_pid"):
            # Killing pid 1 makes the kernel kill the whole pid namespace; waiting for bwrap lets
            # each entry helper reap its own child, so no zombie is left to the host's init.
            try:
                os.kill(self._init_pid, signal.SIGKILL)
                self._bwrap.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if self._cgroup is not None and not self._cgroup.kill_all():
            raise SandboxError(f"sandbox {self.id}: processes survived teardown: {sorted(self._cgroup.pids())}")
        with self._exec_lock:
            leftovers = list(self._execs)
        for popen in leftovers:
            _kill_group(popen)
        if self._bwrap is not None:
            self._bwrap.kill()
            self._bwrap.wait()
        for process in self._processes:
            process.close()
        if self._cgroup is not None:
            self._cgroup.remove()
        self._slot.release()

    # -- running commands --------------------------------------------------------------------

    def _environment(self, extra: dict[str, str] | None) -> dict[str, str]:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
            "HOME": launch.HOME, "USER": launch.INSIDE_USER, "LOGNAME": launch.INSIDE_USER,
            "SHELL": "/bin/bash", "LANG": "C.UTF-8", "TERM": "dumb", "TMPDIR": "/tmp",
            "HOSTNAME": self.spec.hostname,
        }
        env.update(self.spec.env)
        env.update(extra or {})
        return env

    def _entry_fds(self) -> tuple[int, ...]:
        """The descriptors an entry inherits: the entry filter's program, when there is a filter."""
        return (syscalls.entry_fd(),) if self._filtered else ()

    def _entry(self, command: Sequence[str], cwd: str | None,
               env: dict[str, str] | None) -> tuple[list[str], dict[str, str]]:
        if not command:
            raise UserError("empty command")
        for key, value in {**self.spec.env, **(env or {})}.items():
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise UserError(f"invalid environment variable {key!r}")
            if key.startswith("LD_") or key in _HOST_READ_VARIABLES:
                raise UserError(f"environment variable {key}: the entry helpers read it on the host, as root, "
                                "before they enter the sandbox; set it inside (e.g. in the command) instead")
        argv = launch.enter_argv(tools=self._host.tools, init_host_pid=self._init_pid,
                                 cgroup_procs=self._procs_files, cwd=cwd or launch.HOME, command=list(command),
                                 syscall_filter=self._filtered)
        return argv, self._environment(env)

    def exec(
        self,
        command: Sequence[str],
        *,
        timeout: float = 60.0,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdin: bytes | None = None,
        output_cap: int | None = None,
        on_output: OutputCallback | None = None,
    ) -> ExecResult:
        self._check_alive()
        argv, environment = self._entry(command, cwd, env)
        cap = output_cap or self.spec.output_cap_bytes
        started = time.monotonic()
        popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 start_new_session=True, env=environment, pass_fds=self._entry_fds())
        with self._exec_lock:
            self._execs.add(popen)
        try:
            return self._collect(popen, stdin, started, timeout, cap, on_output)
        finally:
            with self._exec_lock:
                self._execs.discard(popen)

    def _collect(self, popen: subprocess.Popen, stdin: bytes | None, started: float, timeout: float,
                 cap: int, on_output: OutputCallback | None) -> ExecResult:
        assert popen.stdin and popen.stdout and popen.stderr
        feeder = None
        if stdin is not None:
            feeder = threading.Thread(target=_feed, args=(popen.stdin, stdin), daemon=True)
            feeder.start()
        out, err = CappedStream(cap), CappedStream(cap)
        streams = {popen.stdout.fileno(): ("stdout", out), popen.stderr.fileno(): ("stderr", err)}
        deadline = started + timeout
        timed_out = pump(streams, deadline=deadline, exited=lambda: popen.poll() is not None, on_output=on_output)
        if timed_out:
            _kill_group(popen)
            pump(streams, deadline=time.monotonic() + 0.2, exited=lambda: True, on_output=on_output)
        popen.wait()
        duration = time.monotonic() - started
        for stream in (popen.stdout, popen.stderr):
            stream.close()
        if feeder is None:
            popen.stdin.close()
        else:
            feeder.join(timeout=1)
        returncode = popen.returncode
        if not timed_out and returncode == 1 and err.value().startswith(_ENTRY_FAILURE_PREFIXES):
            self._check_alive()
            raise SandboxError(f"could not enter sandbox {self.id}: {err.value().decode(errors='replace').strip()}")
        return ExecResult(
            exit_code=None if timed_out else _shell_exit_code(returncode),
            stdout=out.value(), stderr=err.value(), duration_s=duration, timed_out=timed_out,
            stdout_truncated=out.truncated, stderr_truncated=err.truncated,
            stdout_bytes=out.total, stderr_bytes=err.total,
        )

    def spawn(
        self,
        command: Sequence[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        output_cap: int | None = None,
    ) -> SandboxProcess:
        self._check_alive()
        argv, environment = self._entry(command, cwd, env)
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, start_new_session=True, env=environment,
                                 pass_fds=self._entry_fds())
        host_pid = _await_child(popen)
        if host_pid is None:
            if popen.poll() is None:  # nsenter still has not forked its child: give up on it
                _kill_group(popen)
            output = popen.stdout.read().decode(errors="replace").strip() if popen.stdout else ""
            popen.wait()
            self._check_alive()
            raise SandboxError(f"could not start a process in sandbox {self.id}: {output or 'no output'}")
        inside = procfs.inside_pids([host_pid]).get(host_pid, 0)
        process = BwrapProcess(popen, inside, host_pid, output_cap or self.spec.output_cap_bytes)
        with self._lock:
            self._processes.append(process)
        return process

    # -- files -------------------------------------------------------------------------------

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        script = 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1" && chmod "$2" "$1"'
        result = self.exec(["/bin/sh", "-c", script, "write_file", path, format(mode, "o")],
                           stdin=data, timeout=120)
        if not result.ok:
            raise SandboxError(f"could not write {path} in sandbox {self.id}: {result.text('stderr').strip()}")

    def read_file(self, path: str, max_bytes: int = 64 * 1024 * 1024) -> bytes:
        result = self.exec(["/bin/cat", "--", path], output_cap=max_bytes + 1, timeout=120)
        if result.exit_code != 0:
            message = result.text("stderr").strip()
            if "No such file" in message:
                raise FileNotFoundError(path)
            raise SandboxError(f"could not read {path} in sandbox {self.id}: {message}")
        if result.stdout_bytes > max_bytes:
            raise SandboxError(f"{path} in sandbox {self.id} is larger than {max_bytes} bytes")
        return result.stdout

    # -- inspection --------------------------------------------------------------------------

    def _host_pids(self) -> list[int]:
        if self._cgroup is not None:
            candidates = self._cgroup.pids()
        else:
            candidates = {int(name) for name in os.listdir("/proc") if name.isdigit()}
        return sorted(pid for pid in candidates if procfs.pid_namespace(pid) == self._pidns)

    def host_pids(self) -> list[int]:
        self._check_alive()
        return self._host_pids()

    def processes(self) -> list[ProcessInfo]:
        self._check_alive()
        host_pids = self._host_pids()
        inside = procfs.inside_pids(host_pids)
        infos = [info for pid in host_pids if (info := procfs.read_process(pid, inside)) is not None]
        return sorted(infos, key=lambda info: info.pid)

    def listening_sockets(self) -> list[ListeningSocket]:
        return procfs.listening_sockets(self._init_pid, self.processes())

    def signal(self, pid: int, sig: int = signal.SIGTERM) -> None:
        self._check_alive()
        try:
            os.kill(self._host_pid_of(pid), sig)
        except ProcessLookupError:
            raise NoSuchProcess(f"process {pid} of sandbox {self.id} has ended") from None

    def _host_pid_of(self, pid: int) -> int:
        for host_pid, inside_pid in procfs.inside_pids(self._host_pids()).items():
            if inside_pid == pid:
                return host_pid
        raise NoSuchProcess(f"no process {pid} in sandbox {self.id}")

    def tcp_connections(self, pid: int) -> list[TcpConnection]:
        self._check_alive()
        inodes = set(procfs.socket_inodes(self._host_pid_of(pid)))
        return [connection for inode, connection in procfs.established_tcp(self._init_pid) if inode in inodes]

    def local_addresses(self) -> frozenset[str]:
        self._check_alive()
        return procfs.local_addresses(self._init_pid)

    def open_mapped_file(self, pid: int, path: str):
        self._check_alive()
        handle = procfs.mapped_file_handles(self._host_pid_of(pid)).get(path)
        if handle is None:
            raise FileNotFoundError(f"process {pid} of sandbox {self.id} has no mapping of {path}")
        return open(handle, "rb")  # noqa: SIM115 -- the caller closes it

    def connect_tcp(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
        self._check_alive()
        return netns.connect(f"/proc/{self._init_pid}/ns/net", host, port, timeout)

    def usage(self) -> ResourceUsage:
        if self._cgroup is None:
            return ResourceUsage(None, None, None, None)
        return self._cgroup.usage()


def _feed(stream, data: bytes) -> None:
    try:
        stream.write(data)
        stream.close()
    except (BrokenPipeError, ValueError, OSError):
        pass


def _kill_group(popen: subprocess.Popen) -> None:
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _await_child(popen: subprocess.Popen, timeout: float = 30.0) -> int | None:
    """Host pid of the in-sandbox child that nsenter forks, or None if nsenter exited first or
    had not forked it within ``timeout`` (a loaded machine can take seconds)."""
    deadline = time.monotonic() + timeout
    children_file = f"/proc/{popen.pid}/task/{popen.pid}/children"
    while time.monotonic() < deadline:
        try:
            with open(children_file, encoding="ascii") as handle:
                children = handle.read().split()
        except OSError:
            children = []
        try:
            entered = os.path.basename(os.readlink(f"/proc/{popen.pid}/exe")) == "nsenter"
        except OSError:
            entered = False
        if children and entered:
            return int(children[0])
        if popen.poll() is not None:
            return None
        time.sleep(0.0005)
    return None
