"""Runs the bad-input catalogue (badinput_cases.py): every case is `python3 -m orchestrator.cli ...` in a
subprocess, in a fresh copy of a small valid workspace, and must be refused cleanly.

A case is clean when:

* the exit status is non-zero, and not the internal-error status 3;
* stderr holds an ``error:`` line, no ``Traceback``, no ``internal error``, and is one paragraph
  (no blank line);
* stderr names what the case says it must (the file, key or value), case-insensitively;
* every file of the workspace is byte-identical afterwards, and no file or folder appeared
  (no run dir, no output written next to an input);
* no job was queued: fake ``sbatch``/``srun``/``salloc``/``scancel``/``scontrol`` on PATH record
  their calls, and none that queues, releases or cancels may appear (a tripwire, not a proof).

The workspace (``build_workspace``) holds: a synthetic 8+4-image 64-px dataset (``data/``), a valid
config (``cfg.yml``), a run dir with a real ssdlite320 checkpoint (``runs/good``), the same
checkpoint outside a run (``ckpt/model.pth``) and broken ones, a YOLO and a VOC dataset of one
image, a run dir with a truncated plan.json and an empty folder. Case folders hard-link the
workspace's files, so a product that writes into an input in place is caught by the hash check.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SSDLITE = "ssdlite320_mobilenet_v3_large"
FRCNN = "fasterrcnn_mobilenet_v3_large_320_fpn"
SIZE = 64

GOOD_CONFIG = f"""\
name: good
work_dir: runs
model: {{name: {SSDLITE}, min_size: {SIZE}, max_size: {SIZE}}}
data:
  train: {{ann_file: data/train.json, img_dir: data/train}}
  val: {{ann_file: data/val.json, img_dir: data/val}}
  batch_per_gpu: 2
  num_workers: 0
optimizer: {{name: sgd, base_lr: 0.01, base_batch_size: 16}}
schedule: {{epochs: 1, warmup_iters: 0, lr_policy: cosine}}
resources: {{gpus: 1, gpus_per_node: 1, executor: local, time: "0:10:00"}}
"""

VOC_XML = """<annotation>
  <filename>a.jpg</filename>
  <size><width>64</width><height>64</height><depth>3</depth></size>
  <object><name>{name}</name><difficult>0</difficult>
    <bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>
  </object>
