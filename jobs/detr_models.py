"""Transformer detectors from orch's table (``orchestrator/detr_table.py``), built offline.

``build_detr(name, num_classes, **overrides)`` returns a ``transformers`` ``...ForObjectDetection``
with randomly initialised weights and the published architecture. Nothing is downloaded: the
config is built from the table's numbers (never ``from_pretrained`` of a hub name), the backbone
is ``transformers``' own ResNet / RT-DETR ResNet / HGNetV2 built from its config (no timm, no
pretrained backbone). Pretrained weights arrive later through ``jobs/detr_weights.py``.

``transformers`` is an optional extra (``pip install orch[detr]``) imported only here, inside
the functions, so importing this module stays cheap.
"""
from __future__ import annotations

from typing import Any

from orchestrator.detr_table import DetrArch, arch_kwargs, detr_arch
from orchestrator.errors import OrchError

MIN_TRANSFORMERS = "5.24"  # tested with 5.24.0; 5.0.0 fails test_detr_weights (mis-ties class_embed on load)


def _transformers():
    try:
        import transformers
    except ImportError as exc:  # an optional extra: say how to get it
        raise OrchError("The transformer detectors need Hugging Face transformers: "
                        "pip install 'orch[detr]' (transformers>=" + MIN_TRANSFORMERS +
                        ", safetensors).") from exc
    if _major_minor(transformers.__version__) < _major_minor(MIN_TRANSFORMERS):
        raise OrchError(f"transformers {transformers.__version__} is installed; orch's transformer "
                        f"detectors need transformers>={MIN_TRANSFORMERS}: "
                        f"pip install -U 'orch[detr]'.")
    return transformers


def _major_minor(version: str) -> tuple[int, int]:
    parts = (version.split(".") + ["0"])[:2]
    return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in parts)  # type: ignore[return-value]


def build_config(name: str, num_classes: int, class_names: list[str] | None = None, **overrides: Any):
    """The ``transformers`` config of ``name`` for ``num_classes`` object classes (no background).

    ``class_names`` (optional, one per class) become the config's ``id2label``, which
    ``save_pretrained`` writes into ``config.json``.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise OrchError(f"num_classes: expected a positive number of object classes, got {num_classes!r}.")
    if class_names is not None and len(class_names) != num_classes:
        raise OrchError(f"class_names: {len(class_names)} names for {num_classes} classes; give one name per class.")
    arch = detr_arch(name)
    numbers, backbone = arch_kwargs(name, overrides)
    tf = _transformers()
    backbone_config = getattr(tf, arch.backbone_config_class)(**_backbone_kwargs(arch, backbone))
    id2label = {i: str(class_names[i]) if class_names else f"class_{i}" for i in range(num_classes)}
    if arch.backbone_config_class == "ResNetConfig":
        # The DETR configs default to a timm ResNet-50 by name; say explicitly: transformers' own
        # ResNet from backbone_config, no timm, no pretrained backbone download.
        numbers.update(use_timm_backbone=False, backbone=None, use_pretrained_backbone=False)
    config = getattr(tf, arch.hf_config_class)(
        backbone_config=backbone_config, num_labels=num_classes, id2label=id2label,
        label2id={v: k for k, v in id2label.items()}, **numbers)
    return config


def build_detr(name: str, num_classes: int, class_names: list[str] | None = None, **overrides: Any):
    """``name`` from orch's table with ``num_classes`` outputs and random weights, offline.

    ``overrides`` change architecture numbers (see ``orchestrator.detr_table.arch_kwargs``;
    ``tiny_overrides(name)`` gives a test-sized model).
    """
    arch = detr_arch(name)
    config = build_config(name, num_classes, class_names, **overrides)
    return getattr(_transformers(), arch.hf_model_class)(config)


def hf_model_class(name: str):
    """The ``transformers`` class that implements ``name`` (for ``from_pretrained``-style loading)."""
    return getattr(_transformers(), detr_arch(name).hf_model_class)


def _backbone_kwargs(arch: DetrArch, backbone: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(backbone)
    if arch.backbone_config_class == "HGNetV2Config":
        # The backbone reports its output widths from ``hidden_sizes``; they are the stage widths.
        kwargs["hidden_sizes"] = list(kwargs["stage_out_channels"])
    return kwargs
