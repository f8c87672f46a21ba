"""`make demo`: the whole local stack on embedded defaults.

Starts telemaint-server on 127.0.0.1:8080 with SQLite under ./var/demo, creates an admin (prints
the password) and an enrollment code, enrolls an agent with configs/agent.demo.yaml, runs it, and
prints the dashboard URL. Ctrl-C stops both. ``--check`` waits until the device has reported and
its health is visible through the API, then stops (used by the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 60


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, text=True, capture_output=True, check=False, **kwargs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=ROOT / "var" / "demo", help="where the demo keeps its state")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--check", action="store_true", help="stop once the device's health is on the server")
    options = parser.parse_args()

    demo = options.dir.resolve()
    server_dir = demo / "server"
    agent_dir = demo / "agent"
    url = f"http://127.0.0.1:{options.port}"
    server_cli = [str(BIN / "telemaint-server")]
    common = ["--data-dir", str(server_dir)]

    config_text = (ROOT / "configs" / "agent.demo.yaml").read_text()
    config_text = (
        config_text.replace("127.0.0.1:8080", f"127.0.0.1:{options.port}")
        .replace("port: 8080,", f"port: {options.port},")
        .replace("state_dir: var/demo/agent", f"state_dir: {agent_dir}")
    )
    demo.mkdir(parents=True, exist_ok=True)
    config = demo / "agent.yaml"
    config.write_text(config_text)
    agent_env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMAINT_")}
    agent_cli = [str(BIN / "telemaint"), "--config", str(config)]

    step = run([*server_cli, "init", *common])
    if step.returncode != 0:
        return fail("telemaint-server init", step)

    password_file = demo / "admin-password"
    if not password_file.exists():
        password = secrets.token_urlsafe(12)
        step = run(
            [*server_cli, "user", "add", "admin", "--role", "admin", "--password-stdin", *common], input=password + "\n"
        )
        if step.returncode != 0:
            return fail("telemaint-server user add", step)
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
    password = password_file.read_text().strip()

    server_log = open(demo / "server.log", "ab")  # noqa: SIM115 - open for the server's lifetime
    server = subprocess.Popen(
        [*server_cli, "run", "--host", "127.0.0.1", "--port", str(options.port), *common],
        stdout=server_log,
        stderr=subprocess.STDOUT,
    )
    agent = None
    try:
        if not wait_until(lambda: answers(url), READY_TIMEOUT_S) or server.poll() is not None:
            print(f"the server did not start; see {demo / 'server.log'}", file=sys.stderr)
            return 1
        if not (agent_dir / "credentials.json").exists():
            code = json.loads(
                run([*server_cli, "enrollment-code", "--customer", "Demo Customer", "--json", *common]).stdout
            )["code"]
            step = run([*agent_cli[:1], "enroll", "--server", url, "--code", code, *agent_cli[1:]], env=agent_env)
            if step.returncode != 0:
                return fail("telemaint enroll", step)
            print(step.stdout.strip())
        agent_log = open(demo / "agent.log", "ab")  # noqa: SIM115 - open for the agent's lifetime
        agent = subprocess.Popen(
            [*agent_cli[:1], "run", *agent_cli[1:]], stdout=agent_log, stderr=subprocess.STDOUT, env=agent_env
        )
        print(f"\ntelemaint demo is running\n  dashboard: {url}/\n  log in as: admin / {password}")
        print(f"  agent:     {' '.join(agent_cli)} status")
        print(f"  logs:      {demo / 'server.log'}, {demo / 'agent.log'}\nCtrl-C stops both.", flush=True)
        if options.check:
            if not wait_until(lambda: device_health(url, password), READY_TIMEOUT_S):
                print("the demo device did not report its health in time", file=sys.stderr)
                return 1
            print(f"demo device reported: health {device_health(url, password)}")
            return 0
        while server.poll() is None and agent.poll() is None:
            time.sleep(1)
        print("the server or the agent stopped; see the logs", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in (agent, server):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        print("stopped")


def answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/api/v1/openapi.json", timeout=2).ok
    except requests.RequestException:
        return False


def device_health(url: str, password: str) -> str | None:
    session = requests.Session()
    if not session.post(f"{url}/api/v1/login", json={"name": "admin", "password": password}, timeout=5).ok:
        return None
    devices = session.get(f"{url}/api/v1/devices", params={"q": "demo-bench"}, timeout=5).json()["devices"]
    return devices[0]["health_status"] if devices else None


def wait_until(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def fail(what: str, step: subprocess.CompletedProcess) -> int:
    print(f"{what} failed: {(step.stderr or step.stdout).strip()}", file=sys.stderr)
    return 1


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main())
