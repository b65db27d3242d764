"""torchvision detectors by name, init checkpoints that tolerate a different head, optimizer groups.

Weights never come from the internet: models are built with ``weights=None,
weights_backbone=None`` and pretrained weights arrive as ``model.init_checkpoint`` (any storage
URL), e.g. a torchvision COCO checkpoint copied to the cluster. When one is given the model is
prepared the way torchvision prepares a pretrained one: frozen BatchNorm in the backbone and only
the last ``trainable_backbone_layers`` stages trained (torchvision's default count).

``num_classes`` always counts the background (K dataset classes -> K + 1), for every family:
torchvision's RetinaNet and FCOS heads simply never predict label 0.
"""
from __future__ import annotations

import io
import logging
import re
from typing import Any

import torch
from torch import nn
from torchvision.models import detection
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.misc import FrozenBatchNorm2d

from orchestrator import modelspec, storage
from orchestrator.modelspec import ModelSpec
from orchestrator.schema import PARAM_GROUP, SCHEMA

log = logging.getLogger(__name__)


# The model table is orchestrator.modelspec (torch-free): `orch plan` validates against the same entries.
MODELS: dict[str, ModelSpec] = modelspec.MODELS
MODEL_KEYS = tuple(SCHEMA["model"])
_RESNET_STAGES = ["layer4", "layer3", "layer2", "layer1", "conv1"]


