"""Trainer kind ``mmdet``: mmdetection, mmyolo or SSCMA (``tools/train.py`` over mmengine).

Runs ``tools/train.py CONFIG --work-dir <run_dir>/mmdet --launcher pytorch|none [--resume [CKPT]]
--cfg-options …`` in ``trainer.root``: under torchrun for more than one process, else one process
with ``--launcher none``. Where the plan goes (``--cfg-options``): ``optim_wrapper.optimizer.lr``,
``train_dataloader.batch_size`` / ``val_dataloader.batch_size`` (per GPU), ``train_cfg.max_epochs``
and ``train_cfg.val_interval`` in epochs (``trainer.by_epoch``, the default) or ``train_cfg.max_iters``
and ``val_interval`` in iterations, ``default_hooks.checkpoint.interval``,
``default_hooks.logger.interval``, the workers, ``randomness.seed``, and ``auto_scale_lr.enable=False``
because orch scaled the lr already. The config's ``param_scheduler`` (warmup, steps) is left as
it is: it is a list, and its entries differ from config to config. The dataset stays the config's
(``trainer.cfg_options`` can point it elsewhere: ``train_dataloader.dataset.ann_file=…``).

mmengine writes ``<work_dir>/last_checkpoint`` (the path of the newest checkpoint),
``epoch_N.pth`` / ``iter_N.pth`` and, per start, ``<work_dir>/<YYYYmmdd_HHMMSS>/vis_data/scalars.json``
(one JSON object per line: train lines with ``iter``/``epoch``/``time``, val lines with
``coco/bbox_mAP``… and ``step`` = the epoch).

At the preemption warning orch's hook (:mod:`jobs.mmengine_hook`, ``trainer.save_on_warning``) saves
``preempted_iter_K.pth``, points ``last_checkpoint`` at it and exits for the requeue. It goes in as
``default_hooks.orch_preemption`` (mmengine imports a dotted ``type``; ``PYTHONPATH`` names orch's
checkout), so the config's ``custom_hooks`` list stays as it is.
"""
from __future__ import annotations

import json
import re
from typing import Any

from orchestrator import storage
from orchestrator.kinds import base
from orchestrator.kinds.base import KindError, NodeCommand, Progress
from orchestrator.schema import Field

NAME = "mmdet"
KEYS: dict[str, Field] = {
    "root": Field((str,), doc="the mmdetection / mmyolo / SSCMA checkout (the folder holding tools/train.py)"),
    "config": Field((str,), doc="the model config (.py), relative to trainer.root or absolute"),
    "cfg_options": Field((dict,), default={}, doc="more --cfg-options, e.g. {model.bbox_head.num_classes: 3}"),
    "by_epoch": Field((bool,), default=True, doc="false for configs with an IterBasedTrainLoop"),
    "script": Field((str,), default="tools/train.py", doc="the training script, relative to trainer.root"),
    "resume_with_path": Field((bool,), default=True,
                              doc="false for scripts whose --resume takes no path (SSCMA's tools/train.py)"),
    "python": Field((str,), default="python3", doc="the python of the environment that has mmdetection"),
    "save_on_warning": Field((bool,), default=True,
                             doc="add orch's mmengine hook that saves a checkpoint at the preemption warning "
                                 "(jobs/mmengine_hook.py; needs orch's checkout importable by trainer.python)"),
}
REQUIRED = ("root", "config")
RESERVED = {
    "optim_wrapper.optimizer.lr": "optimizer.base_lr", "train_dataloader.batch_size": "data.batch_per_gpu",
    "val_dataloader.batch_size": "data.val_batch_per_gpu", "train_cfg.max_epochs": "schedule.epochs",
    "train_cfg.max_iters": "schedule.max_iters", "train_cfg.val_interval": "schedule.eval_every_epochs",
    "default_hooks.checkpoint.interval": "schedule.checkpoint_every_epochs", "work_dir": "work_dir",
    "auto_scale_lr.enable": "optimizer.lr_scaling", "randomness.seed": "seed", "resume": "`orch resume`",
    "default_hooks.orch_preemption.type": "trainer.save_on_warning",
}
TIMESTAMP_DIR = re.compile(r"\d{8}_\d{6}")
# orch's hook goes in as one more *default* hook: mmengine resolves a dotted type by importing it, and the
# config's custom_hooks (a list, which --cfg-options could only replace) stay as the user wrote them
HOOK_KEY = "default_hooks.orch_preemption.type"
HOOK_TYPE = "jobs.mmengine_hook.PreemptionCheckpointHook"
ORCH_ROOT = base.ORCH_ROOT


