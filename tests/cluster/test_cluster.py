"""The local SLURM cluster of slurm/cluster.sh does what orch relies on.

GPUs (fake GRES) reach jobs as CUDA_VISIBLE_DEVICES, requeue re-runs a job, USR2 reaches the
job step (the path submitit's preemption takes), a bad partition is refused, and in two-node
mode a torchrun c10d rendezvous all-reduces across both nodes.
"""
from __future__ import annotations

import re
import subprocess
import textwrap

import pytest

from slurmutil import sbatch, show_job, wait_for_job, wait_for_text, write_script

pytestmark = pytest.mark.cluster


def test_gpu_job_completes_and_sees_cuda_visible_devices(slurm_cluster, tmp_path):
    script = write_script(tmp_path / "gpu.sh", """
        echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"
        echo "SLURM_JOB_GPUS=$SLURM_JOB_GPUS"
    """)
    job_id = sbatch(script, "-p", "dev", "--gpus", "1", "-o", str(tmp_path / "gpu.out"),
                    cwd=tmp_path)

    fields = wait_for_job(job_id, timeout_s=60)

    assert fields["JobState"] == "COMPLETED", fields
    assert fields["Partition"] == "dev"
    out = (tmp_path / "gpu.out").read_text()
    visible = re.search(r"^CUDA_VISIBLE_DEVICES=(.*)$", out, re.M).group(1)
    # One fake GPU, named by its index on the node (not renumbered from 0: no cgroups here).
    assert re.fullmatch(r"[0-3]", visible), out
    assert f"SLURM_JOB_GPUS={visible}" in out


def test_scontrol_requeue_runs_the_job_again(slurm_cluster, tmp_path):
    out = tmp_path / "requeue.out"
    script = write_script(tmp_path / "requeue.sh", """
        echo "run restart=${SLURM_RESTART_COUNT:-0}"
        if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then sleep 120; fi
    """)
    job_id = sbatch(script, "--requeue", "--open-mode=append", "-o", str(out), cwd=tmp_path)
    wait_for_text(out, "run restart=0", timeout_s=60)

    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)
    # A requeued job may start again after AuthInfo=cred_expire (10 s here, 120 s by default).
    fields = wait_for_job(job_id, timeout_s=90)

    assert fields["JobState"] == "COMPLETED", fields
    assert fields["Restarts"] == "1"
    lines = [line for line in out.read_text().splitlines() if line.startswith("run ")]
    assert lines == ["run restart=0", "run restart=1"], out.read_text()


def test_scancel_signal_reaches_the_step_not_the_batch_shell(slurm_cluster, tmp_path):
    out = tmp_path / "signal.out"
    step = tmp_path / "step.py"
    step.write_text(textwrap.dedent("""
        import signal, sys, time
        got = []
        signal.signal(signal.SIGUSR2, lambda *_: got.append(1))
        print("step ready", flush=True)
        deadline = time.time() + 60
        while not got and time.time() < deadline:
            time.sleep(0.1)
        print("step got USR2" if got else "step timed out", flush=True)
    """))
    script = write_script(tmp_path / "signal.sh", f"""
        trap 'echo "batch shell got USR2"' USR2
        srun --ntasks=1 python3 -u {step}
    """)
    job_id = sbatch(script, "-o", str(out), cwd=tmp_path)
    wait_for_text(out, "step ready", timeout_s=60)

    # Without --batch/--full, scancel signals every process of the job steps, not the batch
    # shell; with proctrack/linuxproc that is the whole process tree of each step.
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
    fields = wait_for_job(job_id, timeout_s=60)

    assert fields["JobState"] == "COMPLETED", (fields, out.read_text())
    assert "step got USR2" in out.read_text()
    assert "batch shell got USR2" not in out.read_text()


def test_signal_before_time_limit_reaches_the_step(slurm_cluster, tmp_path):
    """`--signal=USR2@N` (what submitit sets) arrives N s before the limit, give or take the
    controller's ~30 s check interval; here N leaves 10-40 s of a 1 minute limit."""
    out = tmp_path / "timed.out"
    script = write_script(tmp_path / "timed.sh", """
        srun --ntasks=1 python3 -u -c '
        import signal, time
        start = time.time()
        signal.signal(signal.SIGUSR2, lambda *_: print(f"USR2 after {time.time() - start:.0f} s", flush=True) or exit(0))
        time.sleep(120)
        '
    """)
    job_id = sbatch(script, "--time=1", "--signal=USR2@50", "-o", str(out), cwd=tmp_path)

    fields = wait_for_job(job_id, timeout_s=90)

    assert fields["JobState"] == "COMPLETED", (fields, out.read_text())
    assert re.search(r"USR2 after \d+ s", out.read_text()), out.read_text()


def test_sbatch_to_unknown_partition_is_refused(slurm_cluster, tmp_path):
    script = write_script(tmp_path / "true.sh", "true\n")

    result = subprocess.run(["sbatch", "-p", "no-such-partition", str(script)],
                            capture_output=True, text=True, timeout=30)

    assert result.returncode != 0
    assert "Invalid partition name specified" in result.stderr


def test_sacct_is_unavailable_so_states_come_from_scontrol(slurm_cluster, tmp_path):
    script = write_script(tmp_path / "true.sh", "true\n")
    job_id = sbatch(script, "-o", "/dev/null", cwd=tmp_path)
    wait_for_job(job_id, timeout_s=60)

    result = subprocess.run(["sacct", "-j", job_id], capture_output=True, text=True, timeout=30)

    assert "accounting storage is disabled" in result.stdout + result.stderr
    # ...while the finished job stays visible to scontrol (MinJobAge=3600).
    assert show_job(job_id)["JobState"] == "COMPLETED"


def test_two_node_job_runs_on_n1_and_n2(slurm_cluster_2nodes, tmp_path):
    script = write_script(tmp_path / "hosts.sh", "srun hostname\n")
    job_id = sbatch(script, "-p", "dev", "-N", "2", "--ntasks-per-node=1",
                    "-o", str(tmp_path / "hosts.out"), cwd=tmp_path)

    fields = wait_for_job(job_id, timeout_s=60)

    assert fields["JobState"] == "COMPLETED", fields
    assert sorted((tmp_path / "hosts.out").read_text().split()) == ["n1", "n2"]


def test_two_node_torchrun_gloo_all_reduce(slurm_cluster_2nodes, tmp_path):
    train = tmp_path / "all_reduce.py"
    train.write_text(textwrap.dedent("""
        import socket
        import torch
        import torch.distributed as dist

        dist.init_process_group("gloo")
        value = torch.tensor([float(dist.get_rank() + 1)])
        dist.all_reduce(value)
        print(f"host={socket.gethostname()} rank={dist.get_rank()} "
              f"world={dist.get_world_size()} sum={value.item():.1f}", flush=True)
        dist.destroy_process_group()
    """))
    script = write_script(tmp_path / "torchrun.sh", f"""
        srun torchrun --nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d \\
            --rdzv-endpoint=n1:29400 --rdzv-id=$SLURM_JOB_ID {train}
    """)
    job_id = sbatch(script, "-p", "dev", "-N", "2", "--ntasks-per-node=1",
                    "-o", str(tmp_path / "torchrun.out"), cwd=tmp_path)

    fields = wait_for_job(job_id, timeout_s=150)

    out = (tmp_path / "torchrun.out").read_text()
    assert fields["JobState"] == "COMPLETED", (fields, out)
    results = sorted(re.findall(r"host=(\S+) rank=(\d) world=2 sum=(\S+)", out))
    assert results == [("n1", "0", "3.0"), ("n2", "1", "3.0")], out
