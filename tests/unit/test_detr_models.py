"""The transformer detectors of orch's table build offline with the published architecture."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from orchestrator.detr_table import DETR_MODELS, arch_kwargs, detr_arch, tiny_overrides
from orchestrator.errors import OrchError

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "fixtures",
                       "rtdetrv2_official_state_dict_keys.json")
NAMES = ["rtdetr_v2_r18vd", "rtdetr_v2_r34vd", "rtdetr_v2_r50vd", "rtdetr_v2_r101vd", "dfine_n", "dfine_s",
         "dfine_m", "dfine_l", "dfine_x", "deformable_detr_r50", "conditional_detr_r50", "detr_r50"]


def test_table_names_every_model_the_issue_asks_for():
    assert list(DETR_MODELS) == NAMES


def test_table_is_torch_free_and_fast():
    code = ("import sys, time; t = time.time(); import orchestrator.detr_table; "
            "assert not any(m in sys.modules for m in ('torch', 'transformers')), 'imported torch'; "
            "print(time.time() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 0.3


def test_job_modules_import_transformers_only_when_building():
    code = ("import sys, jobs.detr_models, jobs.detr_weights; "
            "assert 'transformers' not in sys.modules, 'transformers imported at import time'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_name_and_key_are_rejected_with_a_did_you_mean():
    with pytest.raises(OrchError, match=r"Did you mean 'rtdetr_v2_r18vd'"):
        detr_arch("rtdetr_v2_r18")
    with pytest.raises(OrchError, match=r"'decoder_layer' .*Did you mean 'decoder_layers'"):
        arch_kwargs("dfine_s", {"decoder_layer": 1})
    with pytest.raises(OrchError, match=r"model.kwargs.backbone: 'depth' .*Did you mean 'depths'"):
        arch_kwargs("rtdetr_v2_r50vd", {"backbone": {"depth": [1, 1, 1, 1]}})


def test_overrides_change_only_what_they_name():
    numbers, backbone = arch_kwargs("rtdetr_v2_r18vd", {"decoder_layers": 1, "backbone": {"depths": [1, 1, 1, 1]}})
    assert numbers["decoder_layers"] == 1 and backbone["depths"] == [1, 1, 1, 1]
    assert numbers["hidden_expansion"] == 0.5 and backbone["layer_type"] == "basic"
    backbone["hidden_sizes"].append(1)
    assert detr_arch("rtdetr_v2_r18vd").numbers["decoder_layers"] == 3   # the table is untouched
    assert detr_arch("rtdetr_v2_r18vd").backbone["hidden_sizes"] == [64, 128, 256, 512]


# Published architecture numbers, read off the official configs (see orchestrator/detr_table.py).
@pytest.mark.parametrize("name, expect", [
    ("rtdetr_v2_r18vd", {"decoder_layers": 3, "hidden_expansion": 0.5, "encoder_in_channels": [128, 256, 512],
                         "backbone.depths": [2, 2, 2, 2], "backbone.layer_type": "basic"}),
    ("rtdetr_v2_r34vd", {"decoder_layers": 4, "backbone.depths": [3, 4, 6, 3], "backbone.layer_type": "basic"}),
    ("rtdetr_v2_r50vd", {"decoder_layers": 6, "hidden_expansion": 1.0, "backbone.depths": [3, 4, 6, 3],
                         "backbone.layer_type": "bottleneck", "num_queries": 300}),
    ("rtdetr_v2_r101vd", {"encoder_hidden_dim": 384, "encoder_ffn_dim": 2048, "d_model": 256,
                          "backbone.depths": [3, 4, 23, 3]}),
    ("dfine_n", {"d_model": 128, "num_feature_levels": 2, "decoder_layers": 3, "decoder_n_points": [6, 6]}),
    ("dfine_s", {"decoder_layers": 3, "depth_mult": 0.34, "hidden_expansion": 0.5}),
    ("dfine_m", {"decoder_layers": 4, "depth_mult": 0.67, "encoder_in_channels": [384, 768, 1536]}),
    ("dfine_l", {"decoder_layers": 6, "decoder_n_points": [3, 6, 3], "reg_scale": 4.0}),
    ("dfine_x", {"encoder_hidden_dim": 384, "reg_scale": 8.0, "backbone.stage_num_blocks": [1, 2, 5, 2]}),
    ("deformable_detr_r50", {"num_feature_levels": 4, "num_queries": 300, "two_stage": False}),
    ("conditional_detr_r50", {"num_queries": 300, "decoder_layers": 6}),
    ("detr_r50", {"num_queries": 100, "encoder_ffn_dim": 2048}),
])
def test_published_numbers(name, expect):
    arch = detr_arch(name)
    for key, value in expect.items():
        got = arch.backbone[key[9:]] if key.startswith("backbone.") else arch.numbers[key]
        assert got == value, (name, key)


torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from jobs.detr_models import build_detr  # noqa: E402


def _count(model) -> int:
    """Parameters plus learned buffers (frozen BatchNorm keeps its affine terms as buffers)."""
    learned = sum(b.numel() for k, b in model.named_buffers()
                  if k.endswith((".weight", ".bias")) and "running" not in k)
    return sum(p.numel() for p in model.parameters()) + learned


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test (nothing may come from a hub)."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("name", NAMES)
def test_every_named_model_builds_offline_with_the_published_size(name, no_network):
    with torch.device("meta"):
        model = build_detr(name, 80)
    published = detr_arch(name).published_params_m * 1e6
    # The authors round to whole millions (D-FINE-N: "4M" for 3.8M).
    assert abs(_count(model) - published) / published < 0.06, (name, _count(model))
    assert model.config.num_labels == 80


def test_r18vd_matches_the_official_model_tensor_for_tensor():
    """Same parameter count as the official r18vd (fixture), up to its fused attention in-proj."""
    with open(FIXTURE) as f:
        official = json.load(f)["models"]["rtdetrv2_r18vd_120e_coco"]
    derived = ("anchors", "valid_mask", "num_points_scale", "num_batches_tracked", "running_mean", "running_var")
    official_count = sum(math.prod(s) for k, s in official.items() if not k.endswith(derived))
    with torch.device("meta"):
        model = build_detr("rtdetr_v2_r18vd", 80)
    assert _count(model) == official_count


@pytest.mark.parametrize("name", NAMES)
def test_tiny_variant_runs_forward_with_the_dataset_class_count(name, no_network):
    torch.manual_seed(0)
    model = build_detr(name, 3, **tiny_overrides(name)).eval()
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    with torch.no_grad():
        out = model(pixel_values=torch.rand(1, 3, 128, 128))
    no_object = 1 if detr_arch(name).family == "detr" else 0   # DETR's softmax has a no-object logit
    assert out.logits.shape[-1] == 3 + no_object
    assert out.pred_boxes.shape[-1] == 4
    assert model.config.model_type == detr_arch(name).model_type   # what an HF folder's config.json says


def test_class_count_and_names_are_validated():
    with pytest.raises(OrchError, match="num_classes"):
        build_detr("dfine_s", 0)
    with pytest.raises(OrchError, match="class_names: 1 names for 2 classes"):
        build_detr("dfine_s", 2, ["cat"], **tiny_overrides("dfine_s"))
    model = build_detr("dfine_s", 2, ["cat", "dog"], **tiny_overrides("dfine_s"))
    assert model.config.id2label == {0: "cat", 1: "dog"} and model.config.label2id == {"cat": 0, "dog": 1}
