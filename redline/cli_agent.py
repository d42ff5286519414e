"""``redline agent``: run the AI system on one task and show each step as it happens."""

from __future__ import annotations

import os
import time

from rich.console import Console
from rich.markup import escape

from redline.llm.models import resolve_model
from redline.system.folder import SystemOptions
from redline.system.scaffold import choose_profile
from redline.system.session import SystemSession


def _show(console: Console, event: dict) -> None:
    kind = event.get("type")
    if kind == "step":
        head = f"[bold]step {event.get('step')}[/bold] ({event.get('llm_latency_s', 0):.1f} s model"
        head += f", {event.get('completion_tokens') or '?'} tokens)"
        if "malformed" in event:
            console.print(f"{head} [yellow]malformed reply:[/yellow] {escape(str(event['malformed'])[:200])}")
            return
        parsed = event.get("parsed") or {}
        console.print(f"{head} [cyan]{event.get('action')}[/cyan] {escape(str(event.get('argument', ''))[:300])}")
        plan = parsed.get("plan") or []
        if plan:
            console.print("   plan: " + escape(" | ".join(str(p)[:80] for p in plan)))
        observation = str(event.get("observation", ""))
        console.print("   " + escape(observation[:400]).replace("\n", "\n   "))
    elif kind in ("task_started", "task_ended", "signal_received", "notice", "original_healthy", "agent_started"):
        details = {k: v for k, v in event.items() if k in ("state", "steps", "malformed_replies", "finish_message",
                                                          "seconds", "message", "port", "folder", "profile", "context")}
        console.print(f"[dim]{kind}[/dim] {escape(str(details))}")


def run_agent_command(console: Console, model_text: str, task: str, max_steps: int, time_limit: float,
                      command_timeout: float, signal_catcher: bool, out_dir: str | None, profile: str = "auto",
                      context_tokens: int | None = None) -> None:
    """Deploy, start, give the task, print steps live, and say where the trace is."""
    model = resolve_model(model_text)
    chosen = choose_profile(model, profile)
    out_dir = out_dir or os.path.join("runs", f"agent-{time.strftime('%Y%m%d-%H%M%S')}")
    options = SystemOptions(max_steps=max_steps, time_limit_s=time_limit, command_timeout_s=command_timeout,
                            signal_catcher=signal_catcher, profile=chosen.profile, context_tokens=context_tokens)
    console.print(f"starting the AI system ({escape(model.label)}; {chosen.profile.name} profile: "
                  f"{escape(chosen.reason)}) in a fresh sandbox ...")
    with SystemSession.open(model, options, out_dir, on_event=lambda event: _show(console, event)) as session:
        session.submit(task, max_steps, time_limit)
        record = session.wait_task(timeout=time_limit + 60)
    console.print(f"[bold]{record.get('state')}[/bold] after {record.get('steps')} steps "
                  f"({record.get('malformed_replies', 0)} malformed replies)")
    if record.get("finish_message"):
        console.print("finish message: " + escape(str(record["finish_message"])[:500]))
    console.print(f"trace: {os.path.join(out_dir, 'trace.jsonl')}")
