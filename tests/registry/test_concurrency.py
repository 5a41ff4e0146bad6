"""Registrations against one store at once: the promotion lock (:mod:`pspnet.registry.lock`).

- Two real ``pspnet register`` processes, two projects, one SQLite store, started together:
  both versions exist, the better model is champion whatever the order, the decisions and
  tags tell one consistent story, the store is intact and no lock is left.
- Deterministic: the test holds the lock; a ``pspnet register`` subprocess registers its
  version, then waits (and says so) without moving the champion alias until the lock is
  released, then promotes.
- Leases: a live one names its holder when the wait times out; an expired one (a crashed
  holder) is broken; a broken holder notices before acting; a foreign model under the lock's
  name is refused; a lock released while it is being read (a torn read) is not.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from pspnet.config import Params, parse_params
from pspnet.errors import PspnetError
from pspnet.model.pspnet import build_model
from pspnet.registry import lock
from pspnet.stages import register as reg
from tests.registry.test_register import head_trained, make_candidate, write_data
from tests.train.tinydata import NAMES

#: The tiny settings of tests/registry/test_register.py, also written as each project's params.yaml.
SETTINGS = {
    "model": {"encoder": "resnet18", "head_channels": 16, "aux_channels": 8},
    "train": {"device": "cpu"},
    "evaluate": {"batch_size": 12, "num_overlays": 0},
    "register": {"export_example_size": [32, 48], "probe_size": [40, 56], "bootstrap_samples": 500, "export_onnx": False},
}
MODEL = "pspnet"
#: Generous bounds for a subprocess (imports, export, logging on a busy 2-core machine).
PROCESS_TIMEOUT = 600
#: How often a wait for the log line also checks that the process still runs.
POLL_SECONDS = 0.5
#: What the waiting registration logs (pspnet.registry.lock).
WAITING = "waiting for the promotion lock"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path}/store.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def new_project(root: Path) -> tuple[Path, Params]:
    params = parse_params(SETTINGS)
    write_data(root, params, seed=0, version="data-v1")  # the same val images in every project
    (root / "params.yaml").write_text(yaml.safe_dump(SETTINGS))
    return root, params


def register_process(root: Path, uri: str) -> subprocess.Popen[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PSPNET_LOG_LEVEL": "INFO", "MPLBACKEND": "Agg"}
    return subprocess.Popen(
        [sys.executable, "-m", "pspnet", "register", "--root", str(root)],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


class Watched:
    """A ``pspnet register`` subprocess whose log (stderr) is read as it comes; ``waiting`` is set
    once it says it waits for the promotion lock."""

    def __init__(self, root: Path, uri: str) -> None:
        self.proc = register_process(root, uri)
        self.lines: list[str] = []
        self.waiting = threading.Event()
        self.ended = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if WAITING in line:
                self.waiting.set()
        self.ended.set()  # stderr closed: the process is gone, waiting or not

    def log(self) -> str:
        return "".join(self.lines[-40:])

    def wait_until_waiting(self) -> None:
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while not self.waiting.is_set() and not self.ended.is_set() and time.monotonic() < deadline:
            self.waiting.wait(POLL_SECONDS)
        assert self.waiting.is_set(), "register never waited for the lock:\n" + self.log()

    def finish(self) -> None:
        self.proc.wait(timeout=PROCESS_TIMEOUT)
        self.reader.join(timeout=10)
        assert self.proc.returncode == 0, f"register exited {self.proc.returncode}:\n{self.log()}"


def version_of(client: MlflowClient, run_id: str) -> str:
    (mv,) = client.search_model_versions(f"run_id = '{run_id}'")
    return str(mv.version)


def assert_store_intact(uri: str, client: MlflowClient) -> None:
    with sqlite3.connect(uri.removeprefix("sqlite:///")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert [m.name for m in client.search_registered_models()] == [MODEL]  # no lock left behind
    assert len(client.search_model_versions(f"name = '{MODEL}'")) >= 1


@pytest.mark.integration
def test_two_register_processes_at_once_leave_the_better_model_champion(tmp_path: Path, store: str) -> None:
    client = MlflowClient()
    better_root, params = new_project(tmp_path / "better")
    worse_root, _ = new_project(tmp_path / "worse")
    torch.manual_seed(0)
    better_run = make_candidate(better_root, params, head_trained(params, better_root), "trained")
    worse_run = make_candidate(worse_root, params, build_model(params.model, len(NAMES)).eval(), "random")

    # The test holds the lock until both have registered their version and wait for it, so both
    # promotions contend at the same moment; which one gets it first is up to them.
    held = lock.acquire(client, MODEL, timeout=5, lease_seconds=PROCESS_TIMEOUT, purpose="lining both up")
    try:
        procs = [Watched(worse_root, store), Watched(better_root, store)]
        for proc in procs:
            proc.wait_until_waiting()
        assert len(client.search_model_versions(f"name = '{MODEL}'")) == 2
        assert "champion" not in client.get_registered_model(MODEL).aliases  # nobody has decided yet
    finally:
        lock.release(client, held)
    for proc in procs:
        proc.finish()

    better, worse = version_of(client, better_run), version_of(client, worse_run)
    assert {better, worse} == {"1", "2"}
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == better
    tags = {v: client.get_model_version(MODEL, v).tags for v in (better, worse)}
    assert tags[better]["decision"] == "promoted"
    if tags[worse]["previous_champion_version"] == "":
        # The worse one took the lock first: promoted as the first version, then beaten.
        assert tags[worse]["decision"] == "promoted" and tags[better]["previous_champion_version"] == worse
    else:
        # The better one first: the worse one was judged against it and rejected.
        assert tags[better]["previous_champion_version"] == ""
        assert tags[worse]["decision"] == "rejected" and tags[worse]["previous_champion_version"] == better
    report = json.loads((better_root / "reports" / "registry.json").read_text())
    assert report["version"] == better and report["decision"] == "promoted"
    assert_store_intact(store, client)


@pytest.mark.integration
def test_register_waits_for_the_lock_and_moves_no_alias_until_it_is_released(tmp_path: Path, store: str) -> None:
    client = MlflowClient()
    root, params = new_project(tmp_path / "project")
    torch.manual_seed(0)
    make_candidate(root, params, build_model(params.model, len(NAMES)).eval(), "random")
    assert reg.run(params, root)["champion_version"] == "1"
    make_candidate(root, params, head_trained(params, root), "trained")

    held = lock.acquire(client, MODEL, timeout=5, lease_seconds=PROCESS_TIMEOUT, purpose="held by the test")
    try:
        proc = Watched(root, store)
        proc.wait_until_waiting()
        assert lock.holder_id() in next(line for line in proc.lines if WAITING in line)  # it names the holder
        for _ in range(2):  # it keeps waiting, and the champion does not move
            assert proc.proc.poll() is None
            assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
            time.sleep(1.0)
        # Its version is registered (the challenger) before the lock: only the promotion waits.
        assert str(client.get_model_version_by_alias(MODEL, "challenger").version) == "2"
    finally:
        lock.release(client, held)
    proc.finish()
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "2"
    tags = client.get_model_version(MODEL, "2").tags
    assert tags["decision"] == "promoted" and tags["previous_champion_version"] == "1"
    assert_store_intact(store, client)


def test_leases_time_out_naming_the_holder_and_expired_ones_are_broken(store: str, caplog: pytest.LogCaptureFixture) -> None:
    check_lease_rules(MlflowClient(), caplog)


def check_lease_rules(client: MlflowClient, caplog: pytest.LogCaptureFixture) -> None:
    """The lease semantics against ``client``'s store (also run against a tracking server, in
    tests/integration/test_tracking_server.py)."""
    name = lock.lock_name(MODEL)
    held = lock.acquire(client, MODEL, timeout=1, lease_seconds=600, purpose="promoting pspnet v7")
    with pytest.raises(PspnetError, match=rf"held by {re.escape(lock.holder_id())} \(promoting pspnet v7\).*register\.lock_timeout"):
        lock.acquire(client, MODEL, timeout=0.5, lease_seconds=600)
    lock.release(client, held)
    assert lock.read_lease(client, name) is None

    # A holder that crashed: its lease ends, and the next registration breaks it.
    crashed = lock.acquire(client, MODEL, timeout=1, lease_seconds=0.01, purpose="crashed")
    time.sleep(0.05)
    with caplog.at_level("WARNING", logger="pspnet.registry.lock"):
        fresh = lock.acquire(client, MODEL, timeout=5, lease_seconds=600, purpose="next")
    assert "breaking the expired promotion lock" in caplog.text and "(crashed)" in caplog.text
    # The crashed holder, were it alive after all, notices before acting and leaves the new lease alone.
    with pytest.raises(PspnetError, match="lost the promotion lock .* the alias was not moved"):
        lock.ensure_held(client, crashed)
    lock.release(client, crashed)
    assert lock.read_lease(client, name).token == fresh.token
    lock.ensure_held(client, fresh)
    lock.release(client, fresh)

    # A model of that name that is not a lock is never deleted, and says what to do.
    client.create_registered_model(name)
    with pytest.raises(PspnetError, match="exists but is not a promotion lock"):
        lock.acquire(client, MODEL, timeout=1, lease_seconds=600)
    assert client.get_registered_model(name).name == name
    client.delete_registered_model(name)


class TornRead:
    """A real client whose first read of ``name`` races a release: the lock is deleted between
    the store's model query and its tags query, so that read returns the model without tags."""

    def __init__(self, client: MlflowClient, name: str) -> None:
        self.client, self.name, self.torn = client, name, False

    def get_registered_model(self, name: str):  # noqa: ANN201 - MLflow's RegisteredModel
        model = self.client.get_registered_model(name)
        if name == self.name and not self.torn:
            self.torn = True
            self.client.delete_registered_model(name)  # the holder releases between the two queries
            model._tags = {}
        return model

    def __getattr__(self, attr: str):  # noqa: ANN204 - everything else goes to the real client
        return getattr(self.client, attr)


def test_a_lock_released_while_being_read_is_not_called_foreign(store: str) -> None:
    client = MlflowClient()
    held = lock.acquire(client, MODEL, timeout=1, lease_seconds=600, purpose="releasing")
    torn = TornRead(client, held.name)
    assert lock.read_lease(torn, held.name) is None
    assert torn.torn
    # And a waiter that meets the torn read takes the lock instead of failing.
    held = lock.acquire(client, MODEL, timeout=1, lease_seconds=600, purpose="releasing")
    mine = lock.acquire(TornRead(client, held.name), MODEL, timeout=5, lease_seconds=600, purpose="next")
    assert lock.read_lease(client, held.name).token == mine.token
    lock.release(client, mine)
