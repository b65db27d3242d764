"""ONNX export of a trained detector, post-processing (box decoding, NMS, top-k) inside the graph.

The graph's interface, whatever the model::

    input   images       float32 [B, 3, H, W], RGB in [0, 1] (normalisation and resizing are inside);
                         H and W are free, B is 1 unless exported with dynamic_batch
    outputs boxes        float32 [N, 4]  x1, y1, x2, y2 in input pixels
            scores       float32 [N]
            labels       int64   [N]     contiguous labels 1..K: label k is category_ids[k - 1]
            batch_index  int64   [N]     which image of the batch each detection belongs to

``category_ids``, ``class_names``, the model name and the checkpoint sit in the model's
metadata_props. The exporter is torch.onnx's TorchScript one (``dynamo=False``): the dynamo
exporter cannot express these models' data-dependent shapes. torchvision's detection graphs
handle one image per call, so a dynamic batch is an ONNX ``Loop`` over the images around the
one-image graph, concatenating each image's detections.

:func:`check_onnx` runs onnx.checker, then onnxruntime and torch on the same images and matches
their detections by label, score and box (so the order among equal scores does not matter).
"""
from __future__ import annotations

import io
import json
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from jobs.predict import LoadedModel, read_image, to_tensor
from orchestrator import storage
from orchestrator.errors import OrchError

OUTPUT_NAMES = ("boxes", "scores", "labels", "batch_index")
DEFAULT_OPSET = 17
TRACE_IMAGE_HW = (240, 320)  # any size works (H and W stay free in the graph)
DEFAULT_BOX_TOL_PX = 0.05
DEFAULT_SCORE_TOL = 1e-3
_LOOP = "orch_batch_"  # prefix of the value names the batch loop adds


class _BatchOfOne(nn.Module):
    """[1, 3, H, W] -> the four outputs, for an export with a fixed batch of one."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        out = self.model([images[0]])[0]
        return out["boxes"], out["scores"], out["labels"], torch.zeros_like(out["labels"])


class _OneImage(nn.Module):
    """[3, H, W] -> boxes, scores, labels: the body of the batch loop."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        out = self.model([image])[0]
        return out["boxes"], out["scores"], out["labels"]


def _trace_export(module: nn.Module, example: torch.Tensor, input_name: str, output_names: Sequence[str],
                  opset: int) -> bytes:
    hw_axes = {example.dim() - 2: "height", example.dim() - 1: "width"}
    dynamic_axes = {input_name: hw_axes, **{name: {0: "num_detections"} for name in output_names}}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about Python ints: expected for these models
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=opset, input_names=[input_name],
                          output_names=list(output_names), dynamic_axes=dynamic_axes, do_constant_folding=True)
    return buffer.getvalue()



def write_onnx(proto: Any, loaded: Any, out_url: str, **described: str) -> bytes:
    """Stamp the model card (model, checkpoint, classes, the input/output contract) and write the file."""
    import onnx

    proto.doc_string = f"{loaded.name} from {loaded.checkpoint_url}, exported by orch"
    metadata = {"model": loaded.name, "checkpoint": loaded.checkpoint_url, "num_classes": str(loaded.num_classes),
                **described}
    if loaded.category_ids is not None:
        metadata["category_ids"] = json.dumps(loaded.category_ids)
        metadata["class_names"] = json.dumps([loaded.class_names.get(c, str(c)) for c in loaded.category_ids])
    onnx.helper.set_model_props(proto, metadata)
    payload = proto.SerializeToString()
    storage.write_bytes(out_url, payload)
    return payload


def export_onnx(loaded: LoadedModel, out_url: str, *, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = False) -> dict[str, Any]:
    """Export ``loaded.model`` (on the CPU) to ``out_url``; returns ``{"out", "bytes", "seconds", "model"}``."""
    import onnx

    started = time.perf_counter()
    model = loaded.model.to("cpu").eval()
    example = torch.rand((3, *TRACE_IMAGE_HW), generator=torch.Generator().manual_seed(0))
    try:
        if dynamic_batch:
            one = onnx.load_from_string(_trace_export(_OneImage(model), example, "image", OUTPUT_NAMES[:3], opset))
            proto = _batch_loop(one)
        else:
            proto = onnx.load_from_string(_trace_export(_BatchOfOne(model), example[None], "images", OUTPUT_NAMES,
                                                        opset))
    except Exception as exc:  # torch.onnx raises many types; the message is what matters
        raise OrchError(f"ONNX export of {loaded.name} (opset {opset}) failed: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}; try another --opset") from None
    payload = write_onnx(proto, loaded, out_url, input="images float32 [B,3,H,W] RGB in [0,1]",
                         outputs="boxes [N,4] xyxy px, scores [N], labels [N] (1..K), batch_index [N]",
                         dynamic_batch=str(bool(dynamic_batch)).lower())
    loaded.model.to(loaded.device)
    return {"out": out_url, "bytes": len(payload), "seconds": time.perf_counter() - started, "proto": proto,
            "payload": payload}


