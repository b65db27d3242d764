"""ONNX export of RT-DETRv2 and D-FINE, shaped like the official RT-DETR deploy graph.

The graph's interface (any batch size B; S is the model's square input size, 640 by default)::

    inputs  images             float32 [B, 3, S, S]  RGB in [0, 1], already resized to S x S
            orig_target_sizes  int64   [B, 2]        each image's original (width, height)
    outputs labels             int64   [B, K]        contiguous labels 1..K: label k is category_ids[k - 1]
            boxes              float32 [B, K, 4]     x1, y1, x2, y2 in original-image pixels
            scores             float32 [B, K]

These are the names and the order of the official ``tools/export_onnx.py`` (its labels are
0-based; orch's are 1..K like every orch export). K is the top-k over queries x classes that
``jobs.detr_adapter.postprocess_batch`` keeps (one per query): no NMS, a fixed K per image. The
resize stays outside the graph, as in the official deploy code: orch resizes with
``jobs.detr_adapter.preprocess`` (bilinear with antialiasing, then clamped to [0, 1]); feeding
exactly those pixels gives exactly orch's detections, and :func:`check_onnx` does so.

The exporter is torch.onnx's TorchScript one (``dynamo=False``). Both sides pick the top queries
of the encoder by score; where scores tie exactly (a freshly initialised model, whose BatchNorm
statistics make every position alike) the pick is arbitrary and the two sides' detections differ,
which ``--check`` reports as a mismatch. Trained weights do not tie.
"""
from __future__ import annotations

import io
import json
import time
import warnings
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from jobs import detr_adapter
from jobs.export import CheckReport, ImageCheck, DEFAULT_BOX_TOL_PX, DEFAULT_SCORE_TOL, match_detections, write_onnx
from jobs.predict import LoadedModel, read_image, to_tensor
from orchestrator import storage
from orchestrator.errors import OrchError

INPUT_NAMES = ("images", "orig_target_sizes")
OUTPUT_NAMES = ("labels", "boxes", "scores")
TRACE_BATCH = 2  # > 1, so no size of the trace is mistaken for the batch axis


class DetrDeployGraph(nn.Module):
    """(images [B,3,S,S], orig_target_sizes [B,2] as (w, h)) -> labels, boxes, scores."""

    def __init__(self, model: nn.Module, rule: detr_adapter.FamilyRule):
        super().__init__()
        self.model, self.rule = model, rule

    def forward(self, images: torch.Tensor, orig_target_sizes: torch.Tensor):
        outputs = self.model(pixel_values=images)
        boxes, scores, labels = detr_adapter.postprocess_batch(outputs.logits, outputs.pred_boxes,
                                                               orig_target_sizes, self.rule)
        return labels, boxes, scores


def exportable_adapter(loaded: LoadedModel) -> detr_adapter.DetrAdapter:
    adapter = detr_adapter.DetrAdapter(loaded.model_cfg)
    if not adapter.rule.square:
        raise OrchError(f"orch export supports RT-DETRv2 and D-FINE among the transformer detectors, not "
                        f"{loaded.name}: its batches are padded to the largest image with a pixel mask, which the "
                        f"graph does not take; use orch predict for it")
    return adapter


