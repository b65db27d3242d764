"""The one sbatch script writer: a JobRequest (plus, for sweeps, the array's task ids) in, script text out.

Pure: no submitit, no SLURM on PATH, nothing read from the machine that renders it except the
interpreter path, which is a parameter (golden tests pin it). `orch submit --dry-run` prints this
text and `orch submit` hands the same text to ``sbatch --parsable``.

Two parsers read what we write, and each is handled where it bites:
- sbatch reads ``#SBATCH`` lines with its own rules (quotes group, a backslash escapes the next
  character but not whitespace, an unquoted ``#`` starts a comment): unusual values are written in
  double quotes with ``\\`` and ``"`` escaped, never shell-quoted.
- SLURM expands ``%`` patterns in log paths; for the batch log it joins the working directory and
  the relative name first and expands the whole (the test cluster put a run dir's ``%j`` through
  it), and a single backslash anywhere turns every pattern off (``remove_path_slashes``). So the
  job runs in its log dir (``--chdir``, taken literally), each node's launcher opens its own log
  from bash (``<job>_<node>_log.out``, array tasks ``<array>_<task>_<node>_log.out``: submitit's
  names, by which `orch logs` finds a job's files), and only the batch log goes through a SLURM
  pattern: the log dir with ``%`` written ``%%``, or /dev/null when it holds a backslash (the
  script's own output still reaches node 0's log through bash).
- bash runs the body: every interpolated value is shell-quoted; an array task's run dir is the
  quoted literal prefix and suffix around the zero-padded task id (no printf of user text).
Newlines and other control characters never get here: ``validate_request`` refuses them.
"""
from __future__ import annotations

import re
import shlex
import sys

from orchestrator.executors.base import JobRequest, SubmissionError, _no_control_chars, time_to_minutes

# (batch log pattern for SLURM, the job id in bash): node 0's log is also the batch step's
SINGLE_JOB = ("%j", "${SLURM_JOB_ID}")
ARRAY_JOB = ("%A_%a", "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}")
SBATCH_SAFE_RE = re.compile(r"[A-Za-z0-9/._,:=@+%\[\]-]")   # % means nothing to the #SBATCH line parser
FORMAT_TOKEN_RE = re.compile(r"%(%|0(\d+)d)?")


