"""jobs.models: builders by name, init checkpoints with another class count, param groups."""
from __future__ import annotations

import io
import logging
import warnings

import pytest
import torch
from torchvision.models import detection
from torchvision.ops.misc import FrozenBatchNorm2d

from jobs import models
from orchestrator import storage

torch.set_num_threads(1)
warnings.filterwarnings("ignore", message=".*trainable_backbone_layers.*")

SSDLITE = "ssdlite320_mobilenet_v3_large"
FRCNN = "fasterrcnn_mobilenet_v3_large_320_fpn"
# the tensors whose shape depends on the number of classes
HEAD_KEYS = {SSDLITE: "head.classification_head.module_list.",
             FRCNN: "roi_heads.box_predictor."}


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid names are.*ssdlite320_mobilenet_v3_large"):
        models.build_model({"name": "yolov8"}, 4)
    with pytest.raises(ValueError, match="valid keys"):
        models.build_model({"name": SSDLITE, "pretrained": True}, 4)


@pytest.mark.parametrize("name", [SSDLITE, FRCNN])
def test_finetune_from_a_91_class_checkpoint_skips_only_the_class_dependent_head(name, tmp_path, caplog):
    torch.manual_seed(0)
    source = models.build_model({"name": name}, 91)
    state = source.state_dict()
    url = str(tmp_path / "coco91.pth")
    # DDP-style names inside a training checkpoint: both wrappers must be undone
    storage.write_bytes(url, _saved({"model": {f"module.{k}": v for k, v in state.items()}, "iteration": 10}))

    with caplog.at_level(logging.INFO, logger="jobs.models"):
        target = models.build_model({"name": name, "init_checkpoint": url, "trainable_backbone_layers":
                                     models.MODELS[name].max_trainable, "frozen_bn": False}, 4, load_init=True)
    fresh = models.build_model({"name": name}, 4)
    report = models.load_init_checkpoint(fresh, url)

    skipped = {key for key, _, _ in report["skipped"]}
    assert skipped, "a 91-class head cannot fit a 4-class model"
    assert all(key.startswith(HEAD_KEYS[name]) for key in skipped)
    assert all(src[0] != dst[0] for _, src, dst in report["skipped"])  # the class dimension differs
    assert report["missing"] == [] and report["unexpected"] == []
    assert set(report["loaded"]) | skipped == set(fresh.state_dict())
    for key, value in fresh.state_dict().items():
        if key not in skipped:
            assert torch.equal(value, state[key]), key
    assert torch.equal(target.state_dict()[report["loaded"][0]], state[report["loaded"][0]])
    assert "skipped (shape differs)" in caplog.text and HEAD_KEYS[name] in caplog.text


def test_raw_and_state_dict_wrapped_checkpoints_load(tmp_path):
    model = models.build_model({"name": SSDLITE}, 3)
    for i, payload in enumerate([model.state_dict(), {"state_dict": model.state_dict()}]):
        url = str(tmp_path / f"ckpt{i}.pth")
        storage.write_bytes(url, _saved(payload))
        report = models.load_init_checkpoint(models.build_model({"name": SSDLITE}, 3), url)
        assert not report["skipped"] and not report["missing"] and len(report["loaded"]) == len(model.state_dict())
    bad = str(tmp_path / "bad.pth")
    storage.write_bytes(bad, _saved({"iteration": 3}))
    with pytest.raises(ValueError, match="neither a state_dict"):
        models.load_init_checkpoint(model, bad)


def test_init_checkpoint_prepares_the_model_like_a_pretrained_torchvision_one(tmp_path):
    """Fine-tuning: frozen BatchNorm in the backbone, only the last 3 stages train (torchvision default)."""
    scratch = models.build_model({"name": FRCNN}, 4)
    assert all(p.requires_grad for p in scratch.parameters())
    url = str(tmp_path / "init.pth")
    storage.write_bytes(url, _saved(scratch.state_dict()))
    tuned = models.build_model({"name": FRCNN, "init_checkpoint": url}, 4, load_init=True)
    body = tuned.backbone.body
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in body.modules())
    frozen = [n for n, p in body.named_parameters() if not p.requires_grad]
    trainable = [n for n, p in body.named_parameters() if p.requires_grad]
    assert frozen and trainable and frozen[0].startswith("0.") and trainable[-1].startswith("16.")
    # the frozen statistics are the checkpoint's
    bn_key = next(k for k in tuned.state_dict() if k.endswith("running_var") and k.startswith("backbone.body"))
    assert torch.equal(tuned.state_dict()[bn_key], scratch.state_dict()[bn_key])
    all_layers = models.build_model({"name": FRCNN, "init_checkpoint": url, "trainable_backbone_layers": 6}, 4)
    assert all(p.requires_grad for p in all_layers.backbone.body.parameters())
    conv_key = "backbone.body.0.0.weight"  # without load_init the checkpoint is left to resume_or_load
    assert not torch.equal(all_layers.state_dict()[conv_key], scratch.state_dict()[conv_key])
    with pytest.raises(ValueError, match="outside"):
        models.build_model({"name": FRCNN, "trainable_backbone_layers": 9}, 4)


