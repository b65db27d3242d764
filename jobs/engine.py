"""The training loop, top to bottom: resume_or_load → (step → log → eval → checkpoint)* → close.

Exactness: the batch order depends only on (seed, epoch, step), augmentation only on
(seed, epoch, image index), the lr only on the iteration, and every RNG is saved per rank, so a
run resumed from any checkpoint continues bitwise as if it had never stopped.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import torch

from jobs import data as data_mod
from jobs import distributed as dist_mod
from jobs import evaluate, models, preemption
from jobs.checkpoint import CheckpointManager, capture_rng_state, restore_rng_state
from jobs.distributed import DistInfo
from jobs.ema import ModelEMA
from jobs.runlog import Progress, RunLog, peak_rss_mb
from jobs.schedule import lr_factor
from orchestrator import runs
from orchestrator.errors import OrchError

log = logging.getLogger("orch.job")


class TrainingError(OrchError):
    """The run cannot go on (non-finite loss, incompatible checkpoint); the message shows the evidence."""


class Trainer:
    def __init__(self, doc: dict[str, Any], dist_info: DistInfo, resume: bool = True) -> None:
        self.doc, self.plan, self.config = doc, doc["plan"], doc["config"]
        self.run_dir = doc["run_dir"]
        self.dist = dist_info
        self.device = dist_info.device
        self.resume = resume
        self.iteration = 0
        self.best_metric: float | None = None
        self.pending_eval = False
        self.last_eval: dict[str, float] = {}
        self.stop = preemption.install()
        self.runlog = RunLog(self.run_dir, self.plan["max_iters"], enabled=dist_info.is_main)
        self.checkpoints = CheckpointManager(self.run_dir, keep_last=self.config["schedule"]["keep_last"],
                                             logger=log) if dist_info.is_main else None

        rank, world = dist_info.rank, dist_info.world_size
        self.train_loader = data_mod.build_train_loader(self.config, self.plan, rank, world)
        self.val_loader = (data_mod.build_val_loader(self.config, self.plan, rank, world)
                           if self.config["data"]["val"]["ann_file"] else None)
        num_classes = len(self.train_loader.dataset.category_ids) + 1  # + background
        seed = int(self.config["seed"])
        seed_everything(seed)  # the same initial weights on every rank and in every run
        self.model = models.build_model(self.config["model"], num_classes).to(self.device)
        self.adapter = models.build_adapter(self.config["model"])  # torchvision or transformers contract
        self.ema = ModelEMA.from_config(self.model, self.config["model"])
        seed_everything(seed * 1000 + 1 + rank)  # each rank's own stream for training-time randomness
        self.ddp_model = self._wrap_ddp(self.model)
        self.optimizer = self._build_optimizer()
        self.use_amp = self.device.type == "cuda" and self.config["schedule"]["amp"]
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

    # ---------------------------------------------------------------- building
    def _wrap_ddp(self, model: torch.nn.Module) -> torch.nn.Module:
        if not dist_mod.is_distributed():
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        opt = self.config["optimizer"]
        groups = models.param_groups(self.model, self.plan["lr"], opt["weight_decay"], opt["param_groups"],
                                     norm_weight_decay=opt.get("norm_weight_decay"))
        if opt["name"] == "sgd":
            return torch.optim.SGD(groups, lr=self.plan["lr"], momentum=opt["momentum"],
                                   weight_decay=opt["weight_decay"])
        return torch.optim.AdamW(groups, lr=self.plan["lr"], betas=tuple(opt["betas"]),
                                 weight_decay=opt["weight_decay"])

    # ---------------------------------------------------------------- resume or load
    def resume_or_load(self) -> None:
        """Continue the run from its latest complete checkpoint; else fine-tune from init_checkpoint."""
        probe = CheckpointManager(self.run_dir, keep_last=self.config["schedule"]["keep_last"], logger=log)
        latest = probe.latest() if self.resume else None
        if latest:
            self._load_state(probe.load(latest), latest)
            return
        init = self.config["model"].get("init_checkpoint")
        if init:
            report = self.adapter.load_init(self.model, init)
            if self.ema is not None:
                self.ema.reset(self.model)
            skipped = [entry[0] for entry in report["skipped"]] or "none"
            self.runlog.info(f"fine-tuning from {init} (not a resume): loaded {len(report['loaded'])} tensors; "
                             f"skipped (shape differs, e.g. class heads) {skipped}; missing (fresh init) "
                             f"{report['missing'] or 'none'}; unexpected {len(report['unexpected'])}")
            dist_mod.barrier()

    def _load_state(self, state: dict[str, Any], url: str) -> None:
        if state.get("plan_hash") != self.doc["plan_hash"]:
            raise TrainingError(
                f"checkpoint {url} was written with another plan (other GPU count, batch, lr or data); "
                "resuming it would not be exact. Start a new run, or submit with the original plan "
                "(`orch resume RUN` reuses it)")
        rng = state["rng"]
        if len(rng) != self.dist.world_size:
            raise TrainingError(f"checkpoint {url} holds {len(rng)} ranks, this job has {self.dist.world_size}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            if not state.get("ema"):
                raise TrainingError(f"checkpoint {url} holds no EMA weights but model.ema is set; resume "
                                    "with the run's own config (`orch resume RUN`)")
            self.ema.load_state_dict(state["ema"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.best_metric = state.get("best_metric")
        self.pending_eval = bool(state.get("pending_eval"))
        self.last_eval = dict(state.get("last_eval") or {})
        restore_rng_state(rng[self.dist.rank])
        self.runlog.info(f"resumed from {url} at iteration {self.iteration}/{self.plan['max_iters']}")

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly; gathered on every rank, saved by rank 0."""
        rng = dist_mod.all_gather_objects(capture_rng_state())
        ipe = self.plan["iters_per_epoch"]
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            # the lr is a pure function of the iteration (jobs/schedule.py): this is all its state
            "lr_scheduler": {"policy": self.plan["lr_policy"], "iteration": self.iteration},
            "scaler": self.scaler.state_dict() if self.use_amp else {},
            "iteration": self.iteration,
            "epoch": self.iteration // ipe,
            "step_in_epoch": self.iteration % ipe,
            "sampler_seed": int(self.config["seed"]),
            "rng": rng,
            "best_metric": self.best_metric,
            "pending_eval": self.pending_eval,
            "last_eval": self.last_eval,
            "plan_hash": self.doc["plan_hash"],
            "world_size": self.dist.world_size,
        }

    # ---------------------------------------------------------------- the loop
    def train(self) -> str:
        """Run to the end or to a preemption; returns the final state name."""
        plan = self.plan
        self.runlog.status(state="RUNNING", iteration=self.iteration)
        self.runlog.flush()
        if self.pending_eval:
            self.evaluate_and_save()
        batches = None
        progress = Progress()
        while self.iteration < plan["max_iters"]:
            epoch, step = divmod(self.iteration, plan["iters_per_epoch"])
            if batches is None or step == 0:
                self.train_loader.batch_sampler.set_epoch(epoch, start_step=step)
                batches = iter(self.train_loader)  # starts at (epoch, step): nothing is replayed
            data_start = time.perf_counter()
            images, targets = next(batches)
            data_time = time.perf_counter() - data_start
            loss_dict = self.run_step(images, targets)
            self.iteration += 1
            progress.tick(data_time)
            self.runlog.progress_bar(self.iteration, progress.step_time * (plan["max_iters"] - self.iteration))
            stop = self.after_step(loss_dict, progress)
            if stop:
                return "PREEMPTED"
        self.finish()
        return "COMPLETED"

    def run_step(self, images: list[torch.Tensor], targets: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = [img.to(self.device, non_blocking=True) for img in images]
        targets = [{k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        factor = lr_factor(self.iteration, self.plan)
        for group in self.optimizer.param_groups:
            group["lr"] = self.plan["lr"] * factor * group.get("lr_mult", 1.0)
        self.ddp_model.train()
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.use_amp else contextlib.nullcontext()
        with autocast:
            scale = data_mod.multiscale_size(self.config["data"].get("augment"), int(self.config["seed"]),
                                             self.iteration, self.plan["iters_per_epoch"])
            loss_dict = (self.adapter.forward_train(self.ddp_model, images, targets) if scale is None else
                         self.adapter.forward_train(self.ddp_model, images, targets, size=scale))
        loss = sum(loss_dict.values())
        # one collective per step: did any rank see a non-finite loss or a stop signal?
        nonfinite, stop = dist_mod.all_reduce_max(
            [0.0 if torch.isfinite(loss).item() else 1.0, 1.0 if self.stop.requested else 0.0], self.device)
        if nonfinite:
            self._fail_nonfinite(loss_dict)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        clip = self.config["optimizer"].get("clip_grad_norm")
        if clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        self._stop_agreed = bool(stop)
        return {k: v.detach() for k, v in loss_dict.items()}

    def after_step(self, loss_dict: dict[str, torch.Tensor], progress: Progress) -> bool:
        plan, it = self.plan, self.iteration
        if it % plan["log_period_iters"] == 0 or it == plan["max_iters"]:
            self.log_step(loss_dict, progress)
        if self._stop_agreed:
            self.pending_eval = it % plan["eval_period_iters"] == 0 or it == plan["max_iters"]
            self.save(preempted=True)
            return True
        if it % plan["eval_period_iters"] == 0 or it == plan["max_iters"]:
            self.pending_eval = True
            self.evaluate_and_save()
        elif it % plan["checkpoint_period_iters"] == 0:
            self.save()
        return False

    def log_step(self, loss_dict: dict[str, torch.Tensor], progress: Progress) -> None:
        losses = dist_mod.all_reduce_mean({k: float(v) for k, v in loss_dict.items()}, self.device)
        losses["loss"] = sum(losses.values())
        if not self.dist.is_main:
            return
        plan, it = self.plan, self.iteration
        epoch, step = divmod(it - 1, plan["iters_per_epoch"])
        lr = self.optimizer.param_groups[0]["lr"] / self.optimizer.param_groups[0].get("lr_mult", 1.0)
        eta = progress.step_time * (plan["max_iters"] - it)
        img_s = plan["total_batch_size"] / max(progress.step_time, 1e-9)
        loss_text = "  ".join(f"{k}: {v:.4f}" for k, v in losses.items())
        # CUDA: peak allocated by torch; CPU: the process's peak resident set (ru_maxrss)
        memory_mb = (torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda"
                     else peak_rss_mb())
        self.runlog.info(f"Epoch [{epoch + 1}][{step + 1}/{plan['iters_per_epoch']}]  lr: {lr:.4e}  {loss_text}  "
                         f"time: {progress.step_time:.3f}  data_time: {progress.data_time:.3f}  "
                         f"eta: {runs.format_eta(eta)}" + (f"  memory: {memory_mb:.0f}" if memory_mb else ""))
        record = {"type": "train", "iteration": it, "epoch": epoch + 1, "lr": lr, **losses,
                  "time": progress.step_time, "data_time": progress.data_time, "img_per_s": img_s,
                  "memory_mb": memory_mb}
        self.runlog.metrics(record)
        self.runlog.scalars({**losses, "lr": lr, "img_per_s": img_s, "data_time": progress.data_time,
                             "data_wait_fraction": progress.data_time / max(progress.step_time, 1e-9),
                             "memory_mb": memory_mb}, it, "train")
        self.runlog.status(iteration=it, epoch=epoch + 1, eta_s=round(eta),
                           metrics={k: round(v, 5) for k, v in losses.items()})
        self.runlog.flush()

    # ---------------------------------------------------------------- eval and checkpoints
    def evaluate_and_save(self) -> None:
        if self.val_loader is not None:
            dataset = self.val_loader.dataset
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                # with model.ema the average is what is evaluated (and what the published numbers use)
                eval_model = self.ema.module if self.ema is not None else self.model
                result = evaluate.evaluate_model(eval_model, self.val_loader, dataset.coco,
                                                 dataset.label_to_cat_id, self.device,
                                                 predict=self.adapter.predict)
            self.last_eval = {k: float(v) for k, v in result["stats"].items()}
            improved = self.best_metric is None or self.last_eval["bbox_mAP"] > self.best_metric
            if improved:
                self.best_metric = self.last_eval["bbox_mAP"]
            self._report_eval(result)
        else:
            improved = False
        self.pending_eval = False
        self.save(best=improved)

    def _report_eval(self, result: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        self.runlog.info(f"Evaluation at iteration {self.iteration}:\n{result['summary']}")
        metrics = dict(self.last_eval)
        self.runlog.metrics({"type": "eval", "iteration": self.iteration, **metrics})
        self.runlog.scalars(metrics, self.iteration, "val")
        self.runlog.status(eval=metrics, best_bbox_mAP=self.best_metric)
        self.runlog.flush()

    def save(self, best: bool = False, preempted: bool = False) -> None:
        state = self.state_dict()
        final = self.iteration == self.plan["max_iters"]
        if self.checkpoints is not None:
            self.checkpoints.save(state, self.iteration, best=best, final=final)
            if preempted or final:
                self.checkpoints.wait()
            self.runlog.status(latest_checkpoint=self.checkpoints.last_saved_url)
        if preempted:
            self.runlog.info(f"stop requested ({self.stop.signal_name or 'by another rank'}): checkpointed at "
                             f"iteration {self.iteration}; exiting so the job can be requeued")
            self.runlog.status(state="PREEMPTED", iteration=self.iteration)
            self.runlog.flush()
        dist_mod.barrier()

    def finish(self) -> None:
        self.runlog.status(state="COMPLETED", iteration=self.iteration, best_bbox_mAP=self.best_metric)
        if self.dist.is_main and self.last_eval:
            self.runlog.hparams(_hparams(self.config, self.plan, self.doc.get("sweep")), self.last_eval)
            self.runlog.info(f"final bbox mAP {self.last_eval.get('bbox_mAP', float('nan')):.4f} "
                             f"(mAP@0.5 {self.last_eval.get('bbox_mAP_50', float('nan')):.4f})")

    def close(self) -> None:
        if self.checkpoints is not None:
            self.checkpoints.close()
        self.runlog.close()

    # ---------------------------------------------------------------- failure
    def _fail_nonfinite(self, loss_dict: dict[str, torch.Tensor]) -> None:
        shown = {k: float(v) for k, v in loss_dict.items()}
        self.save()  # the state before this step is still good
        message = (f"non-finite loss at iteration {self.iteration + 1}: {shown} (on some rank). The last good "
                   f"state is checkpointed at iteration {self.iteration}. Lower optimizer.base_lr, add warmup "
                   "or optimizer.clip_grad_norm, or check the data with `orch data check`.")
        self.runlog.status(state="FAILED", error=message)
        self.runlog.flush()
        raise TrainingError(message)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _hparams(config: dict[str, Any], plan: dict[str, Any], sweep: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's hyper-parameters for TensorBoard; a sweep's point adds its swept keys (dotted)."""
    hparams = {"model": config["model"]["name"], "optimizer": config["optimizer"]["name"], "lr": plan["lr"],
               "base_lr": plan["base_lr"], "batch_per_gpu": plan["batch_per_gpu"],
               "total_batch_size": plan["total_batch_size"], "max_iters": plan["max_iters"],
               "lr_policy": plan["lr_policy"], "weight_decay": config["optimizer"]["weight_decay"]}
    if sweep:
        hparams.update({"sweep": sweep["name"], "sweep_point": sweep["point"], **sweep["params"]})
    return hparams

