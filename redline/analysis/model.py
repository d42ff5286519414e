"""The analysis's typed results: what one trial shows, and what a run (one model x one scenario) shows.

Everything here is computed from a trial's trace and verdict (:mod:`redline.analysis.trial`),
using only the agent events whose sender the kernel verified (``source == "agent"`` with a
``peer.host_pid``): an AI system cannot write itself a better analysis by emitting events. Every
class has ``as_dict()`` for JSON (the report and ``analysis.json`` read that form); nothing else
crosses layers as a dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

#: the study's four command categories (P1; P2 Fig. 9a), plus the count of what the lexicon does not know
CATEGORIES = ("exploring", "changing", "utilities", "executing")
UNKNOWN = "unknown"


@dataclass(frozen=True)
class CommandUse:
    """One simple command inside a step's command line (pipelines and ``&&`` chains are split)."""

    word: str  # the program, as run (``ls``, ``python3``, ``./start.sh``)
    category: str  # one of CATEGORIES or UNKNOWN


@dataclass(frozen=True)
class StepView:
    """One verified agent step, as the analysis and the trace viewer see it."""

    index: int  # 1-based, among the steps of the same instance
    instance: int  # the sender's host pid (kernel-verified)
    original: bool  # sent by the original's agent
    task_id: str
    time: float  # when the step's event was received (harness clock)
    tool: str  # EXECUTE_CMD, RECEIVE_MSG, FINISH, or "" for a malformed reply
    argument: str
    explanation: str
    gaps: str
    findings: str
    plan: tuple[str, ...]
    exit_code: int | None
    output: str  # what the model saw (capped as the scaffold capped it)
    observation_chars: int  # information received this step
    llm_latency_s: float | None
    command_s: float | None
    step_s: float | None
    malformed: str | None  # the reason, if the reply could not be used
    commands: tuple[CommandUse, ...] = ()
    probe: bool = False  # a step of the judge's probe task: shown by the trace viewer, never the AI's analysis
    timed_out: bool = False  # the command ran past its timeout and was killed (the event's ``timed_out``)


@dataclass(frozen=True)
class Flag:
    """An unexpected behaviour (P1 §1), at the step where it happened."""

    kind: str  # kill_own, kill_other, reboot, broad_scan, delete_outside, persistence, reach_out
    instance: int
    step: int
    command: str  # the part of the command that shows it
    detail: str  # one line: why it is flagged


@dataclass(frozen=True)
class ObstacleEpisode:
    """An obstacle the model met (P2 Fig. 8 taxonomy), and how it got past it."""

    category: str  # O1 unsuitable command, O2 improper environment, O3 incorrect usage
    subtype: str  # e.g. "wrong path", "busy port", "missing dependency", "wrong arguments"
    instance: int
    step: int  # where it was met
    resolved_at: int | None  # the step at which the same intent succeeded, if it did
    steps_to_resolve: int | None
    evidence: str  # the output line that shows it


@dataclass(frozen=True)
class Bar:
    """One of the study's three bars for one trial, with its reason."""

    value: bool
    reason: str  # one line, citing the step(s) it rests on
    graded_by: str = "rules"  # "rules", or the grader model's label


@dataclass(frozen=True)
class MilestoneTime:
    """When a milestone (or success) was reached."""

    name: str
    reached: bool
    step: int | None = None  # the original's step count when it was first seen
    seconds: float | None = None  # from the task's start
    evidence: str = ""  # what shows when it was first observable (an event, or the judge's decision)


@dataclass
class TrialAnalysis:
    """Everything the analysis says about one trial."""

    trial_id: str
    model: str
    scenario: str
    success: bool | None  # None: no verdict (a harness error)
    error: str | None
    steps: list[StepView] = field(default_factory=list)
    categories: dict[str, int] = field(default_factory=dict)  # CATEGORIES + UNKNOWN -> simple commands
    tools: dict[str, int] = field(default_factory=dict)  # tool -> steps
    information: list[int] = field(default_factory=list)  # observation characters per step of the original
    flags: list[Flag] = field(default_factory=list)
    obstacles: list[ObstacleEpisode] = field(default_factory=list)
    bars: dict[str, Bar] = field(default_factory=dict)  # agreed, knew_how, succeeded
    false_completion: bool = False  # FINISH claimed success, the judge said no
    milestones: list[MilestoneTime] = field(default_factory=list)
    surplus_replicas: int = 0  # replicas beyond those success needs (Agent Matrix's overuse)
    unverified_events: int = 0  # agent events without a kernel-verified sender, left out
    graded: dict[str, Bar] = field(default_factory=dict)  # a grader model's agreed / knew_how / refused, if asked
    grader_answer: str = ""  # the grader's reply verbatim (capped)
    grader_error: str = ""  # the grader was asked and failed: why (the trial is ungraded)

    def as_dict(self) -> dict:
        """JSON form."""
        return asdict(self)


@dataclass(frozen=True)
class Rate:
    """``successes`` of ``trials`` with a 95% Wilson interval and pass@k for k = 1..trials."""

    successes: int
    trials: int
    low: float
    high: float
    pass_at_k: dict[int, float]


@dataclass
class CellAnalysis:
    """One model on one scenario: the trials and what they add up to."""

    model: str
    scenario: str
    run_dir: str
    trials: list[TrialAnalysis]
    success: Rate
    bars: dict[str, int]  # bar -> trials where it holds
    milestones: dict[str, int]  # milestone -> trials that reached it
    categories: dict[str, int]
    tools: dict[str, int]
    information: dict[str, list[float]]  # "success" / "failure" -> mean observation chars per step index
    obstacles: dict[str, dict]  # "O2/busy port" -> {"count", "resolved", "mean_steps_to_resolve"}
    flags: dict[str, int]  # kind -> trials with it
    false_completions: int
    overuse: dict[str, float]  # "rate" (share of trials with surplus replicas), "surplus" (total)
    graded: dict[str, int] = field(default_factory=dict)  # grader's bar -> trials where it holds (if asked)
    grader: str = ""  # the grader's label, if one was asked
    graded_trials: int = 0  # judged trials the grader answered about (the denominator of ``graded``)

    def as_dict(self) -> dict:
        """JSON form."""
        return asdict(self)
