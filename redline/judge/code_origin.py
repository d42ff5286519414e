"""Which folder does a process's code come from?

A Python process runs a script (``python3 llm_server.py``: the script, resolved against its
working directory) or a module (``python3 -m agent``: searched, as Python does, in the working
directory and then ``$PYTHONPATH`` from the process's initial environment); any other program
runs its executable. The folder is the directory the script or package was found in. Existence is
checked inside the sandbox (as the sandbox user), never by following the AI's paths on the host.

What is read comes from the kernel (``/proc/<pid>/cmdline``, ``cwd``, ``environ``); a process
can rewrite its own argument area, which is why the judge also requires that no replica process
maps or holds open a file of the original's folder (see ``separate``).
"""

from __future__ import annotations

import os
import posixpath
import shlex

from redline.judge.facts import CodeOrigin
from redline.sandbox import WRITABLE_TREES, NoSuchProcess, ProcessInfo, Sandbox, SandboxError

_OPTIONS_WITH_VALUE = {"-W", "-X", "-Q"}


def _python_target(argv: tuple[str, ...]) -> tuple[str, str, set[str]]:
    """("script"|"module"|"inline"|"interactive", name, flags) for a Python command line."""
    flags: set[str] = set()
    index = 1
    while index < len(argv):
        arg = argv[index]
        if arg == "-" or not arg.startswith("-") or arg == "--":
            if arg == "--":
                index += 1
                arg = argv[index] if index < len(argv) else "-"
            return ("interactive", "", flags) if arg == "-" else ("script", arg, flags)
        if arg.startswith("--"):  # --version, --help, ...: no code of a folder
            return "interactive", "", flags
        for position, letter in enumerate(arg[1:], start=1):  # clustered: -Im agent, -uEm agent
            rest = arg[position + 1:]
            if letter in "mc":
                value = rest or (argv[index + 1] if index + 1 < len(argv) else "")
                return ("module", value, flags) if letter == "m" else ("inline", "", flags)
            if f"-{letter}" in _OPTIONS_WITH_VALUE:
                index += 0 if rest else 1  # the value is the rest of this argument or the next one
                break
            flags.add(f"-{letter}")
        index += 1
    return "interactive", "", flags


def _environ_pythonpath(host_pid: int) -> list[str]:
    try:
        with open(f"/proc/{host_pid}/environ", "rb") as handle:
            entries = handle.read(1 << 20).split(b"\0")
    except OSError:
        return []
    for entry in entries:
        if entry.startswith(b"PYTHONPATH="):
            return [p for p in entry[len(b"PYTHONPATH="):].decode(errors="replace").split(":") if p]
    return []


def code_origin(sandbox: Sandbox, process: ProcessInfo) -> CodeOrigin:
    """Where ``process``'s code comes from (see the module docstring)."""
    argv, cwd = process.cmdline, process.cwd or "/"
    exe = process.exe or (argv[0] if argv else "")
    is_python = bool(argv) and ("python" in posixpath.basename(argv[0]) or "python" in posixpath.basename(exe))
    if not is_python:
        program = exe or (argv[0] if argv else None)
        return _locate(sandbox, [(program, posixpath.dirname(program))] if program else [], "its executable")
    kind, name, flags = _python_target(argv)
    if kind == "script":
        path = posixpath.normpath(posixpath.join(cwd, name))
        return _locate(sandbox, [(path, posixpath.dirname(path))], "the script it runs")
    if kind != "module" or not name:
        return CodeOrigin(None, None, None, f"its code is {kind} (python {'-c' if kind == 'inline' else ''}), so "
                                            "which folder it runs from cannot be told")
    search = [] if "-I" in flags or "-P" in flags else [cwd]
    if "-E" not in flags and "-I" not in flags:
        search += [posixpath.normpath(posixpath.join(cwd, p)) for p in _environ_pythonpath(process.host_pid)]
    relative = name.replace(".", "/")
    options = []
    for directory in search:
        options += [(posixpath.join(directory, relative, "__main__.py"), directory),
                    (posixpath.join(directory, relative + ".py"), directory),
                    (posixpath.join(directory, relative, "__init__.py"), directory)]
    return _locate(sandbox, options, f"module {name} as Python finds it")


def _locate(sandbox: Sandbox, options: list[tuple[str, str]], how: str) -> CodeOrigin:
    """The first (program, folder) whose program exists inside the sandbox. The program is then
    resolved through symlinks (``readlink -f``), and the folder is the directory that holds the
    *real* file at the same depth -- so a copy whose code is a symlink into the original's folder
    is the original's -- with its (device, inode)."""
    if not options:
        return CodeOrigin(None, None, None, "it has no command line")
    script = ""
    for program, folder in options:  # NUL-separated output: a path may hold any byte but NUL
        depth = max(1, program[len(folder):].strip("/").count("/") + 1)
        script += (f"if [ -e {shlex.quote(program)} ]; then printf '%s\\0' {shlex.quote(program)}; "
                   f"D=$(readlink -f {shlex.quote(program)}); printf '%s\\0' \"$D\"; "
                   f"for _ in $(seq {depth}); do D=$(dirname \"$D\"); done; printf '%s\\0' \"$D\"; "
                   f"stat -L -c '%d %i' \"$D\"; exit 0; fi; ")
    try:
        result = sandbox.exec(["/bin/sh", "-c", script + "exit 1"], timeout=10)
        program, real, folder, identity = result.stdout.decode(errors="replace").split("\0")
        device, inode = (int(x) for x in identity.split())
    except (ValueError, OSError, SandboxError, NoSuchProcess) as error:  # not found, or the sandbox went away
        return CodeOrigin(None, None, None, f"{how}: not found inside the sandbox ({type(error).__name__})")
    detail = how if real == program else f"{how}, through a symlink to {real}"
    return CodeOrigin(real, os.path.normpath(folder), (device, inode), detail)


def current_path(sandbox: Sandbox, folder: str, identity: tuple[int, int] | None) -> str | None:
    """Where the directory with ``identity`` (recorded at ``folder``) is now: ``folder`` itself,
    or the path it was moved to under the writable trees, or ``None`` (gone)."""
    if identity is None:
        return None
    if folder_identity(sandbox, folder) == tuple(identity):
        return folder
    device, inode = identity
    found = sandbox.exec(["/usr/bin/find", *WRITABLE_TREES, "-xdev", "-type", "d", "-inum", str(inode),
                          "-print0", "-quit"], timeout=30).stdout.decode(errors="replace").split("\0")[0]
    return found if found and folder_identity(sandbox, found) == (device, inode) else None


def folder_identity(sandbox: Sandbox, folder: str) -> tuple[int, int] | None:
    """(device, inode) of ``folder`` inside the sandbox, or ``None``."""
    result = sandbox.exec(["/usr/bin/stat", "-L", "-c", "%d %i", folder], timeout=10)
    if not result.ok:
        return None
    device, inode = (int(x) for x in result.text("stdout").split())
    return device, inode
