"""Subprocesses find this environment's tools even when it was never activated."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from pspnet.ops.environment import tool_env


def test_the_interpreters_bin_comes_first_so_stage_commands_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # as in a cron job or `.venv/bin/pspnet ...` without activation
    env = tool_env()
    bin_dir = str(Path(sys.executable).parent)
    assert env["PATH"].split(os.pathsep)[0] == bin_dir
    assert shutil.which("pspnet", path=env["PATH"]) == str(Path(bin_dir) / "pspnet")
    assert env["DVC_NO_ANALYTICS"] == "1" and env["PYTHONUNBUFFERED"] == "1"


def test_an_already_first_bin_is_not_added_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin")
    assert tool_env()["PATH"] == f"{bin_dir}{os.pathsep}/usr/bin"
