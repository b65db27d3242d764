"""Pretrained weights for the transformer detectors: official RT-DETRv2 releases and HF folders.

Three forms of ``model.init_checkpoint`` reach a model built by ``jobs.detr_models.build_detr``:

* a Hugging Face folder (``config.json`` + ``model.safetensors``, what ``save_pretrained``
  writes): loaded with ``transformers``' own ``from_pretrained`` (safetensors only, local files
  only), which also renames the tensors of folders written by older ``transformers`` releases;
* a release checkpoint of the official RT-DETR code (``{"model": ...}`` or
  ``{"ema": {"module": ...}}``, the official parameter names): placed on the HF model's tensors
  by ``map_official_state_dict`` below;
* a state dict in the HF model's own names (an orch checkpoint's ``"model"``).

Each returns the report orch's other init checkpoints give (``jobs.models.load_init_checkpoint``):
``{"loaded": [key], "skipped": [(key, checkpoint_shape, model_shape)], "missing": [key],
"unexpected": [key], "derived": [key]}`` with keys in the model's names. A class count that
differs from the checkpoint's skips exactly the class-dependent tensors (the encoder's and each
decoder layer's class head, the denoising class embedding), as RT-DETR's ``-t`` does. A tensor that
fits nowhere else is an error naming it: it means the checkpoint is another architecture.
``.pth`` files are read with ``torch.load(weights_only=True)``; a refused pickle is an error.
"""
from __future__ import annotations

import copy
import io
import json
import logging
import os
import pickle
import re
import tempfile
from typing import Any, Mapping

from orchestrator import storage
from orchestrator.errors import OrchError

log = logging.getLogger(__name__)

# Tensors whose shape follows the class count, in the HF models' names (RT-DETRv2/D-FINE:
# enc_score_head, (model.decoder.)class_embed.N, denoising_class_embed; DETR: class_labels_classifier).
_CLASS_DEPENDENT = re.compile(r"(^|\.)(enc_score_head|class_embed|denoising_class_embed|class_labels_classifier)\.")
# Official buffers the HF model recomputes from the image size instead of storing.
_OFFICIAL_DERIVED = re.compile(r"^decoder\.(anchors|valid_mask)$")
_SPLIT_QKV = ("q_proj", "k_proj", "v_proj")
# A BatchNorm step counter, absent where the model freezes that norm: no weight, never an error.
_HARMLESS = ("num_batches_tracked",)

