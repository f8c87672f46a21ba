import os
import sys
import time

import psutil

from agent.runner import TIMEOUT_STATUS, mask_command, run_command


def test_output_status_and_duration():
    result = run_command([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"])
    assert result.status == 3
    assert "out\n" in result.output and "err\n" in result.output
    assert not result.truncated and not result.timed_out
    assert result.duration_s > 0


def test_no_shell_metacharacters_are_interpreted(tmp_path):
    marker = tmp_path / "created"
    result = run_command(["echo", f"; touch {marker}"])
    assert result.output == f"; touch {marker}\n"
    assert not marker.exists()


def test_locale_is_c_utf8():
    result = run_command([sys.executable, "-c", "import os; print(os.environ['LC_ALL'])"])
    assert result.output.strip() == "C.UTF-8"


def test_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    result = run_command([sys.executable, "-c", script], timeout_s=1.0)
    assert time.monotonic() - started < 10
    assert result.status == TIMEOUT_STATUS
    assert result.timed_out
    assert result.error == "timed out after 1s"
    assert "started" in result.output
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while psutil.pid_exists(grandchild) and psutil.Process(grandchild).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the grandchild outlived the timeout"
        time.sleep(0.05)


def test_output_cap_keeps_the_tail():
    result = run_command([sys.executable, "-c", "for i in range(100000): print(f'line {i}')"], output_cap_bytes=1000)
    assert result.status == 0
    assert result.truncated
    assert len(result.output.encode()) <= 1000
    assert result.output.endswith("line 99999\n")
    assert result.output.startswith("line ")  # the partial first line was dropped


def test_missing_and_not_executable(tmp_path):
    missing = run_command(["/nonexistent/telemaint-test-cmd"])
    assert missing.status == 127
    assert missing.error == "command not found: /nonexistent/telemaint-test-cmd"
    script = tmp_path / "plain.txt"
    script.write_text("#!/bin/sh\necho hi\n")
    os.chmod(script, 0o644)
    not_exec = run_command([str(script)])
    assert not_exec.status == 126


def test_killed_by_signal_is_128_plus_signal():
    result = run_command([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"])
    assert result.status == 128 + 15


def test_invalid_utf8_is_replaced_not_raised():
    result = run_command([sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe end')"])
    assert result.output == "ok \ufffd\ufffd end"


def test_secrets_are_masked_in_command_lines():
    assert mask_command(["rclone", "--password", "hunter2", "sync"]) == "rclone --password *** sync"
    assert mask_command(["curl", "token=abc", "x"]) == "curl token=*** x"
    assert mask_command(["ls", "-l", "/tmp"]) == "ls -l /tmp"
