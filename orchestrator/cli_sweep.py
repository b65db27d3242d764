"""`orch sweep CFG -p KEY=VALUES ...` · `orch sweep status SWEEP` · `orch sweep resume SWEEP`.

Parse, call orchestrator.sweep, print. `status` and `resume` are words in the CONFIG position
(argparse cannot mix a positional config with sub-commands), so they share one parser.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import sys
from typing import Any

from orchestrator import config as config_mod
from orchestrator import runs, storage, sweep
from orchestrator.cli_core import add_config_arguments, load_config_and_storage, split_overrides
from orchestrator.cli_runs import add_resource_flags, resource_overrides
from orchestrator.errors import OrchError
from orchestrator.executors import get_executor

ACTIONS = ("status", "resume")
USAGE = """orch sweep CONFIG -p KEY=VALUES [-p ...] [--random N [--seed S]] [--max-parallel K] [--name NAME]
                  [resource flags] [--hold] [--dry-run] [key=value ...]
       orch sweep status SWEEP [--json] [--csv FILE] [--work-dir DIR]
       orch sweep resume SWEEP [--max-parallel K] [--work-dir DIR]"""
DESCRIPTION = """Plan one run per point of a grid (-p key=a,b,c; every combination) or of a random search
(--random N with -p key=loguniform(1e-4,1e-2) | uniform(a,b) | randint(a,b) | choice(a,b,c)),
and submit them all as ONE SLURM job array (--array=0-(N-1)%K). Values are read as YAML, like
overrides. Each point is a normal run dir <work_dir>/<sweep>/p000, ... (orch status/logs/resume
work on it). Fire-and-forget: follow with `orch sweep status SWEEP`.

status: one row per point (parameters, state, iteration, best bbox mAP), best first.
resume: resubmit the points that are not completed (nor queued/running) as one new array."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="grid or random search as one SLURM job array; `sweep status|resume SWEEP`",
                       usage=USAGE, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p)
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUES",
                   help="a swept key: v1,v2,... (grid) or a distribution for --random; repeat for more keys")
    p.add_argument("--random", type=int, metavar="N", help="random search: draw N points instead of the grid")
    p.add_argument("--seed", type=int, default=0, help="seed of the random search (default 0: reproducible)")
    p.add_argument("--max-parallel", type=int, metavar="K", help="at most K points running at a time (%%K)")
    p.add_argument("--name", help="sweep name (default: <config name>-sweep-<date>-<time>)")
    add_resource_flags(p)
    p.add_argument("--hold", action="store_true", help="submit the array held (start it with `scontrol release`)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the points, each point's plan and the sbatch script; write and submit nothing")
    p.add_argument("--preflight", action="store_true",
                   help="first run one real training step on this CPU per distinct model/data/batch combination; "
                        "submit nothing if one fails")
    group = p.add_argument_group("sweep status / resume")
    group.add_argument("--json", action="store_true", help="status: print JSON")
    group.add_argument("--csv", metavar="FILE", help="status: also write the table as CSV (path or URL)")
    group.add_argument("--work-dir", help="where sweeps live, to find SWEEP by name "
                                          "(default: ./runs or $ORCH_WORK_DIR)")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.config in ACTIONS:
        return _cmd_action(args)
    for flag, value in (("--json", args.json), ("--csv", args.csv), ("--work-dir", args.work_dir)):
        if value:
            raise OrchError(f"{flag} belongs to `orch sweep status`; starting a sweep does not take it")
    return cmd_submit(args)


