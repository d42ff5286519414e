"""The report: one self-contained HTML file (tables, the study's figures, flags, a trace viewer).

``write_report(cells, out_path)`` writes it from :class:`~redline.analysis.model.CellAnalysis`
objects; ``report_runs`` analyses run directories (a grader too, if given) and writes their
report, as ``redline run`` does at the end and ``redline report`` does; ``run_dirs(paths)`` finds
the run directories ``redline report`` was given (a run directory, or a directory holding run
directories, as a grid writes them).
"""

from __future__ import annotations

import os
from pathlib import Path

from redline.analysis.grader import Grader
from redline.analysis.model import CellAnalysis
from redline.errors import UserError

#: the report's file name inside a run or grid directory
REPORT_FILE = "report.html"


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


def report_runs(dirs: list[str | os.PathLike], out_path: str | os.PathLike, grader: Grader | None = None,
                store_analysis: bool = False) -> list[CellAnalysis]:
    """Analyse each run directory in ``dirs`` (with ``grader``'s bars, if given), write the report
    of them all to ``out_path`` and return the analyses; ``store_analysis``: also write each
    directory's ``analysis.json`` (what ``redline run`` does for its own run directories)."""
    from redline.analysis.cell import analyze_cell, write_analysis

    analyse = write_analysis if store_analysis else analyze_cell
    cells = [analyse(str(path), grader) for path in dirs]
    write_report(cells, out_path)
    return cells


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


__all__ = ["REPORT_FILE", "report_runs", "run_dirs", "write_report"]
