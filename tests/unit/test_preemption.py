"""The preemption warning reaches every training process, even one that was still starting."""
import os
import signal
import subprocess
import sys
import textwrap
import time

from jobs import launch, preemption
from orchestrator import procfs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_install_returns_one_flag_that_keeps_what_it_recorded():
    old = {sig: signal.getsignal(sig) for sig in preemption.STOP_SIGNALS}
    try:
        flag = preemption.install()
        os.kill(os.getpid(), signal.SIGUSR2)
        assert flag.requested and flag.signal_name == "SIGUSR2"
        again = preemption.install()  # e.g. the Trainer, after jobs.train installed it
        assert again is flag and again.requested
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        preemption._FLAG = None


def test_jobs_train_catches_the_warning_before_it_imports_torch(tmp_path):
    # Under torchrun the workers start with USR2 ignored (jobs/torchrun_wrapper.py): whatever comes
    # before jobs.train installs its handler is lost. Stop the child at its first `import torch`
    # and look at its USR2 handler then.
    probe = textwrap.dedent("""
        import runpy, signal, sys

        class StopAtTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch":
                    handler = signal.getsignal(signal.SIGUSR2)
                    print("handler at import torch:", getattr(handler, "__qualname__", handler), flush=True)
                    raise SystemExit(0)
                return None

        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        sys.meta_path.insert(0, StopAtTorch())
        sys.argv = ["jobs.train", sys.argv[1]]
        runpy.run_module("jobs.train", run_name="__main__", alter_sys=True)
    """)
    result = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "run")], capture_output=True,
                            text=True, env=child_env(), cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "handler at import torch: PreemptionFlag._handle" in result.stdout, result.stdout + result.stderr


FAKE_TORCHRUN = textwrap.dedent("""
    # like torchrun under jobs/torchrun_wrapper.py: the agent ignores USR2, its worker inherits that
    import signal, subprocess, sys
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    sys.exit(subprocess.call([sys.executable, "-c", sys.argv[1], "jobs.train", sys.argv[2]]))
""")
SLOW_WORKER = textwrap.dedent("""
    # a worker that needs a moment before its handler is in place; then it waits for the warning
    import signal, sys, time
    open(sys.argv[2] + ".started", "w").close()
    time.sleep(1.5)
    def handle(signum, frame):
        open(sys.argv[2], "w").write(signal.Signals(signum).name)
        sys.exit(0)
    signal.signal(signal.SIGUSR2, handle)
    time.sleep(60)
    sys.exit(3)
""")


def test_relay_sends_the_warning_again_to_a_worker_that_was_not_listening_yet(tmp_path):
    got = str(tmp_path / "got")
    relay = launch.SignalRelay()
    relay.child = subprocess.Popen([sys.executable, "-c", FAKE_TORCHRUN, SLOW_WORKER, got])
    try:
        deadline = time.monotonic() + 30
        while not (os.path.exists(got + ".started") and launch.worker_pids(relay.child.pid)):
            assert time.monotonic() < deadline and relay.child.poll() is None
            time.sleep(0.05)
        relay._handle(signal.SIGUSR1, None)  # SLURM's warning, passed on as USR2; the worker ignores it
        assert relay.warned and relay.forwarded == signal.SIGUSR2
        time.sleep(2.0)
        assert not os.path.exists(got) and relay.child.poll() is None  # lost, and nobody died of it
        relay.redeliver()
        assert relay.child.wait(timeout=30) == 0
        assert open(got).read() == "SIGUSR2"
    finally:
        if relay.child.poll() is None:
            for pid in procfs.descendants(relay.child.pid) + [relay.child.pid]:
                os.kill(pid, signal.SIGKILL)
            relay.child.wait()


def test_relay_reset_forgets_the_signal_for_the_next_torchrun():
    relay = launch.SignalRelay()
    relay.received.append("SIGUSR2")
    relay.forwarded = signal.SIGUSR2
    relay.reset()
    assert not relay.warned and relay.forwarded is None
    relay.redeliver()  # no child, nothing forwarded: a no-op, not an error
