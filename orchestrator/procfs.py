"""The one reader of Linux's /proc/<pid>/stat: process state and parent pid, without psutil."""
from __future__ import annotations

import os
from typing import NamedTuple


class ProcStat(NamedTuple):
    state: str  # 'R', 'S', 'D', … ; 'Z' for a zombie
    ppid: int


def stat(pid: int | str) -> ProcStat | None:
    """State and parent of ``pid``, or None when it is gone (or /proc is not there)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            # "pid (comm) state ppid …": comm may hold spaces and parentheses, so split after the last ')'.
            fields = f.read().rsplit(")", 1)[1].split()
        return ProcStat(fields[0], int(fields[1]))
    except (OSError, IndexError, ValueError):
        return None


def processes() -> dict[int, ProcStat]:
    """State and parent of every process visible in /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = stat(entry)
            if st is not None:
                found[int(entry)] = st
    return found


def descendants(root_pid: int) -> list[int]:
    """Pids of every live descendant of ``root_pid``."""
    children: dict[int, list[int]] = {}
    for pid, st in processes().items():
        children.setdefault(st.ppid, []).append(pid)
    found, stack = [], [root_pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found
