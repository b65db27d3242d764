"""Torch-free dataset tools behind ``orch data``: check, fix, convert (YOLO, VOC), split.

Every path is a storage URL (local, ``s3://``, ``memory://``); every user error is an
:class:`~orchestrator.errors.OrchError` naming the file and the fix.
"""
from orchestrator.datatools._common import DatasetError, check_first_images
from orchestrator.datatools.check import ERROR, FINDING_KINDS, WARNING, CheckReport, Finding, check_dataset
from orchestrator.datatools.fix import fix_dataset
from orchestrator.datatools.split import split_dataset
from orchestrator.datatools.voc import convert_voc
from orchestrator.datatools.yolo import convert_yolo, read_class_names

__all__ = [
    "DatasetError", "ERROR", "WARNING", "FINDING_KINDS", "CheckReport", "Finding", "check_dataset",
    "check_first_images", "fix_dataset", "split_dataset", "convert_voc", "convert_yolo", "read_class_names",
]
