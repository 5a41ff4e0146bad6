"""Tiny copies of this project in temp git repos, for running the real pipeline end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pspnet.config import deep_merge

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Overrides that make the whole pipeline take seconds: a handful of small images, one epoch,
#: small export and probe images for the registration.
TINY_PARAMS: dict[str, dict] = {
    "data": {"synthetic": {"train_size": 12, "val_size": 6, "height": 48, "width": 64}},
    "train": {"epochs": 1, "batch_size": 4, "crop_size": [48, 64], "log_every_n_steps": 1},
    "evaluate": {"num_overlays": 2},
    "register": {"export_example_size": [32, 48], "probe_size": [40, 56], "export_onnx": False},  # ONNX: tests/registry
}


def tool_env(project: Path) -> dict[str, str]:
    """Environment for DVC/Prefect subprocesses: this venv first on PATH, state kept in ``project``."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_REGISTRY_URI", None)
    env["PREFECT_HOME"] = str(project / ".prefect")
    env["DVC_NO_ANALYTICS"] = "1"
    env["MPLBACKEND"] = "Agg"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "pspnet-tests"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "tests@localhost"
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(cwd), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


def make_tiny_project(dest: Path, overrides: dict | None = None) -> Path:
    """A git + DVC repo holding this project's pipeline definition with tiny parameters."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".gitignore", "data/raw/README.md"):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, dest / name)
    # Stage deps name library files; copy them so DVC can hash them.
    shutil.copytree(REPO_ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(REPO_ROOT / "pipelines", dest / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params = deep_merge(deep_merge(params, TINY_PARAMS), overrides or {})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], dest)
    run(["dvc", "init", "-q"], dest)
    # The project's DVC config (analytics off, the offline `dvc plots` template) and that template.
    shutil.copy2(REPO_ROOT / ".dvc" / "config", dest / ".dvc" / "config")
    shutil.copytree(REPO_ROOT / ".dvc" / "plots", dest / ".dvc" / "plots")
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "tiny project"], dest)
    return dest


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    return make_tiny_project(tmp_path / "project")
