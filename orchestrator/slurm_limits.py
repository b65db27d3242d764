"""What the SLURM cluster allows, read once, and the checks that keep a job from pending forever.

SLURM accepts a request no partition can ever run (4 CPUs per GPU on nodes that have 2, more
GPUs per node than a node has, over the partition's MaxTime or MaxNodes) and leaves it PENDING
with ``Reason=PartitionConfig``. :func:`check_request` refuses it before anything is queued,
naming the limit and the nearest values that would run. :func:`array_limits` reads
``MaxArraySize`` and ``MaxJobCount`` for sweeps.

The queries (``scontrol show partition|node|config``) parse into plain dataclasses; the checks
are pure functions over them (tested with real ``scontrol`` output). Where there is no SLURM
(a laptop dry-run) or it does not answer, the checks are skipped with a one-line note.
``ORCH_SKIP_SLURM_CHECK=1`` skips them on purpose (if orch misreads a cluster).
"""
from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

from orchestrator.executors.base import JobRequest, SubmissionError, time_to_minutes

QUERY_TIMEOUT_S = 15
DEFAULT_MAX_ARRAY_SIZE = 1001     # SLURM's default: task ids 0..1000
UNLIMITED = ("UNLIMITED", "INFINITE", "NONE", "")
# `scontrol show <entity> -o`: Key=Value pairs split by spaces; a value may hold spaces
# (OS=Linux 6.1 #1 SMP), never " Key=".
_FIELD_SPLIT_RE = re.compile(r"\s+(?=[A-Za-z][A-Za-z0-9_:/.]*=)")
_CONFIG_LINE_RE = re.compile(r"^(\w+)\s*=\s*(.*?)\s*$")


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    gpus: int                      # the node's gres gpu count (all types together)
    partitions: tuple[str, ...]


@dataclass(frozen=True)
class Partition:
    name: str
    default: bool
    max_time_min: int | None       # None: no limit
    max_nodes: int | None
    max_cpus_per_node: int | None
    nodes: tuple[Node, ...]


@dataclass(frozen=True)
class ArrayLimits:
    max_array_size: int            # task ids must be < this
    max_job_count: int | None      # jobs (array tasks included) the controller holds at once


# ---------------------------------------------------------------- parsing (pure)

def parse_record(line: str) -> dict[str, str]:
    """One line of ``scontrol show <entity> -o`` as its fields."""
    fields = {}
    for part in _FIELD_SPLIT_RE.split(line.strip()):
        key, _, value = part.partition("=")
        fields[key] = value.strip()
    return fields


def _limit(value: str | None) -> int | None:
    if value is None or value.upper() in UNLIMITED:
        return None
    return int(value) if value.isdigit() else None


def _minutes(value: str | None) -> int | None:
    if value is None or value.upper() in UNLIMITED:
        return None
    try:
        return time_to_minutes(value)
    except ValueError:
        return None


def gres_gpus(gres: str) -> int:
    """``gpu:4`` / ``gpu:a100:8(S:0-1)`` / ``gpu:a100:2,gpu:v100:2,nic:1`` / ``(null)`` → GPUs."""
    total = 0
    for entry in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = entry.strip().split(":")
        if parts[0] != "gpu":
            continue
        count = parts[-1] if len(parts) > 1 else "1"
        total += int(count) if count.isdigit() else 1   # `gpu:a100` alone is one GPU
    return total


def parse_nodes(text: str) -> list[Node]:
    """``scontrol show node -o`` → nodes (CPUEfctv, SLURM 22.05+, leaves out specialised cores)."""
    nodes = []
    for line in text.splitlines():
        if not line.startswith("NodeName="):
            continue
        f = parse_record(line)
        cpus = f.get("CPUEfctv") or f.get("CPUTot") or "0"
        partitions = tuple(p for p in f.get("Partitions", "").split(",") if p)
        nodes.append(Node(f["NodeName"], int(cpus) if cpus.isdigit() else 0, gres_gpus(f.get("Gres", "")),
                          partitions))
    return nodes