def sbatch_escape(value: str) -> str:
    """A value for an ``#SBATCH`` line that sbatch reads back byte for byte.

    sbatch's parser (``_get_argument`` in src/sbatch/opt.c) ends an argument at unquoted whitespace
    even after a backslash, so anything unusual goes inside double quotes, where only a backslash
    and a double quote need a backslash before them.
    """
    if all(SBATCH_SAFE_RE.match(c) for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sbatch_options(req: JobRequest) -> list[tuple[str, str | None]]:
    """(option, value) pairs in the order they are written; value None is a bare flag."""
    options: list[tuple[str, str | None]] = [
        ("job-name", req.run_name),
        ("nodes", str(req.nodes)),
        ("ntasks-per-node", "1"),                 # one launcher per node; torchrun starts its GPU processes
        ("gpus-per-node", str(req.gpus_per_node)),
        ("cpus-per-task", str(req.cpus_per_gpu * req.gpus_per_node)),
        ("time", str(time_to_minutes(req.time))),
    ]
    for key in ("partition", "account", "qos", "constraint", "exclude"):
        if getattr(req, key):
            options.append((key, getattr(req, key)))
    if req.mem_per_gpu:
        options.append(("mem-per-gpu", req.mem_per_gpu))
    options += [("signal", f"USR2@{req.signal_delay_s}"), ("requeue", None), ("open-mode", "append"),
                ("wckey", "orch")]
    return options


def batch_output(log_dir: str, pattern: str) -> str:
    """The ``--output`` of the batch step: only the pattern is for SLURM to expand, never the log dir."""
    if "\\" in log_dir:
        return "/dev/null"   # SLURM cannot name such a path; bash writes the script's output (see _body)
    return f"{log_dir.replace('%', '%%')}/{pattern}_0_log.out"


def _header(req: JobRequest, options: list[tuple[str, str | None]], job: tuple[str, str]) -> list[str]:
    options = options + [("chdir", req.log_dir), ("output", batch_output(req.log_dir, job[0]))]
    lines = ["#!/bin/bash", f"# orch run {req.run_name}: runs in its log dir (--chdir), one log per node", ""]
    for key, value in options:
        lines.append(f"#SBATCH --{key}" if value is None else f"#SBATCH --{key}={sbatch_escape(value)}")
    return lines


def _body(job_id: str, python: str, run_dir_word: str) -> list[str]:
    """Node 0's log takes the script's output; srun starts one launcher per node, each into its own log."""
    node_log = shlex.quote(f'exec "$@" >>"{job_id}_${{SLURM_PROCID}}_log.out" 2>&1')
    return [f'exec >>"{job_id}_0_log.out" 2>&1',
            f"srun --unbuffered /bin/bash -c {node_log} orch-node {shlex.quote(python)} -u -m jobs.launch "
            f"{run_dir_word}"]


def render_job(req: JobRequest, python: str = sys.executable) -> str:
    """The sbatch script of one job: one srun task per node, each running ``jobs.launch RUN_DIR``."""
    lines = _header(req, sbatch_options(req), SINGLE_JOB)
    lines += ["", *_body(SINGLE_JOB[1], python, shlex.quote(req.run_dir)), ""]
    return "\n".join(lines)


def render_array(req: JobRequest, task_ids: list[int], run_dir_format: str, python: str = sys.executable,
                 task_offset: int = 0) -> str:
    """One sbatch script for a job array: task i runs ``jobs.launch`` on ``run_dir_format % (task_offset + i)``
    (a sweep larger than MaxArraySize is several arrays, each numbering its tasks from 0)."""
    prefix, width, suffix = split_run_dir_format(run_dir_format)
    options = sbatch_options(req) + [("array", format_array(task_ids, req.max_parallel))]
    if req.extra.get("hold"):
        options.append(("hold", None))
    lines = _header(req, options, ARRAY_JOB)
    run_dir = f"{shlex.quote(prefix)}\"$TASK\"{shlex.quote(suffix) if suffix else ''}"
    point = f"$((SLURM_ARRAY_TASK_ID + {int(task_offset)}))" if task_offset else "$SLURM_ARRAY_TASK_ID"
    lines += ["", f"printf -v TASK '%0{width}d' \"{point}\"", f"RUN_DIR={run_dir}",
              *_body(ARRAY_JOB[1], python, '"$RUN_DIR"'), ""]
    return "\n".join(lines)


def split_run_dir_format(run_dir_format: str) -> tuple[str, int, str]:
    """``/a/100%%/p%03d`` → (``/a/100%/p``, 3, ``""``): the literal text around the one task-id placeholder.

    The format follows Python's ``%`` rules (``%%`` is a literal ``%``), as ``run_dir_format % i`` does.
    """
    _no_control_chars("run dir format", run_dir_format)
    parts, widths, start = [""], [], 0
    for match in FORMAT_TOKEN_RE.finditer(run_dir_format):
        parts[-1] += run_dir_format[start:match.start()]
        start = match.end()
        if match.group(1) == "%":
            parts[-1] += "%"
        elif match.group(2) is not None:
            widths.append(int(match.group(2)))
            parts.append("")
        else:
            raise SubmissionError(f"run dir format {run_dir_format!r} has a '%' that is neither '%%' nor the "
                                  "task id placeholder '%0Nd'; write a literal '%' as '%%'")
    parts[-1] += run_dir_format[start:]
    if len(widths) != 1:
        raise SubmissionError(f"run dir format {run_dir_format!r} must hold exactly one task id placeholder "
                              f"such as '%03d' (it holds {len(widths)})")
    return parts[0], widths[0], parts[1]


def format_array(task_ids: list[int], max_parallel: int | None = None) -> str:
    """sbatch's --array value: ranges joined by commas, then %K (``[0,1,2,5] , 2`` → ``0-2,5%2``)."""
    ids = sorted(set(task_ids))
    if not ids:
        raise SubmissionError("a job array needs at least one task")
    spans = [[ids[0], ids[0]]]
    for task in ids[1:]:
        if task == spans[-1][1] + 1:
            spans[-1][1] = task
        else:
            spans.append([task, task])
    text = ",".join(str(low) if low == high else f"{low}-{high}" for low, high in spans)
    return f"{text}%{min(max_parallel, len(ids))}" if max_parallel else text
