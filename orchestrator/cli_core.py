"""`orch plan` and `orch config show`: the torch-free commands that answer in well under a second."""
from __future__ import annotations

import argparse
import json

from orchestrator import config as config_mod
from orchestrator.errors import OrchError


def positive_int(text: str) -> int:
    """argparse type for counts and sizes."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run config (YAML)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="config overrides, values parsed as YAML (e.g. optimizer.base_lr=0.01)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    plan = sub.add_parser("plan", help="show the plan (lr, iterations, periods, nodes) for a config",
                          description="Plan a run: linear LR scaling, epochs → iterations, nodes × GPUs.")
    add_config_arguments(plan)
    plan.add_argument("--gpus", type=positive_int, help="total GPUs (default: resources.gpus)")
    plan.add_argument("--train-images", type=positive_int,
                      help="plan for this many training images instead of reading data.train.ann_file")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(func=cmd_plan)

    cfg = sub.add_parser("config", help="inspect configs")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    cfg_sub.required = True
    show = cfg_sub.add_parser("show", help="print the fully resolved config (includes and overrides applied)")
    add_config_arguments(show)
    show.add_argument("--explain", action="store_true", help="say which file or override set each key")
    show.set_defaults(func=cmd_config_show)


def split_overrides(args: argparse.Namespace) -> list[str]:
    """Overrides are key=value words; anything else after the config is a mistake worth naming."""
    for word in args.overrides:
        if "=" not in word:
            raise OrchError(f"unexpected argument {word!r}: overrides look like key.sub=value")
    return list(args.overrides)


def load_config_and_storage(path: str, overrides: list[str]) -> config_mod.LoadedConfig:
    """Load a config and use its storage_options in this process from now on, on top of the user's
    ``$ORCH_STORAGE_OPTIONS`` (what a command that submits then hands on to the job)."""
    from orchestrator import storage

    loaded = config_mod.load_config(path, overrides)
    from_config = storage.StorageOptions.parse(loaded.data.get("storage_options"), source=f"storage_options in {path}")
    storage.use(storage.StorageOptions.from_env().merged(from_config))
    return loaded


def cmd_plan(args: argparse.Namespace) -> int:
    from orchestrator import planner, runs

    loaded = load_config_and_storage(args.config, split_overrides(args))
    plan = runs.build_plan(loaded.data, gpus=args.gpus, train_images=args.train_images)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        print(f"plan for {args.config}")
        print(planner.format_plan(plan))
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    loaded = config_mod.load_config(args.config, split_overrides(args))
    if args.explain:
        print(config_mod.explain(loaded))
    else:
        print(config_mod.to_yaml(config_mod.redact_secrets(loaded.data)), end="")
    return 0