</annotation>
"""

# Calls that queue, release, requeue or cancel a job: none may happen for a bad input.
QUEUEING_COMMANDS = ("sbatch", "srun", "salloc", "scancel")
QUEUEING_SCONTROL = ("release", "requeue", "update", "hold", "resume")
FAKE_SLURM = ("sbatch", "srun", "salloc", "scancel", "scontrol", "sinfo", "squeue", "sacct")


def voc_xml(name: str = "circle", xmin: object = 10, ymin: object = 10, xmax: object = 40, ymax: object = 40) -> str:
    return VOC_XML.format(name=name, xmin=xmin, ymin=ymin, xmax=xmax, ymax=ymax)


@dataclass(frozen=True)
class Case:
    """One bad input: the command (run in the workspace copy), what stderr must name, the files
    to write before (``None`` deletes), and an optional setup function of the workspace path."""

    id: str
    area: str
    argv: tuple[str, ...]
    expect: tuple[str, ...]
    files: tuple[tuple[str, object], ...] = ()
    setup: Callable[[str], None] | None = None
    torch: bool = False  # the command loads a model (~3 s): used only where the case needs it
    why: str = ""


def case(id: str, area: str, argv: Sequence[str] | str, expect: Sequence[str] | str,
         files: dict[str, object] | None = None, setup: Callable[[str], None] | None = None,
         torch: bool = False, why: str = "") -> Case:
    argv = tuple(argv.split()) if isinstance(argv, str) else tuple(argv)
    expect = (expect,) if isinstance(expect, str) else tuple(expect)
    return Case(id, area, argv, expect, tuple((files or {}).items()), setup, torch, why)


@dataclass
class Result:
    case: Case
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        err = " ".join(self.stderr.split())[:240]
        return f"{self.case.id}: {'; '.join(self.problems)} | rc={self.rc} stderr: {err}"


# ---------------------------------------------------------------- the workspace

def build_workspace(root: str) -> str:
    """Write the valid workspace every case starts from; returns ``root``."""
    import torch

    from jobs import models
    from jobs.checkpoint import CheckpointManager
    from orchestrator import runs
    from orchestrator.config import load_config
    from orchestrator.synth import make_synthetic_dataset

    os.makedirs(root, exist_ok=True)
    make_synthetic_dataset(os.path.join(root, "data"), num_train=8, num_val=4, image_size=SIZE, seed=3)
    write(root, "cfg.yml", GOOD_CONFIG)
    os.makedirs(os.path.join(root, "empty"))
    image = os.path.join(root, "data", "train", "000000.jpg")
    for folder in ("yolo/images", "voc/JPEGImages"):
        os.makedirs(os.path.join(root, folder))
        shutil.copy(image, os.path.join(root, folder, "a.jpg"))
    write(root, "yolo/labels/a.txt", "0 0.5 0.5 0.25 0.25\n")
    write(root, "yolo/classes.txt", "circle\nsquare\ntriangle\n")
    write(root, "voc/Annotations/a.xml", voc_xml())
    write(root, "voc/ImageSets/Main/train.txt", "a\n")

    cwd = os.getcwd()
    os.chdir(root)  # the config's relative paths are relative to where orch runs
    try:
        config = load_config("cfg.yml").data
        work_dir = os.path.join(root, "runs")
        good = runs.create_run_dir(work_dir, "good", runs.build_plan(config), config)["run_dir"]
        trunc = runs.create_run_dir(work_dir, "trunc", runs.build_plan(config), config)["run_dir"]
    finally:
        os.chdir(cwd)
    plan_text = open(os.path.join(trunc, "plan.json"), "rb").read()
    write(trunc, "plan.json", plan_text[:len(plan_text) // 2])

    torch.manual_seed(0)
    model = models.build_model(config["model"], 4)
    with CheckpointManager(good, async_save=False) as manager:
        manager.save({"model": model.state_dict(), "iteration": 0}, 0, best=True)
    best = os.path.join(good, "checkpoints", "best.pth")
    payload = open(best, "rb").read()
    write(root, "ckpt/model.pth", payload)
    write(root, "ckpt/text.pth", "this is a text file, not a checkpoint\n")
    write(root, "ckpt/notes.txt", "this is a text file, not a checkpoint\n")
    write(root, "ckpt/truncated.pth", payload[:len(payload) // 2])
    write(root, "ckpt/empty.pth", b"")
    write(root, "ckpt/list.pth", _torch_bytes([1, 2, 3]))
    write(root, "ckpt/nomodel.pth", _torch_bytes({"weights": {"a": torch.zeros(1)}}))
    write(root, "ckpt/pickle.pth", _torch_bytes({"model": _Pwn()}))
    return root


class _Pwn:
    """Unpickling this runs a shell command; torch.load(weights_only=True) must refuse it."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _torch_bytes(obj: object) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def write(root: str, rel: str, content: object) -> None:
    """Write (or with None, delete) ``root/rel``; unlinks first so a hard-linked input stays intact."""
    path = os.path.join(root, rel)
    if os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    if content is None:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content if isinstance(content, bytes) else str(content).encode())


def write_fake_slurm(bin_dir: str) -> str:
    os.makedirs(bin_dir, exist_ok=True)
    for name in FAKE_SLURM:
        path = os.path.join(bin_dir, name)
        with open(path, "w") as f:
            f.write('#!/bin/sh\necho "$(basename "$0") $*" >> "${FAKE_SLURM_LOG:-/dev/null}"\n'
                    'echo "fake $(basename "$0"): the bad-input tests never queue a job" >&2\nexit 1\n')
        os.chmod(path, 0o755)
    return bin_dir


# ---------------------------------------------------------------- running a case

BIG_FILE_BYTES = 1 << 20


