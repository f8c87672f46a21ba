"""Benchmark: many simulated agents post batched reports to a real uvicorn server on SQLite.

Prints reports/s and the p50/p99 latency of a batch post, then the agent daemon's idle RSS after
it has run for a while against the same server. Targets on a 2-core machine: at least 1,000
reports/s with p99 under 100 ms (one small server for 50,000 devices reporting every minute), and
the daemon's idle RSS after 5 minutes under 40 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import requests

BIN = Path(sys.executable).parent
TARGET_REPORTS_PER_S = 1000
TARGET_P99_MS = 100
TARGET_IDLE_RSS_MB = 40


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_cli(data_dir: Path, *args: str) -> str:
    result = subprocess.run(
        [str(BIN / "telemaint-server"), *args, "--data-dir", str(data_dir)], capture_output=True, text=True, check=True
    )
    return result.stdout


def start_server(data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "telemaint-server"), "run", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=open(data_dir / "server.log", "wb"),  # noqa: SIM115
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/api/v1/openapi.json", timeout=1).ok:
                return proc, url
        except requests.ConnectionError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start; see " + str(data_dir / "server.log"))


def enroll_devices(data_dir: Path, url: str, count: int) -> list[str]:
    """Enroll ``count`` devices over the API; return their tokens."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    tokens = []
    for n in range(count):
        code = json.loads(server_cli(data_dir, "enrollment-code", "--json"))["code"]
        key = Ed25519PrivateKey.generate().public_key()
        public = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        reply = requests.post(
            f"{url}/api/v1/enroll",
            json={
                "code": code,
                "name": f"bench-{n:04d}",
                "serial": f"BENCH-{n:04d}",
                "model": "TB-3000",
                "ssh_public_key": public,
                "agent_version": "0.1.0",
            },
            timeout=10,
        )
        reply.raise_for_status()
        tokens.append(reply.json()["token"])
    return tokens


def report(kind: str) -> dict:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    if kind == "heartbeat":
        payload = {"agent_version": "0.1.0", "generated_at": now, "heartbeat_interval_s": 60.0, "outbox_depth": 0}
    else:
        payload = {
            "generated_at": now,
            "status": "OK",
            "exit_code": 0,
            "checks": [
                {
                    "name": f"check-{i}",
                    "type": "disk_usage",
                    "status": "OK",
                    "exit_code": 0,
                    "message": "/ is 21% full",
                    "value": 21.0,
                    "unit": "%",
                    "perfdata": [],
                    "duration_ms": 0.3,
                }
                for i in range(5)
            ],
        }
    return {"id": str(uuid.uuid4()), "kind": kind, "created_at": now, "payload": payload}


def load(
    url: str, tokens: list[str], batch: int, duration_s: float, threads: int, rate: float | None = None
) -> tuple[int, list[float], int]:
    """Post batches from ``threads`` agents for ``duration_s``: as fast as the server answers, or
    paced to ``rate`` reports/s in all. Return reports stored, post latencies (s), failed posts."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    lock = threading.Lock()
    stop_at = time.monotonic() + duration_s

    def agent_loop(worker: int) -> None:
        nonlocal errors, sent
        session = requests.Session()
        n = worker
        pace_s = batch * threads / rate if rate else 0.0
        next_at = time.monotonic() + pace_s * worker / threads
        while time.monotonic() < stop_at:
            if pace_s:
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at += pace_s
            token = tokens[n % len(tokens)]
            n += threads
            body = {"reports": [report("heartbeat" if i % 2 else "health") for i in range(batch)]}
            started = time.monotonic()
            try:
                reply = session.post(
                    f"{url}/api/v1/agent/reports", json=body, timeout=10, headers={"Authorization": f"Bearer {token}"}
                )
                ok = reply.status_code == 200 and len(reply.json()["acked"]) == batch
            except requests.RequestException:
                ok = False
            elapsed = time.monotonic() - started
            with lock:
                if ok:
                    latencies.append(elapsed)
                    sent += batch
                else:
                    errors += 1

    workers = [threading.Thread(target=agent_loop, args=(w,)) for w in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sent, latencies, errors


def daemon_idle_rss(data_dir: Path, url: str, idle_s: float) -> float:
    """Enroll and run the real agent daemon against the server; return its RSS (MB) after ``idle_s``."""
    root = data_dir / "agent"
    root.mkdir()
    config = root / "agent.yaml"
    config.write_text(
        f"device: {{name: bench-agent, serial: BENCH-AGENT}}\nserver:\n  url: {url}\n"
        f"state_dir: {root / 'state'}\nhealth:\n  checks:\n    - {{name: mem, type: memory}}\n"
        "    - {name: disk, type: disk_usage}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMAINT_")}
    code = json.loads(server_cli(data_dir, "enrollment-code", "--json"))["code"]
    enrolled = subprocess.run(
        [str(BIN / "telemaint"), "enroll", "--server", url, "--code", code, "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
    )
    if enrolled.returncode != 0:
        raise SystemExit(f"agent enrollment failed: {enrolled.stderr.strip()}")
    with open(root / "agent.log", "wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "telemaint"), "run", "--config", str(config)], env=env, stdout=subprocess.DEVNULL, stderr=log
        )
    try:
        time.sleep(idle_s)
        with open(f"/proc/{proc.pid}/status") as status:
            rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    finally:
        proc.terminate()
        proc.wait(30)
    return rss_kb / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--batch", type=int, default=10, help="reports per post")
    parser.add_argument("--threads", type=int, default=8, help="agents posting at once")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each phase posts")
    parser.add_argument("--rate", type=float, default=1200.0, help="offered reports/s in the paced phase")
    parser.add_argument(
        "--idle-seconds", type=float, default=300.0, help="how long the daemon runs before its RSS is read"
    )
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        server_cli(data_dir, "init")
        proc, url = start_server(data_dir)
        try:
            tokens = enroll_devices(data_dir, url, options.devices)
            load(url, tokens, options.batch, 2.0, options.threads)  # warm up
            print("telemaint server ingest benchmark (uvicorn, SQLite WAL, loopback)")
            print(
                f"  {options.devices} devices, {options.threads} agents posting at once, "
                f"{options.batch} reports per post, {options.seconds:.0f} s per phase"
            )
            for phase, rate in (("paced", options.rate), ("saturated", None)):
                started = time.monotonic()
                sent, latencies, errors = load(url, tokens, options.batch, options.seconds, options.threads, rate)
                achieved = sent / (time.monotonic() - started)
                cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
                p50, p99 = cuts[49] * 1000, cuts[98] * 1000
                offered = f"offered {rate:.0f}/s" if rate else "as fast as answered"
                print(
                    f"  {phase} ({offered}): {achieved:.0f} reports/s stored, "
                    f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, failed posts {errors}"
                )
                if rate:
                    print(
                        f"  target: >= {TARGET_REPORTS_PER_S} reports/s with p99 < {TARGET_P99_MS} ms -> "
                        f"{'met' if achieved >= TARGET_REPORTS_PER_S and p99 < TARGET_P99_MS else 'MISSED'}"
                    )
            if options.idle_seconds > 0:
                rss = daemon_idle_rss(data_dir, url, options.idle_seconds)
                print(
                    f"  agent daemon RSS after {options.idle_seconds:.0f} s: {rss:.1f} MB "
                    f"(target < {TARGET_IDLE_RSS_MB} MB -> {'met' if rss < TARGET_IDLE_RSS_MB else 'MISSED'})"
                )
        finally:
            proc.terminate()
            proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
