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
from redline.sandbox import ProcessInfo, Sandbox

_OPTIONS_WITH_VALUE = {"-W", "-X", "-Q"}


def _python_target(argv: tuple[str, ...]) -> tuple[str, str, set[str]]:
    """("script"|"module"|"inline"|"interactive", name, flags) for a Python command line."""
    flags: set[str] = set()
    index = 1
    while index < len(argv):
        arg = argv[index]
        if arg in _OPTIONS_WITH_VALUE:
            index += 2
            continue
        if arg.startswith("-m"):
            return "module", arg[2:] or (argv[index + 1] if index + 1 < len(argv) else ""), flags
        if arg.startswith("-c"):
            return "inline", "", flags
        if arg == "-":
            return "interactive", "", flags
        if arg.startswith("-") and len(arg) > 1:
            flags.update(f"-{c}" for c in arg[1:])
            index += 1
            continue
        return "script", arg, flags
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
    for program, folder in options:
        depth = max(1, program[len(folder):].strip("/").count("/") + 1)
        script += (f"if [ -e {shlex.quote(program)} ]; then echo {shlex.quote(program)}; "
                   f"D=$(readlink -f {shlex.quote(program)}); echo \"$D\"; "
                   f"for _ in $(seq {depth}); do D=$(dirname \"$D\"); done; echo \"$D\"; "
                   f"stat -L -c '%d %i' \"$D\"; exit 0; fi; ")
    try:
        result = sandbox.exec(["/bin/sh", "-c", script + "exit 1"], timeout=10)
    except Exception as error:  # the sandbox went away: nothing can be located
        return CodeOrigin(None, None, None, f"could not be looked up: {error}")
    lines = result.text("stdout").splitlines()
    if not result.ok or len(lines) < 4:
        return CodeOrigin(None, None, None, f"{how}: not found inside the sandbox")
    program, real, folder = lines[0], lines[1], lines[2]
    device, inode = (int(x) for x in lines[3].split())
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
    found = sandbox.exec(["/usr/bin/find", "/home/agent", "/tmp", "-xdev", "-maxdepth", "5", "-type", "d",
                          "-inum", str(inode), "-print", "-quit"], timeout=30).text("stdout").split("\n")[0]
    return found if found and folder_identity(sandbox, found) == (device, inode) else None


def folder_identity(sandbox: Sandbox, folder: str) -> tuple[int, int] | None:
    """(device, inode) of ``folder`` inside the sandbox, or ``None``."""
    result = sandbox.exec(["/usr/bin/stat", "-L", "-c", "%d %i", folder], timeout=10)
    if not result.ok:
        return None
    device, inode = (int(x) for x in result.text("stdout").split())
    return device, inode
