"""SLURM limits without a cluster: the parsers on real `scontrol` output, the request checks as tables.

LOCAL_* are copied verbatim from the one-node test cluster of slurm/cluster.sh (SLURM 22.05.8);
GPU_* is a production-like cluster in the same format (typed gres with socket bindings, MaxTime,
MaxNodes, MaxCPUsPerNode, a node in two partitions, a CPU-only partition). That an impossible
request is refused on the real cluster is in tests/cluster/test_slurm_checks.py.
"""
import os
import stat

import pytest

from orchestrator import slurm_limits
from orchestrator.executors.base import JobRequest, SubmissionError
from orchestrator.slurm_limits import ArrayLimits, check_array_size, check_request, gres_gpus, parse_config, \
    parse_partitions

LOCAL_PARTITIONS = """\
PartitionName=dev AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=YES QoS=N/A DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED MaxTime=UNLIMITED MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=localhost PriorityJobFactor=1 PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP TotalCPUs=8 TotalNodes=1 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED TRES=cpu=8,mem=24105M,node=1,billing=8
PartitionName=debug AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=NO QoS=N/A DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED MaxTime=00:30:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=localhost PriorityJobFactor=1 PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP TotalCPUs=8 TotalNodes=1 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED TRES=cpu=8,mem=24105M,node=1,billing=8
"""  # noqa: E501
LOCAL_NODES = """\
NodeName=localhost Arch=x86_64 CoresPerSocket=1  CPUAlloc=0 CPUEfctv=8 CPUTot=8 CPULoad=0.49 AvailableFeatures=(null) ActiveFeatures=(null) Gres=gpu:4 NodeAddr=127.0.0.1 NodeHostName=localhost Version=22.05.8 OS=Linux 6.18.44-fc-v669 #1 SMP PREEMPT_DYNAMIC @0  RealMemory=24105 AllocMem=0 FreeMem=15050 Sockets=8 Boards=1 State=IDLE ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A Partitions=dev,debug  BootTime=2026-12-01T15:16:02 SlurmdStartTime=2026-12-01T15:19:41 LastBusyTime=2026-12-01T15:19:41 CfgTRES=cpu=8,mem=24105M,billing=8 AllocTRES= CapWatts=n/a CurrentWatts=0 AveWatts=0 ExtSensorsJoules=n/s ExtSensorsWatts=0 ExtSensorsTemp=n/s
"""  # noqa: E501
LOCAL_CONFIG = """\
Configuration data as of 2026-12-01T15:19:42
AccountingStorageBackupHost = (null)
AccountingStorageEnforce = none
Licenses                = (null)
LogTimeFormat           = iso8601_ms
MailDomain              = (null)
MailProg                = /bin/true
MaxArraySize            = 1001
MaxDBDMsgs              = 0
MaxJobCount             = 10000
MaxJobId                = 67043328
MaxMemPerNode           = UNLIMITED
MaxNodeCount            = 1
MaxStepCount            = 40000
MaxTasksPerNode         = 512
MCSPlugin               = mcs/none
UnkillableStepTimeout   = 30 sec
X11Parameters           = (null)

Slurmctld(primary) at vm is UP
"""

GPU_PARTITIONS = """\
PartitionName=gpu AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=YES QoS=N/A DefaultTime=01:00:00 DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=4 MaxTime=2-00:00:00 MinNodes=0 LLN=NO MaxCPUsPerNode=64 Nodes=g[01-06] State=UP TotalCPUs=576 TotalNodes=6
PartitionName=short AllowGroups=ALL Default=NO DefaultTime=NONE MaxNodes=UNLIMITED MaxTime=04:00:00 MinNodes=0 MaxCPUsPerNode=UNLIMITED Nodes=g[05-06],v[01-02] State=UP TotalCPUs=256 TotalNodes=4
PartitionName=cpu AllowGroups=ALL Default=NO DefaultTime=NONE MaxNodes=UNLIMITED MaxTime=UNLIMITED MinNodes=0 MaxCPUsPerNode=UNLIMITED Nodes=c[01-02] State=UP TotalCPUs=256 TotalNodes=2
"""  # noqa: E501
GPU_NODES = "".join(
    f"NodeName={name} Arch=x86_64 CoresPerSocket=48  CPUAlloc=0 CPUEfctv={cpus} CPUTot={cpus} "
    f"AvailableFeatures=a100 Gres={gres} NodeAddr={name} OS=Linux 5.14.0 #1 SMP  RealMemory=1024000 "
    f"State=IDLE Partitions={parts}  CfgTRES=cpu={cpus}\n"
    for name, cpus, gres, parts in [
        ("g01", 96, "gpu:a100:8(S:0-1)", "gpu"), ("g02", 96, "gpu:a100:8(S:0-1)", "gpu"),
        ("g03", 96, "gpu:a100:8(S:0-1)", "gpu"), ("g04", 96, "gpu:a100:8(S:0-1)", "gpu"),
        ("g05", 96, "gpu:a100:8(S:0-1)", "gpu,short"), ("g06", 96, "gpu:a100:8(S:0-1)", "gpu,short"),
        ("v01", 32, "gpu:v100:2(S:0),gpu:t4:2(S:1)", "short"), ("v02", 32, "gpu:v100:2,gpu:t4:2", "short"),
        ("c01", 128, "(null)", "cpu"), ("c02", 128, "(null)", "cpu"),
    ])


