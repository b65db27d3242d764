"""The `orch` command line: parse arguments, call one function, print. Nothing else lives here.

Command groups that own a lot of options live next to their logic and register themselves
through an ``add_parser(subparsers)`` function (e.g. ``orchestrator/cli_data.py``); each parser
sets ``func`` to a callable taking the parsed args and returning an exit code.
"""
from __future__ import annotations

import argparse
import os
import sys

from orchestrator.errors import OrchError


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orch",
        description="Plan, submit, follow and resume detector fine-tuning jobs on SLURM or locally.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    from orchestrator import cli_core
    cli_core.add_parsers(sub)
    for module_name in _COMMAND_MODULES:
        try:
            module = __import__(module_name, fromlist=["add_parser"])
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # a command group that has not landed yet
        module.add_parser(sub)
    return parser


# Command groups registered by their own modules (torch-free at import time).
_COMMAND_MODULES = [
    "orchestrator.cli_data",
    "orchestrator.cli_runs",
    "orchestrator.cli_sweep",
    "orchestrator.cli_model",
]


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # key=value overrides may follow options (`orch plan cfg.yml --gpus 16 a.b=1`)
        if not hasattr(args, "overrides") or any("=" not in w or w.startswith("-") for w in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    try:
        from orchestrator import storage

        # how to reach a run or data on a bucket, for every command; a config adds its own on top
        storage.use(storage.StorageOptions.from_env())
        return int(args.func(args) or 0)
    except OrchError as exc:
        print(f"orch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("orch: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours: still one paragraph, the traceback on request
        if os.environ.get("ORCH_DEBUG"):
            raise
        print(f"orch: internal error: {type(exc).__name__}: {exc} (set ORCH_DEBUG=1 to see the traceback, "
              "and please report it)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
