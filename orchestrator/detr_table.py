"""The transformer detectors orch builds, by name: architecture numbers only, torch-free.

Each entry says which Hugging Face ``transformers`` class implements the model and gives the
published architecture as that class's config arguments, so the job builds exactly these
numbers (``jobs/detr_models.py``) and ``orch plan`` can validate ``model.name`` and
``model.kwargs`` without importing torch or transformers.

Where the numbers come from:
  * RT-DETRv2: lyuwenyu/RT-DETR ``rtdetrv2_pytorch/configs/rtdetrv2/`` (``rtdetrv2_r50vd.yml``
    plus the per-depth files ``rtdetrv2_r{18,34}vd_120e_coco.yml``, ``r50vd_6x``, ``r101vd_6x``).
  * D-FINE: Peterande/D-FINE ``configs/dfine/include/dfine_hgnetv2.yml`` plus
    ``dfine_hgnetv2_{n,s,m,l,x}_coco.yml``; the HGNetV2 stage tables (B0/B2/B4/B5) from the
    official ``hgnetv2.py``.
  * Deformable DETR, Conditional DETR, DETR: the papers' ResNet-50 models, which are the
    defaults of the ``transformers`` config classes (with the auxiliary decoding losses the
    papers train with).

The class count is never in the table: it comes from the dataset (``num_classes`` = object
classes, no background slot; DETRs model "no object" themselves).
"""
from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from orchestrator.errors import OrchError


@dataclass(frozen=True)
class DetrArch:
    """One named model: the ``transformers`` classes and the published architecture numbers."""

    name: str
    family: str                          # "rt_detr_v2" | "d_fine" | "deformable_detr" | ...
    hf_model_class: str                  # e.g. "RTDetrV2ForObjectDetection"
    hf_config_class: str                 # e.g. "RTDetrV2Config"
    backbone_config_class: str           # e.g. "RTDetrResNetConfig"
    backbone: Mapping[str, Any]          # kwargs of the backbone config class
    numbers: Mapping[str, Any]           # kwargs of the model config class
    source: str                          # the official config these numbers reproduce
    published_params_m: float | None = None   # parameter count the authors publish (millions)
    tiny: Mapping[str, Any] = field(default_factory=dict)  # kwargs shrinking it for tests

    @property
    def model_type(self) -> str:
        """The ``model_type`` an HF ``config.json`` of this family carries."""
        return self.family


_RTDETR_SRC = "lyuwenyu/RT-DETR rtdetrv2_pytorch/configs/rtdetrv2/"
_DFINE_SRC = "Peterande/D-FINE configs/dfine/"

# RT-DETRv2 (rtdetrv2_r50vd.yml): HybridEncoder hidden 256, 1 AIFI layer on the last level,
# 8 heads, FFN 1024, GELU; CCFM with SiLU; decoder 256 wide, 300 queries, 3 levels, 4 points
# per level, 100 denoising queries. Backbone PResNet-vd returning stages 2-4 (strides 8/16/32).
_RTDETR_BASE: dict[str, Any] = {
    "encoder_hidden_dim": 256, "encoder_in_channels": [512, 1024, 2048], "feat_strides": [8, 16, 32],
    "encoder_layers": 1, "encoder_ffn_dim": 1024, "encoder_attention_heads": 8,
    "encode_proj_layers": [2], "encoder_activation_function": "gelu", "activation_function": "silu",
    "hidden_expansion": 1.0, "d_model": 256, "num_queries": 300, "decoder_in_channels": [256, 256, 256],
    "decoder_ffn_dim": 1024, "num_feature_levels": 3, "decoder_n_points": 4, "decoder_layers": 6,
    "decoder_attention_heads": 8, "num_denoising": 100, "label_noise_ratio": 0.5,
    "box_noise_scale": 1.0, "decoder_method": "default", "anchor_image_size": None,
    "freeze_backbone_batch_norms": True,
}
_PRESNET_BASIC = {"embedding_size": 64, "hidden_sizes": [64, 128, 256, 512], "layer_type": "basic",
                  "out_indices": [2, 3, 4]}
_PRESNET_BOTTLENECK = {"embedding_size": 64, "hidden_sizes": [256, 512, 1024, 2048],
                       "layer_type": "bottleneck", "out_indices": [2, 3, 4]}