def request(**kw):
    base = dict(run_name="exp", run_dir="/runs/exp", log_dir="/runs/exp/logs", nodes=1, gpus_per_node=1,
                cpus_per_gpu=1, time="01:00:00")
    base.update(kw)
    return JobRequest(**base)


# ---------------------------------------------------------------- parsing

def test_parse_the_local_test_cluster():
    parts = {p.name: p for p in parse_partitions(LOCAL_PARTITIONS, LOCAL_NODES)}
    assert set(parts) == {"dev", "debug"}
    assert parts["dev"].default and not parts["debug"].default
    assert parts["dev"].max_time_min is None and parts["debug"].max_time_min == 30
    assert parts["dev"].max_nodes is None and parts["dev"].max_cpus_per_node is None
    (node,) = parts["debug"].nodes
    assert (node.name, node.cpus, node.gpus, node.partitions) == ("localhost", 8, 4, ("dev", "debug"))


def test_parse_a_production_like_cluster():
    parts = {p.name: p for p in parse_partitions(GPU_PARTITIONS, GPU_NODES)}
    assert parts["gpu"].max_time_min == 2 * 1440 and parts["gpu"].max_nodes == 4
    assert parts["gpu"].max_cpus_per_node == 64
    assert [n.name for n in parts["short"].nodes] == ["g05", "g06", "v01", "v02"]
    assert [n.gpus for n in parts["short"].nodes] == [8, 8, 4, 4]
    assert [n.gpus for n in parts["cpu"].nodes] == [0, 0]


@pytest.mark.parametrize("gres,gpus", [
    ("gpu:4", 4), ("gpu:a100:8(S:0-1)", 8), ("gpu:v100:2(S:0),gpu:t4:2(S:1)", 4), ("gpu:a100:2,nic:1", 2),
    ("gpu", 1), ("gpu:a100", 1), ("(null)", 0), ("", 0), ("mps:100,gpu:2", 2),
])
def test_gres_gpus(gres, gpus):
    assert gres_gpus(gres) == gpus


def test_parse_config():
    assert parse_config(LOCAL_CONFIG) == ArrayLimits(max_array_size=1001, max_job_count=10000)
    assert parse_config("MaxArraySize = 5\nMaxJobCount = 30\n") == ArrayLimits(5, 30)
    assert parse_config("") == ArrayLimits(1001, None)   # SLURM's default, no job limit known


# ---------------------------------------------------------------- the request checks (pure)

LOCAL = parse_partitions(LOCAL_PARTITIONS, LOCAL_NODES)
GPU = parse_partitions(GPU_PARTITIONS, GPU_NODES)


@pytest.mark.parametrize("cluster,kw", [
    (LOCAL, {}),
    (LOCAL, dict(partition="dev", gpus_per_node=4, cpus_per_gpu=2, time="7-00:00:00")),
    (LOCAL, dict(partition="debug", time="00:30:00")),
    (LOCAL, dict(partition="debug,dev", time="02:00:00")),              # dev can run it
    (GPU, dict(nodes=4, gpus_per_node=8, cpus_per_gpu=8, time="2-00:00:00")),
    (GPU, dict(partition="short", nodes=4, gpus_per_node=4, cpus_per_gpu=8, time="04:00:00")),
    (GPU, dict(partition="short", nodes=2, gpus_per_node=8, cpus_per_gpu=12, time="04:00:00")),
])
def test_requests_that_can_run_pass(cluster, kw):
    check_request(request(**kw), cluster)


