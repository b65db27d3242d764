"""What a toolbox job runs on one node: the kind's :class:`~orchestrator.kinds.base.NodeCommand` made whole.

A kind (:mod:`orchestrator.kinds`) says what its toolbox runs; this adds what the job adds (torchrun's
own flags for a ``torchrun`` launcher) so that `orch submit --dry-run` prints exactly the command line
the launcher (:mod:`jobs.launch`) then runs. Pure and torch-free.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
import zipfile
from typing import Any

from orchestrator import kinds, storage
from orchestrator.kinds.base import NodeCommand

DRY_RUN_FIRST_NODE = "<first node>"   # the allocation's first host is known only when the job starts
DRY_RUN_PORT = 29400                  # the launcher picks one per job and attempt (jobs.launch.rendezvous)
LOAD_CHECK_TIMEOUT_S = 300


def kind_of(config: dict[str, Any]) -> str:
    return (config.get("trainer") or {}).get("kind", kinds.BUILTIN)


def is_toolbox(config: dict[str, Any]) -> bool:
    """True when a toolbox trains (a kind module runs), False for orch's own trainer (jobs/train.py)."""
    return kind_of(config) != kinds.BUILTIN


def command_line(cmd: NodeCommand, nproc: int, node: dict[str, Any], rdzv_id: str,
                 python: str = sys.executable) -> list[str]:
    """The whole argv of one node: ``argv`` itself for ``self``/``single``; under torchrun for ``torchrun``.

    torchrun runs as ``python -m torch.distributed.run`` of the toolbox's python (``cmd.python``)
    when the kind names one, so the toolbox's own environment is the one that imports torch.
    """
    if cmd.launcher != "torchrun":
        return list(cmd.argv)
    head = [cmd.python or python, "-m", cmd.agent, f"--nproc-per-node={nproc}", "--max-restarts=0"]
    if node["nodes"] > 1:
        head += [f"--nnodes={node['nodes']}", "--rdzv-backend=c10d", f"--rdzv-endpoint={node['first_node']}:{node['port']}",
                 f"--rdzv-id={rdzv_id}"]
    else:
        head += ["--standalone", "--nnodes=1"]
    return head + list(cmd.argv)


def node_commands(plan_doc: dict[str, Any], resume_from: str | None = None, first_node: str = DRY_RUN_FIRST_NODE,
                  port: int = DRY_RUN_PORT) -> list[NodeCommand]:
    """The kind's command of every node of the plan."""
    kind = kinds.get(kind_of(plan_doc["config"]))
    nodes = plan_doc["plan"]["nodes"]
    return [kind.node_command(plan_doc, {"node_rank": rank, "nodes": nodes, "first_node": first_node, "port": port},
                              resume_from) for rank in range(nodes)]


def dry_run_text(plan_doc: dict[str, Any], python: str = sys.executable) -> str:
    """Per node: working directory, added environment and the exact command line; then a resume's."""
    plan = plan_doc["plan"]
    kind = kinds.get(kind_of(plan_doc["config"]))
    lines = [f"# trainer kind {kind.NAME}: what each node runs (outputs in {kind.output_dir(plan_doc['run_dir'])})"]
    node = {"nodes": plan["nodes"], "first_node": DRY_RUN_FIRST_NODE, "port": DRY_RUN_PORT}
    for rank, cmd in enumerate(node_commands(plan_doc)):
        lines.append(f"# node {rank} ({cmd.launcher}{', cwd ' + cmd.cwd if cmd.cwd else ''})")
        lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(cmd.env.items())]
        lines.append(shlex.join(command_line(cmd, plan["gpus_per_node"], {**node, "node_rank": rank},
                                             "orch-<job>-<restart>", python)))
    resumed = node_commands(plan_doc, resume_from="<checkpoint>")[0]
    lines.append("# on a restart when the toolbox has a loadable checkpoint, node 0 runs")
    lines.append(shlex.join(command_line(resumed, plan["gpus_per_node"], {**node, "node_rank": 0},
                                         "orch-<job>-<restart>", python)))
    return "\n".join(lines)


def checkpoint_loads(url: str) -> bool:
    """Whether a checkpoint file can be loaded: a torn ``torch.save`` (killed mid-write) cannot.

    ``torch.save`` writes a zip archive whose directory comes last, so a torn file has none, and
    every record carries a CRC; a file in torch's legacy (non-zip) format is loaded with
    ``torch.load`` in a child process instead, so this module stays torch-free.
    """
    if not storage.is_local(url):
        return storage.exists(url)
    path = storage.local_path(url)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False
    code = "import sys, torch; torch.load(sys.argv[1], map_location='cpu', weights_only=False)"
    try:
        return subprocess.run([sys.executable, "-c", code, path], capture_output=True,
                              timeout=LOAD_CHECK_TIMEOUT_S).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def resume_from(run_dir: str, plan_doc: dict[str, Any]) -> str | None:
    """The toolbox checkpoint the next start resumes from: its newest one that loads (None: from the start)."""
    return kinds.get(kind_of(plan_doc["config"])).resume_checkpoint(run_dir, plan_doc, loadable=checkpoint_loads)