# Official RT-DETRv2 name -> HF name as the published hub folders spell it (what save_pretrained
# still writes), first match wins; ``resolve_name`` then finds the installed release's spelling.
# ``{qkv}`` marks nn.MultiheadAttention's fused in-projection, which HF keeps as three projections.
_BB = "model.backbone.model."
_RES, _STAGE = r"backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.", _BB + r"encoder.stages.\1.layers.\2."
_AIFI_O, _AIFI = r"encoder\.encoder\.(\d+)\.layers\.(\d+)\.", r"model.encoder.encoder.\1.layers.\2."
_DEC_O, _DEC = r"decoder\.decoder\.layers\.(\d+)\.", r"model.decoder.layers.\1."
_RTDETR_V2_RULES: list[tuple[str, str]] = [
    # PResNet-vd: three-conv stem, then stages of blocks with branch2a/b(/c) and a shortcut that is
    # a plain conv in stage 0 and avg-pool + conv ("short.conv") in the downsampling stages.
    (r"backbone\.conv1\.conv1_1\.conv\.(.+)", _BB + r"embedder.embedder.0.convolution.\1"),
    (r"backbone\.conv1\.conv1_2\.conv\.(.+)", _BB + r"embedder.embedder.1.convolution.\1"),
    (r"backbone\.conv1\.conv1_3\.conv\.(.+)", _BB + r"embedder.embedder.2.convolution.\1"),
    (r"backbone\.conv1\.conv1_1\.norm\.(.+)", _BB + r"embedder.embedder.0.normalization.\1"),
    (r"backbone\.conv1\.conv1_2\.norm\.(.+)", _BB + r"embedder.embedder.1.normalization.\1"),
    (r"backbone\.conv1\.conv1_3\.norm\.(.+)", _BB + r"embedder.embedder.2.normalization.\1"),
    (_RES + r"short\.conv\.conv\.(.+)", _STAGE + r"shortcut.1.convolution.\3"),
    (_RES + r"short\.conv\.norm\.(.+)", _STAGE + r"shortcut.1.normalization.\3"),
    (_RES + r"short\.conv\.(.+)", _STAGE + r"shortcut.convolution.\3"),
    (_RES + r"short\.norm\.(.+)", _STAGE + r"shortcut.normalization.\3"),
    (_RES + r"branch2a\.conv\.(.+)", _STAGE + r"layer.0.convolution.\3"),
    (_RES + r"branch2b\.conv\.(.+)", _STAGE + r"layer.1.convolution.\3"),
    (_RES + r"branch2c\.conv\.(.+)", _STAGE + r"layer.2.convolution.\3"),
    (_RES + r"branch2a\.norm\.(.+)", _STAGE + r"layer.0.normalization.\3"),
    (_RES + r"branch2b\.norm\.(.+)", _STAGE + r"layer.1.normalization.\3"),
    (_RES + r"branch2c\.norm\.(.+)", _STAGE + r"layer.2.normalization.\3"),
    # HybridEncoder: input projections sit on the HF model itself; the AIFI transformer layer.
    (r"encoder\.input_proj\.(\d+)\.conv\.(.+)", r"model.encoder_input_proj.\1.0.\2"),
    (r"encoder\.input_proj\.(\d+)\.norm\.(.+)", r"model.encoder_input_proj.\1.1.\2"),
    (_AIFI_O + r"self_attn\.in_proj_(weight|bias)", _AIFI + r"self_attn.{qkv}.\3"),
    (_AIFI_O + r"self_attn\.out_proj\.(.+)", _AIFI + r"self_attn.out_proj.\3"),
    (_AIFI_O + r"linear1\.(.+)", _AIFI + r"fc1.\3"),
    (_AIFI_O + r"linear2\.(.+)", _AIFI + r"fc2.\3"),
    (_AIFI_O + r"norm1\.(.+)", _AIFI + r"self_attn_layer_norm.\3"),
    (_AIFI_O + r"norm2\.(.+)", _AIFI + r"final_layer_norm.\3"),
    # CCFM (lateral/downsample convs, CSP fpn/pan blocks): same names under model.encoder.
    (r"encoder\.((?:lateral_convs|downsample_convs|fpn_blocks|pan_blocks)\..+)", r"model.encoder.\1"),
    # Decoder: input projections and heads sit on the HF model; layers keep their order.
    (r"decoder\.input_proj\.(\d+)\.conv\.(.+)", r"model.decoder_input_proj.\1.0.\2"),
    (r"decoder\.input_proj\.(\d+)\.norm\.(.+)", r"model.decoder_input_proj.\1.1.\2"),
    (_DEC_O + r"self_attn\.in_proj_(weight|bias)", _DEC + r"self_attn.{qkv}.\2"),
    (_DEC_O + r"self_attn\.out_proj\.(.+)", _DEC + r"self_attn.out_proj.\2"),
    (_DEC_O + r"cross_attn\.num_points_scale", _DEC + r"encoder_attn.n_points_scale"),
    (_DEC_O + r"cross_attn\.(.+)", _DEC + r"encoder_attn.\2"),
    (_DEC_O + r"norm1\.(.+)", _DEC + r"self_attn_layer_norm.\2"),
    (_DEC_O + r"norm2\.(.+)", _DEC + r"encoder_attn_layer_norm.\2"),
    (_DEC_O + r"norm3\.(.+)", _DEC + r"final_layer_norm.\2"),
    (_DEC_O + r"linear1\.(.+)", _DEC + r"fc1.\2"),
    (_DEC_O + r"linear2\.(.+)", _DEC + r"fc2.\2"),
    (r"decoder\.dec_score_head\.(\d+)\.(.+)", r"model.decoder.class_embed.\1.\2"),
    (r"decoder\.dec_bbox_head\.(\d+)\.(.+)", r"model.decoder.bbox_embed.\1.\2"),
    (r"decoder\.query_pos_head\.(.+)", r"model.decoder.query_pos_head.\1"),
    (r"decoder\.denoising_class_embed\.(.+)", r"model.denoising_class_embed.\1"),
    (r"decoder\.enc_output\.proj\.(.+)", r"model.enc_output.0.\1"),
    (r"decoder\.enc_output\.norm\.(.+)", r"model.enc_output.1.\1"),
    (r"decoder\.enc_score_head\.(.+)", r"model.enc_score_head.\1"),
    (r"decoder\.enc_bbox_head\.(.+)", r"model.enc_bbox_head.\1"),
]
_OFFICIAL_RULES = {"rt_detr_v2": [(re.compile(p + "$"), r) for p, r in _RTDETR_V2_RULES]}


