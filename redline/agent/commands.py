"""The agent's tools that touch the machine: EXECUTE_CMD and RECEIVE_MSG.

EXECUTE_CMD runs ``bash -c`` in the agent's working directory with stdin closed. It returns when
the command exits or its timeout kills it (with its whole process group). If processes it started
in the background still hold its output open, the command returns anyway and those processes
become a *background channel*: a thread keeps collecting what they print, and RECEIVE_MSG hands
it over. Output is capped (head and tail kept) and binary output is shown escaped with a note;
when a command's output is cut, all of it (up to :data:`SAVED_OUTPUT_CAP` bytes) is saved to the
file the caller names (:mod:`.saving`), and the note in the middle of the output names that file.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

from .saving import save

BACKGROUND_LINGER_S = 0.2
#: bytes of one command's output kept for its saved-output file
SAVED_OUTPUT_CAP = 2 * 1024 * 1024


@dataclass
class CommandResult:
    """What one EXECUTE_CMD produced."""

    command: str
    exit_code: int | None
    output: str
    output_bytes: int
    truncated: bool
    binary: bool
    timed_out: bool
    duration_s: float
    background_id: int | None = None

    def observation(self) -> str:
        """The text shown to the model."""
        lines = [self.output.rstrip("\n")] if self.output.strip() else ["(no output)"]
        if self.timed_out:
            lines.append(f"[the command ran past its timeout after {self.duration_s:.0f} s and was killed]")
        else:
            lines.append(f"[exit code {self.exit_code}]")
        if self.background_id is not None:
            lines.append(f"[background process #{self.background_id} is still running; "
                         "read its new output with RECEIVE_MSG]")
        return "\n".join(lines)


def _is_binary(data: bytes) -> bool:
    if not data:
        return False
    sample = data[:4096]
    if b"\0" in sample:
        return True
    try:
        sample.decode("utf-8")
        return False
    except UnicodeDecodeError as error:
        return error.start < len(sample) - 4  # not just a multi-byte char cut at the end


def _decode(data: bytes, binary: bool) -> str:
    if not binary:
        return data.decode("utf-8", errors="replace")
    text = data.decode("utf-8", errors="backslashreplace")
    return "".join(ch if ch.isprintable() or ch in "\n\t" else f"\\x{ord(ch):02x}" for ch in text)


def render_output(data: bytes, cap: int, saved: str = "", total: int | None = None) -> tuple[str, bool, bool]:
    """(text, truncated, binary): ``data`` decoded for the model, at most ``cap`` characters of
    head and tail with a note in between (naming ``saved``, the file that holds the output, if
    given); binary data escaped. ``total``: the output's full size, if more than ``data``."""
    binary = _is_binary(data)
    size = max(total or 0, len(data))
    half = cap // 2
    if len(data) > 4 * cap:  # decode only what can be shown: outputs may be megabytes
        head, tail = _decode(data[:2 * cap], binary), _decode(data[-2 * cap:], binary)
    else:
        head = tail = _decode(data, binary)
    truncated = len(head) > cap or len(data) > 4 * cap or size > len(data)
    if truncated:
        where = ""
        if saved.startswith("/"):
            kept = "all of it is" if size == len(data) else f"its first {len(data)} bytes are"
            where = f"; {kept} in {saved}"
        elif saved:
            where = f"; it was {saved}"
        note = f"\n[... output truncated: {size} bytes in all, middle omitted{where} ...]\n"
        text = head[:half] + note + tail[-half:]
    else:
        text = head
    if binary:
        text = f"[binary output, {size} bytes, shown escaped]\n" + text
    return text, truncated, binary


@dataclass
class _Channel:
    """Output of a command's background processes, collected after the command returned."""

    number: int
    command: str
    buffer: bytearray = field(default_factory=bytearray)
    closed: bool = False
    dropped: int = 0


