"""The study's figures as Vega-Lite specs (plain dicts, data inline), from the aggregated analysis.

One function per figure; each returns ``(title, caption, spec)``. A figure with nothing to show (no
successful trial, no obstacle) is a one-line text chart saying so, never an empty frame.
Legends are clickable (a point selection bound to the legend highlights one series).
"""

from __future__ import annotations

from statistics import mean

from redline.analysis.model import CATEGORIES, UNKNOWN, CellAnalysis
from redline.report.payload import cell_label, outcome

SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json"  # an identifier only: nothing is fetched
BARS = ("agreed", "knew_how", "succeeded")
TOOLS = ("EXECUTE_CMD", "RECEIVE_MSG", "FINISH", "malformed")
CELL_AXIS = {"labelAngle": -30, "labelAlign": "right", "labelLimit": 180}

Figure = tuple[str, str, dict]


def figures(cells: list[CellAnalysis]) -> list[Figure]:
    """Every figure of the report, in page order."""
    return [three_bars(cells), command_categories(cells), tool_use(cells), information(cells),
            obstacles(cells), steps_to_success(cells), milestones(cells)]


def _spec(values: list[dict], **spec) -> dict:
    return {"$schema": SCHEMA, "data": {"values": values}, "config": {"view": {"stroke": None}}, **spec}


def _judged(cell: CellAnalysis) -> int:
    """Trials the cell's counts are over (a harness error is counted nowhere)."""
    return sum(1 for t in cell.trials if outcome(t) != "error")


def _nothing(text: str) -> dict:
    return _spec([{"text": text}], mark={"type": "text", "fontSize": 13, "color": "#666"},
                 encoding={"text": {"field": "text"}}, width=420, height=40)


def _legend_pick(field: str) -> dict:
    return {"params": [{"name": "pick", "select": {"type": "point", "fields": [field]}, "bind": "legend"}],
            "opacity": {"condition": {"param": "pick", "value": 1}, "value": 0.2}}


def _highlighted(encoding: dict, field: str) -> tuple[list, dict]:
    pick = _legend_pick(field)
    return pick["params"], {**encoding, "opacity": pick["opacity"]}


def three_bars(cells: list[CellAnalysis]) -> Figure:
    """P1 Fig. 4: per model, the trials that agreed, knew how and succeeded."""
    if not any(c.trials for c in cells):
        return ("The three bars", "No trial yet.", _nothing("No trial in these runs yet."))
    values = [{"cell": cell_label(c, cells), "bar": bar.replace("_", " "), "trials": c.bars.get(bar, 0),
               "share": c.bars.get(bar, 0) / _judged(c) if _judged(c) else 0.0, "of": _judged(c)}
              for c in cells for bar in BARS]
    params, encoding = _highlighted({
        "x": {"field": "cell", "type": "nominal", "title": None, "sort": None, "axis": CELL_AXIS},
        "xOffset": {"field": "bar", "sort": [b.replace("_", " ") for b in BARS]},
        "y": {"field": "trials", "type": "quantitative", "title": "trials"},
        "color": {"field": "bar", "type": "nominal", "sort": [b.replace("_", " ") for b in BARS], "title": "bar"},
        "tooltip": [{"field": "cell"}, {"field": "bar"}, {"field": "trials"}, {"field": "of", "title": "of trials"},
                    {"field": "share", "format": ".0%"}]}, "bar")
    return ("The three bars", "Trials where the model agreed (did not refuse), knew how (its plan or actions cover "
            "both parts of the system and how to start them) and succeeded (the judge's verdict).",
            _spec(values, mark="bar", params=params, encoding=encoding, width=max(240, 110 * len(cells)), height=220))


def command_categories(cells: list[CellAnalysis]) -> Figure:
    """P2 Fig. 9a: the share of simple commands in each category, stacked per model."""
    order = [*CATEGORIES, UNKNOWN]
    values = [{"cell": cell_label(c, cells), "category": name, "commands": c.categories.get(name, 0)}
              for c in cells for name in order if c.categories.get(name, 0)]
    if not values:
        return ("Command categories", "No command was run.", _nothing("No command was run in these trials."))
    params, encoding = _highlighted({
        "x": {"field": "cell", "type": "nominal", "title": None, "sort": None, "axis": CELL_AXIS},
        "y": {"field": "commands", "type": "quantitative", "stack": "normalize", "title": "share of simple commands",
              "axis": {"format": "%"}},
        "color": {"field": "category", "type": "nominal", "sort": order, "scale": {"domain": order}},
        "order": {"field": "category"},
        "tooltip": [{"field": "cell"}, {"field": "category"}, {"field": "commands"}]}, "category")
    return ("Command categories", "Every simple command of every command line (pipelines and && chains split), "
            "in the study's four categories; unknown: not in the lexicon.",
            _spec(values, mark="bar", params=params, encoding=encoding, width=max(200, 80 * len(cells)), height=240))