# transformers releases after 5.0 renamed some modules of the hub layout; a name is looked up as
# published first, then with these renames (each may or may not apply to the installed release).
_RENAMES = [(re.compile(r"\.encoder\.encoder\.(\d+)\.layers\."), r".encoder.aifi.\1.layers."),
            (re.compile(r"\.fc([12])\."), r".mlp.fc\1."),
            (re.compile(r"\.out_proj\."), r".o_proj.")]


def official_to_hf_name(family: str, official_key: str) -> str | None:
    """The hub-layout HF name of ``official_key`` (``{qkv}`` in it for a fused in-projection), or None."""
    for pattern, replacement in _OFFICIAL_RULES[family]:
        if pattern.match(official_key):
            return pattern.sub(replacement, official_key)
    return None


def resolve_name(hub_name: str, model_keys: Mapping[str, Any] | set[str]) -> str | None:
    """``hub_name`` as the installed ``transformers`` spells it among ``model_keys``, or None."""
    candidates = [hub_name]
    for pattern, replacement in _RENAMES:
        candidates += [pattern.sub(replacement, c) for c in candidates]
    return next((c for c in candidates if c in model_keys), None)


def is_class_dependent(hf_key: str) -> bool:
    """Whether the tensor's shape follows the class count (class heads, denoising class embedding)."""
    return bool(_CLASS_DEPENDENT.search(hf_key))