def _batch_loop(one):
    """Wrap a one-image graph (image [3,H,W] -> boxes, scores, labels) into a Loop over images [B,3,H,W].

    The weights stay initializers of the outer graph (a Loop body may read outer values); each
    iteration appends its detections and a batch index to loop-carried tensors.
    """
    from onnx import TensorProto, helper

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    p = _LOOP
    inner = one.graph
    body_nodes = [helper.make_node("Gather", ["images", p + "i"], [inner.input[0].name], axis=0)]
    body_nodes += list(inner.node)
    boxes, scores, labels = (o.name for o in inner.output)
    body_nodes += [
        helper.make_node("Concat", [p + "boxes_in", boxes], [p + "boxes_out"], axis=0),
        helper.make_node("Concat", [p + "scores_in", scores], [p + "scores_out"], axis=0),
        helper.make_node("Concat", [p + "labels_in", labels], [p + "labels_out"], axis=0),
        helper.make_node("Shape", [labels], [p + "count"]),
        helper.make_node("Expand", [p + "i", p + "count"], [p + "index"]),
        helper.make_node("Concat", [p + "index_in", p + "index"], [p + "index_out"], axis=0),
        helper.make_node("Identity", [p + "cond_in"], [p + "cond_out"]),
    ]

    def value(name, dtype, shape):
        return helper.make_tensor_value_info(name, dtype, shape)

    def carried(suffix, dim):
        return [value(p + "boxes" + suffix, f32, [dim, 4]), value(p + "scores" + suffix, f32, [dim]),
                value(p + "labels" + suffix, i64, [dim]), value(p + "index" + suffix, i64, [dim])]

    body = helper.make_graph(
        body_nodes, "one_image",
        [value(p + "i", i64, []), value(p + "cond_in", TensorProto.BOOL, [])] + carried("_in", "before"),
        [value(p + "cond_out", TensorProto.BOOL, [])] + carried("_out", "after"),
        value_info=list(inner.value_info))
    nodes = [
        helper.make_node("Shape", ["images"], [p + "shape"]),
        helper.make_node("Gather", [p + "shape", p + "zero"], [p + "batch"], axis=0),  # a scalar: Loop's trip count
        helper.make_node("Loop", [p + "batch", "", p + "boxes0", p + "scores0", p + "labels0", p + "index0"],
                         list(OUTPUT_NAMES), body=body),
    ]
    initializers = list(inner.initializer) + [
        helper.make_tensor(p + "zero", i64, [], [0]),
        helper.make_tensor(p + "boxes0", f32, [0, 4], []), helper.make_tensor(p + "scores0", f32, [0], []),
        helper.make_tensor(p + "labels0", i64, [0], []), helper.make_tensor(p + "index0", i64, [0], [])]
    graph = helper.make_graph(
        nodes, "detector_batch", [value("images", f32, ["batch", 3, "height", "width"])],
        [value("boxes", f32, ["num_detections", 4]), value("scores", f32, ["num_detections"]),
         value("labels", i64, ["num_detections"]), value("batch_index", i64, ["num_detections"])],
        initializer=initializers)
    return helper.make_model(graph, opset_imports=list(one.opset_import), ir_version=one.ir_version,
                             producer_name="orch")


# ---------------------------------------------------------------- checking

@dataclass
class ImageCheck:
    name: str
    torch_count: int
    onnx_count: int
    matched: int
    max_box_diff_px: float
    max_score_diff: float
    unmatched: int           # detections neither side could pair (beyond the boundary ones)
    boundary: int            # unpaired ones at the score threshold or the top-k cut: tolerated


@dataclass
class CheckReport:
    images: list[ImageCheck] = field(default_factory=list)
    box_tol_px: float = DEFAULT_BOX_TOL_PX
    score_tol: float = DEFAULT_SCORE_TOL
    batches: int = 0

    @property
    def max_box_diff_px(self) -> float:
        return max((c.max_box_diff_px for c in self.images), default=0.0)

    @property
    def max_score_diff(self) -> float:
        return max((c.max_score_diff for c in self.images), default=0.0)

    @property
    def ok(self) -> bool:
        return bool(self.images) and all(c.unmatched == 0 for c in self.images) \
            and self.max_box_diff_px <= self.box_tol_px and self.max_score_diff <= self.score_tol

    def render_text(self) -> str:
        lines = [f"  {c.name}: torch {c.torch_count} / onnxruntime {c.onnx_count} detections, {c.matched} matched, "
                 f"max box diff {c.max_box_diff_px:.3g} px, max score diff {c.max_score_diff:.3g}"
                 + (f", {c.unmatched} unmatched" if c.unmatched else "")
                 + (f", {c.boundary} at the score cut-off (tolerated)" if c.boundary else "")
                 for c in self.images]
        verdict = "OK" if self.ok else "MISMATCH"
        lines.append(f"check {verdict}: {len(self.images)} images in {self.batches} onnxruntime call(s), "
                     f"max box difference {self.max_box_diff_px:.3g} px (tolerance {self.box_tol_px:g}), "
                     f"max score difference {self.max_score_diff:.3g} (tolerance {self.score_tol:g})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "max_box_diff_px": self.max_box_diff_px, "max_score_diff": self.max_score_diff,
                "box_tol_px": self.box_tol_px, "score_tol": self.score_tol,
                "images": [vars(c) for c in self.images]}


