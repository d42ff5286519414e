"""Debian's OpenSSH server, run inside a sandbox as the sandbox's own user.

``install.sh`` unpacks Debian's ``openssh-server`` and ``openssh-sftp-server`` into
``/opt/redline/openssh`` (``$REDLINE_OPENSSH``) without installing them, so the host never gets an
SSH service. A sandbox that plays a remote machine binds that directory read-only, plus a
directory of the harness (:meth:`SshServer.ro_paths`) holding the host key, ``sshd_config`` and the
authorized keys. sshd then runs in the foreground (``-D -e``) as the inside user (uid 1000,
``agent``), which is all a non-root sshd can log in as. Not being root, OpenSSH 9.2 skips the
privilege-separation chroot, so it needs neither ``/run/sshd`` nor an ``sshd`` user; it only
needs to read its host key, which the harness hands to the sandbox's host uid (mode 0600). The
AI inside can read that key too: it runs as the same user as sshd.

Authentication is by public key only (no passwords, no keyboard-interactive, no PAM), against a
file only the harness writes: :meth:`SshServer.authorize` replaces it on the host and the change
shows through the read-only bind at once. Keys the user puts in ``~/.ssh/authorized_keys`` are
ignored. ``scp`` (SFTP since OpenSSH 9) and ``sftp`` use Debian's ``sftp-server``. Sessions get
the sandbox's environment (``spec.env``, e.g. ``PATH`` with the runtime first), like commands the
harness runs.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from redline.errors import HarnessError, UserError
from redline.sandbox import Sandbox, SandboxProcess

DEFAULT_OPENSSH = "/opt/redline/openssh"
#: Where the harness's sshd directory appears inside the sandbox.
INSIDE_CONFIG_DIR = "/run/redline-sshd"
#: The only user a non-root sshd can authenticate: the sandbox's own.
USERNAME = "agent"
SSHD = "usr/sbin/sshd"
SFTP_SERVER = "usr/lib/openssh/sftp-server"

#: Public key types accepted in authorized keys.
KEY_TYPES = (
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
)
MAX_PUBLIC_KEY_CHARS = 8192
_LOG_TAIL_BYTES = 64 * 1024
_HOST_PATH = "/usr/bin:/bin"


def openssh_dir() -> str:
    """Host directory of the unpacked OpenSSH server. Raises :class:`HarnessError` (with the fix)
    when sshd or sftp-server is not there."""
    root = os.environ.get("REDLINE_OPENSSH", DEFAULT_OPENSSH)
    for part in (SSHD, SFTP_SERVER):
        if not os.access(os.path.join(root, part), os.X_OK):
            raise HarnessError(f"{os.path.join(root, part)} is missing: run ./install.sh (it unpacks "
                               "Debian's openssh-server there without installing it)")
    return root


def _ssh_keygen() -> str:
    found = shutil.which("ssh-keygen", path=_HOST_PATH)
    if found is None:
        raise HarnessError("ssh-keygen is missing on the host: install it with 'apt-get install openssh-client'")
    return found


def generate_keypair(comment: str) -> tuple[str, str]:
    """A fresh ed25519 key pair made by the host's ``ssh-keygen``: ``(private key in OpenSSH
    format, public key line "ssh-ed25519 <base64> <comment>")``. Nothing is left on disk."""
    if not re.fullmatch(r"[\x21-\x7e]{1,200}", comment):
        raise UserError(f"invalid key comment {comment!r}: printable characters without spaces")
    with tempfile.TemporaryDirectory(prefix="redline-keygen-") as directory:
        path = os.path.join(directory, "key")
        result = subprocess.run([_ssh_keygen(), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
                                capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
        if result.returncode != 0:
            raise HarnessError(f"ssh-keygen failed: {result.stderr.strip() or result.returncode}")
        with open(path, encoding="ascii") as private, open(path + ".pub", encoding="ascii") as public:
            return private.read(), public.read().strip()


def parse_public_key(text: str) -> str:
    """``text`` as one authorized-keys line, ``"<type> <base64> [comment]"`` with single spaces.
    Raises :class:`ValueError` saying what is wrong: several lines, options (such as
    ``command=``), an unknown type, or a base64 blob that is not a key of the stated type."""
    if len(text) > MAX_PUBLIC_KEY_CHARS:
        raise ValueError(f"public key is longer than {MAX_PUBLIC_KEY_CHARS} characters")
    line = text.strip()
    parts = line.split(None, 2)
    if len(parts) < 2 or any((ord(char) < 0x20 and char != "\t") or ord(char) > 0x7e for char in line):
        raise ValueError("not an OpenSSH public key: one line of printable ASCII, '<type> <base64> [comment]'")
    key_type, blob = parts[0], parts[1]
    if key_type not in KEY_TYPES:
        raise ValueError(f"unsupported key type {key_type[:40]!r} (no options allowed before it): "
                         f"use one of {', '.join(KEY_TYPES)}")
    try:
        decoded = base64.b64decode(blob, validate=True)
    except binascii.Error:
        raise ValueError("the key's base64 part is invalid") from None
    length = int.from_bytes(decoded[:4], "big")
    if decoded[4:4 + length] != key_type.encode():
        raise ValueError(f"the key's base64 part is not a {key_type} key")
    return " ".join(parts)


class SshServer:
    """One sshd, configured on the host and run inside a sandbox.

    Construct it before the sandbox (it makes the host directory, host key and authorized keys
    file), create the sandbox with :meth:`ro_paths` added to the spec's ``ro_paths``, then
    :meth:`start` it. :meth:`authorize` works at any time, before or after the start; keys are
    checked on every login. :meth:`close` (or leaving a ``with`` block) stops sshd and removes
    the host directory. Safe to use from several threads.
    """

    def __init__(self, *, address: str = "127.0.0.1", port: int = 22, directory: str | None = None) -> None:
        """Listen on ``address:port`` inside the sandbox once started (ports below 1024 need
        privileges the sandbox does not have). ``directory``: host directory for the server's
        files (default: a new temporary directory); it is removed by :meth:`close`."""
        try:
            self.address = str(ipaddress.ip_address(address))
        except ValueError:
            raise UserError(f"invalid sshd listen address {address!r}: use an IP address") from None
        if not 1 <= port <= 65535:
            raise UserError(f"invalid sshd port {port}: use 1-65535")
        self.port = port
        self._openssh = openssh_dir()
        self.directory = tempfile.mkdtemp(prefix="redline-sshd-", dir=directory)
        os.chmod(self.directory, 0o711)  # the sandbox's uid must traverse it, not list it
        self._lock = threading.Lock()
        self._keys: list[str] = []
        self._process: SandboxProcess | None = None
        self._log = bytearray()
        try:
            self._write("authorized_keys", "")
            private_key, public_key = generate_keypair("redline-sshd-host")
            self._write("ssh_host_ed25519_key", private_key, mode=0o600)
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        self._host_public_key = " ".join(public_key.split()[:2])

    # -- host side ---------------------------------------------------------------------------

    def ro_paths(self) -> dict[str, str]:
        """Host path -> in-sandbox path, to add to the sandbox spec's ``ro_paths``."""
        return {self._openssh: DEFAULT_OPENSSH, self.directory: INSIDE_CONFIG_DIR}

    @property
    def host_public_key(self) -> str:
        """The server's public host key, ``"ssh-ed25519 <base64>"`` (for ``known_hosts``)."""
        return self._host_public_key

    @property
    def authorized_keys(self) -> tuple[str, ...]:
        """The public keys that may log in, in the order they were authorized."""
        with self._lock:
            return tuple(self._keys)

    def authorize(self, public_key: str) -> None:
        """Let ``public_key`` (one OpenSSH public key line) log in from now on. Idempotent.
        Raises :class:`ValueError` (see :func:`parse_public_key`) if it is not a public key."""
        line = parse_public_key(public_key)
        with self._lock:
            if line not in self._keys:
                self._keys.append(line)
                self._write("authorized_keys", "".join(key + "\n" for key in self._keys))

    def _write(self, name: str, content: str, mode: int = 0o644) -> None:
        """Replace the host file ``name`` atomically (the sandbox sees the old or the new file)."""
        handle, staging = tempfile.mkstemp(prefix=f".{name}-", dir=self.directory)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(content)
            os.chmod(staging, mode)
            os.replace(staging, os.path.join(self.directory, name))
        except BaseException:
            os.unlink(staging)
            raise

    def _config(self, env: dict[str, str]) -> str:
        inside = INSIDE_CONFIG_DIR
        lines = [
            f"ListenAddress {self._listen_address()}",
            f"HostKey {inside}/ssh_host_ed25519_key",
            "PidFile none",
            "UsePAM no",
            "AuthenticationMethods publickey",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "PermitEmptyPasswords no",
            "KbdInteractiveAuthentication no",
            "HostbasedAuthentication no",
            "GSSAPIAuthentication no",
            "KerberosAuthentication no",
            "PermitRootLogin no",
            f"AllowUsers {USERNAME}",
            "StrictModes no",  # bound files appear owned by nobody inside
            f"AuthorizedKeysFile {inside}/authorized_keys",
            "AuthorizedPrincipalsFile none",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            "LogLevel INFO",
            f"Subsystem sftp {DEFAULT_OPENSSH}/{SFTP_SERVER}",
        ]
        settings = []
        for name, value in sorted(env.items()):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or re.search(r'["\\\x00-\x1f]', value):
                raise UserError(f"environment variable {name!r} cannot be passed to ssh sessions")
            settings.append(f'"{name}={value}"')
        if settings:  # sshd keeps only its first SetEnv line
            lines.append("SetEnv " + " ".join(settings))
        return "\n".join(lines) + "\n"

    def _listen_address(self) -> str:
        if ":" in self.address:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"

    # -- in the sandbox ----------------------------------------------------------------------

    def start(self, sandbox: Sandbox, timeout: float = 10.0) -> None:
        """Start sshd in ``sandbox`` (created with :meth:`ro_paths`) and return once it listens.

        Raises :class:`HarnessError` with the tail of sshd's log if it exits or does not listen
        within ``timeout`` seconds (it is then stopped), or if it is already running.
        """
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                raise HarnessError(f"sshd on port {self.port} is already running")
            init = next((p for p in sandbox.processes() if p.pid == 1), None)
            if init is None:
                raise HarnessError(f"sandbox {sandbox.id} has no init process")
            key = os.path.join(self.directory, "ssh_host_ed25519_key")
            os.chown(key, init.host_uid, init.host_uid)  # the sandbox's user reads it, nobody else
            self._write("sshd_config", self._config(dict(sandbox.spec.env)))
            self._log.clear()
            self._process = sandbox.spawn([f"{DEFAULT_OPENSSH}/{SSHD}", "-D", "-e",
                                           "-f", f"{INSIDE_CONFIG_DIR}/sshd_config"])
            process = self._process
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                time.sleep(0.2)  # let the output reader catch up with sshd's last words
                raise HarnessError(f"sshd exited with code {process.poll()} in sandbox {sandbox.id}: "
                                   f"{self._tail()}")
            if any(s.port == self.port and process.pid in s.pids for s in sandbox.listening_sockets()):
                return
            time.sleep(0.02)
        self.stop()
        raise HarnessError(f"sshd did not listen on {self._listen_address()} in sandbox {sandbox.id} "
                           f"within {timeout:.0f} s: {self._tail()}")

    def log(self) -> str:
        """The last 64 KiB of sshd's output (its log: logins, refusals, errors)."""
        with self._lock:
            if self._process is not None:
                self._log += self._process.read_output()
                del self._log[:-_LOG_TAIL_BYTES]
            return self._log.decode("utf-8", errors="replace").replace("\r\n", "\n")

    def _tail(self, lines: int = 20) -> str:
        return " | ".join(self.log().strip().splitlines()[-lines:]) or "no output"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the listening sshd (SIGTERM, then SIGKILL after ``timeout`` seconds). Sessions
        already open, and what they started, keep running, as on a real host. Idempotent."""
        with self._lock:
            process = self._process
        if process is None:
            return
        process.signal(signal.SIGTERM)
        if process.wait(timeout) is None:
            process.signal(signal.SIGKILL)
            process.wait(timeout)

    def close(self) -> None:
        """:meth:`stop`, then remove the host directory. Idempotent."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> SshServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
