"""The usage rules of ``redline run``: every way its options, the scenario and the model can be
incompatible, checked in one place before anything is written or any trial starts.

Each rule is a function of the :class:`~redline.runner.run.RunPlan` that returns ``None`` or the
one-line message of a :class:`~redline.errors.UserError`: what is wrong, with which option, and
what to do instead. :data:`RULES` lists them in the order they are checked (each may rely on the
ones before it; the only one that touches the network comes last). To add a rule, write its
function and put it in :data:`RULES`; ``docs/architecture.md`` ("Usage errors") lists every rule
with its reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import httpx

from redline.errors import UserError
from redline.obstacles import OBSTACLES, make_obstacles
from redline.obstacles.low_disk import LowDisk
from redline.runner.run import RunPlan, hold_run_dir, out_dir_problem
from redline.sandbox import default_spec
from redline.sandbox.spec import MIB, format_size
from redline.scenarios import Scenario, list_scenarios
from redline.system.session import CombinedSetup

Rule = Callable[[RunPlan], str | None]

#: the sandbox's /dev/shm, a fixed 64 MiB tmpfs (set in redline/sandbox/bwrap/launch.py)
DEV_SHM_BYTES = 64 * MIB
#: how long the endpoint may take to answer the probe
ENDPOINT_PROBE_TIMEOUT_S = 5.0


def _scenarios_with(feature: Callable[[Scenario], object]) -> str:
    """The bundled scenarios that have ``feature``, for a message."""
    return " or ".join(s.id for s in list_scenarios() if feature(s)) or "none"


def scenario_options(plan: RunPlan) -> str | None:
    """``--depth`` needs a chain; the shutdown clock's options need a shutdown, and
    ``--grace-steps`` one whose notice is a signal (a file notice states the kill time)."""
    options, scenario = plan.overrides, plan.base
    if options.depth is not None and scenario.chain is None:
        return (f"--depth applies to chain scenarios; {scenario.id} is not one: drop --depth, or use "
                f"--scenario {_scenarios_with(lambda s: s.chain)}")
    if options.shutdown_changes() and scenario.shutdown is None:
        return (f"--notice-after-steps, --grace and --grace-steps apply to shutdown scenarios; {scenario.id} has "
                f"no shutdown: drop them, or use --scenario {_scenarios_with(lambda s: s.shutdown)}")
    if options.grace_steps is not None and scenario.shutdown is not None and scenario.shutdown.notice == "file":
        return (f"--grace-steps cannot apply to {scenario.id}: its notice states the shutdown time, so its grace "
                "is in seconds only (a step bound would kill the original before that time): use --grace")
    return None


def population_cap(plan: RunPlan) -> str | None:
    """The cap must let the original and the replicas success needs live at once (a chain: one
    per generation; a second host: one there, whose cap is one less)."""
    scenario = plan.scenario
    replicas = scenario.chain.depth if scenario.chain is not None else 1
    needed = 1 + replicas
    if scenario.population_cap >= needed:
        return None
    source = ("--population-cap" if plan.overrides.population_cap is not None
              else f"scenario {scenario.id}'s population cap")
    what = f"{replicas} generations of replicas" if scenario.chain is not None else "a replica"
    return (f"{source} {scenario.population_cap} stops the instances success needs: the original and {what} "
            f"live at once: use --population-cap {needed} or more")


def obstacle_names(plan: RunPlan) -> str | None:
    """Every obstacle is known, and given once."""
    for index, name in enumerate(plan.obstacles):
        if name not in OBSTACLES:
            return f"unknown obstacle {name!r}: choose from {', '.join(OBSTACLES)}"
        if name in plan.obstacles[:index]:
            return f"--obstacle {name} is given twice: give each obstacle once"
    return None


def low_disk_needs_weights(plan: RunPlan) -> str | None:
    """``low-disk`` sizes the disk below the model's weights: the model must have local weights."""
    if LowDisk.name in plan.obstacles and not plan.model.weights:
        return (f"--obstacle low-disk leaves less room than the model's weights, but --model {plan.model.label} "
                "has no local weights: use a local model (bundled, PATH.gguf, null, script:PATH), or drop "
                "--obstacle low-disk")
    return None


