"""Official RT-DETRv2 checkpoints, HF folders and HF-named state dicts load into orch's models."""
from __future__ import annotations

import io
import json
import os
import re

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from jobs.detr_models import build_detr  # noqa: E402
from jobs.detr_weights import (load_init_weights, map_official_state_dict,  # noqa: E402
                               official_to_hf_name, resolve_name)
from orchestrator.detr_table import tiny_overrides  # noqa: E402
from orchestrator.errors import OrchError  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "fixtures",
                       "rtdetrv2_official_state_dict_keys.json")
OFFICIAL = {"rtdetr_v2_r18vd": "rtdetrv2_r18vd_120e_coco", "rtdetr_v2_r34vd": "rtdetrv2_r34vd_120e_coco",
            "rtdetr_v2_r50vd": "rtdetrv2_r50vd_6x_coco"}
# Written independently of jobs/detr_weights.py: what depends on the class count in each naming.
OFFICIAL_CLASS_DEPENDENT = re.compile(r"^decoder\.(enc_score_head|dec_score_head\.\d+|denoising_class_embed)\.")
HF_CLASS_DEPENDENT = re.compile(
    r"^(model\.enc_score_head|(model\.decoder\.)?class_embed\.\d+|model\.denoising_class_embed)\.")
DERIVED = {"decoder.anchors", "decoder.valid_mask"}   # recomputed by the HF model from the image size


@pytest.fixture(scope="module")
def official_shapes():
    with open(FIXTURE) as f:
        return json.load(f)["models"]


def _meta_model(name, num_classes):
    with torch.device("meta"):
        return build_detr(name, num_classes)