def build_model(model_cfg: dict[str, Any], num_classes: int, load_init: bool = False) -> nn.Module:
    """A detector with ``num_classes`` outputs (background included).

    ``model_cfg``: ``name``; ``init_checkpoint`` (URL or null); ``min_size``/``max_size`` (null =
    torchvision's default; SSD models take one square ``min_size``); ``kwargs`` passed to the
    builder; ``trainable_backbone_layers`` and ``frozen_bn`` (null = torchvision's choice for a
    pretrained model when an init checkpoint is given, else everything trainable).

    The init checkpoint only shapes the model here (frozen BN, frozen stages); the job's
    ``resume_or_load`` loads it when there is nothing to resume, so a resumed run never reads it.
    ``load_init=True`` loads it right away (tools, tests).
    """
    unknown = sorted(set(model_cfg) - set(MODEL_KEYS))
    if unknown:
        raise ValueError(f"model: unknown key(s) {unknown}; valid keys are {list(MODEL_KEYS)}")
    name = model_cfg.get("name")
    if name not in MODELS:
        raise ValueError(f"model.name: unknown model {name!r}; valid names are {sorted(MODELS)}")
    if modelspec.is_detr(name):
        return _build_detr(model_cfg, num_classes, load_init)
    family = MODELS[name]
    kwargs = dict(model_cfg.get("kwargs") or {})
    unknown = sorted(set(kwargs) - set(family.kwargs))
    if unknown:
        raise ValueError(f"model.kwargs: {name} does not take {unknown}; valid keys are {list(family.kwargs)}")
    min_size, max_size = model_cfg.get("min_size"), model_cfg.get("max_size")
    if family.backbone != "ssd":
        if min_size is not None:
            kwargs["min_size"] = tuple(min_size) if isinstance(min_size, (list, tuple)) else int(min_size)
        if max_size is not None:
            kwargs["max_size"] = int(max_size)
    model = getattr(detection, name)(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    if family.backbone == "ssd":
        _set_ssd_size(model, name, min_size, max_size)

    init_checkpoint = model_cfg.get("init_checkpoint")
    pretrained = bool(init_checkpoint)
    frozen_bn = model_cfg.get("frozen_bn")
    if frozen_bn is None:
        frozen_bn = pretrained and family.frozen_bn
    if frozen_bn:
        if not family.can_freeze_bn:
            raise ValueError(f"model.frozen_bn: {name} keeps trainable BatchNorm in torchvision; set it to false")
        model.backbone.body = freeze_batchnorm(model.backbone.body)
    trainable = model_cfg.get("trainable_backbone_layers")
    if trainable is None:
        trainable = family.default_trainable if pretrained else family.max_trainable
    freeze_backbone_stages(model, name, int(trainable))
    if init_checkpoint and load_init:
        load_init_checkpoint(model, str(init_checkpoint))
    return model


def _build_detr(model_cfg: dict[str, Any], num_classes: int, load_init: bool) -> nn.Module:
    """A transformer detector from orch's table (jobs/detr_models.py): K object classes, no background."""
    from jobs import detr_models

    model = detr_models.build_detr(model_cfg["name"], num_classes - 1, **dict(model_cfg.get("kwargs") or {}))
    if model_cfg.get("init_checkpoint") and load_init:
        build_adapter(model_cfg).load_init(model, str(model_cfg["init_checkpoint"]))
    return model


class TorchvisionAdapter:
    """The torchvision detector contract, which orch's loop speaks: the model does it all."""

    def forward_train(self, model: nn.Module, images: list[torch.Tensor],
                      targets: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return model(images, targets)

    def predict(self, model: nn.Module, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return model(images)

    def load_init(self, model: nn.Module, url: str) -> dict[str, list]:
        return load_init_checkpoint(model, url)


def build_adapter(model_cfg: dict[str, Any]):
    """How the loop trains, evaluates and loads init weights into ``model_cfg``'s model: a
    :class:`TorchvisionAdapter`, or for the transformer detectors ``jobs.detr_adapter.DetrAdapter``
    (same methods: ``forward_train`` -> loss dict, ``predict`` -> xyxy pixels/scores/labels 1..K,
    ``load_init`` -> loaded/skipped/missing report)."""
    if modelspec.is_detr(model_cfg.get("name")):
        from jobs.detr_adapter import DetrAdapter

        return DetrAdapter(model_cfg)
    return TorchvisionAdapter()


def _set_ssd_size(model: nn.Module, name: str, min_size: Any, max_size: Any) -> None:
    """SSD builders fix the input size; replace the transform to train at another square size."""
    if min_size is None and max_size is None:
        return
    if isinstance(min_size, (list, tuple)) or (min_size and max_size and int(min_size) != int(max_size)):
        raise ValueError(f"model.min_size/max_size: {name} resizes to one fixed square size; set min_size to "
                         f"one number (max_size null or equal), got {min_size!r}/{max_size!r}")
    size = int(min_size or max_size)
    if name == "ssd300_vgg16" and size != 300:
        log.warning("ssd300_vgg16 anchors use pixel steps tuned for 300 px; size %d shifts anchor centres", size)
    old = model.transform
    model.transform = GeneralizedRCNNTransform(size, size, old.image_mean, old.image_std, size_divisible=1,
                                               fixed_size=(size, size))
    model.size = (size, size)


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """BatchNorm2d layers replaced by FrozenBatchNorm2d holding the same statistics."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        frozen.weight.copy_(module.weight.detach())
        frozen.bias.copy_(module.bias.detach())
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        return frozen
    for child_name, child in module.named_children():
        new_child = freeze_batchnorm(child)
        if new_child is not child:
            setattr(module, child_name, new_child)
    return module


def freeze_backbone_stages(model: nn.Module, name: str, trainable_layers: int) -> None:
    """Stop gradients to all but the last ``trainable_layers`` backbone stages (torchvision's rule)."""
    family = MODELS[name]
    if trainable_layers not in family.trainable_layers:
        raise ValueError(f"model.trainable_backbone_layers: {trainable_layers} is outside "
                         f"{list(family.trainable_layers)} for {name}")
    if trainable_layers == family.max_trainable:
        return
    if family.backbone == "resnet":
        keep = _RESNET_STAGES[:trainable_layers] + (["bn1"] if trainable_layers == 5 else [])
        for param_name, param in model.backbone.body.named_parameters():
            if not any(param_name.startswith(stage) for stage in keep):
                param.requires_grad_(False)
    elif family.backbone == "mobilenet_fpn":
        blocks = list(model.backbone.body.children())
        stage_starts = [0] + [i for i, b in enumerate(blocks) if getattr(b, "_is_cn", False)] + [len(blocks) - 1]
        freeze_before = len(blocks) if trainable_layers == 0 else stage_starts[len(stage_starts) - trainable_layers]
        for block in blocks[:freeze_before]:
            block.requires_grad_(False)
    else:
        raise ValueError(f"model.trainable_backbone_layers: {name} supports only null or "
                         f"{family.max_trainable} (all layers); use a param_groups rule with lr_mult 0 instead")


# ---------------------------------------------------------------- init checkpoint

def _unwrap_state_dict(obj: Any, url: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"init checkpoint {url} holds neither a state_dict nor a dict with 'model' or "
                         f"'state_dict'")
    return strip_wrapper_prefixes(obj)


def strip_wrapper_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """Keys without the prefixes DDP ("module.") and torch.compile ("_orig_mod.") add."""
    clean = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        clean[key] = value
    return clean


def load_init_checkpoint(model: nn.Module, url: str) -> dict[str, list]:
    """Load every tensor whose name and shape match; report the rest.

    Returns ``{"loaded": [key], "skipped": [(key, checkpoint_shape, model_shape)],
    "missing": [key], "unexpected": [key]}``: ``skipped`` are shape mismatches such as a 91-class
    head loaded into a 4-class model; ``missing`` keys keep their fresh initialisation.
    """
    raw = torch.load(io.BytesIO(storage.read_bytes(url)), map_location="cpu", weights_only=True)
    state = _unwrap_state_dict(raw, url)
    own = model.state_dict()
    loadable, skipped, unexpected = {}, [], []
    for key, value in state.items():
        if key not in own:
            unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            skipped.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            loadable[key] = value
    model.load_state_dict(loadable, strict=False)
    report = {"loaded": sorted(loadable), "skipped": skipped,
              "missing": sorted(k for k in own if k not in loadable and k not in {s[0] for s in skipped}),
              "unexpected": sorted(unexpected)}
    shown = ", ".join(k for k, _, _ in skipped[:8]) + (" ..." if len(skipped) > 8 else "")
    log.info("init checkpoint %s: loaded %d of %d model tensors; %d skipped (shape differs)%s; %d missing; "
             "%d unexpected", url, len(report["loaded"]), len(own), len(skipped), f": {shown}" if skipped else "",
             len(report["missing"]), len(unexpected))
    if report["missing"]:
        log.info("init checkpoint %s: missing (fresh init) %s", url, report["missing"][:20])
    return report


# ---------------------------------------------------------------- optimizer groups

_RULE_KEYS = tuple(PARAM_GROUP)
# norm layers whose weight and bias get optimizer.norm_weight_decay (FrozenBatchNorm2d holds buffers only)
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm,
               nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm)


def norm_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters that belong to normalisation layers (their weights and biases)."""
    return {f"{module_name}.{param_name}" if module_name else param_name
            for module_name, module in model.named_modules() if isinstance(module, NORM_LAYERS)
            for param_name, _ in module.named_parameters(recurse=False)}


def param_groups(model: nn.Module, base_lr: float, weight_decay: float, rules: list[dict[str, Any]] | None = None,
                 norm_weight_decay: float | None = None) -> list[dict[str, Any]]:
    """Optimizer groups by the first rule whose regex ``pattern`` is found in a parameter's name.

    Each group keeps ``lr_mult`` (the scheduler sets ``lr = schedule_lr * lr_mult``) and
    ``decay_mult``. With ``norm_weight_decay`` (torchvision references' option), the weights and
    biases of norm layers get that weight decay (times the rule's ``decay_mult``) instead of
    ``weight_decay``, whatever its value. Frozen parameters (requires_grad False) are left out.
    """
    rules = list(rules or [])
    compiled = []
    for k, rule in enumerate(rules):
        unknown = sorted(set(rule) - set(_RULE_KEYS))
        if unknown or "pattern" not in rule:
            raise ValueError(f"param_groups rule {k} {rule!r}: needs 'pattern'; valid keys are {list(_RULE_KEYS)}")
        compiled.append((re.compile(str(rule["pattern"])), float(rule.get("lr_mult", 1.0)),
                         float(rule.get("decay_mult", 1.0)), str(rule["pattern"])))
    norm_names = norm_parameter_names(model) if norm_weight_decay is not None else set()
    groups: dict[tuple, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr_mult, decay_mult, label = 1.0, 1.0, "default"
        for pattern, rule_lr, rule_decay, text in compiled:
            if pattern.search(name):
                lr_mult, decay_mult, label = rule_lr, rule_decay, text
                break
        is_norm = name in norm_names
        key = (label, is_norm)
        if key not in groups:
            decay = float(norm_weight_decay) if is_norm else weight_decay  # type: ignore[arg-type]
            groups[key] = {"params": [], "param_names": [], "name": label + ("/norm" if is_norm else ""),
                           "lr": base_lr * lr_mult, "lr_mult": lr_mult, "decay_mult": decay_mult,
                           "weight_decay": decay * decay_mult}
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return list(groups.values())
