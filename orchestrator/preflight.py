"""`orch submit --preflight` / `orch sweep --preflight`: one real training step before anything is queued.

The step runs the job's own trainer on this machine's CPU, on the first batch of ``data.train``
at the plan's ``batch_per_gpu`` (:mod:`jobs.preflight`), in a subprocess with a time limit: torch
is imported only there, so this module stays torch-free. Nothing is written to the run dir or the
work dir. A failure becomes one paragraph naming the key to change (:func:`explain_failure`, a
pure function); a sweep runs one step per distinct model/data/batch combination
(:func:`distinct_steps`), not one per point.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterable

from orchestrator.errors import OrchError

RESULT_PREFIX = "ORCH_PREFLIGHT "
DEFAULT_TIMEOUT_S = 600.0
TIMEOUT_ENV = "ORCH_PREFLIGHT_TIMEOUT_S"
# optimizer keys that change only the lr of the step, never whether it runs
_LR_ONLY_KEYS = ("base_lr", "base_batch_size", "lr_scaling")
_BATCHNORM_BATCH_1 = "Expected more than 1 value per channel when training"
_OUT_OF_MEMORY = ("can't allocate memory", "DefaultCPUAllocator", "out of memory")
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class PreflightResult:
    model: str
    batch_per_gpu: int
    loss: float
    step_s: float
    seconds: float

    def line(self) -> str:
        return (f"preflight: one training step of {self.model} at data.batch_per_gpu={self.batch_per_gpu} on this "
                f"CPU: loss {self.loss:.4f}, step {self.step_s:.2f} s ({self.seconds:.1f} s in all)")


def timeout_s() -> float:
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise OrchError(f"{TIMEOUT_ENV}={text!r} is not a positive number of seconds; unset it for the default "
                        f"({DEFAULT_TIMEOUT_S:g} s) or set e.g. {TIMEOUT_ENV}=1200")
    return value


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


# what the job does in each phase of jobs.preflight, and the keys that decide it
_PHASES = {
    "build": ("building the model, data set and optimizer", "fix the model, data or optimizer keys of the config"),
    "init_checkpoint": ("loading model.init_checkpoint {init}",
                        "point model.init_checkpoint at a torch state_dict (.pth) file, or set it to null"),
    "data": ("reading the first batch of data.train ({ann_file}, images in {img_dir})",
             "check the data set with `orch data check {ann_file} --images {img_dir}`"),
}
_STEP = ("the step", "fix the model, data or optimizer keys of the config")


def explain_failure(error_type: str, error: str, user_error: bool, config: dict[str, Any],
                    batch_per_gpu: int, phase: str = "step") -> str:
    """One paragraph: what broke in the step (and in which phase), and which key to change."""
    model = config["model"]["name"]
    where = f"one training step of {model} at data.batch_per_gpu={batch_per_gpu}"
    train = (config.get("data") or {}).get("train") or {}
    what, fix = (text.format(init=config["model"].get("init_checkpoint"), ann_file=train.get("ann_file"),
                             img_dir=train.get("img_dir")) for text in _PHASES.get(phase, _STEP))
    if _BATCHNORM_BATCH_1 in error:
        total = (config.get("data") or {}).get("total_batch_size")
        alternative = (f" (it comes from data.total_batch_size={total}: raise that to at least 2 per GPU)"
                       if total else "")
        return (f"preflight: {where} fails: {model} has BatchNorm layers that need more than one image per "
                f"process in training (torch: \"{error}\"), so every job of this plan would fail after its queue "
                f"wait. Set data.batch_per_gpu to 2 or more{alternative}. Nothing was submitted.")
    if error_type == "MemoryError" or any(marker in error for marker in _OUT_OF_MEMORY):
        return (f"preflight: {where} ran out of memory on this machine's CPU ({error}); this says little about "
                "the GPUs. Lower data.batch_per_gpu or model.min_size/max_size to preflight here, or submit "
                "without --preflight. Nothing was submitted.")
    if user_error:
        return f"preflight: {where} failed in {what}: {_sentence(error)} Nothing was submitted."
    return (f"preflight: {where} failed in {what} with {error_type}: {_sentence(error)} The job would fail the "
            f"same way after its queue wait: {fix}. Nothing was submitted.")


def _result_line(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            try:
                return json.loads(line[len(RESULT_PREFIX):])
            except json.JSONDecodeError:
                return None
    return None


def run(doc: dict[str, Any], storage_options: Any = None,
        limit_s: float | None = None) -> PreflightResult:
    """One training step for a plan document (``runs.plan_document``); raises OrchError if it fails."""
    from orchestrator import storage

    config, plan = doc["config"], doc["plan"]
    model, batch = config["model"]["name"], int(plan["batch_per_gpu"])
    limit_s = timeout_s() if limit_s is None else limit_s
    start = time.perf_counter()
    with storage.secrets_in_env(storage_options):  # as `orch submit` hands them to the job
        env = dict(os.environ)
    # the jobs package next to this orchestrator, also from a source tree that is not installed
    env["PYTHONPATH"] = _REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["CUDA_VISIBLE_DEVICES"] = ""  # this machine's CPU, as promised, even where it has a GPU
    try:
        done = subprocess.run([sys.executable, "-m", "jobs.preflight"], input=json.dumps(doc), env=env,
                              capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        raise OrchError(f"preflight: one training step of {model} at data.batch_per_gpu={batch} did not finish "
                        f"within {limit_s:g} s on this CPU; nothing was submitted. Allow more with "
                        f"{TIMEOUT_ENV}=SECONDS, or submit without --preflight") from None
    seconds = time.perf_counter() - start
    result = _result_line(done.stdout)
    if result is None:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:]) or "no output"
        raise OrchError(f"preflight: the process running one training step of {model} at data.batch_per_gpu="
                        f"{batch} ended with exit code {done.returncode} and no result (killed for memory?); "
                        f"its last output: {tail}. Nothing was submitted.")
    if not result.get("ok"):
        raise OrchError(explain_failure(str(result.get("error_type")), str(result.get("error")),
                                        bool(result.get("user_error")), config, batch,
                                        str(result.get("phase") or "step")))
    return PreflightResult(model, batch, float(result["loss"]), float(result["step_s"]), seconds)


# ---------------------------------------------------------------- what to check

def step_key(config: dict[str, Any], batch_per_gpu: int) -> str:
    """What decides whether one training step runs: model, data, batch, optimizer (not its lr)."""
    data = {k: v for k, v in (config.get("data") or {}).items() if k not in ("batch_per_gpu", "total_batch_size")}
    optimizer = {k: v for k, v in (config.get("optimizer") or {}).items() if k not in _LR_ONLY_KEYS}
    return json.dumps({"model": config.get("model"), "data": data, "batch_per_gpu": batch_per_gpu,
                       "optimizer": optimizer}, sort_keys=True, default=str)


def distinct_steps(points: Iterable[Any]) -> list[list[Any]]:
    """Points (with ``.config`` and ``.plan``) grouped by :func:`step_key`, in order of first appearance."""
    groups: dict[str, list[Any]] = {}
    for point in points:
        groups.setdefault(step_key(point.config, point.plan.batch_per_gpu), []).append(point)
    return list(groups.values())


def check_run(config: dict[str, Any], run_name: str) -> PreflightResult:
    """`orch submit --preflight`: the plan `submit` would write, checked by one real step."""
    from orchestrator import submission

    prepared = submission.prepare(config, run_name)   # the same input and executor checks as a submit
    from orchestrator import storage

    return run(prepared.doc, storage.active())  # the options this command reached the data with


def check_sweep(prepared: Any, storage_options: Any) -> list[str]:
    """`orch sweep --preflight`: one step per distinct combination; every failing one is reported."""
    from orchestrator import runs, storage

    lines, failures = [], []
    for group in distinct_steps(prepared.points):
        first = group[0]
        names = ", ".join(p.name for p in group)
        doc = runs.plan_document(first.name, storage.join(prepared.sweep_dir, first.name), first.plan,
                                 first.config)
        try:
            lines.append(f"{run(doc, storage_options).line()} [{names}]")
        except OrchError as exc:
            failures.append(f"points {names}: {exc}")
    if failures:
        raise OrchError(" ".join(failures))
    return lines
