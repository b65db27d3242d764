"""`orch submit | runs | status | logs | cancel | resume`: parse, call orchestrator.submission, print."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from orchestrator import planner, runs, storage, submission
from orchestrator.cli_core import add_config_arguments, load_config_and_storage, split_overrides
from orchestrator.errors import OrchError
from orchestrator.executors.base import ACTIVE_STATES

FOLLOW_POLL_S = 2.0
STATUS_METRICS_SHOWN = 10


def add_resource_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("resources (override resources: in the config)")
    group.add_argument("--gpus", type=int, help="total GPUs (CPU processes where there is no CUDA)")
    group.add_argument("--gpus-per-node", type=int)
    group.add_argument("--nodes", type=int)
    group.add_argument("--partition")
    group.add_argument("--time", help="time limit, D-HH:MM:SS")
    group.add_argument("--account")
    group.add_argument("--qos")
    group.add_argument("--constraint")
    group.add_argument("--exclude", help="nodes to avoid, e.g. node[01-03]")
    group.add_argument("--cpus-per-gpu", type=int)
    group.add_argument("--mem-per-gpu", help="e.g. 32G")
    group.add_argument("--executor", choices=("slurm", "local"))


def resource_overrides(args: argparse.Namespace) -> list[str]:
    """Resource flags as overrides, so `config show --explain` would name the command line."""
    out = []
    for key in submission.RESOURCE_FLAGS:
        value = getattr(args, key, None)
        if value is not None:
            out.append(f"resources.{key}={json.dumps(value)}")
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="plan a run and submit it (SLURM or local); returns at once",
                       description="Plan, create the run dir, submit. Fire-and-forget: follow with "
                                   "`orch status RUN` / `orch logs RUN -f`.")
    add_config_arguments(p)
    add_resource_flags(p)
    p.add_argument("--name", help="run name (default: <config name>-<date>-<time>)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the sbatch script; submit nothing")
    p.add_argument("--follow", action="store_true", help="stay attached: stream the log until the run ends")
    p.add_argument("--preflight", action="store_true",
                   help="first run one real training step on this CPU (first batch of data.train); submit nothing "
                        "if it fails")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("runs", help="list runs under a work dir")
    p.add_argument("--work-dir", help="where runs live (default: ./runs or $ORCH_WORK_DIR)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)

    for name, func, text in (("status", cmd_status, "state, iteration, ETA, metrics and latest checkpoint"),
                             ("logs", cmd_logs, "the job's log (every node, labelled)"),
                             ("cancel", cmd_cancel, "cancel a queued or running run (it checkpoints first)"),
                             ("resume", cmd_resume, "resubmit a stopped run; it continues from its latest checkpoint")):
        p = sub.add_parser(name, help=text)
        p.add_argument("run", help="run name (under --work-dir) or run dir")
        p.add_argument("--work-dir", help="where runs live (default: ./runs or $ORCH_WORK_DIR)")
        if name == "status":
            p.add_argument("--json", action="store_true")
        if name == "logs":
            p.add_argument("-f", "--follow", action="store_true", help="keep printing until the run ends")
        if name == "resume":
            p.add_argument("--executor", choices=("slurm", "local"), help="default: the run's last executor")
        p.set_defaults(func=func)


def cmd_submit(args: argparse.Namespace) -> int:
    overrides = split_overrides(args) + resource_overrides(args)
    loaded = load_config_and_storage(args.config, overrides)
    config = loaded.data
    prefix = config.get("name") or os.path.splitext(os.path.basename(args.config))[0]
    from orchestrator import runs

    run_name = runs.check_run_name(args.name) if args.name is not None else runs.new_run_name(prefix)
    executor_name = config["resources"]["executor"]
    if args.preflight:
        from orchestrator import preflight

        print(preflight.check_run(config, run_name).line(), flush=True)
    if args.dry_run:
        prepared = submission.prepare(config, run_name, executor_name)
        print(f"run {run_name} → {prepared.doc['run_dir']}  (dry run: nothing submitted)\n")
        print(planner.format_plan(prepared.plan))
        from orchestrator import toolbox

        if toolbox.is_toolbox(config):
            print("\n" + toolbox.dry_run_text(prepared.doc))
        print(f"\n# {executor_name} submission script\n")
        print(prepared.executor.script(prepared.request))
        return 0
    result = submission.submit(config, run_name, executor_name)
    for warning in result["plan"].warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"submitted run {result['run_name']} as {result['executor']} job {result['job_id']}")
    print(f"  run dir: {result['run_dir']}")
    print(f"  follow:  orch status {result['run_dir']}   ·   orch logs {result['run_dir']} -f")
    if args.follow:
        return follow(result["run_dir"], wait_for_end=True)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    work_dir = args.work_dir or os.environ.get("ORCH_WORK_DIR") or storage.absolute("runs")
    rows = submission.list_runs(work_dir)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print(f"no runs under {work_dir}")
        return 0
    print(f"{'RUN':<40} {'STATE':<10} {'JOB':<10} {'ITER':>13}  BEST mAP")
    for row in rows:
        best = f"{row['best_bbox_mAP']:.4f}" if row.get("best_bbox_mAP") is not None else "-"
        print(f"{row['run_name']:<40} {row['state']:<10} {str(row['job_id']):<10} "
              f"{row['iteration']:>6}/{row['max_iters']:<6}  {best}")
    return 0


def _run_dir(args: argparse.Namespace) -> str:
    return submission.find_run(args.run, args.work_dir)


def cmd_status(args: argparse.Namespace) -> int:
    status = submission.run_status(_run_dir(args))
    if args.json:
        print(json.dumps(status, indent=2, default=str))
        return 0
    print(format_status(status))
    return 0


def format_status(s: dict) -> str:
    pct = 100.0 * s["iteration"] / max(1, s["max_iters"])
    lines = [f"run        {s['run_name']}",
             f"state      {format_state(s)}  (job {s['job_id']}, {s['executor']}, attempt {s['attempt']})",
             f"progress   {s['iteration']}/{s['max_iters']} iterations ({pct:.1f}%)  eta {runs.format_eta(s['eta_s'])}"]
    if s.get("max_epochs"):
        lines.append(f"epoch      {s.get('epoch') or 0}/{s['max_epochs']}  ({s.get('kind') or 'toolbox'})")
    if s.get("metrics"):
        shown = list(s["metrics"].items())[:STATUS_METRICS_SHOWN]   # a toolbox logs dozens (`--json` has all)
        more = len(s["metrics"]) - len(shown)
        lines.append("train      " + "  ".join(f"{k} {v:.4g}" for k, v in shown) + (f"  (+{more} more)" if more else ""))
    if s.get("eval"):
        shown = {k: v for k, v in s["eval"].items() if k in ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75")}
        lines.append("eval       " + "  ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    lines.append(f"checkpoint {s['latest_checkpoint'] or '-'}")
    if s.get("nodes"):
        lines.append(f"nodes      {', '.join(s['nodes'])}")
    for node in s.get("node_status") or []:
        lines.append(f"  node {node.get('node_rank')}   {format_node(node)}")
    if s.get("error"):
        lines.append(f"error      {s['error']}")
    if s.get("note"):
        lines.append(f"note       {s['note']}")
    lines.append(f"run dir    {s['run_dir']}")
    return "\n".join(lines)


def format_state(s: dict) -> str:
    """``PENDING (Resources: waiting for free nodes/GPUs)``; an unexplained reason verbatim; why LOST/UNKNOWN."""
    if s.get("pending_reason"):
        why = f"{s['pending_reason']}: {s['pending_explanation']}" if s.get("pending_explanation") else s["pending_reason"]
        return f"{s['state']} ({why})"
    if s["state"] == "LOST":
        return "LOST (the scheduler no longer knows the job and it left no final word; `orch resume` restarts it)"
    if s["state"] == "UNKNOWN" and s.get("scheduler_detail"):
        return f"UNKNOWN (the scheduler did not answer: {s['scheduler_detail']})"
    return s["state"]


def format_node(node: dict) -> str:
    """One node's launcher record: ``n2  RUNNING  1 worker(s)  seen 4 s ago`` (or why it looks dead)."""
    text = f"{node.get('hostname') or '?':<12} {node.get('state') or '?'}"
    if node.get("state") == "RUNNING":
        text += f"  {node.get('workers', 0)} worker(s)"
    elif node.get("exit_code") is not None:
        text += f"  torchrun exit code {node['exit_code']}"
    if node.get("seen_s") is not None:
        text += f"  seen {node['seen_s']} s ago"
    if node.get("stale"):
        text += "  (no heartbeat: node or launcher gone?)"
    return text


