"""Sweeps: grid or random points → one normal run per point → ONE SLURM job array (several past MaxArraySize).

    <work_dir>/<sweep>/sweep.json    parameters, points, array job ids, submissions
    <work_dir>/<sweep>/p000/ ...     normal run dirs (runs.create_run_dir): status, logs, resume work on each

Array task ``i`` runs jobs.launch on ``p<i>``; its job id is ``<array>_<i>``, so a preempted task
requeues itself alone and resumes from its own checkpoints. Every point is planned on its own (a
different batch means a different lr and iteration count), but all points share one sbatch header,
so they must need the same nodes, GPUs and limits. Point generation is pure (tested by tables);
the rest reads and writes run dirs through the storage seam and submits through the executor.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import math
import os
import random
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import yaml

from orchestrator import config as config_mod
from orchestrator import input_checks, planner, records, runs, slurm_limits, storage, submission
from orchestrator.errors import OrchError
from orchestrator.executors import Executor, JobRequest, Submitted, get_executor
from orchestrator.executors.base import ACTIVE_STATES

SWEEP_FILE = "sweep.json"
MAX_POINTS = 10_000
IO_THREADS = 16          # run dirs are written in parallel (an object store answers each PUT slowly)
RANDOM_SIGNIFICANT_DIGITS = 6
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
_CALL_RE = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.DOTALL)
# resources every point must agree on: they go into the array's one sbatch header
SHARED_RESOURCES = ("nodes", "gpus_per_node", "executor", "time", "partition", "account", "qos", "constraint",
                    "exclude", "cpus_per_gpu", "mem_per_gpu", "signal_delay_s", "max_requeues")


class SweepError(OrchError):
    """A sweep that cannot be generated or submitted; the message names the -p spec or the point."""


# ---------------------------------------------------------------- parameter specs (pure)

@dataclass(frozen=True)
class ParamSpec:
    key: str                 # dotted config key
    kind: str                # "values" (a,b,c) or one of DISTRIBUTIONS
    args: tuple[Any, ...]    # the values, or (low, high)
    text: str                # as typed, for messages and sweep.json

    @property
    def is_random(self) -> bool:
        return self.kind in ("uniform", "loguniform", "randint")

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "args": list(self.args), "spec": self.text}


def _yaml_values(raw: str, text: str) -> list[Any]:
    """``0.01,0.02`` / ``[5,8],[6]`` → a list, each item read as YAML like a key=value override."""
    try:
        values = yaml.safe_load(f"[{raw}]")
    except yaml.YAMLError as exc:
        problem = " ".join(str(getattr(exc, "problem", "") or exc).split())
        raise SweepError(f"-p {text!r}: the values are not valid YAML ({problem})") from None
    # YAML 1.1 reads 1e-3 as a string; people mean a number (as config overrides do)
    return [float(v) if isinstance(v, str) and config_mod._FLOAT_RE.match(v.strip()) else v for v in values]


def _number(value: Any, what: str, text: str, integer: bool = False) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool):
        raise SweepError(f"-p {text!r}: {what} must be {'an integer' if integer else 'a number'}, got {value!r}")
    return value


def parse_param(text: str) -> ParamSpec:
    """One ``-p KEY=SPEC``: ``a,b,c``, ``choice(a,b)``, ``uniform(lo,hi)``, ``loguniform(lo,hi)``,
    ``randint(lo,hi)`` (both ends included)."""
    if "=" not in text:
        raise SweepError(f"-p {text!r} must look like key=v1,v2,... or key=loguniform(low,high) "
                         "(e.g. -p optimizer.base_lr=0.01,0.02)")
    key, raw = (part.strip() for part in text.split("=", 1))
    if not key or any(not part for part in key.split(".")):
        raise SweepError(f"-p {text!r} has an empty key")
    if not raw:
        raise SweepError(f"-p {text!r} has no values: give key=v1,v2,... or a distribution")
    call = _CALL_RE.match(raw)
    if call is None:
        values = _yaml_values(raw, text)
        return ParamSpec(key, "values", tuple(values), text)
    kind = call.group(1)
    if kind not in DISTRIBUTIONS:
        raise SweepError(f"-p {text!r}: unknown distribution {kind!r}; valid: choice(a,b,...), uniform(low,high), "
                         "loguniform(low,high), randint(low,high)")
    args = _yaml_values(call.group(2), text) if call.group(2).strip() else []
    if kind == "choice":
        if not args:
            raise SweepError(f"-p {text!r}: choice() needs at least one value")
        return ParamSpec(key, kind, tuple(args), text)
    if len(args) != 2:
        raise SweepError(f"-p {text!r}: {kind} takes 2 arguments (low, high), got {len(args)}")
    low = _number(args[0], "low", text, integer=kind == "randint")
    high = _number(args[1], "high", text, integer=kind == "randint")
    if kind == "loguniform" and low <= 0:
        raise SweepError(f"-p {text!r}: loguniform bounds must be > 0 (got low={low})")
    if (kind == "randint" and low > high) or (kind != "randint" and low >= high):
        raise SweepError(f"-p {text!r}: low ({low}) must be {'<=' if kind == 'randint' else '<'} high ({high})")
    return ParamSpec(key, kind, (low, high), text)


def _check_specs(specs: list[ParamSpec]) -> None:
    if not specs:
        raise SweepError("a sweep needs at least one -p KEY=VALUES (e.g. -p optimizer.base_lr=0.01,0.02)")
    seen: set[str] = set()
    for spec in specs:
        if spec.key in seen:
            raise SweepError(f"-p {spec.key} is given twice; put all its values in one -p")
        seen.add(spec.key)


def grid_points(specs: list[ParamSpec]) -> list[dict[str, Any]]:
    """Every combination, in the order given; the last -p varies fastest."""
    _check_specs(specs)
    for spec in specs:
        if spec.is_random:
            raise SweepError(f"-p {spec.text!r} draws random values: add --random N, or list the values "
                             f"(-p {spec.key}=a,b,c)")
    size = math.prod(len(spec.args) for spec in specs)
    if size > MAX_POINTS:
        raise SweepError(f"the grid has {size} points (more than {MAX_POINTS}); use --random N to sample it")
    return [dict(zip((s.key for s in specs), combo)) for combo in itertools.product(*(s.args for s in specs))]


def _round(value: float, low: float, high: float) -> float:
    """6 significant digits (readable tables, same value in every file), kept inside [low, high]."""
    rounded = float(f"{value:.{RANDOM_SIGNIFICANT_DIGITS}g}")
    return min(max(rounded, low), high)


def draw(spec: ParamSpec, rng: random.Random) -> Any:
    if spec.kind in ("values", "choice"):
        return spec.args[rng.randrange(len(spec.args))]
    low, high = spec.args
    if spec.kind == "randint":
        return rng.randint(low, high)
    if spec.kind == "uniform":
        return _round(rng.uniform(low, high), low, high)
    return _round(math.exp(rng.uniform(math.log(low), math.log(high))), low, high)  # loguniform


def random_points(specs: list[ParamSpec], count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` points, each key drawn independently; the same seed gives the same points."""
    _check_specs(specs)
    if count < 1 or count > MAX_POINTS:
        raise SweepError(f"--random {count}: give a number of points from 1 to {MAX_POINTS}")
    rng = random.Random(seed)
    return [{spec.key: draw(spec, rng) for spec in specs} for _ in range(count)]


