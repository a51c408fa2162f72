"""Wall time of `python rlhf/train.py [COMMAND] --help` for every command, best of N runs (issue 17 item 7).

    .venv/bin/python bench/help_speed.py [--runs 3] [--importtime]

Each run is a fresh interpreter, as a user's is. Prints a table and the one line BENCHMARKS.md keeps; the load
average is printed beside it because on a busy machine every figure here grows with it. `--importtime` adds, per
command, the three slowest imports (`python -X importtime`): where to look when a figure grows.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from rlhf.train import COMMANDS  # noqa: E402  (a dict and a usage function: imports nothing heavy)


def timed(argv: list[str], runs: int) -> float:
    """Best wall time of `runs` runs of `python rlhf/train.py ARGV` (exit code 0 required)."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "rlhf/train.py", *argv], cwd=ROOT, check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best


def slowest_imports(argv: list[str], n: int = 3) -> str:
    """The `n` slowest top-level imports (cumulative) of one `--help` run."""
    done = subprocess.run([sys.executable, "-X", "importtime", "rlhf/train.py", *argv], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    rows = []
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = (x.strip() for x in line[len("import time:") :].split("|"))
            if cumulative.isdigit():
                rows.append((int(cumulative), name))
    return ", ".join(f"{name} {us / 1e3:.0f} ms" for us, name in sorted(rows, reverse=True)[:n])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="runs per command; the best is kept")
    p.add_argument("--importtime", action="store_true", help="also list each command's slowest imports")
    args = p.parse_args()
    load = os.getloadavg()[0]
    rows = [("(command list)", timed(["--help"], args.runs), [])]
    rows += [(c, timed([c, "--help"], args.runs), [c]) for c in COMMANDS]
    print(f"| command | --help, best of {args.runs} (s) |" + (" slowest imports |" if args.importtime else ""))
    print("|---|---|" + ("---|" if args.importtime else ""))
    for name, seconds, argv in rows:
        extra = f" {slowest_imports([*argv, '--help'])} |" if args.importtime else ""
        print(f"| {name} | {seconds:.2f} |{extra}")
    worst = max(rows, key=lambda r: r[1])
    print(f"\n`python rlhf/train.py COMMAND --help`, {len(rows) - 1} commands, best of {args.runs}: "
          f"{min(r[1] for r in rows):.2f}-{worst[1]:.2f} s (slowest: {worst[0]}); "
          f"{os.cpu_count()} CPUs, 1-min load average {load:.1f} at the start")  # fmt: skip


if __name__ == "__main__":
    main()