def output_dir(run_dir: str) -> str:
    return storage.join(run_dir, "mmdet")


def check(config: dict[str, Any], plan: dict[str, Any], source: str = "the config") -> None:
    trainer = base.checked_settings(config, NAME, KEYS, REQUIRED, RESERVED, "cfg_options", source)
    for key, value in trainer["cfg_options"].items():
        # mmengine's DictAction deletes spaces from a value and splits it at commas
        if isinstance(value, str) and (any(ch.isspace() for ch in value) or "," in value):
            raise KindError(f"{source}: trainer.cfg_options.{key} = {value!r} holds a space or a comma, which "
                            f"mmengine's --cfg-options deletes (spaces) or splits at (commas); use a path without "
                            f"them (a symlink), a YAML list for several values, or set it in the config file")
    if base.use_cpu(config) and plan["gpus"] > 1:
        raise KindError(f"mmengine's pytorch launcher starts NCCL, which needs GPUs, but resources.use_cpu is set "
                        f"with {plan['gpus']} processes; use --gpus 1 on CPU, or GPUs without resources.use_cpu")


def _options(config: dict[str, Any], plan: dict[str, Any], trainer: dict[str, Any]) -> dict[str, Any]:
    workers = (config.get("data") or {}).get("num_workers", 2)
    options: dict[str, Any] = {
        "optim_wrapper.optimizer.lr": plan["lr"],
        "train_dataloader.batch_size": plan["batch_per_gpu"],
        "val_dataloader.batch_size": plan.get("val_batch_per_gpu", plan["batch_per_gpu"]),
        "train_dataloader.num_workers": workers, "val_dataloader.num_workers": workers,
    }
    if trainer["by_epoch"]:
        options.update({"train_cfg.max_epochs": base.whole_epochs(plan),
                        "train_cfg.val_interval": base.period_epochs(plan["eval_period_iters"], plan),
                        "default_hooks.checkpoint.interval": base.period_epochs(plan["checkpoint_period_iters"], plan)})
    else:
        options.update({"train_cfg.max_iters": plan["max_iters"], "train_cfg.val_interval": plan["eval_period_iters"],
                        "default_hooks.checkpoint.interval": plan["checkpoint_period_iters"],
                        "default_hooks.checkpoint.by_epoch": False})
    options.update({"default_hooks.logger.interval": plan.get("log_period_iters", 50),
                    "auto_scale_lr.enable": False, "randomness.seed": config.get("seed", 0)})
    if trainer["save_on_warning"]:
        options[HOOK_KEY] = HOOK_TYPE
    options.update(trainer["cfg_options"])
    return options