def point_format(count: int) -> str:
    """printf format of the point dirs: p000 … p999, wider beyond a thousand points."""
    return f"p%0{max(3, len(str(count - 1)))}d"


@dataclass(frozen=True)
class ArrayPart:
    """One job array of a sweep: task t runs point ``offset + t``."""
    offset: int
    task_ids: list[int]               # SLURM task ids, each < MaxArraySize
    max_parallel: int | None          # this array's share of --max-parallel

    @property
    def point_indices(self) -> list[int]:
        return [self.offset + task for task in self.task_ids]


def split_arrays(indices: Iterable[int], max_array_size: int, max_parallel: int | None = None) -> list[ArrayPart]:
    """Point indices → as few job arrays as SLURM's MaxArraySize allows (task ids < max_array_size).

    Point i goes to the array whose offset is i rounded down to a multiple of max_array_size, as task
    ``i - offset``: a sweep that fits in one array keeps task i = point i, and point dirs stay p0000….
    --max-parallel K is shared out so that at most K tasks run across all arrays together.
    """
    groups: dict[int, list[int]] = {}
    for index in sorted(set(indices)):
        offset = index // max_array_size * max_array_size
        groups.setdefault(offset, []).append(index - offset)
    if max_parallel is not None and max_parallel < len(groups):
        raise SweepError(f"--max-parallel {max_parallel} is less than the {len(groups)} job arrays these "
                         f"{sum(map(len, groups.values()))} points need (this cluster's MaxArraySize is "
                         f"{max_array_size}); use --max-parallel {len(groups)} or more")
    shares = _share(max_parallel, [len(ids) for ids in groups.values()])
    return [ArrayPart(offset, ids, share) for (offset, ids), share in zip(groups.items(), shares)]


