import os
import subprocess
import sys
import time

from orchestrator import procfs


def test_stat_names_parent_and_state_of_a_live_process():
    st = procfs.stat(os.getpid())
    assert st is not None and st.ppid == os.getppid() and st.state in "RS"


def test_stat_of_a_process_whose_name_holds_parentheses_and_spaces():
    # comm is the executable's name: a copy of `sleep` called "a) b (c" must still parse.
    exe = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"a) b (c-{os.getpid()}")
    with open("/bin/sleep", "rb") as src, open(exe, "wb") as dst:
        dst.write(src.read())
    os.chmod(exe, 0o755)
    child = subprocess.Popen([exe, "30"])
    try:
        st = procfs.stat(child.pid)
        assert st is not None and st.ppid == os.getpid() and st.state in "RSD"
    finally:
        child.kill()
        child.wait()
        os.unlink(exe)


def test_zombie_then_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while procfs.stat(child.pid).state != "Z":  # exited, not yet reaped
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child.wait()
    assert procfs.stat(child.pid) is None


def test_descendants_include_grandchildren_but_not_the_root_or_strangers():
    stranger = subprocess.Popen(["sleep", "30"])
    parent = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 30
        while len(procfs.descendants(parent.pid)) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        found = procfs.descendants(parent.pid)
        assert len(found) == 2 and parent.pid not in found and stranger.pid not in found
        assert all(procfs.stat(pid).ppid == parent.pid for pid in found)
        assert set(found) <= set(procfs.descendants(os.getpid()))
    finally:
        for pid in procfs.descendants(parent.pid):
            os.kill(pid, 9)
        for proc in (parent, stranger):
            proc.kill()
            proc.wait()