_RTDETR_TINY = {"encoder_hidden_dim": 32, "encoder_ffn_dim": 64, "encoder_attention_heads": 2,
                "d_model": 32, "decoder_in_channels": [32, 32, 32], "decoder_ffn_dim": 64,
                "decoder_attention_heads": 2, "decoder_layers": 2, "num_queries": 20, "num_denoising": 10,
                "backbone": {"hidden_sizes": [16, 32, 64, 128], "depths": [1, 1, 1, 1],
                             "embedding_size": 16, "layer_type": "basic"},
                "encoder_in_channels": [32, 64, 128]}


def _rtdetr(name: str, source: str, params_m: float, backbone: dict[str, Any],
            **numbers: Any) -> DetrArch:
    return DetrArch(name, "rt_detr_v2", "RTDetrV2ForObjectDetection", "RTDetrV2Config",
                    "RTDetrResNetConfig", MappingProxyType(backbone),
                    MappingProxyType({**_RTDETR_BASE, **numbers}), _RTDETR_SRC + source, params_m,
                    MappingProxyType(_RTDETR_TINY))


# D-FINE (dfine_hgnetv2.yml): the RT-DETRv2 layout plus FDR (reg_max 32 bins, reg_scale 4),
# 3/6/3 sampling points per level; HGNetV2 backbones B0 (N, S), B2 (M), B4 (L), B5 (X).
_DFINE_BASE: dict[str, Any] = {
    **_RTDETR_BASE, "decoder_n_points": [3, 6, 3], "max_num_bins": 32, "reg_scale": 4.0,
    "layer_scale": 1.0, "depth_mult": 1.0, "lqe_hidden_dim": 64, "lqe_layers": 2, "top_prob_values": 4,
    "up": 0.5,
}
_DFINE_BASE.pop("decoder_method")
_HGNET_B0 = {"stem_channels": [3, 16, 16], "stage_in_channels": [16, 64, 256, 512],
             "stage_mid_channels": [16, 32, 64, 128], "stage_out_channels": [64, 256, 512, 1024],
             "stage_num_blocks": [1, 1, 2, 1], "stage_numb_of_layers": [3, 3, 3, 3],
             "use_learnable_affine_block": True}
_HGNET_B2 = {"stem_channels": [3, 24, 32], "stage_in_channels": [32, 96, 384, 768],
             "stage_mid_channels": [32, 64, 128, 256], "stage_out_channels": [96, 384, 768, 1536],
             "stage_num_blocks": [1, 1, 3, 1], "stage_numb_of_layers": [4, 4, 4, 4],
             "use_learnable_affine_block": True}
_HGNET_B4 = {"stem_channels": [3, 32, 48], "stage_in_channels": [48, 128, 512, 1024],
             "stage_mid_channels": [48, 96, 192, 384], "stage_out_channels": [128, 512, 1024, 2048],
             "stage_num_blocks": [1, 1, 3, 1], "stage_numb_of_layers": [6, 6, 6, 6],
             "use_learnable_affine_block": False}
_HGNET_B5 = {"stem_channels": [3, 32, 64], "stage_in_channels": [64, 128, 512, 1024],
             "stage_mid_channels": [64, 128, 256, 512], "stage_out_channels": [128, 512, 1024, 2048],
             "stage_num_blocks": [1, 2, 5, 2], "stage_numb_of_layers": [6, 6, 6, 6],
             "use_learnable_affine_block": False}
_HGNET_COMMON = {"stage_downsample": [False, True, True, True],
                 "stage_light_block": [False, False, True, True], "stage_kernel_size": [3, 3, 5, 5],
                 "out_indices": [2, 3, 4]}
# Three levels even for dfine_n (which has two), so one tiny shape fits every size.
_DFINE_TINY = {**{k: v for k, v in _RTDETR_TINY.items() if k != "backbone"},
               "feat_strides": [8, 16, 32], "encode_proj_layers": [2], "num_feature_levels": 3,
               "decoder_n_points": [2, 2, 2], "max_num_bins": 8, "lqe_hidden_dim": 16,
               "hidden_expansion": 0.5, "depth_mult": 0.34,
               "backbone": {"stem_channels": [3, 8, 8], "stage_in_channels": [8, 16, 32, 64],
                            "stage_mid_channels": [8, 8, 16, 16], "stage_out_channels": [16, 32, 64, 128],
                            "stage_num_blocks": [1, 1, 1, 1], "stage_numb_of_layers": [1, 1, 1, 1],
                            "out_indices": [2, 3, 4]}}