def _share(total: int | None, sizes: list[int]) -> list[int | None]:
    """Split ``total`` running slots over arrays of ``sizes`` tasks: at least one each, the rest to the
    array with the most tasks per slot, never more slots than tasks."""
    if total is None:
        return [None] * len(sizes)
    shares = [1] * len(sizes)
    for _ in range(total - len(sizes)):
        open_parts = [k for k, size in enumerate(sizes) if shares[k] < size]
        if not open_parts:
            break
        k = max(open_parts, key=lambda k: sizes[k] / shares[k])
        shares[k] += 1
    return shares


def show_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict, bool)) or value is None:
        return json.dumps(value)
    return str(value)


# ---------------------------------------------------------------- planning the points

@dataclass
class Point:
    index: int
    name: str
    params: dict[str, Any]
    config: dict[str, Any]
    plan: planner.Plan

    def sweep_record(self, sweep_name: str) -> dict[str, Any]:
        """plan.json's "sweep" key: the job logs these as TensorBoard hparams."""
        return {"name": sweep_name, "point": self.name, "params": self.params}


@dataclass
class PreparedSweep:
    name: str
    sweep_dir: str
    mode: str                     # "grid" or "random"
    seed: int | None
    specs: list[ParamSpec]
    points: list[Point]
    request: JobRequest           # the array's resources, shared by every point
    max_parallel: int | None
    arrays: list[ArrayPart]       # one unless the sweep is bigger than MaxArraySize

    @property
    def run_dir_format(self) -> str:
        """Where point i finds its run dir: ``run_dir_format % i`` (printf in the sbatch script)."""
        return storage.join(self.sweep_dir.replace("%", "%%"), point_format(len(self.points)))

    @property
    def executor(self) -> str:
        return self.points[0].config["resources"]["executor"]