def cmd_submit(args: argparse.Namespace) -> int:
    overrides = split_overrides(args) + resource_overrides(args)
    loaded = load_config_and_storage(args.config, overrides)
    config = loaded.data
    specs = [sweep.parse_param(text) for text in args.param]
    prefix = config.get("name") or os.path.splitext(os.path.basename(args.config))[0]
    name = runs.check_run_name(args.name) if args.name is not None else runs.new_run_name(f"{prefix}-sweep")
    prepared = sweep.prepare_sweep(config, specs, name, random_count=args.random, seed=args.seed,
                                   max_parallel=args.max_parallel, hold=args.hold,
                                   fixed_keys=[config_mod.parse_override(o)[0] for o in overrides])
    if args.preflight:
        from orchestrator import preflight

        for line in preflight.check_sweep(prepared, storage.active()):
            print(line, flush=True)
    if args.dry_run:
        print(dry_run_text(prepared))
        return 0
    for warning in sorted({w for p in prepared.points for w in p.plan.warnings}):
        print(f"warning: {warning}", file=sys.stderr)
    result = sweep.submit_sweep(prepared, config_file=loaded.path)
    ids = result["array_job_ids"]
    held = f" (held: `scontrol release {' '.join(ids)}` starts {'it' if len(ids) == 1 else 'them'})" \
        if args.hold else ""
    print(f"submitted sweep {result['name']}: {result['points']} points as "
          f"{arrays_text(prepared.arrays, ids, result['arrays'])}{held}")
    print(f"  sweep dir: {result['sweep_dir']}")
    print(f"  follow:    orch sweep status {result['sweep_dir']}   ·   "
          f"orch status {storage.join(result['sweep_dir'], prepared.points[0].name)}")
    return 0


def _cmd_action(args: argparse.Namespace) -> int:
    action = args.config
    if len(args.overrides) != 1:
        raise OrchError(f"usage: orch sweep {action} SWEEP (a sweep dir, or a sweep name under --work-dir)")
    submit_only = {"-p": args.param, "--random": args.random, "--name": args.name, "--dry-run": args.dry_run,
                   "--hold": args.hold, "--preflight": args.preflight, **{f"--{k.replace('_', '-')}": v for k, v in vars(args).items()
                                           if k in ("gpus", "gpus_per_node", "nodes", "partition", "time",
                                                    "account", "qos", "constraint", "exclude", "cpus_per_gpu",
                                                    "mem_per_gpu", "executor") and v is not None}}
    given = [flag for flag, value in submit_only.items() if value]
    if given:
        raise OrchError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for starting a sweep, "
                        f"not for `orch sweep {action}`")
    sweep_dir = sweep.find_sweep(args.overrides[0], args.work_dir)
    if action == "status":
        if args.max_parallel is not None:
            raise OrchError("--max-parallel is for `orch sweep resume` or starting a sweep")
        status = sweep.sweep_status(sweep_dir)
        if args.csv:
            write_csv(status, args.csv)
        print(json.dumps(status, indent=2, default=str) if args.json else format_status(status))
        return 0
    if args.json or args.csv:
        raise OrchError("--json and --csv are for `orch sweep status`")
    result = sweep.resume_sweep(sweep_dir, args.max_parallel)
    was = ", ".join(f"{name} ({state})" for name, state in result["previous_states"].items())
    print(f"resumed sweep {result['name']}: {len(result['points'])} point(s) as "
          f"{arrays_text(None, result['array_job_ids'], result['arrays'])}: {was}")
    return 0


# ---------------------------------------------------------------- text

def arrays_text(arrays: list[sweep.ArrayPart] | None, ids: list[str], specs: list[str]) -> str:
    """``SLURM job array 100 (--array=0-3%3)``, or each array of a sweep bigger than MaxArraySize."""
    if len(ids) == 1:
        return f"SLURM job array {ids[0]} (--array={specs[0]})"
    parts = [f"{job_id} (--array={spec}" + (f", points from {part.offset}" if part else "") + ")"
             for job_id, spec, part in zip(ids, specs, arrays or [None] * len(ids))]
    return f"{len(ids)} SLURM job arrays {', '.join(parts)}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]


def format_points(prepared: sweep.PreparedSweep) -> str:
    """The points with their swept values and each point's own plan (lr, batch, iterations)."""
    keys = [spec.key for spec in prepared.specs]
    rows = [[p.name, *(sweep.show_value(p.params[k]) for k in keys), f"{p.plan.lr:.6g}",
             str(p.plan.total_batch_size), str(p.plan.iters_per_epoch), str(p.plan.max_iters),
             str(p.plan.warmup_iters)] for p in prepared.points]
    lines = table(["POINT", *keys, "lr", "total batch", "iters/epoch", "max iters", "warmup"], rows)
    warned: dict[str, list[str]] = {}
    for point in prepared.points:
        for warning in point.plan.warnings:
            warned.setdefault(warning, []).append(point.name)
    lines += [f"warning ({', '.join(names)}): {warning}" for warning, names in warned.items()]
    return "\n".join(lines)


