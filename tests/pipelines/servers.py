"""A real `prefect server start` for the tests of this package, and the helpers to wait on it.

One server serves every test of tests/pipelines (the package-scoped ``prefect_api`` fixture of
conftest.py): starting one costs more than most of the tests that use it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

#: Seconds the server may take to answer its health check.
SERVER_START_TIMEOUT = 150
#: How long a stopped process may take to exit before it is killed.
STOP_TIMEOUT = 30
POLL_SECONDS = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, chars: int = 6000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else "(no log)"


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> None:
    """Stop a process started in its own session, with its children; killed if it does not exit."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
    try:  # children left behind (the group outlives its leader)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_for(check: Callable[[], Any], timeout: float, what: str, log: Path) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` s quoting ``log``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(POLL_SECONDS)
    pytest.fail(f"{what}: not within {timeout} s. Log {log}:\n{tail(log)}")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """A real `prefect server start` on a free port, its home and database in ``home``; yields its API URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        # The scheduler creates the cron's runs; by default it looks every 60 s.
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1",
    )
    log = home / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_for(lambda: proc.poll() is not None or answers(f"{api}/health"), SERVER_START_TIMEOUT, "prefect server healthy", log)
        assert proc.poll() is None, f"prefect server exited {proc.returncode}:\n{tail(log)}"
        yield api
    finally:
        stop(proc, signal.SIGTERM)