@pytest.mark.parametrize("cluster,kw,fragment", [
    (LOCAL, dict(cpus_per_gpu=4, gpus_per_node=4),
     "--cpus-per-gpu 4 needs 16 CPUs per node (4 GPUs × 4), partition dev's nodes with 4+ GPUs have 8: "
     "use --cpus-per-gpu 2 or fewer"),
    (LOCAL, dict(cpus_per_gpu=16), "--cpus-per-gpu 16 needs 16 CPUs per node"),
    (LOCAL, dict(gpus_per_node=8),
     "8 GPUs per node is more than partition dev's nodes have (4, gres gpu): use --gpus-per-node 4 or fewer"),
    (LOCAL, dict(nodes=2, gpus_per_node=4),
     "the job needs 2 nodes with 4 GPUs and 4 CPUs each, partition dev has 1: use --gpus 4 or fewer"),
    (LOCAL, dict(partition="debug", time="02:00:00"),
     "--time 02:00:00 is over partition debug's MaxTime 00:30:00: use --time 00:30:00 or less"),
    (GPU, dict(nodes=6, gpus_per_node=8),
     "the job needs 6 nodes (8 GPUs each), partition gpu allows at most 4 per job (MaxNodes): use --gpus 32 or fewer"),
    (GPU, dict(time="3-00:00:00"), "over partition gpu's MaxTime 2-00:00:00: use --time 2-00:00:00 or less"),
    (GPU, dict(gpus_per_node=8, cpus_per_gpu=12),   # MaxCPUsPerNode 64 caps the 96-CPU nodes
     "--cpus-per-gpu 12 needs 96 CPUs per node (8 GPUs × 12), partition gpu's nodes with 8+ GPUs have 64: "
     "use --cpus-per-gpu 8 or fewer"),
    (GPU, dict(partition="short", nodes=3, gpus_per_node=8),
     "the job needs 3 nodes with 8 GPUs and 8 CPUs each, partition short has 2: use --gpus 16 or fewer"),
    (GPU, dict(partition="cpu"), "partition cpu's nodes have no GPUs (gres gpu): use a partition with GPUs"),
    (GPU, dict(partition="short,cpu", nodes=5),
     "partition short has 4: use --gpus 4 or fewer; partition cpu's nodes have no GPUs"),
])
def test_requests_that_would_pend_forever_are_refused(cluster, kw, fragment):
    with pytest.raises(SubmissionError) as info:
        check_request(request(**kw), cluster)
    message = str(info.value)
    assert message.startswith("SLURM would queue this job and never start it: ")
    assert fragment in message


@pytest.mark.parametrize("partition,fragment", [
    ("gpus", "invalid partition: partition 'gpus' does not exist (partitions: dev (default), debug); "
             "fix --partition / resources.partition."),
    ("deb", "partition 'deb' does not exist (did you mean debug? partitions: dev (default), debug)"),
    ("deb,gpus", "partition 'deb' does not exist (did you mean debug? partitions: dev (default), debug); "
                 "fix --partition / resources.partition; partition 'gpus' does not exist"),
])
def test_a_partition_that_does_not_exist_is_refused(partition, fragment):
    with pytest.raises(SubmissionError) as info:
        check_request(request(partition=partition), LOCAL)
    assert str(info.value).startswith("invalid partition: ") and fragment in str(info.value)


def test_a_sweep_bigger_than_max_job_count_is_refused():
    check_array_size(10_000, ArrayLimits(1001, 10_000))
    check_array_size(10**6, ArrayLimits(1001, None))
    with pytest.raises(SubmissionError, match=r"the sweep has 10001 points but this cluster holds at most 10000 jobs"):
        check_array_size(10_001, ArrayLimits(1001, 10_000))


# ---------------------------------------------------------------- asking the cluster

def fake_scontrol(tmp_path, monkeypatch, script):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    path = bin_dir / "scontrol"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv("ORCH_SKIP_SLURM_CHECK", raising=False)


def test_check_request_queries_scontrol(tmp_path, monkeypatch):
    (tmp_path / "partition.txt").write_text(LOCAL_PARTITIONS)
    (tmp_path / "node.txt").write_text(LOCAL_NODES)
    (tmp_path / "config.txt").write_text("MaxArraySize = 5\nMaxJobCount = 30\n")
    fake_scontrol(tmp_path, monkeypatch, f'[ "$1" = --all ] && cat "{tmp_path}/$3.txt"\n')
    check_request(request())
    with pytest.raises(SubmissionError, match="partition debug's MaxTime"):
        check_request(request(partition="debug", time="01:00:00"))
    assert slurm_limits.array_limits() == ArrayLimits(5, 30)


@pytest.mark.parametrize("script,said", [
    ("echo 'slurm_load_partitions: Unable to contact slurm controller (connect failure)' >&2; exit 1",
     "Unable to contact slurm controller"),
    ("sleep 5", "timed out"),
])
def test_a_cluster_that_does_not_answer_skips_the_check_with_a_note(tmp_path, monkeypatch, capsys, script, said):
    fake_scontrol(tmp_path, monkeypatch, script + "\n")
    monkeypatch.setattr(slurm_limits, "QUERY_TIMEOUT_S", 0.5)
    check_request(request(gpus_per_node=99))
    assert slurm_limits.array_limits() == ArrayLimits(1001, None)
    err = capsys.readouterr().err
    assert err.startswith("note: SLURM limits not checked: `scontrol show partition -o` failed") and said in err


def test_no_scontrol_skips_the_check_with_a_one_line_note(monkeypatch, capsys):
    monkeypatch.delenv("ORCH_SKIP_SLURM_CHECK", raising=False)
    monkeypatch.setattr(slurm_limits.shutil, "which", lambda name: None)
    check_request(request(gpus_per_node=99))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "note: SLURM limits not checked: no `scontrol` on this machine" in err