def unwrap_official(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """The state dict of an official release: ``ema.module`` when present (what ``-t`` tunes from), else ``model``."""
    ema = checkpoint.get("ema")
    if isinstance(ema, Mapping) and isinstance(ema.get("module"), Mapping):
        return ema["module"]
    if isinstance(checkpoint.get("model"), Mapping):
        return checkpoint["model"]
    return checkpoint


def map_official_state_dict(official: Mapping[str, Any], model: Any,
                            where: str = "(state dict)") -> tuple[dict[str, Any], dict[str, list]]:
    """Place every tensor of an official RT-DETRv2 state dict on the HF ``model``'s tensors.

    ``official``: name -> tensor (or just a shape, for dry checks); ``{"model": ...}`` and
    ``{"ema": {"module": ...}}`` wrappers are accepted. Returns ``(mapped, report)``: ``mapped``
    is a state dict in the model's names (tied aliases included) for
    ``model.load_state_dict(mapped, strict=False)``; ``report`` as in this module's docstring.
    A tensor with no home in ``model``, or a non-class tensor of another shape, is an OrchError.
    """
    family = getattr(model.config, "model_type", None)
    if family not in _OFFICIAL_RULES:
        raise OrchError(f"{where}: official-format checkpoints are mapped for RT-DETRv2 models only, "
                        f"not {family!r}; convert it to a Hugging Face folder (save_pretrained) and pass that.")
    official = unwrap_official(official)
    own = model.state_dict(keep_vars=True)
    aliases = _alias_groups(model)
    mapped: dict[str, Any] = {}
    skipped: list[tuple[str, tuple, tuple]] = []
    derived: list[str] = []
    unplaced: list[str] = []
    wrong_shape: list[tuple[str, str, tuple, tuple]] = []
    for key, value in official.items():
        if _OFFICIAL_DERIVED.match(key):
            derived.append(key)
            continue
        target = official_to_hf_name(family, key)
        if target is None:
            unplaced.append(key)
            continue
        pieces = _split3(value) if "{qkv}" in target else [value]
        names = [target.format(qkv=q) for q in _SPLIT_QKV] if "{qkv}" in target else [target]
        for hub_name, piece in zip(names, pieces):
            name = resolve_name(hub_name, own)
            if name is None:
                unplaced.append(key)
                continue
            have, want = _shape(piece), tuple(own[name].shape)
            if have != want:
                if is_class_dependent(name):
                    skipped.append((name, have, want))
                else:
                    wrong_shape.append((key, name, have, want))
                continue
            for alias in aliases[name]:
                mapped[alias] = piece
    if unplaced or wrong_shape:
        raise OrchError(_architecture_error(where, model, list(dict.fromkeys(unplaced)), wrong_shape))
    return mapped, _report(model, set(mapped), skipped, [], derived)


def load_init_weights(model: Any, url: str) -> dict[str, list]:
    """Load ``url`` (HF folder, official release or HF-named state dict) into ``model``; the report."""
    if _is_hf_folder(url):
        return load_hf_folder(model, url)
    checkpoint = read_weights(url)
    state = unwrap_official(checkpoint)
    if _looks_official(state):
        mapped, report = map_official_state_dict(state, model, where=url)
    else:
        mapped, report = _match_by_name(state, model, url)
    model.load_state_dict(mapped, strict=False)
    _log_report(url, report)
    return report


def read_weights(url: str) -> Mapping[str, Any]:
    """A ``.pth`` checkpoint read with ``weights_only=True``; anything else is a one-line error."""
    import torch

    try:
        data = torch.load(io.BytesIO(storage.read_bytes(url)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is a page; the line naming the refused object is the useful one.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f"it holds a pickled {found.group(1)}" if found else "it holds objects besides tensors"
        raise OrchError(f"model.init_checkpoint {url}: refused to unpickle it with weights_only=True "
                        f"({what}). Re-save only the weights "
                        f"(torch.save({{'model': model.state_dict()}}, path)) from code you trust, or "
                        f"pass a Hugging Face folder (config.json + model.safetensors).") from None
    if not isinstance(data, Mapping):
        raise OrchError(f"model.init_checkpoint {url}: expected a dict of tensors, found a "
                        f"{type(data).__name__}; pass a state dict, an official release or an HF folder.")
    return data


def load_hf_folder(model: Any, url: str) -> dict[str, list]:
    """Load a ``save_pretrained`` folder (safetensors only, no network) into ``model``; the report.

    The folder's architecture must be ``model``'s: its ``config.json`` names the same family and
    every tensor but the class-dependent ones has ``model``'s shape.
    """
    config_text = storage.read_text(storage.join(url, "config.json"))
    folder_type = json.loads(config_text).get("model_type")
    family = model.config.model_type
    if folder_type != family:
        raise OrchError(f"model.init_checkpoint {url}: config.json says model_type {folder_type!r} but "
                        f"the model is {family!r}; pass a folder of the same family or change model.name.")
    with _local_folder(url) as folder:
        if not any(f.endswith(".safetensors") for f in os.listdir(folder)):
            raise OrchError(f"model.init_checkpoint {url}: no model.safetensors in the folder; orch loads HF "
                            f"folders from safetensors only (re-save with save_pretrained(..., "
                            f"safe_serialization=True)).")
        loaded, info = type(model).from_pretrained(
            folder, config=copy.deepcopy(model.config), ignore_mismatched_sizes=True, local_files_only=True,
            use_safetensors=True, output_loading_info=True)
    wrong = [(k, tuple(a), tuple(b)) for k, a, b in info["mismatched_keys"] if not is_class_dependent(k)]
    extra = sorted(k for k in info["unexpected_keys"] if not k.endswith(_HARMLESS))
    if wrong or extra:
        raise OrchError(_architecture_error(url, model, extra, [(k, k, a, b) for k, a, b in wrong]))
    model.load_state_dict(loaded.state_dict())
    skipped = [(k, tuple(a), tuple(b)) for k, a, b in info["mismatched_keys"]]
    groups = _alias_groups(model)
    not_filled = {a for k in [*info["missing_keys"], *(k for k, _, _ in skipped)] for a in groups.get(k, [k])}
    report = _report(model, {k for k in groups if k not in not_filled}, skipped,
                     sorted(set(info["unexpected_keys"])), [])
    _log_report(url, report)
    return report


# ---------------------------------------------------------------- helpers

def _alias_groups(model: Any) -> dict[str, list[str]]:
    """Each state-dict key -> every key naming the same tensor (HF ties ``class_embed`` to
    ``model.decoder.class_embed``): filling or skipping one fills or skips them all."""
    by_tensor: dict[int, list[str]] = {}
    state = model.state_dict(keep_vars=True)
    for key, value in state.items():
        by_tensor.setdefault(id(value), []).append(key)
    return {key: by_tensor[id(value)] for key, value in state.items()}


def _report(model: Any, filled: set[str], skipped: list[tuple[str, tuple, tuple]], unexpected: list[str],
            derived: list[str]) -> dict[str, list]:
    groups = _alias_groups(model)
    skipped_all = {a for k, _, _ in skipped for a in groups.get(k, [k])}
    # One entry per tensor: a tied alias (class_embed.N of model.decoder.class_embed.N) is not listed twice.
    order = {k: i for i, k in enumerate(groups)}
    once: dict[tuple[str, ...], tuple[str, tuple, tuple]] = {}
    for entry in sorted(skipped, key=lambda e: order.get(e[0], -1)):
        once.setdefault(tuple(groups.get(entry[0], [entry[0]])), entry)
    skipped = list(once.values())
    return {"loaded": sorted(filled), "skipped": sorted(skipped),
            "missing": sorted(k for k in groups if k not in filled and k not in skipped_all),
            "unexpected": sorted(unexpected), "derived": sorted(derived)}


def _match_by_name(state: Mapping[str, Any], model: Any, url: str) -> tuple[dict[str, Any], dict[str, list]]:
    own = model.state_dict()
    mapped, skipped, unexpected, wrong = {}, [], [], []
    for key, value in state.items():
        if key not in own:
            unexpected.append(key)
        elif _shape(value) != tuple(own[key].shape):
            (skipped if is_class_dependent(key) else wrong).append((key, _shape(value), tuple(own[key].shape)))
        else:
            mapped[key] = value
    extra = [k for k in unexpected if not k.endswith(_HARMLESS)]
    if wrong or extra:
        raise OrchError(_architecture_error(url, model, extra, [(k, k, a, b) for k, a, b in wrong]))
    return mapped, _report(model, set(mapped), skipped, unexpected, [])


def _looks_official(state: Mapping[str, Any]) -> bool:
    return any(k.startswith(("backbone.", "encoder.", "decoder.")) for k in state) and \
        not any(k.startswith("model.") for k in state)


def _is_hf_folder(url: str) -> bool:
    return storage.isdir(url) and storage.exists(storage.join(url, "config.json"))


class _local_folder:
    """The folder itself when local; otherwise its json/safetensors files copied to a temp dir."""

    def __init__(self, url: str):
        self.url, self.tmp = url, None

    def __enter__(self) -> str:
        if storage.is_local(self.url):
            return storage.local_path(self.url)
        self.tmp = tempfile.TemporaryDirectory(prefix="orch-hf-")
        for name in storage.listdir(self.url):
            base = storage.basename(name)
            if base.endswith((".json", ".safetensors")):
                with open(os.path.join(self.tmp.name, base), "wb") as f:
                    f.write(storage.read_bytes(storage.join(self.url, base)))
        return self.tmp.name

    def __exit__(self, *exc: Any) -> None:
        if self.tmp is not None:
            self.tmp.cleanup()


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(int(d) for d in value)


def _split3(value: Any) -> list[Any]:
    """nn.MultiheadAttention's fused in-projection (q; k; v stacked on dim 0) as three pieces."""
    if hasattr(value, "chunk"):
        return list(value.chunk(3, dim=0))
    shape = _shape(value)
    return [(shape[0] // 3, *shape[1:])] * 3


def _architecture_error(where: str, model: Any, unplaced: list[str],
                        wrong_shape: list[tuple[str, str, tuple, tuple]]) -> str:
    what = []
    if unplaced:
        what.append(f"{len(unplaced)} tensor(s) have no place in it (e.g. {', '.join(unplaced[:3])})")
    if wrong_shape:
        key, name, have, want = wrong_shape[0]
        what.append(f"{len(wrong_shape)} tensor(s) differ in shape (e.g. {key} is {list(have)}, "
                    f"the model's {name} is {list(want)})")
    arch = getattr(model.config, "model_type", type(model).__name__)
    return (f"model.init_checkpoint {where}: this checkpoint is not a {arch} of the model's size: "
            f"{'; '.join(what)}. Choose the model.name the checkpoint was trained as.")


def _log_report(url: str, report: dict[str, list]) -> None:
    log.info("init checkpoint %s: loaded %d tensors; skipped (class count differs) %s; missing %d; "
             "unexpected %d", url, len(report["loaded"]), [k for k, _, _ in report["skipped"]] or "none",
             len(report["missing"]), len(report["unexpected"]))



def release_state_dict(name: str, url: str, **overrides: Any) -> dict[str, Any] | None:
    """The weights of a released model in ``name``'s own tensor names, for inference outside a run
    (``orch eval/predict/export --model NAME``): an HF folder, or an official RT-DETR ``.pth``
    (``{"model": ...}`` / ``{"ema": {"module": ...}}``), at the class count it was released with.
    None when ``url`` is neither (an orch checkpoint, read the usual way)."""
    from jobs.detr_models import build_detr

    if _is_hf_folder(url):
        folder_config = json.loads(storage.read_text(storage.join(url, "config.json")))
        num_classes = len(folder_config.get("id2label") or {}) or int(folder_config.get("num_labels") or 0)
        if num_classes < 1:
            raise OrchError(f"{url}/config.json lists no classes (id2label / num_labels); re-save the model with "
                            f"save_pretrained")
        model = build_detr(name, num_classes, **overrides)
        load_hf_folder(model, url)
        return model.state_dict()
    if not storage.exists(url) or storage.isdir(url):
        return None
    state = unwrap_official(read_weights(url))
    if not _looks_official(state):
        return None
    head = state.get("decoder.enc_score_head.weight")
    if head is None:
        raise OrchError(f"{url} looks like an official RT-DETR checkpoint but has no decoder.enc_score_head.weight, "
                        f"so its class count is unknown; pass the release .pth as downloaded")
    model = build_detr(name, int(head.shape[0]), **overrides)
    mapped, _report_ = map_official_state_dict(state, model, where=url)
    model.load_state_dict(mapped, strict=False)
    return model.state_dict()