def _fake_official(shapes):
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_every_official_tensor_lands_on_a_model_tensor_of_its_shape(name, official_shapes):
    shapes = official_shapes[OFFICIAL[name]]
    model = _meta_model(name, 80)
    own = model.state_dict()
    mapped, report = map_official_state_dict(_fake_official(shapes), model)
    # Every official tensor has a home of the same shape (the fused in-projection as three thirds).
    for key, shape in shapes.items():
        if key in DERIVED:
            continue
        target = official_to_hf_name("rt_detr_v2", key)
        assert target is not None, key
        targets = [target.format(qkv=q) for q in ("q_proj", "k_proj", "v_proj")] if "{qkv}" in target else [target]
        pieces = [[shape[0] // 3, *shape[1:]]] * 3 if len(targets) == 3 else [shape]
        for t, piece in zip(targets, pieces):
            t = resolve_name(t, own)
            assert t is not None, key
            assert list(own[t].shape) == piece, (key, t)
            assert list(mapped[t].shape) == piece
    # ... and no model tensor is left unfilled, no two official tensors share one.
    assert set(mapped) == set(own)
    assert report["missing"] == [] and report["skipped"] == [] and report["unexpected"] == []
    assert set(report["derived"]) == DERIVED
    fused = sum(1 for k in shapes if "in_proj" in k)
    unique_own = len({id(v) for v in model.state_dict(keep_vars=True).values()})
    assert len(shapes) - len(DERIVED) + 2 * fused == unique_own


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_another_class_count_skips_exactly_the_class_dependent_tensors(name, official_shapes):
    shapes = official_shapes[OFFICIAL[name]]
    model = _meta_model(name, 3)
    mapped, report = map_official_state_dict(_fake_official(shapes), model)
    skipped = {k for k, _, _ in report["skipped"]}
    canonical = {k for k in model.state_dict() if HF_CLASS_DEPENDENT.match(k) and not k.startswith("class_embed")}
    assert skipped == canonical
    assert len(skipped) == sum(1 for k in shapes if OFFICIAL_CLASS_DEPENDENT.match(k))
    assert all(HF_CLASS_DEPENDENT.match(k) is None for k in mapped)
    # Everything else is filled; the unfilled are exactly the class-dependent ones (and their tied aliases).
    unfilled = set(model.state_dict()) - set(mapped)
    assert unfilled == {k for k in model.state_dict() if HF_CLASS_DEPENDENT.match(k)}
    assert report["missing"] == []


def test_a_checkpoint_of_another_size_or_family_is_refused(official_shapes):
    r50 = _fake_official(official_shapes[OFFICIAL["rtdetr_v2_r50vd"]])
    with pytest.raises(OrchError, match=r"not a rt_detr_v2 of the model's size.*model\.name"):
        map_official_state_dict(r50, _meta_model("rtdetr_v2_r18vd", 80))
    r18 = _fake_official(official_shapes[OFFICIAL["rtdetr_v2_r18vd"]])
    r18["decoder.some_new_head.weight"] = torch.empty(4, device="meta")
    with pytest.raises(OrchError, match=r"decoder\.some_new_head\.weight"):
        map_official_state_dict(r18, _meta_model("rtdetr_v2_r18vd", 80))
    with pytest.raises(OrchError, match="RT-DETRv2 models only"):
        map_official_state_dict(r18, _meta_model("dfine_s", 80))


def test_a_missing_official_tensor_is_reported_missing(official_shapes):
    shapes = dict(official_shapes[OFFICIAL["rtdetr_v2_r18vd"]])
    del shapes["encoder.encoder.0.layers.0.self_attn.in_proj_weight"]
    _, report = map_official_state_dict(_fake_official(shapes), _meta_model("rtdetr_v2_r18vd", 80))
    assert len(report["missing"]) == 3, report["missing"]
    for missing, proj in zip(report["missing"], "kqv"):
        assert missing.startswith("model.encoder.") and missing.endswith(f".0.layers.0.self_attn.{proj}_proj.weight")


@pytest.fixture(scope="module")
def r18_release(official_shapes, tmp_path_factory):
    """A fake official r18vd release (seeded random tensors), saved as the official code saves it."""
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.rand(s, generator=gen) if s else torch.tensor(7)
             for k, s in official_shapes[OFFICIAL["rtdetr_v2_r18vd"]].items()}
    path = tmp_path_factory.mktemp("release") / "rtdetrv2_r18vd_120e_coco.pth"
    torch.save({"ema": {"module": state, "updates": 1000}, "last_epoch": 119}, path)
    return state, str(path)


def test_an_official_release_loads_with_real_values(r18_release):
    state, path = r18_release
    model = build_detr("rtdetr_v2_r18vd", 3)
    report = load_init_weights(model, path)
    assert len(report["skipped"]) == 9 and report["missing"] == []
    own = model.state_dict()
    fused = state["decoder.decoder.layers.1.self_attn.in_proj_weight"]
    assert torch.equal(own["model.decoder.layers.1.self_attn.q_proj.weight"], fused[:256])
    assert torch.equal(own["model.decoder.layers.1.self_attn.k_proj.weight"], fused[256:512])
    assert torch.equal(own["model.decoder.layers.1.self_attn.v_proj.weight"], fused[512:])
    assert torch.equal(own["model.backbone.model.encoder.stages.2.layers.0.shortcut.1.convolution.weight"],
                       state["backbone.res_layers.2.blocks.0.short.conv.conv.weight"])
    assert torch.equal(own["model.enc_output.1.weight"], state["decoder.enc_output.norm.weight"])
    assert own["model.enc_score_head.weight"].shape == (3, 256)


@pytest.mark.parametrize("wrap", ["model", "ema", "bare"])
def test_official_wrappers_are_accepted_and_ema_wins(wrap, official_shapes):
    state = _fake_official(official_shapes[OFFICIAL["rtdetr_v2_r18vd"]])
    model = _meta_model("rtdetr_v2_r18vd", 80)
    checkpoint = {"model": {"model": state}, "ema": {"ema": {"module": state}}, "bare": state}[wrap]
    mapped, report = map_official_state_dict(checkpoint, model)
    assert report["missing"] == [] and len(mapped) == len(model.state_dict())
    decoy = {"model": {"not.a.tensor.name": torch.empty(1, device="meta")}, "ema": {"module": state}}
    assert map_official_state_dict(decoy, model)[1]["missing"] == []


def test_a_pickle_with_objects_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "args": OrchError("not a tensor")}, path)
    model = build_detr("rtdetr_v2_r18vd", 3, **tiny_overrides("rtdetr_v2_r18vd"))
    refused = r"evil\.pth: refused to unpickle it with weights_only=True \(it holds a pickled orchestrator\.errors\."
    with pytest.raises(OrchError, match=refused):
        load_init_weights(model, str(path))


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: HF folders load from local files only."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _tiny(name, num_classes):
    torch.manual_seed(num_classes)
    return build_detr(name, num_classes, **tiny_overrides(name))


@pytest.mark.parametrize("name", ["rtdetr_v2_r18vd", "dfine_s", "deformable_detr_r50", "detr_r50"])
def test_hf_folder_loads_with_another_class_count(name, tmp_path, no_network):
    source = _tiny(name, 80)
    source.save_pretrained(tmp_path / "hf")
    assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "model.safetensors"]
    model = _tiny(name, 3)
    report = load_init_weights(model, str(tmp_path / "hf"))
    skipped = {k for k, _, _ in report["skipped"]}
    assert skipped and all(re.search(r"(enc_score_head|class_embed|class_labels_classifier)\.", k) for k in skipped)
    assert report["missing"] == [] and report["unexpected"] == []
    theirs, ours = source.state_dict(), model.state_dict()
    for key, value in ours.items():
        if value.shape == theirs[key].shape:
            assert torch.equal(value, theirs[key]), key
        else:
            # skipped, or tied to a skipped tensor (class_embed.N <-> model.decoder.class_embed.N)
            assert re.search(r"(enc_score_head|class_embed|class_labels_classifier)\.", key), key