def describe(prepared: sweep.PreparedSweep) -> str:
    n, first = len(prepared.points), prepared.points[0].plan
    if prepared.mode == "grid":
        shape = " × ".join(f"{s.key} ({len(s.args)})" for s in prepared.specs)
        what = f"grid of {n} point{'s' * (n != 1)} over {shape}"
    else:
        drawn = ", ".join(f"{s.key} ~ {s.kind}({', '.join(map(sweep.show_value, s.args))})" if s.kind != "values"
                          else f"{s.key} ∈ {{{', '.join(map(sweep.show_value, s.args))}}}" for s in prepared.specs)
        what = f"random search: {n} point{'s' * (n != 1)} drawn with seed {prepared.seed} from {drawn}"
    limit = (f"at most {prepared.max_parallel} running at a time" if prepared.max_parallel
             else "no limit on running tasks")
    res = prepared.request
    partition = f", partition {res.partition}" if res.partition else ""
    arrays = f"one job array of {n} task{'s' * (n != 1)}" if len(prepared.arrays) == 1 else \
        (f"{len(prepared.arrays)} job arrays of {', '.join(str(len(a.task_ids)) for a in prepared.arrays)} tasks "
         "(the cluster's MaxArraySize), released together")
    return (f"{what}\n{arrays} ({limit}); each point: {first.nodes} node(s) × "
            f"{first.gpus_per_node} GPU(s), time {res.time}{partition}")


def dry_run_text(prepared: sweep.PreparedSweep) -> str:
    executor = get_executor(prepared.executor)
    point_dir = storage.join(prepared.sweep_dir, sweep.point_format(len(prepared.points)))
    scripts = []
    for k, part in enumerate(prepared.arrays):
        req = dataclasses.replace(prepared.request, array_size=len(part.task_ids), max_parallel=part.max_parallel)
        script = executor.array_script(req, part.task_ids, prepared.run_dir_format, task_offset=part.offset)
        what = (f"one job array; task i runs {point_dir} with i" if len(prepared.arrays) == 1 else
                f"job array {k + 1} of {len(prepared.arrays)}; task i runs {point_dir} with {part.offset} + i")
        scripts.append(f"# {prepared.executor} submission script ({what})\n\n{script}")
    return (f"sweep {prepared.name} → {prepared.sweep_dir}  (dry run: nothing submitted)\n"
            f"{describe(prepared)}\n\n{format_points(prepared)}\n\n" + "\n\n".join(scripts))


def format_status(status: dict[str, Any]) -> str:
    keys = status["parameters"]
    rows = [[r["point"], *(sweep.show_value(r["params"].get(k)) for k in keys), r["state"],
             f"{r['iteration']}/{r['max_iters']}",
             f"{r['best_bbox_mAP']:.4f}" if r["best_bbox_mAP"] is not None else "-"] for r in status["points"]]
    counts = ", ".join(f"{n} {state}" for state, n in sorted(status["counts"].items()))
    arrays = ", ".join(status["array_job_ids"]) or "-"
    lines = [f"sweep {status['name']}: {len(rows)} points ({counts}); job array(s) {arrays}"]
    lines += table(["POINT", *keys, "STATE", "ITER", "BEST mAP"], rows)
    return "\n".join(lines)


def write_csv(status: dict[str, Any], url: str) -> None:
    keys = status["parameters"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["point", *keys, "state", "iteration", "max_iters", "best_bbox_mAP", "bbox_mAP", "job_id",
                     "attempt", "run_dir"])
    for r in status["points"]:
        writer.writerow([r["point"], *(sweep.show_value(r["params"].get(k)) for k in keys), r["state"],
                         r["iteration"], r["max_iters"], r["best_bbox_mAP"], r["bbox_mAP"], r["job_id"], r["attempt"],
                         r["run_dir"]])
    storage.write_text(url, out.getvalue())