def cmd_logs(args: argparse.Namespace) -> int:
    run_dir = _run_dir(args)
    if args.follow:
        return follow(run_dir, wait_for_end=False)
    files = submission.log_files(run_dir)
    if not files:
        print(f"no logs yet for {run_dir}", file=sys.stderr)
        return 1
    many = len(files) > 1
    for label, path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                sys.stdout.write(f"[{label}] {line}" if many else line)
    return 0


def follow(run_dir: str, wait_for_end: bool) -> int:
    """Stream every node's log until the run leaves the active states; exit 0 only if COMPLETED."""
    offsets: dict[str, int] = {}
    while True:
        status = submission.run_status(run_dir)
        files = submission.log_files(run_dir)
        many = len(files) > 1
        for label, path in files:
            with open(path, encoding="utf-8", errors="replace") as f:
                f.seek(offsets.get(path, 0))
                chunk = f.read()
                offsets[path] = f.tell()
            for line in chunk.splitlines(keepends=True):
                sys.stdout.write(f"[{label}] {line}" if many else line)
        sys.stdout.flush()
        if status["state"] not in ACTIVE_STATES and status["state"] != "UNKNOWN":
            print(f"run {status['run_name']}: {status['state']} at iteration {status['iteration']}/"
                  f"{status['max_iters']}" + (f", best bbox mAP {status['best_bbox_mAP']:.4f}"
                                              if status.get("best_bbox_mAP") is not None else ""))
            return 0 if status["state"] == "COMPLETED" else 1
        time.sleep(FOLLOW_POLL_S)


def cmd_cancel(args: argparse.Namespace) -> int:
    status = submission.cancel(_run_dir(args))
    print(f"cancelled run {status['run_name']} (job {status['job_id']}); it checkpoints on the way out — "
          f"`orch resume {status['run_name']}` continues it")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    result = submission.resume(_run_dir(args), args.executor)
    print(f"resumed run {result['run_name']} ({result['previous_state']}) as {result['executor']} job "
          f"{result['job_id']}, from {result['from_checkpoint'] or 'the start (no checkpoint yet)'}")
    return 0


__all__ = ["add_parser", "OrchError"]