def node_command(plan_doc: dict[str, Any], node: dict[str, Any], resume_from: str | None = None) -> NodeCommand:
    config, plan, run_dir = plan_doc["config"], plan_doc["plan"], plan_doc["run_dir"]
    trainer = base.settings(config, KEYS)
    root = storage.absolute(trainer["root"])
    single = plan["gpus"] == 1
    args = [trainer["script"], storage.absolute(trainer["config"], root), "--work-dir", output_dir(run_dir),
            "--launcher", "none" if single else "pytorch"]
    if resume_from:
        # mmdetection's --resume takes the checkpoint; SSCMA's is a flag that reads last_checkpoint
        args += ["--resume", resume_from] if trainer["resume_with_path"] else ["--resume"]
        # mmengine 0.10 pickles its message hub into checkpoints, which torch >= 2.6 refuses to load by
        # default (weights_only); the file is this run's own, written by the same code
        env_resume = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    else:
        env_resume = {}
    args += ["--cfg-options", *base.key_values(_options(config, plan, trainer))]
    env = {"ORCH_PLAN": storage.join(run_dir, "plan.json"), "ORCH_RUN_DIR": run_dir, **env_resume}
    if trainer["save_on_warning"]:
        env["PYTHONPATH"] = ORCH_ROOT   # the launcher appends the job's own PYTHONPATH (jobs/toolbox_job.py)
    if base.use_cpu(config):
        env["CUDA_VISIBLE_DEVICES"] = ""
    if single:
        return NodeCommand(argv=[trainer["python"], *args], env=env, cwd=root, launcher="single")
    # torchrun's own agent would die of the warning while the workers save; orch's ignores it
    agent = "jobs.torchrun_wrapper" if trainer["save_on_warning"] else "torch.distributed.run"
    return NodeCommand(argv=args, env=env, cwd=root, launcher="torchrun", python=trainer["python"], agent=agent)


def checkpoint_candidates(run_dir: str) -> list[str]:
    out = output_dir(run_dir)
    named: list[str] = []
    pointer = storage.join(out, "last_checkpoint")
    try:
        recorded = storage.read_text(pointer).strip()
    except FileNotFoundError:
        recorded = ""
    if recorded:
        # written as the path at training time; the run dir may be mounted elsewhere now
        named = [storage.join(out, storage.basename(recorded))]
    numbered = base.numbered_files(out, r"epoch_(\d+)\.pth") + base.numbered_files(out, r"iter_(\d+)\.pth")
    return named + [url for url in numbered if url not in named]


def resume_checkpoint(run_dir: str, plan_doc: dict[str, Any] | None = None,
                      loadable: base.Loadable | None = None) -> str | None:
    """The checkpoint ``last_checkpoint`` names, else the newest loadable ``epoch_N``/``iter_N.pth``.

    With ``trainer.resume_with_path: false`` the script resumes from what ``last_checkpoint`` names:
    when this returns another file, the job must write its path into ``last_checkpoint`` first.
    """
    return base.newest_loadable(checkpoint_candidates(run_dir), loadable)


def progress(run_dir: str, plan_doc: dict[str, Any]) -> Progress:
    plan = plan_doc["plan"]
    trainer = base.settings(plan_doc["config"], KEYS)
    max_epochs = base.whole_epochs(plan) if trainer["by_epoch"] else None
    max_iters = max_epochs * plan["iters_per_epoch"] if max_epochs else plan["max_iters"]
    out = output_dir(run_dir)
    train_line: dict[str, Any] = {}
    evals: list[dict[str, Any]] = []
    for name in sorted(n for n in storage.listdir(out) if TIMESTAMP_DIR.fullmatch(n)):  # one folder per start
        for line in base.read_lines(storage.join(out, name, "vis_data", "scalars.json")):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            if any(k.endswith("bbox_mAP") for k in record):
                evals.append(record)
            elif "iter" in record:
                train_line = record
    metrics = {k: v for k, v in train_line.items() if isinstance(v, (int, float))}
    bbox_mAP = best = None
    if evals:
        key = next(k for k in evals[-1] if k.endswith("bbox_mAP"))
        prefix = key[:-len("bbox_mAP")]
        metrics.update({k[len(prefix):] if k.startswith(prefix) else k: v for k, v in evals[-1].items()
                        if isinstance(v, (int, float)) and k not in ("step", "time", "data_time")})
        bbox_mAP = evals[-1][key]
        best = max(r[key] for r in evals if key in r)
    iteration = int(train_line.get("iter", 0))
    eta = train_line["time"] * (max_iters - iteration) if "time" in train_line and max_iters >= iteration else None
    return Progress(kind=NAME, epoch=train_line.get("epoch", 0) if max_epochs else None, max_epochs=max_epochs,
                    iteration=iteration, max_iters=max_iters, metrics=metrics, bbox_mAP=bbox_mAP,
                    best_bbox_mAP=best, latest_checkpoint=base.newest_loadable(checkpoint_candidates(run_dir), None),
                    eta_s=eta)
