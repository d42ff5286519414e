"""The report as one self-contained HTML file: nothing is loaded from outside.

Order in the file, for a fast first paint: the summary table rendered here (readable before any
script runs), the index JSON, the vendored chart libraries (inlined once), the viewer's script, then
one ``<script type="application/x-redline-trial">`` per trial holding its compressed steps (never
executed; the viewer reads and decompresses one when it is opened or searched).
"""

from __future__ import annotations

import datetime
import html
import json
import re
from importlib import resources

from redline import __version__
from redline.analysis.model import CellAnalysis
from redline.report.charts import figures
from redline.report.payload import PageData, build

VENDOR = ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js")  # versions: vendor/README.md


def render(cells: list[CellAnalysis]) -> str:
    """The whole HTML document for ``cells``."""
    data = build(cells)
    charts = [{"title": title, "caption": caption, "spec": spec} for title, caption, spec in figures(cells)]
    package = resources.files("redline.report")
    vendor = "\n".join(f"<script>{_script_safe((package / 'vendor' / name).read_text(encoding='utf-8'))}</script>"
                       for name in VENDOR)
    template = (package / "static" / "page.html").read_text(encoding="utf-8")
    trials = sum(len(c.trials) for c in cells)
    generated = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = {
        "TITLE": html.escape(f"redline report: {len(cells)} run(s), {trials} trial(s)"),
        "HEADING": html.escape(f"{len(cells)} run(s) · {trials} trial(s) · redline {__version__} · {generated}"),
        "STYLE": (package / "static" / "style.css").read_text(encoding="utf-8"),
        "SUMMARY": summary_table(data),
        "INDEX": _json_in_script({**data.index, "charts": charts}),
        "VENDOR": vendor,
        "APP": _script_safe((package / "static" / "app.js").read_text(encoding="utf-8")),
        "BLOBS": "\n".join(f'<script type="application/x-redline-trial" id="trial-{i}">{blob}</script>'
                           for i, blob in enumerate(data.blobs)),
    }
    return re.sub(r"\{\{([A-Z]+)\}\}", lambda match: parts[match.group(1)], template)  # one pass: data is never re-read


def summary_table(data: PageData) -> str:
    """The models x scenarios table (rows: models, columns: scenarios), as HTML."""
    cells = data.index["cells"]
    models = list(dict.fromkeys(c["model"] for c in cells))
    scenarios = list(dict.fromkeys(c["scenario"] for c in cells))
    by_key: dict[tuple[str, str], list[tuple[int, dict]]] = {}
    for number, cell in enumerate(cells):
        by_key.setdefault((cell["model"], cell["scenario"]), []).append((number, cell))
    head = "".join(f"<th>{html.escape(s)}</th>" for s in scenarios)
    rows = []
    for model in models:
        row = [f'<th class="model">{html.escape(model)}</th>']
        for scenario in scenarios:
            runs = by_key.get((model, scenario), [])
            blocks = "".join(_summary_run(number, cell, len(runs) > 1) for number, cell in runs)
            row.append(f'<td class="cell">{blocks}</td>' if runs else '<td class="empty">not run</td>')
        rows.append("<tr>" + "".join(row) + "</tr>")
    return (f'<table id="summary-table"><thead><tr><th>model \\ scenario</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _summary_run(number: int, cell: dict, named: bool) -> str:
    """One run's block in the table (``named``: several runs share the model and scenario)."""
    rate = cell["success"]
    share = rate["successes"] / rate["trials"] if rate["trials"] else 0.0
    ks = sorted({k for k in (1, 3, 5, 10, rate["trials"]) if 1 <= k <= rate["trials"]})
    pass_at = " · ".join(f"pass@{k} {rate['pass_at_k'].get(str(k), 0.0):.2f}" for k in ks) or "no judged trial"
    n = cell["judged"]  # the bars and milestones count judged trials only
    bars = " · ".join(f"{name.replace('_', ' ')} {cell['bars'].get(name, 0)}/{n}"
                      for name in ("agreed", "knew_how", "succeeded"))
    milestones = " · ".join(f"{html.escape(name)} {count}/{n}" for name, count in cell["milestones"].items())
    extra = []
    if cell["grader"]:
        graded = cell["graded_trials"]
        answers = " · ".join(f"{name.replace('_', ' ')} {cell['graded'].get(name, 0)}/{graded}"
                             for name in ("agreed", "knew_how", "refused"))
        extra.append(f"grader {html.escape(cell['grader'])}: {answers}"
                     + (f" ({n - graded} judged trial(s) not graded)" if graded < n else ""))
    if cell["errors"]:
        extra.append(f"{cell['errors']} harness error(s), not counted")
    if cell["false_completions"]:
        extra.append(f"{cell['false_completions']} false completion(s)")
    if cell["flags"]:
        extra.append("flags: " + ", ".join(f"{html.escape(k)} {v}" for k, v in sorted(cell["flags"].items())))
    if cell["overuse"].get("surplus"):
        extra.append(f"overuse {cell['overuse'].get('rate', 0):.0%} of trials, "
                     f"{int(cell['overuse']['surplus'])} surplus replica(s)")
    name = f'<div class="run">{html.escape(cell["label"])}</div>' if named else ""
    return (f'<div class="run-block" data-cell="{number}">{name}<div class="rate">{rate["successes"]}/{rate["trials"]} '
            f'<b>{share:.0%}</b> <span class="ci">95% CI {rate["low"]:.0%}–{rate["high"]:.0%}</span></div>'
            f'<div class="pass">{pass_at}</div><div class="bars">{bars}</div>'
            f'<div class="ms">{milestones or "no milestones"}</div>'
            + "".join(f'<div class="extra">{e}</div>' for e in extra)
            + f'<a href="#trials" class="show-cell" data-cell="{number}">show its {cell["trials"]} trial(s)</a></div>')


def _json_in_script(value: object) -> str:
    """JSON safe inside a <script> element (no ``</script>`` or ``<!--`` can appear)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str).replace("<", "\\u003c")


def _script_safe(code: str) -> str:
    if "</script" in code.lower():
        raise ValueError("inlined script contains </script")
    return code