def parse_partitions(partition_text: str, node_text: str) -> list[Partition]:
    """``scontrol show partition -o`` and ``scontrol show node -o`` → partitions with their nodes."""
    nodes = parse_nodes(node_text)
    partitions = []
    for line in partition_text.splitlines():
        if not line.startswith("PartitionName="):
            continue
        f = parse_record(line)
        name = f["PartitionName"]
        partitions.append(Partition(
            name=name, default=f.get("Default") == "YES", max_time_min=_minutes(f.get("MaxTime")),
            max_nodes=_limit(f.get("MaxNodes")), max_cpus_per_node=_limit(f.get("MaxCPUsPerNode")),
            nodes=tuple(n for n in nodes if name in n.partitions)))
    return partitions


def parse_config(text: str) -> ArrayLimits:
    """``scontrol show config`` (``Key = Value`` lines) → MaxArraySize and MaxJobCount."""
    values = {}
    for line in text.splitlines():
        match = _CONFIG_LINE_RE.match(line)
        if match:
            values[match.group(1)] = match.group(2)
    size = _limit(values.get("MaxArraySize"))
    return ArrayLimits(max_array_size=size if size else DEFAULT_MAX_ARRAY_SIZE,
                       max_job_count=_limit(values.get("MaxJobCount")))


# ---------------------------------------------------------------- checks (pure)

def _show_time(minutes: int) -> str:
    days, rest = divmod(minutes, 1440)
    text = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{text}" if days else text


def partition_problem(req: JobRequest, part: Partition) -> str | None:
    """Why ``part`` can never run ``req`` (one clause naming the limit and what would fit), or None."""
    if req.time and part.max_time_min is not None and time_to_minutes(req.time) > part.max_time_min:
        return (f"--time {req.time} is over partition {part.name}'s MaxTime {_show_time(part.max_time_min)}: "
                f"use --time {_show_time(part.max_time_min)} or less")
    if part.max_nodes is not None and req.nodes > part.max_nodes:
        gpus = part.max_nodes * req.gpus_per_node
        return (f"the job needs {req.nodes} nodes ({req.gpus_per_node} GPUs each), partition {part.name} allows "
                f"at most {part.max_nodes} per job (MaxNodes): use --gpus {gpus} or fewer")
    if not part.nodes:
        return f"partition {part.name} has no nodes"
    most_gpus = max(n.gpus for n in part.nodes)
    if req.gpus_per_node > most_gpus:
        if most_gpus == 0:
            return f"partition {part.name}'s nodes have no GPUs (gres gpu): use a partition with GPUs"
        return (f"{req.gpus_per_node} GPUs per node is more than partition {part.name}'s nodes have "
                f"({most_gpus}, gres gpu): use --gpus-per-node {most_gpus} or fewer")
    with_gpus = [n for n in part.nodes if n.gpus >= req.gpus_per_node]
    cpus_needed = req.cpus_per_gpu * req.gpus_per_node
    most_cpus = max(_usable_cpus(n, part) for n in with_gpus)
    if cpus_needed > most_cpus:
        fit = most_cpus // req.gpus_per_node
        fix = f"use --cpus-per-gpu {fit} or fewer" if fit else "use fewer GPUs per node"
        return (f"--cpus-per-gpu {req.cpus_per_gpu} needs {cpus_needed} CPUs per node ({req.gpus_per_node} GPUs "
                f"× {req.cpus_per_gpu}), partition {part.name}'s nodes with {req.gpus_per_node}+ GPUs have "
                f"{most_cpus}: {fix}")
    fitting = [n for n in with_gpus if _usable_cpus(n, part) >= cpus_needed]
    if req.nodes > len(fitting):
        return (f"the job needs {req.nodes} nodes with {req.gpus_per_node} GPUs and {cpus_needed} CPUs each, "
                f"partition {part.name} has {len(fitting)}: use --gpus {len(fitting) * req.gpus_per_node} "
                "or fewer")
    return None