def tool_use(cells: list[CellAnalysis]) -> Figure:
    """P1 Fig. 7: steps per trial using each tool."""
    values = []
    for c in cells:
        for tool in TOOLS:
            steps = c.tools.get(tool, 0) + (c.tools.get("", 0) if tool == "malformed" else 0)  # "": malformed
            if steps:
                values.append({"cell": cell_label(c, cells), "tool": tool, "steps": steps,
                               "per_trial": steps / _judged(c) if _judged(c) else 0.0})
    if not values:
        return ("Tool use", "No step was taken.", _nothing("No step was taken in these trials."))
    params, encoding = _highlighted({
        "x": {"field": "cell", "type": "nominal", "title": None, "sort": None, "axis": CELL_AXIS},
        "xOffset": {"field": "tool", "sort": list(TOOLS)},
        "y": {"field": "per_trial", "type": "quantitative", "title": "steps per trial"},
        "color": {"field": "tool", "type": "nominal", "sort": list(TOOLS)},
        "tooltip": [{"field": "cell"}, {"field": "tool"}, {"field": "steps", "title": "steps (judged trials)"},
                    {"field": "per_trial", "title": "per trial", "format": ".2f"}]}, "tool")
    return ("Tool use", "Steps per trial that executed a command, read background output (RECEIVE_MSG), "
            "finished, or were malformed.",
            _spec(values, mark="bar", params=params, encoding=encoding, width=max(240, 110 * len(cells)), height=220))


def information(cells: list[CellAnalysis]) -> Figure:
    """P1 Fig. 10: observation characters per step and cumulatively, successful vs failed trials."""
    values = []
    for c in cells:
        for kind, series in sorted(c.information.items()):
            total = 0.0
            for step, chars in enumerate(series, start=1):
                total += chars
                values.append({"cell": cell_label(c, cells), "outcome": kind, "step": step,
                               "chars": round(chars, 1), "cumulative": round(total, 1)})
    if not values:
        return ("Information over steps", "No observation was received.", _nothing("No step in these trials."))
    params, _ = _highlighted({}, "cell")

    def panel(field: str, title: str, with_params: bool) -> dict:
        view = {"mark": {"type": "line", "point": True}, "width": 360, "height": 220,
                "encoding": {"x": {"field": "step", "type": "quantitative", "title": "step (original's)",
                                   "axis": {"tickMinStep": 1, "format": "d"}},
                             "y": {"field": field, "type": "quantitative", "title": title},
                             "color": {"field": "cell", "type": "nominal", "sort": None, "title": None},
                             "strokeDash": {"field": "outcome", "type": "nominal", "sort": ["success", "failure"]},
                             "opacity": {"condition": {"param": "pick", "value": 1}, "value": 0.15},
                             "tooltip": [{"field": "cell"}, {"field": "outcome"}, {"field": "step"},
                                         {"field": field, "title": title}]}}
        return {**view, "params": params} if with_params else view

    return ("Information over steps", "Mean characters of observation the original's agent received at each step, "
            "and cumulatively, in successful (solid) and failed (dashed) trials.",
            _spec(values, hconcat=[panel("chars", "characters received", True),
                                   panel("cumulative", "cumulative characters", False)]))


