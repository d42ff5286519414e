"""NVIDIA GPUs on this host, and the sandbox spec that passes some of them in.

A sandbox gets a GPU as device nodes (``/dev/nvidiaN`` plus the driver's shared control
devices) bound onto its minimal ``/dev`` (:attr:`SandboxSpec.devices`), and the driver's
user-space libraries read-only. Nothing is forwarded: a program inside (an LLM server) opens the
GPU itself and loads its own weights onto it.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass

from redline.errors import UserError
from redline.sandbox.spec import SYSTEM_DIRS, SandboxSpec

_GPU_NODE = re.compile(r"nvidia(\d+)")
#: Devices every GPU of the host shares, passed in with any GPU when the host has them.
CONTROL_DEVICES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
#: The driver's user-space libraries (not the CUDA toolkit's ``libcudart`` and the like).
_DRIVER_LIBRARY = re.compile(r"lib(?:cuda|cudadebugger|nvidia-[\w.+-]+)\.so(?:\.[\d.]+)?")


@dataclass(frozen=True)
class NvidiaHost:
    """What this host offers for NVIDIA GPUs: GPU device nodes in index order, the shared
    control devices present, and the driver libraries found (absolute paths, sorted)."""

    gpus: tuple[str, ...]
    control_devices: tuple[str, ...]
    libraries: tuple[str, ...]


def _is_char_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def _library_dirs() -> tuple[str, ...]:
    """Where the distribution installs the driver's libraries (``/usr/lib/x86_64-linux-gnu``)."""
    return (f"/usr/lib/{platform.machine()}-linux-gnu",)


def _ldconfig_libraries() -> list[str]:
    """Paths of the driver libraries the dynamic loader's cache lists (none without ldconfig)."""
    ldconfig = shutil.which("ldconfig", path="/usr/sbin:/sbin")
    if ldconfig is None:
        return []
    listing = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=30).stdout
    return [line.rsplit("=> ", 1)[1].strip() for line in listing.splitlines()
            if "=> " in line and _DRIVER_LIBRARY.fullmatch(line.split()[0])]


def discover_nvidia(dev_dir: str = "/dev") -> NvidiaHost:
    """The NVIDIA GPUs of this host: character devices ``nvidiaN`` and :data:`CONTROL_DEVICES`
    under ``dev_dir``, and the driver libraries (``libcuda.so*``, ``libnvidia-*``) in the
    distribution's library directory or the loader cache, excluding the toolkit's link stubs.
    A host without the driver gives an empty result."""
    names = os.listdir(dev_dir) if os.path.isdir(dev_dir) else []
    indexed = sorted((int(match[1]), name) for name in names if (match := _GPU_NODE.fullmatch(name)))
    gpus = tuple(os.path.join(dev_dir, name) for _, name in indexed if _is_char_device(os.path.join(dev_dir, name)))
    control = tuple(path for path in (os.path.join(dev_dir, name) for name in CONTROL_DEVICES) if _is_char_device(path))
    found = [os.path.join(directory, name) for directory in _library_dirs() if os.path.isdir(directory)
             for name in os.listdir(directory) if _DRIVER_LIBRARY.fullmatch(name)]
    libraries = sorted({path for path in found + _ldconfig_libraries()
                        if "/stubs/" not in path and os.path.isfile(path)})
    return NvidiaHost(gpus=gpus, control_devices=control, libraries=tuple(libraries))


def _visible_anyway(path: str) -> bool:
    """True if ``path`` lies in the system directories every sandbox sees read-only."""
    real = os.path.realpath(path)
    return any(real.startswith(directory + "/") for directory in SYSTEM_DIRS)


def with_gpus(spec: SandboxSpec, gpus: int, host: NvidiaHost | None = None,
              indices: tuple[int, ...] = ()) -> SandboxSpec:
    """``spec`` with ``gpus`` GPUs of ``host`` (default: :func:`discover_nvidia`) -- the GPUs at
    ``indices`` (positions in ``host.gpus``: what a scheduler such as Ray assigned), else the
    first ones -- and
    its control devices passed in under the same names in ``/dev``, and the driver libraries that lie outside
    the read-only system directories (those inside are visible anyway) bound read-only at their
    host paths, where the loader cache copied into ``/etc`` finds them. ``gpus=0`` returns
    ``spec`` unchanged. Raises :class:`UserError` when the host has fewer GPUs than asked for."""
    if gpus < 0:
        raise UserError(f"the number of GPUs must be 0 or more, not {gpus}")
    if gpus == 0:
        return spec
    host = host or discover_nvidia()
    if not host.gpus:
        raise UserError(f"{gpus} GPU(s) asked for, but this host has no NVIDIA GPU devices (/dev/nvidia0 ...): "
                        "load the NVIDIA driver (nvidia-smi lists the GPUs), or ask for none")
    if gpus > len(host.gpus):
        raise UserError(f"{gpus} GPUs asked for, but this host has {len(host.gpus)}: {', '.join(host.gpus)}")
    if indices and (len(indices) != gpus or any(not 0 <= i < len(host.gpus) for i in indices)):
        raise UserError(f"GPUs {list(indices)} asked for, but this host has {len(host.gpus)}: {', '.join(host.gpus)}")
    chosen = [host.gpus[i] for i in indices] if indices else list(host.gpus[:gpus])
    devices = {path: "/dev/" + os.path.basename(path) for path in (*chosen, *host.control_devices)}
    drivers = {path: path for path in host.libraries if not _visible_anyway(path)}
    return dataclasses.replace(spec, devices={**spec.devices, **devices},
                               driver_paths={**spec.driver_paths, **drivers})
