"""A real `prefect server start` for the tests of this package, the helpers to wait on it, to start
processes next to it (serving, a worker, the watcher) and to read its runs.

One server serves every test of tests/pipelines (the package-scoped ``prefect_api`` fixture of
conftest.py): starting one costs more than most of the tests that use it.
"""

from __future__ import annotations

import datetime
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
import yaml

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


class PrefectServer:
    """A real `prefect server start` on a free port, its home and database in ``home``; it can be
    restarted on the same port and database (what a server restart looks like to its clients)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.log = home / "server.log"
        self.proc: subprocess.Popen | None = None
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.env.update(
            PREFECT_HOME=str(home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="false",
            # The scheduler creates the cron's runs; by default it looks every 60 s.
            PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1",
        )

    def start(self) -> None:
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        proc = self.proc
        wait_for(lambda: proc.poll() is not None or answers(f"{self.api}/health"), SERVER_START_TIMEOUT, "prefect server healthy", self.log)
        assert proc.poll() is None, f"prefect server exited {proc.returncode}:\n{tail(self.log)}"

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGTERM)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def prefect_server(home: Path) -> Iterator[PrefectServer]:
    """A started :class:`PrefectServer`, stopped afterwards."""
    server = PrefectServer(home)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@contextmanager
def background(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """``cmd`` running in its own session, its output in ``log``; stopped (Ctrl-C) afterwards."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        stop(proc)


def cron_at(moment: datetime.datetime) -> str:
    """A six-field cron (seconds last, as Prefect's croniter reads it) firing at ``moment`` (UTC) once a year."""
    return f"{moment.minute} {moment.hour} {moment.day} {moment.month} * {moment.second}"


def set_schedule(project: Path, **values: Any) -> None:
    """Change ``schedule:`` in ``project``'s params.yaml."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["schedule"].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def deployment_runs(client: Any, deployment_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def task_names(client: Any, flow_run_id: Any) -> list[str]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(run.name for run in runs)


def final_run(client: Any, run_id: Any) -> Any:
    """The flow run when its state is final, else ``None`` (for :func:`wait_for`)."""
    run = client.read_flow_run(run_id)
    return run if run.state and run.state.is_final() else None