def _usable_cpus(node: Node, part: Partition) -> int:
    return min(node.cpus, part.max_cpus_per_node) if part.max_cpus_per_node else node.cpus


def check_request(req: JobRequest, partitions: list[Partition] | None = None) -> None:
    """Raise SubmissionError if no partition the request names can ever run it.

    With ``partitions`` given this is pure; without, it asks the cluster first (and returns,
    after a one-line note on stderr, where SLURM cannot be asked). No --partition means the
    cluster's default partition; ``a,b`` runs where either can.
    """
    if partitions is None:
        partitions = query_partitions()
        if partitions is None:
            return
    by_name = {p.name: p for p in partitions}
    if req.partition:
        names = [n for n in req.partition.split(",") if n]
    else:
        names = [p.name for p in partitions if p.default]
        if not names:
            return   # no default partition: sbatch says so itself
    problems = []
    for name in names:
        part = by_name.get(name)
        if part is None:
            problems.append(_unknown_partition(name, partitions))
            continue
        problem = partition_problem(req, part)
        if problem is None:
            return
        problems.append(problem)
    if not any(name in by_name for name in names):
        raise SubmissionError(f"invalid partition: {'; '.join(problems)}.")   # sbatch would refuse it too
    raise SubmissionError(f"SLURM would queue this job and never start it: {'; '.join(problems)}.")


def _unknown_partition(name: str, partitions: list[Partition]) -> str:
    names = [p.name for p in partitions]
    close = difflib.get_close_matches(name, names, n=1)
    default = next((p.name for p in partitions if p.default), None)
    hint = f"did you mean {close[0]}? " if close else ""
    listed = ", ".join(f"{n} (default)" if n == default else n for n in names)
    return f"partition {name!r} does not exist ({hint}partitions: {listed}); fix --partition / resources.partition"


def check_array_size(points: int, limits: ArrayLimits) -> None:
    """Refuse a sweep the controller cannot hold at once (every array task counts as a job)."""
    if limits.max_job_count is not None and points > limits.max_job_count:
        raise SubmissionError(
            f"the sweep has {points} points but this cluster holds at most {limits.max_job_count} jobs at once "
            f"(MaxJobCount in `scontrol show config`; every array task counts): sweep at most "
            f"{limits.max_job_count} points (fewer values, or --random N), or split it into several sweeps")


# ---------------------------------------------------------------- asking the cluster

def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def _scontrol(*args: str) -> str | None:
    """``scontrol ARGS`` output, or None (after a note) where SLURM is missing or does not answer."""
    if os.environ.get("ORCH_SKIP_SLURM_CHECK"):
        return None
    if shutil.which("scontrol") is None:
        _note("SLURM limits not checked: no `scontrol` on this machine (checked again at submission on the cluster)")
        return None
    try:
        # --all: hidden partitions (and their nodes) exist too; sbatch may run there
        result = subprocess.run(["scontrol", "--all", *args], capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _note(f"SLURM limits not checked: `scontrol {' '.join(args)}` failed ({exc})")
        return None
    if result.returncode != 0:
        said = " ".join(result.stderr.split())[:200]
        _note(f"SLURM limits not checked: `scontrol {' '.join(args)}` failed ({said or result.returncode})")
        return None
    return result.stdout


def query_partitions() -> list[Partition] | None:
    partition_text = _scontrol("show", "partition", "-o")
    if partition_text is None:
        return None
    node_text = _scontrol("show", "node", "-o")
    return None if node_text is None else parse_partitions(partition_text, node_text)


def array_limits() -> ArrayLimits:
    """The cluster's MaxArraySize and MaxJobCount; SLURM's defaults (no job limit) where it cannot be asked."""
    text = _scontrol("show", "config")
    return parse_config(text) if text is not None else ArrayLimits(DEFAULT_MAX_ARRAY_SIZE, None)