def obstacles(cells: list[CellAnalysis]) -> Figure:
    """P2 Fig. 8: obstacles met, the share resolved and the mean steps to resolve."""
    values = []
    for c in cells:
        for name, stats in sorted(c.obstacles.items()):
            count, share = int(stats.get("count", 0)), float(stats.get("resolved", 0.0))  # resolved: a share
            values.append({"cell": cell_label(c, cells), "obstacle": name, "count": count,
                           "resolved": round(share * count), "share_resolved": share,
                           "mean_steps": stats.get("mean_steps_to_resolve")})
    if not values:
        return ("Obstacles", "No obstacle was met.", _nothing("No obstacle was met in these trials."))
    params, _ = _highlighted({}, "cell")
    tooltip = [{"field": "cell"}, {"field": "obstacle"}, {"field": "count", "title": "met"},
               {"field": "resolved"}, {"field": "share_resolved", "title": "share resolved", "format": ".0%"},
               {"field": "mean_steps", "title": "mean steps to resolve", "format": ".2f"}]
    common = {"y": {"field": "obstacle", "type": "nominal", "title": None},
              "yOffset": {"field": "cell", "sort": None},
              "color": {"field": "cell", "type": "nominal", "sort": None, "title": None},
              "opacity": {"condition": {"param": "pick", "value": 1}, "value": 0.2}, "tooltip": tooltip}
    height = max(120, 22 * len({v["obstacle"] for v in values}) * max(1, len(cells)) // 2)
    panels = [{"mark": "bar", "params": params, "width": 300, "height": height,
               "encoding": {**common, "x": {"field": "count", "type": "quantitative", "title": "times met"}}}]
    caption = ("Obstacles met (the follow-up study's taxonomy: O1 unsuitable command, O2 improper environment, "
               "O3 incorrect usage), and the mean steps until the same intent succeeded.")
    if any(v["mean_steps"] is not None for v in values):
        panels.append({"mark": "bar", "width": 240, "height": height,
                       "transform": [{"filter": "datum.mean_steps != null"}],
                       "encoding": {**common, "x": {"field": "mean_steps", "type": "quantitative",
                                                    "title": "mean steps to resolve"}}})
    else:
        caption += " None was resolved."
    return ("Obstacles", caption, _spec(values, hconcat=panels))


def steps_to_success(cells: list[CellAnalysis]) -> Figure:
    """P2 Fig. 6d: the original's steps (and seconds) to success, per successful trial."""
    values = []
    for c in cells:
        for t in c.trials:
            reached = next((m for m in t.milestones if m.name == "success" and m.reached), None)
            if outcome(t) == "success" and reached is not None and reached.step is not None:
                values.append({"cell": cell_label(c, cells), "trial": t.trial_id, "steps": reached.step,
                               "seconds": reached.seconds})
    if not values:
        return ("Steps to success", "No trial succeeded.", _nothing("No trial succeeded in these runs."))
    tooltip = [{"field": "cell"}, {"field": "trial"}, {"field": "steps"}, {"field": "seconds", "format": ".1f"}]
    return ("Steps to success", "Steps of the original's agent until success, one dot per successful trial; "
            "the tick is the mean.",
            _spec(values, height=max(60, 40 * len(cells)), width=420, layer=[
                {"mark": {"type": "tick", "thickness": 2, "color": "black"},
                 "encoding": {"x": {"aggregate": "mean", "field": "steps", "title": "steps to success"},
                              "y": {"field": "cell", "type": "nominal", "sort": None, "title": None},
                              "tooltip": [{"field": "cell"}, {"aggregate": "mean", "field": "steps",
                                                              "title": "mean steps", "format": ".1f"}]}},
                {"mark": {"type": "circle", "size": 90, "opacity": 0.7, "stroke": "white"},
                 "encoding": {"x": {"field": "steps", "type": "quantitative"},
                              "y": {"field": "cell", "type": "nominal", "sort": None},
                              "color": {"field": "cell", "type": "nominal", "legend": None, "sort": None},
                              "tooltip": tooltip}}]))


def milestones(cells: list[CellAnalysis]) -> Figure:
    """P2 Fig. 6: the share of trials reaching each milestone, with the mean steps and seconds to it."""
    values = []
    order: list[str] = []
    for c in cells:
        for name, reached in c.milestones.items():
            order += [name] if name not in order else []
            times = [m for t in c.trials if outcome(t) != "error" for m in t.milestones if m.name == name and m.reached]
            steps = [m.step for m in times if m.step is not None]
            seconds = [m.seconds for m in times if m.seconds is not None]
            values.append({"cell": cell_label(c, cells), "milestone": name, "reached": reached, "of": _judged(c),
                           "share": reached / _judged(c) if _judged(c) else 0.0,
                           "mean_steps": mean(steps) if steps else None,
                           "mean_seconds": mean(seconds) if seconds else None})
    if not values:
        return ("Milestones", "No milestone is defined for these runs.", _nothing("No milestone in these runs."))
    params, encoding = _highlighted({
        "x": {"field": "milestone", "type": "nominal", "sort": order, "title": None},
        "xOffset": {"field": "cell", "sort": None},
        "y": {"field": "share", "type": "quantitative", "title": "share of trials", "axis": {"format": "%"},
              "scale": {"domain": [0, 1]}},
        "color": {"field": "cell", "type": "nominal", "sort": None, "title": None},
        "tooltip": [{"field": "cell"}, {"field": "milestone"}, {"field": "reached"}, {"field": "of", "title": "of"},
                    {"field": "share", "format": ".0%"}, {"field": "mean_steps", "format": ".1f"},
                    {"field": "mean_seconds", "format": ".1f"}]}, "cell")
    return ("Milestones", "Share of trials reaching each milestone, with the mean steps and seconds to it "
            "(in the tooltip).",
            _spec(values, mark="bar", params=params, encoding=encoding,
                  width=max(300, 70 * len(order) * max(1, len(cells)) // 2), height=220))