def _dfine(name: str, source: str, params_m: float, backbone: dict[str, Any],
           **numbers: Any) -> DetrArch:
    return DetrArch(name, "d_fine", "DFineForObjectDetection", "DFineConfig", "HGNetV2Config",
                    MappingProxyType({**_HGNET_COMMON, **backbone}),
                    MappingProxyType({**_DFINE_BASE, **numbers}), _DFINE_SRC + source, params_m,
                    MappingProxyType(_DFINE_TINY))


# DETR family, ResNet-50 (HF's own ResNet: no timm, nothing downloaded), frozen BatchNorm.
_R50 = {"embedding_size": 64, "hidden_sizes": [256, 512, 1024, 2048], "depths": [3, 4, 6, 3],
        "layer_type": "bottleneck"}
_DETR_TINY = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 2, "encoder_ffn_dim": 64,
              "decoder_ffn_dim": 64, "encoder_attention_heads": 2, "decoder_attention_heads": 2,
              "num_queries": 20,
              "backbone": {"embedding_size": 16, "hidden_sizes": [16, 32, 64, 128], "depths": [1, 1, 1, 1],
                           "layer_type": "basic"}}


def _detr_like(name: str, family: str, model_class: str, config_class: str, source: str,
               params_m: float, out_features: list[str], **numbers: Any) -> DetrArch:
    return DetrArch(name, family, model_class, config_class, "ResNetConfig",
                    MappingProxyType({**_R50, "out_features": out_features}),
                    MappingProxyType(numbers), source, params_m, MappingProxyType(_DETR_TINY))


DETR_MODELS: Mapping[str, DetrArch] = MappingProxyType({a.name: a for a in [
    # RT-DETRv2-S/M*/M/L/X as published: 20M, 31M, 42M, 76M parameters.
    _rtdetr("rtdetr_v2_r18vd", "rtdetrv2_r18vd_120e_coco.yml", 20.0, {**_PRESNET_BASIC, "depths": [2, 2, 2, 2]},
            encoder_in_channels=[128, 256, 512], hidden_expansion=0.5, decoder_layers=3,
            freeze_backbone_batch_norms=False),
    _rtdetr("rtdetr_v2_r34vd", "rtdetrv2_r34vd_120e_coco.yml", 31.0, {**_PRESNET_BASIC, "depths": [3, 4, 6, 3]},
            encoder_in_channels=[128, 256, 512], hidden_expansion=0.5, decoder_layers=4,
            freeze_backbone_batch_norms=False),
    _rtdetr("rtdetr_v2_r50vd", "rtdetrv2_r50vd_6x_coco.yml", 42.0, {**_PRESNET_BOTTLENECK, "depths": [3, 4, 6, 3]}),
    _rtdetr("rtdetr_v2_r101vd", "rtdetrv2_r101vd_6x_coco.yml", 76.0,
            {**_PRESNET_BOTTLENECK, "depths": [3, 4, 23, 3]},
            encoder_hidden_dim=384, encoder_ffn_dim=2048, decoder_in_channels=[384, 384, 384]),
    # D-FINE-N/S/M/L/X as published: 4M, 10M, 19M, 31M, 62M parameters.
    _dfine("dfine_n", "dfine_hgnetv2_n_coco.yml", 4.0, {**_HGNET_B0, "out_indices": [3, 4]},
           encoder_in_channels=[512, 1024], feat_strides=[16, 32], encoder_hidden_dim=128,
           encode_proj_layers=[1], encoder_ffn_dim=512, hidden_expansion=0.34, depth_mult=0.5,
           d_model=128, decoder_in_channels=[128, 128], decoder_ffn_dim=512, num_feature_levels=2,
           decoder_n_points=[6, 6], decoder_layers=3, freeze_backbone_batch_norms=False),
    _dfine("dfine_s", "dfine_hgnetv2_s_coco.yml", 10.0, _HGNET_B0,
           encoder_in_channels=[256, 512, 1024], hidden_expansion=0.5, depth_mult=0.34, decoder_layers=3,
           freeze_backbone_batch_norms=False),
    _dfine("dfine_m", "dfine_hgnetv2_m_coco.yml", 19.0, _HGNET_B2,
           encoder_in_channels=[384, 768, 1536], depth_mult=0.67, decoder_layers=4,
           freeze_backbone_batch_norms=False),
    _dfine("dfine_l", "dfine_hgnetv2_l_coco.yml", 31.0, _HGNET_B4,
           encoder_in_channels=[512, 1024, 2048]),
    _dfine("dfine_x", "dfine_hgnetv2_x_coco.yml", 62.0, _HGNET_B5,
           encoder_in_channels=[512, 1024, 2048], encoder_hidden_dim=384, encoder_ffn_dim=2048,
           decoder_in_channels=[384, 384, 384], reg_scale=8.0),
    # Deformable DETR (single-scale queries, no box refinement, no two-stage): 40M parameters.
    _detr_like("deformable_detr_r50", "deformable_detr", "DeformableDetrForObjectDetection",
               "DeformableDetrConfig", "Zhu et al. 2021 (fundamentalvision/Deformable-DETR r50)", 40.0,
               ["stage2", "stage3", "stage4"], d_model=256, encoder_layers=6, decoder_layers=6,
               encoder_ffn_dim=1024, decoder_ffn_dim=1024, encoder_attention_heads=8,
               decoder_attention_heads=8, num_queries=300, num_feature_levels=4, encoder_n_points=4,
               decoder_n_points=4, two_stage=False, with_box_refine=False, dropout=0.1,
               auxiliary_loss=True),
    _detr_like("conditional_detr_r50", "conditional_detr", "ConditionalDetrForObjectDetection",
               "ConditionalDetrConfig", "Meng et al. 2021 (Atten4Vis/ConditionalDETR r50)", 44.0,
               ["stage4"], d_model=256, encoder_layers=6, decoder_layers=6, encoder_ffn_dim=2048,
               decoder_ffn_dim=2048, encoder_attention_heads=8, decoder_attention_heads=8,
               num_queries=300, dropout=0.1, auxiliary_loss=True),
    _detr_like("detr_r50", "detr", "DetrForObjectDetection", "DetrConfig",
               "Carion et al. 2020 (facebookresearch/detr r50)", 41.0, ["stage4"], d_model=256,
               encoder_layers=6, decoder_layers=6, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
               encoder_attention_heads=8, decoder_attention_heads=8, num_queries=100, dropout=0.1,
               auxiliary_loss=True),
]})