def snapshot(root: str) -> dict[str, str]:
    """rel path -> sha256 for files (inode, size and mtime for big ones), 'dir' for folders,
    'link -> target' for symlinks."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            path = os.path.join(dirpath, d)
            found[os.path.relpath(path, root)] = f"link -> {os.readlink(path)}" if os.path.islink(path) else "dir"
        for name in filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                found[rel] = f"link -> {os.readlink(path)}"
                continue
            stat = os.stat(path)
            if stat.st_size >= BIG_FILE_BYTES:  # checkpoints: an in-place write changes mtime, a rename the inode
                found[rel] = f"{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            found[rel] = digest.hexdigest()
    return found


def run_case(c: Case, workspace: str, scratch: str, fake_bin: str, timeout_s: float = 180) -> Result:
    base = os.path.join(scratch, c.id)
    shutil.rmtree(base, ignore_errors=True)
    work = os.path.join(base, "w")
    shutil.copytree(workspace, work, copy_function=os.link)
    for rel, content in c.files:
        write(work, rel, content)
    if c.setup is not None:
        c.setup(work)
    before = snapshot(work)
    calls = os.path.join(base, "slurm_calls.log")
    env = dict(os.environ)
    for name in ("ORCH_DEBUG", "ORCH_STORAGE_OPTIONS"):
        env.pop(name, None)
    env.update(PATH=fake_bin + os.pathsep + env.get("PATH", ""), PYTHONPATH=REPO, FAKE_SLURM_LOG=calls,
               ORCH_WORK_DIR=os.path.join(work, "runs"), ORCH_CACHE_DIR=os.path.join(base, "cache"),
               HOME=os.path.join(base, "home"), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    argv = [a.replace("{w}", work) for a in c.argv]
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", *argv], cwd=work, env=env,
                              capture_output=True, text=True, errors="replace", timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = None, _text(exc.stdout), _text(exc.stderr)
    result = Result(c, rc, out, err, time.perf_counter() - started)
    result.problems = judge(result, before, snapshot(work), _read_calls(calls))
    return result


def _text(data: object) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _read_calls(path: str) -> list[str]:
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []


def judge(r: Result, before: dict[str, str], after: dict[str, str], calls: list[str]) -> list[str]:
    problems = []
    err = r.stderr.strip()
    if r.rc is None:
        problems.append("timed out")
    elif r.rc == 0:
        problems.append("exit status 0 (accepted)")
    elif r.rc == 3 or "internal error" in err:
        problems.append("internal error")
    if "Traceback" in r.stderr or "Traceback" in r.stdout:
        problems.append("traceback")
    if r.rc not in (None, 0) and "error:" not in err:
        problems.append("no 'error:' line")
    if "\n\n" in err:
        problems.append("stderr is more than one paragraph")
    missing = [s for s in r.case.expect if s.lower() not in err.lower()]
    if missing and r.rc != 0:
        problems.append(f"stderr does not name {missing}")
    changed = sorted(p for p in before if p in after and before[p] != after[p])
    gone = sorted(p for p in before if p not in after)
    new = sorted(p for p in after if p not in before)
    if changed:
        problems.append(f"input changed: {changed[:3]}")
    if gone:
        problems.append(f"input removed: {gone[:3]}")
    if new:
        problems.append(f"written: {new[:3]}")
    queued = [c for c in calls if c.split()[0] in QUEUEING_COMMANDS
              or (c.split()[0] == "scontrol" and any(w in c.split()[1:2] for w in QUEUEING_SCONTROL))]
    if queued:
        problems.append(f"queued: {queued[:2]}")
    return problems


def run_catalogue(cases: Sequence[Case], scratch: str, workers: int = 3,
                  on_result: Callable[[Result], None] | None = None) -> dict[str, Result]:
    """Build the workspace once, then run ``cases`` ``workers`` at a time (torch ones first: they are slow)."""
    workspace = build_workspace(os.path.join(scratch, "_workspace"))
    fake_bin = write_fake_slurm(os.path.join(scratch, "_bin"))
    ordered = sorted(cases, key=lambda c: not c.torch)
    results: dict[str, Result] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for result in pool.map(lambda c: run_case(c, workspace, scratch, fake_bin), ordered):
            results[result.case.id] = result
            if on_result:
                on_result(result)
            if result.clean:
                shutil.rmtree(os.path.join(scratch, result.case.id), ignore_errors=True)
    return results


def to_json(results: dict[str, Result]) -> str:
    return json.dumps({cid: {"clean": r.clean, "problems": r.problems, "rc": r.rc, "stderr": r.stderr,
                             "seconds": round(r.seconds, 2)} for cid, r in results.items()}, indent=1)