def score_threshold(model: nn.Module) -> float:
    """The score below which the model drops detections (where one side may keep what the other drops)."""
    for owner in (model, getattr(model, "roi_heads", None)):
        if owner is not None and hasattr(owner, "score_thresh"):
            return float(owner.score_thresh)
    return 0.0


def match_detections(a: dict[str, np.ndarray], b: dict[str, np.ndarray], score_tol: float,
                     score_floor: float) -> tuple[list[tuple[int, int]], list[int], list[int], int]:
    """Pair detections of ``a`` and ``b`` with the same label and scores within ``score_tol``,
    closest boxes first. Returns (pairs, unpaired of a, unpaired of b, how many unpaired are
    tolerated): those scored within ``score_tol`` of the other side's lowest score or of the
    model's ``score_floor``: there, ties and rounding decide what the top-k or the threshold keeps.
    """
    na, nb = len(a["scores"]), len(b["scores"])
    pairs: list[tuple[int, int]] = []
    if na and nb:
        box_diff = np.abs(a["boxes"][:, None, :].astype(np.float64) - b["boxes"][None, :, :]).max(-1)
        allowed = (a["labels"][:, None] == b["labels"][None, :]) & \
                  (np.abs(a["scores"][:, None].astype(np.float64) - b["scores"][None, :]) <= score_tol)
        candidates = np.flatnonzero(allowed)
        taken_a, taken_b = np.zeros(na, bool), np.zeros(nb, bool)
        for flat in candidates[np.argsort(box_diff.ravel()[candidates], kind="stable")]:
            i, j = divmod(int(flat), nb)
            if not taken_a[i] and not taken_b[j]:
                taken_a[i] = taken_b[j] = True
                pairs.append((i, j))
    paired_a, paired_b = {i for i, _ in pairs}, {j for _, j in pairs}
    rest_a = [i for i in range(na) if i not in paired_a]
    rest_b = [j for j in range(nb) if j not in paired_b]

    def at_cut(score: float, other: np.ndarray) -> bool:
        near_lowest = len(other) > 0 and abs(score - float(other.min())) <= score_tol
        return near_lowest or score <= score_floor + score_tol

    tolerated = sum(at_cut(float(a["scores"][i]), b["scores"]) for i in rest_a) + \
        sum(at_cut(float(b["scores"][j]), a["scores"]) for j in rest_b)
    return pairs, rest_a, rest_b, tolerated


def check_onnx(payload: bytes, loaded: LoadedModel, img_dir: str, names: Sequence[str], *,
               dynamic_batch: bool = False, box_tol_px: float = DEFAULT_BOX_TOL_PX,
               score_tol: float = DEFAULT_SCORE_TOL) -> CheckReport:
    """onnx.checker, then onnxruntime against torch on the given images (see the module docstring)."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(onnx.load_from_string(payload), full_check=True)
    except Exception as exc:  # noqa: BLE001 - onnx's checker raises several types
        raise OrchError(f"onnx.checker rejects the exported graph: {exc}") from None
    session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    model = loaded.model.to("cpu").eval()
    floor = score_threshold(model)
    tensors = {name: to_tensor(read_image(storage.join(img_dir, name))) for name in names}
    # one onnxruntime call per batch of same-sized images (one image per call without a dynamic batch)
    groups: dict[tuple[int, ...], list[str]] = {}
    for name in names:
        groups.setdefault(tuple(tensors[name].shape) if dynamic_batch else (name,), []).append(name)
    report = CheckReport(box_tol_px=box_tol_px, score_tol=score_tol)
    for group in groups.values():
        batch = torch.stack([tensors[n] for n in group]).numpy()
        boxes, scores, labels, index = session.run(list(OUTPUT_NAMES), {"images": batch})
        report.batches += 1
        with torch.no_grad():
            reference = model([tensors[n] for n in group])
        for k, (name, ref) in enumerate(zip(group, reference)):
            mine = index == k
            a = {"boxes": ref["boxes"].numpy(), "scores": ref["scores"].numpy(), "labels": ref["labels"].numpy()}
            b = {"boxes": boxes[mine], "scores": scores[mine], "labels": labels[mine]}
            pairs, rest_a, rest_b, tolerated = match_detections(a, b, score_tol, floor)
            box_diff = max((float(np.abs(a["boxes"][i] - b["boxes"][j]).max()) for i, j in pairs), default=0.0)
            score_diff = max((abs(float(a["scores"][i]) - float(b["scores"][j])) for i, j in pairs), default=0.0)
            report.images.append(ImageCheck(name, len(a["scores"]), len(b["scores"]), len(pairs), box_diff,
                                            score_diff, len(rest_a) + len(rest_b) - tolerated, tolerated))
    loaded.model.to(loaded.device)
    return report
