"""Score orch against its bad-input catalogue (tests/badinput/badinput_cases.py): prints `bad inputs: clean N/M`
and one line per case that is not clean (what went wrong, the exit status and stderr).

    python benchmarks/bad_inputs.py [--workers 3] [--only SUBSTRING] [--keep DIR] [--json FILE]

Each case runs `python3 -m orchestrator.cli ...` in a fresh copy of a small workspace (a synthetic
dataset, a valid config, a real tiny checkpoint, ...) and must exit non-zero with one paragraph on
stderr naming the file/key/value, without a traceback, without writing or changing any file and
without queueing a job (tests/badinput/badinput_harness.py). Exit status 1 when a case is not clean.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests", "badinput"))

from badinput_cases import AWAITING_OTHER_PACKAGES, CASES  # noqa: E402
from badinput_harness import run_catalogue, to_json  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=3, help="cases run at a time (default: 3)")
    parser.add_argument("--only", metavar="SUBSTRING", help="run only the cases whose id contains this")
    parser.add_argument("--keep", metavar="DIR", help="work under DIR and keep the folders of unclean cases")
    parser.add_argument("--json", metavar="FILE", help="also write every result as JSON")
    args = parser.parse_args()
    cases = [c for c in CASES if not args.only or args.only in c.id]
    started = time.perf_counter()
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        results = run_catalogue(cases, args.keep, workers=args.workers)
    else:
        with tempfile.TemporaryDirectory(prefix="orch-bad-inputs-") as scratch:
            results = run_catalogue(cases, scratch, workers=args.workers)
    unclean = [results[c.id] for c in cases if not results[c.id].clean]
    for result in unclean:
        mark = " [awaiting another package]" if result.case.id in AWAITING_OTHER_PACKAGES else ""
        print(f"  {result.summary()}{mark}")
    print(f"bad inputs: clean {len(cases) - len(unclean)}/{len(cases)} "
          f"({time.perf_counter() - started:.0f} s, {args.workers} at a time)")
    if args.json:
        with open(args.json, "w") as f:
            f.write(to_json(results))
    return 1 if unclean else 0


if __name__ == "__main__":
    sys.exit(main())