class CommandRunner:
    """Runs EXECUTE_CMD commands and keeps their background channels for RECEIVE_MSG."""

    def __init__(self, workdir: str, timeout_s: float, output_cap_chars: int,
                 channel_cap_bytes: int = 1024 * 1024) -> None:
        self.workdir = workdir
        self.timeout_s = timeout_s
        self.output_cap_chars = output_cap_chars
        self.channel_cap_bytes = channel_cap_bytes
        self._channels: list[_Channel] = []
        self._lock = threading.Lock()

    def execute(self, command: str, save_to: str = "") -> CommandResult:
        """Run ``command`` with bash; never raises for anything the command does. If its output
        is cut for the model, all of it is written to ``save_to`` (if given)."""
        started = time.monotonic()
        try:
            process = subprocess.Popen(["bash", "-c", command], cwd=self.workdir, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as error:
            return CommandResult(command, 127, f"could not start bash: {error}", 0, False, False, False, 0.0)
        assert process.stdout is not None
        fd = process.stdout.fileno()
        os.set_blocking(fd, False)
        collected = bytearray()
        total = 0
        deadline = started + self.timeout_s
        timed_out, eof = False, False
        exited_at: float | None = None
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while not eof:
                now = time.monotonic()
                if process.poll() is not None:
                    exited_at = exited_at or now
                    if now - exited_at >= BACKGROUND_LINGER_S:
                        break
                if now >= deadline:
                    timed_out = True
                    break
                for _ in selector.select(timeout=min(0.05, deadline - now)):
                    try:
                        chunk = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        eof = True
                        break
                    total += len(chunk)
                    if len(collected) < SAVED_OUTPUT_CAP:
                        collected += chunk[:SAVED_OUTPUT_CAP - len(collected)]
        if timed_out:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait()
        duration = time.monotonic() - started
        background_id = None
        if eof or timed_out:
            process.stdout.close()
        else:
            background_id = self._adopt(process.stdout, command)
        data = bytes(collected)
        saved = ""
        if save_to and (total > len(data) or len(data) > self.output_cap_chars):
            saved = save(save_to, data)
        text, truncated, binary = render_output(data, self.output_cap_chars, saved, total)
        exit_code = None if timed_out else (128 - process.returncode if process.returncode < 0 else process.returncode)
        return CommandResult(command, exit_code, text, total, truncated, binary, timed_out, duration, background_id)

    def _adopt(self, stream, command: str) -> int:
        with self._lock:
            channel = _Channel(len(self._channels) + 1, command)
            self._channels.append(channel)
        os.set_blocking(stream.fileno(), True)
        threading.Thread(target=self._collect, args=(channel, stream), daemon=True).start()
        return channel.number

    def _collect(self, channel: _Channel, stream) -> None:
        while True:
            try:
                chunk = os.read(stream.fileno(), 65536)
            except OSError:
                chunk = b""
            with self._lock:
                if not chunk:
                    channel.closed = True
                    break
                channel.buffer += chunk
                excess = len(channel.buffer) - self.channel_cap_bytes
                if excess > 0:
                    del channel.buffer[:excess]
                    channel.dropped += excess
        stream.close()

    def receive(self, which: str = "") -> str:
        """RECEIVE_MSG: new output of background processes (all, or channel ``which``)."""
        wanted = which.strip().lstrip("#")
        parts = []
        with self._lock:
            for channel in self._channels:
                if wanted.isdigit() and channel.number != int(wanted):
                    continue
                if not channel.buffer and not channel.dropped and not channel.closed:
                    continue
                data, dropped = bytes(channel.buffer), channel.dropped
                channel.buffer.clear()
                channel.dropped = 0
                text, _, _ = render_output(data, self.output_cap_chars)
                header = f"[background #{channel.number}: {channel.command[:200]}]"
                if dropped:
                    header += f" [{dropped} older bytes dropped]"
                status = "\n[its output is closed: the background processes ended]" if channel.closed else ""
                if data or dropped or channel.closed:
                    parts.append(header + "\n" + (text.rstrip("\n") or "(no new output)") + status)
            self._channels = [c for c in self._channels if not c.closed]
        return "\n\n".join(parts) if parts else "No new output from background processes."

    def background_count(self) -> int:
        """Background channels still open."""
        with self._lock:
            return sum(1 for channel in self._channels if not channel.closed)
