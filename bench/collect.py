"""Benchmark: `telemaint inventory --json` plus `telemaint check` on the example config.

Prints, over several runs, the wall time, the agent's own CPU time (its process only, so the
commands it runs for components and checks are aside) and the peak RSS of the agent process.
Targets on a 2-core machine: inventory and checks together under 300 ms of the agent's own time,
peak RSS under 40 MB.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "configs" / "agent.example.yaml"
TARGET_OWN_TIME_MS = 300
TARGET_PEAK_RSS_MB = 40

# Runs one CLI command in a fresh interpreter and reports that process's own usage on an inherited pipe.
PROBE = """
import json, os, resource, sys, time
started = time.monotonic()
from agent.cli import main
out = open(os.devnull, "w")
sys.stdout = out
try:
    status = main(sys.argv[1:])
except SystemExit as exc:
    status = exc.code
usage = resource.getrusage(resource.RUSAGE_SELF)
with os.fdopen(int(os.environ["BENCH_REPORT_FD"]), "w") as report:
    json.dump({"status": status, "wall_s": time.monotonic() - started,
               "cpu_s": usage.ru_utime + usage.ru_stime, "maxrss_kb": usage.ru_maxrss}, report)
"""


def run_once(args: list[str], state_dir: str) -> dict:
    read_fd, write_fd = os.pipe()
    env = dict(os.environ, TELEMAINT_STATE_DIR=state_dir, BENCH_REPORT_FD=str(write_fd))
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", PROBE, *args],
        pass_fds=(write_fd,),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    with os.fdopen(read_fd) as report:
        data = json.load(report)
    proc.wait()
    data["process_wall_s"] = time.monotonic() - started
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--config", default=str(EXAMPLE))
    options = parser.parse_args()
    commands = {
        "inventory --json": ["inventory", "--json", "--config", options.config],
        "check": ["check", "--config", options.config],
    }
    # An installed agent ships compiled bytecode; a checkout under PYTHONDONTWRITEBYTECODE would
    # otherwise compile every module from source on each run and measure that instead.
    compileall.compile_dir(ROOT / "agent", quiet=1)
    with tempfile.TemporaryDirectory() as state_dir:
        run_once(commands["inventory --json"], state_dir)  # warm the page cache and the package state
        samples: dict[str, list[dict]] = {name: [] for name in commands}
        for _ in range(options.runs):
            for name, args in commands.items():
                samples[name].append(run_once(args, state_dir))

    print(f"telemaint collect benchmark: {options.runs} runs each, config {options.config}")
    print(f"{'command':<18} {'wall ms (median)':>17} {'own CPU ms (median)':>20} {'peak RSS MB (max)':>18}")
    total_cpu = total_wall = 0.0
    peak = 0.0
    for name, runs in samples.items():
        wall = statistics.median(r["process_wall_s"] for r in runs) * 1000
        cpu = statistics.median(r["cpu_s"] for r in runs) * 1000
        rss = max(r["maxrss_kb"] for r in runs) / 1024
        total_cpu += cpu
        total_wall += wall
        peak = max(peak, rss)
        print(f"{name:<18} {wall:>17.0f} {cpu:>20.0f} {rss:>18.1f}")
    print(f"{'together':<18} {total_wall:>17.0f} {total_cpu:>20.0f} {peak:>18.1f}")
    print(
        f"target: own time < {TARGET_OWN_TIME_MS} ms -> {'met' if total_cpu < TARGET_OWN_TIME_MS else 'MISSED'}; "
        f"peak RSS < {TARGET_PEAK_RSS_MB} MB -> {'met' if peak < TARGET_PEAK_RSS_MB else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