def test_hf_folder_in_either_naming_loads(tmp_path, monkeypatch, no_network):
    """save_pretrained writes the names of the published hub folders (fc1, out_proj, encoder.encoder);
    a folder holding the installed release's module names (5.24: mlp.fc1, o_proj, aifi) loads too."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = _tiny("rtdetr_v2_r18vd", 80)
    source.save_pretrained(tmp_path / "hf")
    published = safetensors_torch.load_file(tmp_path / "hf" / "model.safetensors")
    assert "model.encoder.encoder.0.layers.0.fc1.weight" in published
    current = {k: v.clone() for k, v in source.state_dict().items() if not k.startswith(("class_embed", "bbox_embed"))}
    safetensors_torch.save_file(current, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    model = _tiny("rtdetr_v2_r18vd", 80)
    report = load_init_weights(model, str(tmp_path / "hf"))
    assert report["missing"] == [] and report["skipped"] == [] and report["unexpected"] == []
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_hf_folder_of_another_family_or_without_safetensors_is_refused(tmp_path):
    _tiny("dfine_s", 80).save_pretrained(tmp_path / "dfine")
    with pytest.raises(OrchError, match=r"model_type 'd_fine' but the model is 'rt_detr_v2'"):
        load_init_weights(_tiny("rtdetr_v2_r18vd", 3), str(tmp_path / "dfine"))
    (tmp_path / "dfine" / "model.safetensors").rename(tmp_path / "dfine" / "pytorch_model.bin")
    with pytest.raises(OrchError, match="safetensors only"):
        load_init_weights(_tiny("dfine_s", 3), str(tmp_path / "dfine"))


def test_hf_folder_or_state_dict_of_a_deeper_model_is_refused(tmp_path, no_network):
    """Tensors with no place in the model mean another architecture: refused, not half-loaded."""
    deeper = build_detr("rtdetr_v2_r18vd", 3, **{**tiny_overrides("rtdetr_v2_r18vd"), "decoder_layers": 3})
    deeper.save_pretrained(tmp_path / "hf")
    torch.save({"model": deeper.state_dict()}, tmp_path / "ckpt.pth")
    for url in (tmp_path / "hf", tmp_path / "ckpt.pth"):
        with pytest.raises(OrchError, match=r"\d+ tensor\(s\) have no place in it \(e\.g\. model\.decoder\.\w+\.2\."):
            load_init_weights(_tiny("rtdetr_v2_r18vd", 3), str(url))


def test_an_orch_checkpoint_in_hf_names_loads_by_name(tmp_path):
    source = _tiny("dfine_s", 80)
    torch.save({"model": source.state_dict(), "step": 10}, tmp_path / "ckpt.pth")
    model = _tiny("dfine_s", 3)
    report = load_init_weights(model, str(tmp_path / "ckpt.pth"))
    skipped = {k for k, _, _ in report["skipped"]}
    assert skipped == {k for k in model.state_dict() if HF_CLASS_DEPENDENT.match(k) and not k.startswith("class_embed")}
    assert report["missing"] == [] and report["unexpected"] == []
    key = "model.decoder.layers.0.mlp.fc1.weight" if "model.decoder.layers.0.mlp.fc1.weight" in model.state_dict() \
        else next(k for k in model.state_dict() if k.startswith("model.decoder.layers.0."))
    assert torch.equal(model.state_dict()[key], source.state_dict()[key])


def test_remote_folder_and_checkpoint_load_through_storage(monkeypatch):
    """``model.init_checkpoint`` may be any storage URL (here memory://): folders are copied locally first."""
    from orchestrator import storage

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = _tiny("dfine_s", 80)
    local = {}
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        source.save_pretrained(tmp)
        for name in os.listdir(tmp):
            with open(os.path.join(tmp, name), "rb") as f:
                local[name] = f.read()
    for name, data in local.items():
        storage.write_bytes(f"memory://detr-test/hf/{name}", data)
    buffer = io.BytesIO()
    torch.save({"model": source.state_dict()}, buffer)
    storage.write_bytes("memory://detr-test/ckpt.pth", buffer.getvalue())
    reports = [load_init_weights(_tiny("dfine_s", 3), url)
               for url in ("memory://detr-test/hf", "memory://detr-test/ckpt.pth")]
    assert reports[0]["skipped"] == reports[1]["skipped"] and len(reports[0]["skipped"]) == 7
    assert reports[0]["loaded"] == reports[1]["loaded"] and not reports[0]["missing"] and not reports[1]["missing"]
