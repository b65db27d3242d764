"""The launcher's side of a toolbox job (``trainer.kind`` other than ``orch``): what to start, and its status.

:func:`jobs.launch.run_node` starts the kind's command (:mod:`orchestrator.toolbox`) instead of
``jobs.train``. On every start it asks the kind for its newest *loadable* checkpoint and, when there
is one, starts the toolbox's own resume from it. A toolbox writes no ``status.json``: for these jobs
the launcher of node 0 owns it and rewrites it from the toolbox's own progress files
(``kind.progress(...).status_fields()``) while the toolbox runs and once when it ends.
Torch-free: a checkpoint's loadability is checked by :func:`orchestrator.toolbox.checkpoint_loads`.
"""
from __future__ import annotations

import os
from typing import Any

from orchestrator import kinds, runs, storage, toolbox

loadable = toolbox.checkpoint_loads   # the check every start uses (torch-free; see there)


class ToolboxJob:
    """One node's toolbox: the command of each start, and (node 0) the run's status.json."""

    def __init__(self, doc: dict[str, Any], run_dir: str, info: dict[str, Any]) -> None:
        self.doc, self.run_dir, self.info = doc, run_dir, info
        self.kind = kinds.get(toolbox.kind_of(doc["config"]))
        self.writes_status = info["node_rank"] == 0
        self.resumed_from: str | None = None
        self.note: str | None = None   # what the last preemption cost; kept until the run ends
        self.status_url = storage.join(run_dir, runs.STATUS_FILE)

    def command(self, rdzv_id: str, port: int) -> tuple[list[str], dict[str, str], str | None]:
        """(argv, added environment, working directory) of this start: a resume when a checkpoint loads."""
        self.resumed_from = self.kind.resume_checkpoint(self.run_dir, self.doc, loadable=loadable)
        plan = self.doc["plan"]
        node = {"node_rank": self.info["node_rank"], "nodes": self.info["nodes"],
                "first_node": self.info["first_node"] or "localhost", "port": port}
        before_start = getattr(self.kind, "before_start", None)   # optional (detectron2: its last_checkpoint)
        if before_start is not None:
            before_start(self.run_dir, self.doc, self.resumed_from)
        cmd = self.kind.node_command(self.doc, node, self.resumed_from)
        env = dict(cmd.env)
        if "PYTHONPATH" in env and os.environ.get("PYTHONPATH"):   # the kind's path first, the job's kept
            env["PYTHONPATH"] += os.pathsep + os.environ["PYTHONPATH"]
        return toolbox.command_line(cmd, plan["gpus_per_node"], node, rdzv_id), env, cmd.cwd

    def write_status(self, state: str, error: str | None = None, note: str | None = None) -> None:
        """status.json from the toolbox's own outputs (node 0 only); never fails the job."""
        if not self.writes_status:
            return
        self.note = note or self.note
        note = self.note
        try:
            fields = self.kind.progress(self.run_dir, self.doc).status_fields()
        except Exception as exc:  # a toolbox file in a shape the reader does not know: say so, train on
            fields, note = {}, f"could not read the toolbox's progress: {exc}"
        status = {"state": state, "kind": self.kind.NAME, "job_id": str(self.info["job_id"]), **fields,
                  "resumed_from": self.resumed_from, "error": error, "note": note, "updated_at": runs.now_iso()}
        try:
            runs.write_json(self.status_url, status)
        except (storage.StorageError, OSError) as exc:
            print(f"[orch launch] could not write {self.status_url} (training goes on): {exc}", flush=True)

    def lost_work_note(self, saved: bool = False) -> str:
        """What a preemption costs: nothing when the toolbox saved at the warning (orch's hook exits
        EXIT_REQUEUE after saving), else the work since its last checkpoint."""
        if saved:
            return "preempted: the toolbox saved a checkpoint at the warning (orch's hook) and resumes from it"
        try:
            progress = self.kind.progress(self.run_dir, self.doc)
        except Exception:
            return "preempted: the toolbox resumes from its last checkpoint; the work since then is repeated"
        done = (f"epoch {progress.epoch} of {progress.max_epochs}" if progress.max_epochs
                else f"iteration {progress.iteration} of {progress.max_iters}")
        return (f"preempted after {done} (as its logs say); the toolbox saves no checkpoint on the warning, so it "
                f"resumes from {os.path.basename(progress.latest_checkpoint or '') or 'the start'} and repeats the "
                f"work since that checkpoint")
