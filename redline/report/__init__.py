"""The report: one self-contained HTML file (tables, the study's figures, flags, a trace viewer).

``write_report(cells, out_path)`` writes it from :class:`~redline.analysis.model.CellAnalysis`
objects; ``run_dirs(paths)`` finds the run directories ``redline report`` was given (a run
directory, or a directory holding run directories, as a grid writes them).
"""

from __future__ import annotations

import os
from pathlib import Path

from redline.analysis.model import CellAnalysis
from redline.errors import UserError


def write_report(cells: list[CellAnalysis], out_path: str | os.PathLike) -> None:
    """Write the report for ``cells`` to ``out_path`` (replaced atomically)."""
    from redline.report.page import render

    path = Path(out_path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(render(cells), encoding="utf-8", errors="replace")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def run_dirs(paths: list[str | os.PathLike]) -> list[Path]:
    """The run directories in ``paths``: each is a run directory (has run.json) or holds run
    directories one level down (a grid). Raises :class:`UserError` for anything else."""
    found: list[Path] = []
    for given in map(Path, paths):
        if (given / "run.json").is_file():
            found.append(given)
            continue
        inside = sorted(p for p in given.iterdir() if (p / "run.json").is_file()) if given.is_dir() else []
        if not inside:
            raise UserError(f"{given} is not a run directory (no run.json) and holds none: "
                            "give what `redline run --out` wrote")
        found += inside
    return list(dict.fromkeys(found))


__all__ = ["run_dirs", "write_report"]