def model_inputs(adapter: detr_adapter.DetrAdapter, images: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
    """The graph's inputs for images as orch reads them (float [3, H, W] in [0, 1], any sizes)."""
    pre = detr_adapter.preprocess(images, adapter.rule, adapter.size, adapter.max_size)
    sizes_wh = np.array([[img.shape[-1], img.shape[-2]] for img in images], dtype=np.int64)
    return {"images": pre.pixel_values.numpy(), "orig_target_sizes": sizes_wh}


def export_onnx(loaded: LoadedModel, out_url: str, *, opset: int = 17) -> dict[str, Any]:
    """Export ``loaded.model`` (on the CPU) to ``out_url``; returns ``{"out", "bytes", "seconds", "payload", "size"}``."""
    import onnx

    adapter = exportable_adapter(loaded)
    started = time.perf_counter()
    graph = DetrDeployGraph(loaded.model.to("cpu").eval(), adapter.rule)
    generator = torch.Generator().manual_seed(0)
    example = (torch.rand((TRACE_BATCH, 3, adapter.size, adapter.size), generator=generator),
               torch.tensor([[adapter.size, adapter.size]] * TRACE_BATCH))
    batch_axis = {name: {0: "batch"} for name in INPUT_NAMES + OUTPUT_NAMES}
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings about Python ints: the input size is fixed
            torch.onnx.export(graph, example, buffer, dynamo=False, opset_version=opset,
                              input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                              dynamic_axes=batch_axis, do_constant_folding=True)
    except Exception as exc:  # torch.onnx raises many types; the message is what matters
        raise OrchError(f"ONNX export of {loaded.name} (opset {opset}) failed: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}; try another --opset") from None
    proto = onnx.load_from_string(buffer.getvalue())
    payload = write_onnx(proto, loaded, out_url,
                         input=f"images float32 [B,3,{adapter.size},{adapter.size}] RGB in [0,1] (resized, bilinear "
                               f"with antialiasing), orig_target_sizes int64 [B,2] (width, height)",
                         outputs="labels [B,K] (1..K), boxes [B,K,4] xyxy px of the original image, scores [B,K]",
                         dynamic_batch="true")
    return {"out": out_url, "bytes": len(payload), "seconds": time.perf_counter() - started,
            "payload": payload, "size": adapter.size}


def check_onnx(payload: bytes, loaded: LoadedModel, img_dir: str, names: Sequence[str], *,
               box_tol_px: float = DEFAULT_BOX_TOL_PX, score_tol: float = DEFAULT_SCORE_TOL) -> CheckReport:
    """onnx.checker, then onnxruntime (all images in one call, then the first alone: any batch size)
    against orch's own predict path (``DetrAdapter.predict``) on the same images."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(onnx.load_from_string(payload), full_check=True)
    except Exception as exc:  # noqa: BLE001 - onnx's checker raises several types
        raise OrchError(f"onnx.checker rejects the exported graph: {exc}") from None
    session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    adapter = exportable_adapter(loaded)
    model = loaded.model.to("cpu").eval()
    images = [to_tensor(read_image(storage.join(img_dir, name))) for name in names]
    report = CheckReport(box_tol_px=box_tol_px, score_tol=score_tol)
    for group in ([*range(len(images))], [0]) if len(images) > 1 else ([0],):
        labels, boxes, scores = session.run(list(OUTPUT_NAMES), model_inputs(adapter, [images[k] for k in group]))
        report.batches += 1
        with torch.no_grad():
            reference = adapter.predict(model, [images[k] for k in group])
        for row, (k, ref) in enumerate(zip(group, reference)):
            a = {"boxes": ref["boxes"].numpy(), "scores": ref["scores"].numpy(), "labels": ref["labels"].numpy()}
            b = {"boxes": boxes[row], "scores": scores[row], "labels": labels[row]}
            pairs, rest_a, rest_b, tolerated = match_detections(a, b, score_tol, 0.0)
            box_diff = max((float(np.abs(a["boxes"][i] - b["boxes"][j]).max()) for i, j in pairs), default=0.0)
            score_diff = max((abs(float(a["scores"][i]) - float(b["scores"][j])) for i, j in pairs), default=0.0)
            unpaired = len(rest_a) + len(rest_b)
            report.images.append(ImageCheck(
                name=f"{names[k]} (batch of {len(group)})", torch_count=len(a["scores"]),
                onnx_count=len(b["scores"]), matched=len(pairs), max_box_diff_px=box_diff,
                max_score_diff=score_diff, unmatched=unpaired - min(unpaired, tolerated),
                boundary=min(unpaired, tolerated)))
    return report