def detr_arch(name: str, where: str = "model.name") -> DetrArch:
    """The table entry for ``name``; an unknown name is an OrchError with a did-you-mean."""
    if name in DETR_MODELS:
        return DETR_MODELS[name]
    close = difflib.get_close_matches(str(name), list(DETR_MODELS), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise OrchError(f"{where}: unknown transformer detector {name!r}.{hint} "
                    f"Choose one of: {', '.join(DETR_MODELS)}.")


def arch_kwargs(name: str, overrides: Mapping[str, Any] | None = None,
                where: str = "model.kwargs") -> tuple[dict[str, Any], dict[str, Any]]:
    """(model config kwargs, backbone config kwargs) for ``name`` with ``overrides`` applied.

    ``overrides`` may change any number of the table (e.g. ``decoder_layers``) and, under the
    key ``backbone``, any backbone number; other keys are rejected here, at load time, with a
    did-you-mean, rather than by the job after a queue wait. ``tiny_overrides(name)`` is one
    such dict, for tests.
    """
    arch = detr_arch(name)
    # Deep copies: the table's lists must never be changed through a config built from them.
    numbers, backbone = copy.deepcopy(dict(arch.numbers)), copy.deepcopy(dict(arch.backbone))
    for key, value in (overrides or {}).items():
        if key == "backbone":
            if not isinstance(value, Mapping):
                raise OrchError(f"{where}.backbone: expected a mapping of backbone numbers, got "
                                f"{value!r}; e.g. backbone: {{depths: [1, 1, 1, 1]}}.")
            for bkey, bvalue in value.items():
                _check_key(bkey, backbone, f"{where}.backbone", name)
                backbone[bkey] = bvalue
            continue
        _check_key(key, numbers, where, name)
        numbers[key] = value
    return numbers, backbone


def tiny_overrides(name: str) -> dict[str, Any]:
    """Overrides that shrink ``name`` to a model that builds and steps in well under a second."""
    tiny = dict(detr_arch(name).tiny)
    if "backbone" in tiny:
        tiny["backbone"] = dict(tiny["backbone"])
    return tiny


def _check_key(key: str, allowed: Mapping[str, Any], where: str, name: str) -> None:
    if key in allowed:
        return
    close = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise OrchError(f"{where}: {key!r} is not an architecture number of {name}.{hint} "
                    f"Valid keys: {', '.join(sorted(allowed))}.")