def test_sizes_reach_the_transform_and_a_training_step_runs():
    frcnn = models.build_model({"name": FRCNN, "min_size": 128, "max_size": 160}, 4)
    assert frcnn.transform.min_size == (128,) and frcnn.transform.max_size == 160
    ssd = models.build_model({"name": SSDLITE, "min_size": 160, "kwargs": {"detections_per_img": 50}}, 4)
    assert ssd.transform.fixed_size == (160, 160) and ssd.detections_per_img == 50
    with pytest.raises(ValueError, match="fixed square size"):
        models.build_model({"name": SSDLITE, "min_size": 160, "max_size": 200}, 4)

    ssd.train()
    images = [torch.rand(3, 96, 96), torch.rand(3, 80, 112)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[5.0, 20.0, 40.0, 70.0], [60.0, 10.0, 100.0, 50.0]]),
                "labels": torch.tensor([2, 3])}]
    losses = ssd(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    ssd.eval()
    with torch.no_grad():
        out = ssd([torch.rand(3, 96, 96)])[0]
    assert set(out) == {"boxes", "scores", "labels"} and out["labels"].max() <= 3  # num_classes 4 = background + 3


def test_param_groups_first_rule_wins_and_keeps_lr_mult():
    model = models.build_model({"name": SSDLITE}, 3)
    for p in model.backbone.extra.parameters():
        p.requires_grad_(False)
    rules = [{"pattern": r"backbone\.features\.0", "lr_mult": 0.1}, {"pattern": "backbone", "lr_mult": 0.5,
                                                                      "decay_mult": 2.0}]
    groups = models.param_groups(model, base_lr=0.2, weight_decay=1e-4, rules=rules, norm_weight_decay=0.0)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {r"backbone\.features\.0", r"backbone\.features\.0/norm", "backbone",
                            "backbone/norm", "default", "default/norm"}
    assert all(n.startswith("backbone.features.0") for n in by_name[r"backbone\.features\.0"]["param_names"])
    assert all(n.startswith("backbone.features.1") for n in by_name["backbone"]["param_names"])
    assert by_name["backbone"]["lr_mult"] == 0.5 and by_name["backbone"]["lr"] == pytest.approx(0.1)
    assert by_name["backbone"]["weight_decay"] == pytest.approx(2e-4)
    assert by_name["default/norm"]["weight_decay"] == 0.0
    assert all(p.ndim <= 1 for p in by_name["default/norm"]["params"])
    counted = sum(len(g["params"]) for g in groups)
    assert counted == sum(1 for p in model.parameters() if p.requires_grad)
    assert not any("extra" in n for g in groups for n in g["param_names"])
    optimizer = torch.optim.SGD(groups, lr=0.2, momentum=0.9)
    assert {g["lr_mult"] for g in optimizer.param_groups} == {0.1, 0.5, 1.0}
    with pytest.raises(ValueError, match="valid keys"):
        models.param_groups(model, 0.1, 0.0, [{"regex": "x"}])


@pytest.mark.parametrize("norm_weight_decay", [0.0, 0.03])
def test_norm_weight_decay_reaches_the_norm_layers_for_every_value(norm_weight_decay):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 4, 1),
                                torch.nn.GroupNorm(2, 4), torch.nn.Linear(4, 2))
    groups = models.param_groups(model, base_lr=0.1, weight_decay=1e-4, norm_weight_decay=norm_weight_decay)
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-4)
    decay_of = {name: group["weight_decay"] for group in optimizer.param_groups for name in group["param_names"]}
    assert {n for n, d in decay_of.items() if d == norm_weight_decay} == {"1.weight", "1.bias", "3.weight", "3.bias"}
    assert all(decay_of[n] == 1e-4 for n in ("0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"))
    # without the option every parameter keeps weight_decay
    plain = models.param_groups(model, base_lr=0.1, weight_decay=1e-4)
    assert [g["weight_decay"] for g in plain] == [1e-4]


def test_the_job_and_the_config_read_one_model_table():
    from orchestrator import modelspec, schema
    assert models.MODELS is modelspec.MODELS
    assert schema.SCHEMA["model"]["name"].choices == tuple(modelspec.MODELS)
    assert set(models.MODEL_KEYS) == set(schema.SCHEMA["model"])


@pytest.mark.parametrize("family,cls", [("faster_rcnn", "FasterRCNN"), ("retinanet", "RetinaNet"), ("fcos", "FCOS"),
                                        ("ssd", "SSD")])
def test_every_kwarg_in_the_table_is_a_torchvision_parameter(family, cls):
    import inspect

    from torchvision.models.detection import ssd
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    from orchestrator import modelspec
    detector = getattr(detection, cls) if cls != "SSD" else ssd.SSD
    accepted = set(inspect.signature(detector.__init__).parameters) | set(
        inspect.signature(GeneralizedRCNNTransform.__init__).parameters)
    tables = {spec.family: spec.kwargs for spec in modelspec.MODELS.values()}
    assert set(tables[family]) <= accepted - {"self", "kwargs", "backbone", "num_classes", "min_size", "max_size"}


def test_a_table_kwarg_reaches_the_detector():
    model = models.build_model({"name": FRCNN, "kwargs": {"box_detections_per_img": 7, "rpn_nms_thresh": 0.6}}, 3)
    assert model.roi_heads.detections_per_img == 7 and model.rpn.nms_thresh == 0.6
    with pytest.raises(ValueError, match="does not take"):
        models.build_model({"name": FRCNN, "kwargs": {"nonsense": 1}}, 3)


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
