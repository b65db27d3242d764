"""The detectors orch trains, as data: the one torch-free table that config validation (``orch plan``)
and the training job (:mod:`jobs.models`, :mod:`jobs.data`, :mod:`jobs.engine`) both read.

A :class:`ModelSpec` says how a torchvision builder is called and what it accepts: the scalar
``model.kwargs`` its detector class takes (checked for name, type and range at load time), the
``trainable_backbone_layers`` values it supports, and known limits such as BatchNorm that cannot
train on one image per GPU. Adding a detector is one entry in :data:`MODELS` (plus, for a new
family, its kwargs table); nothing else in ``orchestrator`` lists model names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from orchestrator.detr_table import DETR_MODELS

Check = Callable[[Any], "str | None"]  # returns a problem ("must be > 0") or None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def unit_interval(v: Any) -> str | None:
    return None if 0 <= v <= 1 else "must be between 0 and 1"


def positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def numbers(count: int, low: float = float("-inf"), low_open: bool = False) -> Check:
    """A check for a list of exactly ``count`` numbers, each >= low (> low when ``low_open``)."""
    def check(v: Any) -> str | None:
        ok = (isinstance(v, list) and len(v) == count and all(_is_number(x) for x in v)
              and all(x > low if low_open else x >= low for x in v))
        if ok:
            return None
        bound = "" if low == float("-inf") else f" {'>' if low_open else '>='} {low:g}"
        return f"must be a list of {count} numbers{bound}"
    return check


@dataclass(frozen=True)
class Kwarg:
    """One keyword of a detector class that a YAML config may set (plain values only)."""
    types: tuple[type, ...]
    check: Check | None = None
    nullable: bool = False


INT, NUM, LIST = (int,), (int, float), (list,)
_PROB = Kwarg(NUM, unit_interval)
_COUNT = Kwarg(INT, positive)
_MEAN_STD = {"image_mean": Kwarg(LIST, numbers(3)), "image_std": Kwarg(LIST, numbers(3, 0, low_open=True))}
# torchvision's GeneralizedRCNNTransform takes the detector's **kwargs; of those only this is a plain value
_TRANSFORM = {"size_divisible": _COUNT}

# The keyword parameters of torchvision.models.detection.{FasterRCNN, RetinaNet, FCOS, SSD} that hold
# plain values (objects such as heads and anchor generators cannot come from YAML). min_size/max_size are
# model.min_size/model.max_size; num_classes comes from the data; SSD's size is fixed by its builder.
FASTER_RCNN_KWARGS: dict[str, Kwarg] = {
    **_MEAN_STD, **_TRANSFORM,
    "rpn_pre_nms_top_n_train": _COUNT, "rpn_pre_nms_top_n_test": _COUNT,
    "rpn_post_nms_top_n_train": _COUNT, "rpn_post_nms_top_n_test": _COUNT,
    "rpn_nms_thresh": _PROB, "rpn_fg_iou_thresh": _PROB, "rpn_bg_iou_thresh": _PROB,
    "rpn_batch_size_per_image": _COUNT, "rpn_positive_fraction": _PROB, "rpn_score_thresh": _PROB,
    "box_score_thresh": _PROB, "box_nms_thresh": _PROB, "box_detections_per_img": _COUNT,
    "box_fg_iou_thresh": _PROB, "box_bg_iou_thresh": _PROB, "box_batch_size_per_image": _COUNT,
    "box_positive_fraction": _PROB, "bbox_reg_weights": Kwarg(LIST, numbers(4, 0, low_open=True), nullable=True),
}
RETINANET_KWARGS: dict[str, Kwarg] = {
    **_MEAN_STD, **_TRANSFORM, "score_thresh": _PROB, "nms_thresh": _PROB, "detections_per_img": _COUNT,
    "fg_iou_thresh": _PROB, "bg_iou_thresh": _PROB, "topk_candidates": _COUNT,
}
FCOS_KWARGS: dict[str, Kwarg] = {
    **_MEAN_STD, **_TRANSFORM, "center_sampling_radius": Kwarg(NUM, non_negative), "score_thresh": _PROB,
    "nms_thresh": _PROB, "detections_per_img": _COUNT, "topk_candidates": _COUNT,
}
SSD_KWARGS: dict[str, Kwarg] = {
    **_MEAN_STD, "score_thresh": _PROB, "nms_thresh": _PROB, "detections_per_img": _COUNT,
    "iou_thresh": _PROB, "topk_candidates": _COUNT, "positive_fraction": _PROB,
}


@dataclass(frozen=True)
class ModelSpec:
    """One detector. Only ``family`` and ``backbone`` are required, so a new kind of model (a
    transformer detector, a toolbox trainer) is one short entry; the defaults mean "no such option"."""
    family: str                      # faster_rcnn | retinanet | fcos | ssd (torchvision) | detr (detr_table)
    backbone: str                    # how backbone stages are frozen: resnet | mobilenet_fpn | ssd | none
    trainable_layers: tuple[int, ...] = ()  # the trainable_backbone_layers values that can be honoured
    default_trainable: int = 0       # torchvision's count for a pretrained model
    frozen_bn: bool = False          # torchvision freezes backbone BatchNorm when pretrained
    can_freeze_bn: bool = False      # False: model.frozen_bn must stay false/null
    square_input: bool = False       # resizes to one fixed square size (model.min_size is one number)
    default_size: int = 640          # input short side (square side) when model.min_size is null
    kwargs: Mapping[str, Kwarg] = field(default_factory=dict)
    # With trainable BatchNorm, an input of at most this many pixels gives the deepest normalised
    # feature map 1x1, and one image per GPU fails with "Expected more than 1 value per channel when
    # training". Measured with torchvision 0.29 (one training step at batch 1, weights=None):
    # ssdlite320 fails up to 512 px (its extra layers halve down to 1x1) and trains at 513;
    # the ResNet-50 and MobileNetV3 FPN models fail at 32 px and train at 64 (inputs are padded
    # to multiples of 32); ssd300_vgg16 has no BatchNorm. None: no such limit.
    batchnorm_1x1_up_to_size: int | None = None

    @property
    def max_trainable(self) -> int:
        return max(self.trainable_layers, default=0)


_RESNET_LAYERS = tuple(range(6))
_RESNET = dict(backbone="resnet", trainable_layers=_RESNET_LAYERS, default_trainable=3, frozen_bn=True,
               can_freeze_bn=True, square_input=False, default_size=800, batchnorm_1x1_up_to_size=32)
_MOBILENET_FPN = dict(backbone="mobilenet_fpn", trainable_layers=tuple(range(7)), default_trainable=3,
                      frozen_bn=True, can_freeze_bn=True, square_input=False, batchnorm_1x1_up_to_size=32)

MODELS: dict[str, ModelSpec] = {
    "fasterrcnn_resnet50_fpn": ModelSpec("faster_rcnn", kwargs=FASTER_RCNN_KWARGS, **_RESNET),
    "fasterrcnn_resnet50_fpn_v2": ModelSpec("faster_rcnn", kwargs=FASTER_RCNN_KWARGS, **_RESNET),
    "fasterrcnn_mobilenet_v3_large_fpn": ModelSpec("faster_rcnn", kwargs=FASTER_RCNN_KWARGS, default_size=800,
                                                   **_MOBILENET_FPN),
    "fasterrcnn_mobilenet_v3_large_320_fpn": ModelSpec("faster_rcnn", kwargs=FASTER_RCNN_KWARGS, default_size=320,
                                                       **_MOBILENET_FPN),
    "retinanet_resnet50_fpn": ModelSpec("retinanet", kwargs=RETINANET_KWARGS, **_RESNET),
    "retinanet_resnet50_fpn_v2": ModelSpec("retinanet", kwargs=RETINANET_KWARGS, **_RESNET),
    "fcos_resnet50_fpn": ModelSpec("fcos", kwargs=FCOS_KWARGS, **_RESNET),
    # torchvision can freeze SSD backbones only while building with pretrained weights; orch builds
    # without and loads init_checkpoint afterwards, so only "all layers" is honoured (job: param_groups lr_mult 0)
    "ssd300_vgg16": ModelSpec("ssd", "ssd", trainable_layers=(5,), default_trainable=5, square_input=True,
                              default_size=300, kwargs=SSD_KWARGS),
    "ssdlite320_mobilenet_v3_large": ModelSpec("ssd", "ssd", trainable_layers=(6,), default_trainable=6,
                                               square_input=True, default_size=320, kwargs=SSD_KWARGS,
                                               batchnorm_1x1_up_to_size=512),
}
# The transformer detectors (Hugging Face ``transformers``, the optional extra orch[detr]): their
# architecture numbers live in orchestrator/detr_table.py, which also checks their model.kwargs (any
# table number, e.g. decoder_layers, or backbone: {depths: [...]}). RT-DETRv2 and D-FINE resize to one
# 640 px square; the DETR/Deformable/Conditional DETR recipe is short side 800, long side <= 1333.
# No trainable_backbone_layers (use an optimizer.param_groups rule); backbone BatchNorm freezing is
# the table's freeze_backbone_batch_norms, not model.frozen_bn.
DETR_FAMILY = "detr"
_DETR_INPUT = {"rt_detr_v2": dict(square_input=True, default_size=640),
               "d_fine": dict(square_input=True, default_size=640)}
for _name, _arch in DETR_MODELS.items():
    MODELS[_name] = ModelSpec(DETR_FAMILY, "none", **_DETR_INPUT.get(_arch.family, dict(default_size=800)))
DETR_DEFAULT_MAX_SIZE = 1333  # the DETR papers' long-side cap (non-square DETR models)
MODEL_NAMES = tuple(MODELS)


def is_detr(name: Any) -> bool:
    """Whether ``name`` is one of the transformer detectors of orchestrator/detr_table.py."""
    spec = MODELS.get(name)  # type: ignore[arg-type]
    return spec is not None and spec.family == DETR_FAMILY


def batchnorm_trains(spec: ModelSpec, model_cfg: Mapping[str, Any]) -> bool:
    """Whether the model trains BatchNorm statistics (the job's rule for model.frozen_bn)."""
    frozen = model_cfg.get("frozen_bn")
    if frozen is None:
        frozen = bool(model_cfg.get("init_checkpoint")) and spec.frozen_bn
    return not frozen or not spec.can_freeze_bn


def input_size(spec: ModelSpec, model_cfg: Mapping[str, Any]) -> int:
    """The short side the model resizes to (the square side for SSD models)."""
    min_size = model_cfg.get("min_size")
    max_size = model_cfg.get("max_size")
    size = int(min_size) if min_size is not None else spec.default_size
    return min(size, int(max_size)) if max_size is not None else size


def single_image_problem(model_cfg: Mapping[str, Any]) -> str | None:
    """Why one image per GPU cannot train this model (None when it can)."""
    name = model_cfg.get("name")
    spec = MODELS.get(name)  # type: ignore[arg-type]
    if spec is None or spec.batchnorm_1x1_up_to_size is None or not batchnorm_trains(spec, model_cfg):
        return None
    size = input_size(spec, model_cfg)
    if size > spec.batchnorm_1x1_up_to_size:
        return None
    return (f"{name} at {size} px has BatchNorm over a 1x1 feature map, which cannot train on one image per GPU "
            f"(\"Expected more than 1 value per channel when training\")")