def _copies(size: int, *spaces: int) -> int:
    """Copies of a ``size``-byte file that fit in separate filesystems of these free sizes."""
    return sum(max(0, space) // size for space in spaces)


def weights_fit(plan: RunPlan) -> str | None:
    """Local weights fit where success needs them (counting the weights alone, so it never refuses
    what could fit): the original's in the workspace of its sandbox as the obstacles shape it; on
    that host one more copy per replica success needs there (a chain: one per generation; none
    with a second host) in the workspace's remaining space -- ``low-disk``'s archives count as
    free, deleting them is the way past it --, ``/tmp`` and ``/dev/shm``; on a second host, one."""
    if not plan.model.weights:
        return None
    size = os.path.getsize(plan.model.weights)
    if size == 0:
        return None
    scenario, label = plan.scenario, plan.model.label
    limits = CombinedSetup(list(make_obstacles(plan.obstacles, size))).spec(default_spec()).limits
    if size > limits.workspace_bytes:
        return (f"--model {label}: its weights ({format_size(size)}) do not fit in the sandbox's "
                f"{format_size(limits.workspace_bytes)} workspace: use a smaller model, or an endpoint")
    needed = 0 if scenario.second_host else (scenario.chain.depth if scenario.chain is not None else 1)
    room = _copies(size, limits.workspace_bytes - size, limits.tmp_bytes, DEV_SHM_BYTES)
    if room < needed:
        copies = f"{room} more cop{'y' if room == 1 else 'ies'} of the weights ({format_size(size)})"
        wanted = (f"the chain's depth {needed} needs {needed}, one per generation" if scenario.chain is not None
                  else "a replica needs one")
        if LowDisk.name in plan.obstacles:
            fix = f"use --depth {room}, or drop --obstacle low-disk" if scenario.chain is not None and room \
                else "drop --obstacle low-disk"
            return f"--obstacle low-disk leaves room for {copies} once its archives are deleted, but {wanted}: {fix}"
        return (f"--model {label}: the sandbox has room for {copies} besides the original's (workspace "
                f"{format_size(limits.workspace_bytes)}, /tmp {format_size(limits.tmp_bytes)}, /dev/shm "
                f"{format_size(DEV_SHM_BYTES)}), but {wanted}: use a smaller model, or an endpoint")
    host_b = default_spec().limits
    if scenario.second_host and not _copies(size, host_b.workspace_bytes, host_b.tmp_bytes, DEV_SHM_BYTES):
        return (f"--model {label}: its weights ({format_size(size)}) do not fit on the second host "
                f"(workspace {format_size(host_b.workspace_bytes)}): use a smaller model, or an endpoint")
    return None


def human_at_terminal(plan: RunPlan) -> str | None:
    """A person takes one trial at a time: at this terminal, or through the one controller socket
    (the harness listens on it for one trial at a time; a second trial could not)."""
    model = plan.model
    if model.kind == "human" and plan.concurrency != 1:
        where = "this terminal" if model.controller is None else f"the controller on {model.controller}"
        return (f"--model {model.label} takes every step from {where}, one trial at a time, but "
                f"--concurrency is {plan.concurrency}: use --concurrency 1")
    return None


def out_dir(plan: RunPlan) -> str | None:
    """``--out`` is new, empty, or this same run not being run by anyone else right now."""
    problem = out_dir_problem(plan.out_dir, plan.request, plan.scenario)
    if problem is not None or not os.path.isdir(plan.out_dir):
        return problem
    try:
        os.close(hold_run_dir(plan.out_dir))
    except UserError as error:
        return str(error)
    return None


def _api_base(url: str) -> str:
    """The endpoint's root (as the model gateway computes it): ``/v1`` and trailing slashes dropped."""
    base = url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def endpoint_answers(plan: RunPlan) -> str | None:
    """An endpoint model's server answers ``GET /v1/models`` (any answer but a gateway error:
    401 and 404 count -- the server is there, the key or the route are its business)."""
    model = plan.model
    if model.kind != "endpoint" or not model.endpoint_url:
        return None
    url = _api_base(model.endpoint_url) + "/v1/models"
    try:
        status = httpx.get(url, timeout=ENDPOINT_PROBE_TIMEOUT_S).status_code
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        reason = str(error) or type(error).__name__
        return f"--model {model.label}: nothing answers at {url} ({reason}): start the model server, or fix the URL"
    if status in (502, 503, 504):
        return (f"--model {model.label}: {url} answered HTTP {status}, so no model server is answering behind it: "
                "wait until it is up, or fix the URL")
    return None


#: every rule, in the order checked
RULES: tuple[Rule, ...] = (scenario_options, population_cap, obstacle_names, low_disk_needs_weights, weights_fit,
                           human_at_terminal, out_dir, endpoint_answers)


def check_compatible(plan: RunPlan) -> None:
    """Return if ``plan`` can run; otherwise raise :class:`UserError` with the first broken rule's message."""
    for rule in RULES:
        problem = rule(plan)
        if problem:
            raise UserError(problem)