def _point_config(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(base)
    for key, value in params.items():
        config_mod.apply_override(config, key, value)
    config_mod.validate(config, {key: "override" for key in params})
    for key in params:
        if key in config_mod.PATH_KEYS and config_mod.get_path(config, key):
            config_mod.apply_override(config, key, storage.absolute(config_mod.get_path(config, key)))
    return config


def _shared_resources(point: Point) -> dict[str, Any]:
    res = point.config["resources"]
    return {key: getattr(point.plan, key) if key in ("nodes", "gpus_per_node") else res.get(key)
            for key in SHARED_RESOURCES}


def _check_shared_resources(points: list[Point]) -> None:
    first = _shared_resources(points[0])
    for point in points[1:]:
        mine = _shared_resources(point)
        for key in SHARED_RESOURCES:
            if mine[key] != first[key]:
                label = "resources." + key if key not in ("nodes", "gpus_per_node") else key.replace("_", " ")
                raise SweepError(
                    f"all points of a sweep run as one job array with the same resources, but {points[0].name} "
                    f"needs {label} = {first[key]} and {point.name} ({_params_text(point.params)}) needs "
                    f"{mine[key]}; sweep the keys that change {label} in separate sweeps")


def _swept_input(point: Point) -> bool:
    return any(key.startswith(("data.train", "data.val", "model.init_checkpoint")) for key in point.params)


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={show_value(v)}" for k, v in params.items())


def plan_points(base: dict[str, Any], params_list: list[dict[str, Any]]) -> list[Point]:
    """Validate and plan every point; the planner runs per point (batch → lr, iterations)."""
    fmt = point_format(len(params_list))
    image_counts: dict[tuple[Any, ...], int] = {}
    points = []
    for index, params in enumerate(params_list):
        name = fmt % index
        try:
            config = _point_config(base, params)
            data = config["data"]
            cache_key = (data["train"]["ann_file"], data["filter_empty"])
            if cache_key not in image_counts:  # read the annotation file once, not once per point
                image_counts[cache_key] = runs.build_plan(config).train_images
            plan = runs.build_plan(config, train_images=image_counts[cache_key])
        except OrchError as exc:
            raise SweepError(f"point {name} ({_params_text(params)}): {exc}") from None
        swept = {key: config_mod.get_path(config, key) for key in params}  # as validated (1e-3 → 0.001)
        points.append(Point(index, name, swept, config, plan))
    _check_shared_resources(points)
    return points


def prepare_sweep(base: dict[str, Any], specs: list[ParamSpec], name: str, random_count: int | None = None,
                  seed: int = 0, max_parallel: int | None = None, hold: bool = False,
                  fixed_keys: Iterable[str] = ()) -> PreparedSweep:
    """Points, plans and the array's resources, validated; nothing is written (used by --dry-run too)."""
    for spec in specs:
        if spec.key in set(fixed_keys):
            raise SweepError(f"{spec.key} is both swept (-p) and set (key=value or a flag); drop one of them")
    if max_parallel is not None and max_parallel < 1:
        raise SweepError(f"--max-parallel {max_parallel} must be at least 1")
    params_list = random_points(specs, random_count, seed) if random_count is not None else grid_points(specs)
    sweep_dir = storage.join(base["work_dir"], runs.check_run_name(name))
    points = plan_points(base, params_list)
    if points[0].config["resources"]["executor"] != "slurm":
        raise SweepError("a sweep runs as one SLURM job array: use --executor slurm "
                         f"(the config says resources.executor: {points[0].config['resources']['executor']})")
    doc = {"run_name": name, "run_dir": sweep_dir, "plan": points[0].plan.to_dict(), "config": points[0].config}
    request = submission.job_request(doc, submission.log_dir_for(sweep_dir, name), array_size=len(points),
                                     max_parallel=max_parallel, extra={"hold": True} if hold else {})
    check_inputs(points)
    get_executor(points[0].config["resources"]["executor"]).check(request)  # as a submit would
    limits = slurm_limits.array_limits()
    slurm_limits.check_array_size(len(points), limits)
    arrays = split_arrays([p.index for p in points], limits.max_array_size, max_parallel)
    return PreparedSweep(name, sweep_dir, "random" if random_count is not None else "grid",
                         seed if random_count is not None else None, specs, points, request, max_parallel, arrays)


def check_inputs(points: list[Point]) -> None:
    """The inputs every point reads exist (submission's checks), once per distinct data and weights."""
    checked: set[str] = set()
    for point in points:
        config = point.config
        key = json.dumps([config["data"]["train"], config["data"]["val"], config["model"].get("init_checkpoint")],
                         sort_keys=True, default=str)
        if key not in checked:
            try:
                input_checks.check_inputs(config)
            except OrchError as exc:
                if not _swept_input(point):
                    raise   # the data every point shares: the message names the key already
                raise SweepError(f"point {point.name} ({_params_text(point.params)}): {exc}") from None
            checked.add(key)


# ---------------------------------------------------------------- submitting

def _parallel(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    with ThreadPoolExecutor(IO_THREADS) as pool:
        return list(pool.map(fn, items))


def sweep_document(prepared: PreparedSweep, config_file: str | None) -> dict[str, Any]:
    return {
        "version": 1, "name": prepared.name, "sweep_dir": prepared.sweep_dir, "config_file": config_file,
        "mode": prepared.mode, "seed": prepared.seed, "max_parallel": prepared.max_parallel,
        "parameters": [spec.to_dict() for spec in prepared.specs],
        "point_format": point_format(len(prepared.points)),
        "resources": _shared_resources(prepared.points[0]),
        "points": [{"index": p.index, "name": p.name, "params": p.params} for p in prepared.points],
        "array_job_ids": [], "submissions": [],
    }


def _write_attempt(run_dir: str, run_name: str, job_id: str, submitted: Submitted, kind: str) -> None:
    """Append attempt ``job_id`` (``<array>_<i>``) to the point's submissions.json, as `orch submit` does."""
    if kind == "sweep":  # the run dir was just made: nothing to read
        records.start(run_dir, run_name, job_id, submitted.executor, submitted.log_dir, kind)
    else:
        records.append_attempt(run_dir, run_name, job_id, submitted.executor, submitted.log_dir, kind)


def _record_arrays(sweep_dir: str, doc: dict[str, Any], submitted: list[tuple[ArrayPart, Submitted]],
                   kind: str) -> list[dict[str, Any]]:
    """Add every array of one submission to sweep.json (written once)."""
    entries = []
    for part, job in submitted:
        entries.append({"array_job_id": job.job_id, "array": _array_text(part.task_ids, part.max_parallel),
                        "kind": kind, "task_ids": part.task_ids, "task_offset": part.offset,
                        "executor": job.executor, "log_dir": job.log_dir, "submitted_at": runs.now_iso()})
        doc["array_job_ids"].append(job.job_id)
    doc["submissions"].extend(entries)
    runs.write_json(storage.join(sweep_dir, SWEEP_FILE), doc)
    return entries


def _array_text(task_ids: list[int], max_parallel: int | None) -> str:
    from orchestrator.executors.slurm import format_array
    return format_array(task_ids, max_parallel)


def submit_arrays(executor: Executor, request: JobRequest, arrays: list[ArrayPart],
                  run_dir_format: str) -> list[tuple[ArrayPart, Submitted]]:
    """Submit every array held (started later by one release each); one refused cancels those already in."""
    submitted: list[tuple[ArrayPart, Submitted]] = []
    try:
        for part in arrays:
            req = dataclasses.replace(request, array_size=len(part.task_ids), max_parallel=part.max_parallel,
                                      extra={**request.extra, "hold": True})
            submitted.append((part, executor.submit_array(req, part.task_ids, run_dir_format,
                                                          task_offset=part.offset)))
    except BaseException:
        cancel_arrays(executor, submitted)
        raise
    return submitted


def cancel_arrays(executor: Executor, submitted: list[tuple[ArrayPart, Submitted]]) -> None:
    for _, job in submitted:
        with contextlib.suppress(Exception):
            executor.cancel(job.job_id)


def _job_ids(submitted: list[tuple[ArrayPart, Submitted]]) -> dict[int, tuple[str, Submitted]]:
    """point index → (its job id ``<array>_<task>``, its array's submission)."""
    return {part.offset + task: (f"{job.job_id}_{task}", job) for part, job in submitted for task in part.task_ids}


def submit_sweep(prepared: PreparedSweep, config_file: str | None = None) -> dict[str, Any]:
    """Submit the sweep's job array(s) held, write every point's run dir and record, then release them all."""
    sweep_dir = prepared.sweep_dir
    if storage.exists(storage.join(sweep_dir, SWEEP_FILE)):
        raise SweepError(f"sweep {sweep_dir} already exists; pick another --name or `orch sweep resume {sweep_dir}`")
    executor = get_executor(prepared.executor)
    doc = sweep_document(prepared, config_file)
    # Submitting first (held) gives the job ids, so each point's run dir and submissions.json are
    # written in one parallel pass; no task starts before the whole sweep is on disk.
    submitted: list[tuple[ArrayPart, Submitted]] = []

    def write_point(point: Point) -> None:
        made = runs.create_run_dir(sweep_dir, point.name, point.plan, point.config,
                                   sweep=point.sweep_record(prepared.name))
        job_id, job = job_ids[point.index]
        _write_attempt(made["run_dir"], point.name, job_id, job, "sweep")

    storage.makedirs(sweep_dir)
    try:
        runs.write_json(storage.join(sweep_dir, SWEEP_FILE), doc)
        with storage.secrets_in_env(storage.active()):  # handed to the arrays' tasks as `orch submit` does
            submitted = submit_arrays(executor, prepared.request, prepared.arrays, prepared.run_dir_format)
        job_ids = _job_ids(submitted)
        with storage.one_sync(sweep_dir):  # on disk before the arrays are released
            _parallel(write_point, prepared.points)
        entries = _record_arrays(sweep_dir, doc, submitted, "sweep")
        if not prepared.request.extra.get("hold"):
            for _, job in submitted:
                executor.release(job.job_id)
    except BaseException:
        cancel_arrays(executor, submitted)
        storage.remove(sweep_dir, recursive=True)  # we just made it: leave nothing behind
        raise
    return {"name": prepared.name, "sweep_dir": sweep_dir, "array_job_ids": [job.job_id for _, job in submitted],
            "arrays": [entry["array"] for entry in entries], "points": len(prepared.points),
            "log_dir": submitted[0][1].log_dir}


# ---------------------------------------------------------------- status and resume

def find_sweep(ref: str, work_dir: str | None = None) -> str:
    """A sweep dir from a path/URL or a sweep name under work_dir (default: ./runs)."""
    if storage.exists(storage.join(ref, SWEEP_FILE)):
        return ref
    base = work_dir or os.environ.get("ORCH_WORK_DIR") or storage.absolute("runs")
    candidate = storage.join(base, ref)
    if storage.exists(storage.join(candidate, SWEEP_FILE)):
        return candidate
    raise SweepError(f"no sweep {ref!r}: not a sweep dir (no {SWEEP_FILE}), and not found under {base} "
                     "(pass the sweep dir, or --work-dir where it lives)")


def read_sweep(sweep_dir: str) -> dict[str, Any]:
    url = storage.join(sweep_dir, SWEEP_FILE)
    try:
        doc = runs.read_json(url)
    except ValueError as exc:   # truncated or hand-edited: name the file, never a traceback
        raise SweepError(f"{url} is damaged: not valid JSON ({exc}). `orch sweep` wrote it; restore it from a copy "
                         "(each point's run dir still works with `orch status`/`orch resume`)") from None
    if doc is None:
        raise SweepError(f"no {SWEEP_FILE} in {sweep_dir}: is this a sweep dir made by `orch sweep`?")
    if not isinstance(doc, dict) or not isinstance(doc.get("points"), list):
        raise SweepError(f"{url} is damaged: expected a JSON object with a 'points' list. `orch sweep` wrote it; "
                         "restore it from a copy")
    return doc


def _last_attempt(run_dir: str) -> dict[str, Any] | None:
    return records.last_attempt(run_dir)


def _array_task(attempt: dict[str, Any] | None) -> tuple[str, int] | None:
    """(array id, task) for an attempt submitted as part of a job array."""
    if not attempt or "_" not in str(attempt["job_id"]):
        return None
    array_id, task = str(attempt["job_id"]).split("_", 1)
    return (array_id, int(task)) if task.isdigit() else None


def sweep_status(sweep_dir: str) -> dict[str, Any]:
    """One row per point, best bbox mAP first; ONE scheduler query per job array, not one per point."""
    doc = read_sweep(sweep_dir)
    run_dirs = [storage.join(sweep_dir, p["name"]) for p in doc["points"]]
    attempts = _parallel(_last_attempt, run_dirs)
    arrays = {(a["executor"], _array_task(a)[0]) for a in attempts if _array_task(a)}
    tables = {array_id: get_executor(executor).array_status(array_id) for executor, array_id in sorted(arrays)}

    def scheduler_for(attempt: dict[str, Any] | None) -> dict[str, Any] | None:
        found = _array_task(attempt)
        if found is None:
            return None  # never submitted, or resubmitted on its own: run_status asks the executor
        table = tables[found[0]]
        if table is None:
            return {"state": "UNKNOWN", "restarts": 0}     # the scheduler forgot the whole array
        # the array is known but this task is not: it was cancelled before it started
        return table.get(found[1], {"state": "CANCELLED", "restarts": 0})

    statuses = _parallel(lambda pair: submission.run_status(pair[0], scheduler_for(pair[1])),
                         list(zip(run_dirs, attempts)))
    rows = []
    for point, status in zip(doc["points"], statuses):
        rows.append({"point": point["name"], "index": point["index"], "params": point["params"],
                     "state": status["state"], "iteration": status["iteration"], "max_iters": status["max_iters"],
                     "best_bbox_mAP": status["best_bbox_mAP"], "bbox_mAP": (status["eval"] or {}).get("bbox_mAP"),
                     "job_id": status["job_id"], "attempt": status["attempt"], "run_dir": status["run_dir"],
                     "latest_checkpoint": status["latest_checkpoint"], "error": status["error"]})
    rows.sort(key=lambda r: (r["best_bbox_mAP"] is None, -(r["best_bbox_mAP"] or 0.0), r["index"]))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return {"name": doc["name"], "sweep_dir": sweep_dir, "mode": doc["mode"],
            "parameters": [p["key"] for p in doc["parameters"]], "array_job_ids": doc["array_job_ids"],
            "counts": counts, "points": rows}


def resume_sweep(sweep_dir: str, max_parallel: int | None = None) -> dict[str, Any]:
    """Resubmit, as new array(s) over just their indices, the points that are not completed."""
    with submission.run_lock(sweep_dir):
        doc = read_sweep(sweep_dir)
        status = sweep_status(sweep_dir)
        todo = sorted(r["index"] for r in status["points"]
                      if r["state"] not in ("COMPLETED", "UNKNOWN") and r["state"] not in ACTIVE_STATES)
        if not todo:
            counts = ", ".join(f"{n} {state}" for state, n in sorted(status["counts"].items()))
            raise SweepError(f"nothing to resume in sweep {doc['name']} ({counts}): every point is completed, "
                             "queued, running or UNKNOWN (the scheduler did not answer: try again)")
        first_dir = storage.join(sweep_dir, doc["points"][todo[0]]["name"])
        first = runs.read_plan(first_dir)
        max_parallel = max_parallel if max_parallel is not None else doc.get("max_parallel")
        if max_parallel is not None and max_parallel < 1:
            raise SweepError(f"--max-parallel {max_parallel} must be at least 1")
        arrays = split_arrays(todo, slurm_limits.array_limits().max_array_size, max_parallel)
        array_doc = {"run_name": doc["name"], "run_dir": sweep_dir, "plan": first["plan"], "config": first["config"]}
        request = submission.job_request(array_doc, submission.log_dir_for(sweep_dir, doc["name"]),
                                         array_size=len(todo), max_parallel=max_parallel)
        fmt = storage.join(sweep_dir.replace("%", "%%"), doc["point_format"])
        executor = get_executor(first["config"]["resources"]["executor"])
        with storage.secrets_in_env(submission.job_storage_options(first, first_dir)):
            submitted = submit_arrays(executor, request, arrays, fmt)
        try:
            job_ids = _job_ids(submitted)
            _parallel(lambda i: _write_attempt(storage.join(sweep_dir, doc["points"][i]["name"]),
                                               doc["points"][i]["name"], job_ids[i][0], job_ids[i][1],
                                               "sweep-resume"), todo)
            entries = _record_arrays(sweep_dir, doc, submitted, "sweep-resume")
            for _, job in submitted:
                executor.release(job.job_id)
        except BaseException:
            cancel_arrays(executor, submitted)   # points whose record names them show CANCELLED: resumable
            raise
        previous = {r["index"]: r["state"] for r in status["points"]}
        return {"name": doc["name"], "array_job_ids": [job.job_id for _, job in submitted],
                "arrays": [entry["array"] for entry in entries],
                "points": [doc["points"][i]["name"] for i in todo],
                "previous_states": {doc["points"][i]["name"]: previous[i] for i in todo}}
