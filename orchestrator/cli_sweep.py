"""`orch sweep CFG -p KEY=VALUES ...` · `orch sweep status SWEEP` · `orch sweep resume SWEEP`.

Parse, call orchestrator.sweep, print. `status` and `resume` are words in the CONFIG position
(argparse cannot mix a positional config with sub-commands), so they share one parser.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from orchestrator import config as config_mod
from orchestrator import runs, storage, sweep
from orchestrator.cli_core import add_config_arguments, split_overrides
from orchestrator.cli_runs import add_resource_flags, resource_overrides
from orchestrator.errors import OrchError

ACTIONS = ("status", "resume")
USAGE = """orch sweep CONFIG -p KEY=VALUES [-p ...] [--random N [--seed S]] [--max-parallel K] [--name NAME]
                  [resource flags] [--hold] [--dry-run] [key=value ...]
       orch sweep status SWEEP [--json] [--csv FILE] [--work-dir DIR]
       orch sweep resume SWEEP [--max-parallel K] [--work-dir DIR]"""
DESCRIPTION = """Plan one run per point of a grid (-p key=a,b,c; every combination) or of a random search
(--random N with -p key=loguniform(1e-4,1e-2) | uniform(a,b) | randint(a,b) | choice(a,b,c)),
and submit them all as ONE SLURM job array (--array=0-(N-1)%%K). Values are read as YAML, like
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
    group = p.add_argument_group("sweep status / resume")
    group.add_argument("--json", action="store_true", help="status: print JSON")
    group.add_argument("--csv", metavar="FILE", help="status: also write the table as CSV (path or URL)")
    group.add_argument("--work-dir", help="where sweeps live, to find SWEEP by name (default: ./runs or $ORCH_WORK_DIR)")
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
    loaded = config_mod.load_config(args.config, overrides)
    config = loaded.data
    storage.configure(config.get("storage_options"))
    specs = [sweep.parse_param(text) for text in args.param]
    prefix = config.get("name") or os.path.splitext(os.path.basename(args.config))[0]
    name = runs.check_run_name(args.name) if args.name is not None else runs.new_run_name(f"{prefix}-sweep")
    prepared = sweep.prepare_sweep(config, specs, name, random_count=args.random, seed=args.seed,
                                   max_parallel=args.max_parallel, hold=args.hold,
                                   fixed_keys=[config_mod.parse_override(o)[0] for o in overrides])
    if args.dry_run:
        print(sweep.dry_run_text(prepared))
        return 0
    for warning in sorted({w for p in prepared.points for w in p.plan.warnings}):
        print(f"warning: {warning}", file=sys.stderr)
    result = sweep.submit_sweep(prepared, config_file=loaded.path)
    held = " (held: `scontrol release " + result["array_job_id"] + "` starts it)" if args.hold else ""
    print(f"submitted sweep {result['name']}: {result['points']} points as SLURM job array "
          f"{result['array_job_id']} (--array={result['array']}){held}")
    print(f"  sweep dir: {result['sweep_dir']}")
    print(f"  follow:    orch sweep status {result['sweep_dir']}   ·   "
          f"orch status {storage.join(result['sweep_dir'], prepared.points[0].name)}")
    return 0


def _cmd_action(args: argparse.Namespace) -> int:
    action = args.config
    if len(args.overrides) != 1:
        raise OrchError(f"usage: orch sweep {action} SWEEP (a sweep dir, or a sweep name under --work-dir)")
    submit_only = {"-p": args.param, "--random": args.random, "--name": args.name, "--dry-run": args.dry_run,
                   "--hold": args.hold, **{f"--{k.replace('_', '-')}": v for k, v in vars(args).items()
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
            sweep.write_csv(status, args.csv)
        print(json.dumps(status, indent=2, default=str) if args.json else sweep.format_status(status))
        return 0
    if args.json or args.csv:
        raise OrchError("--json and --csv are for `orch sweep status`")
    result = sweep.resume_sweep(sweep_dir, args.max_parallel)
    was = ", ".join(f"{name} ({state})" for name, state in result["previous_states"].items())
    print(f"resumed sweep {result['name']}: {len(result['points'])} point(s) as SLURM job array "
          f"{result['array_job_id']} (--array={result['array']}): {was}")
    return 0
