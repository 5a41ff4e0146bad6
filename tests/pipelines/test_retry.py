"""Retry policy of the Prefect flow: config / data errors are never retried, others are.

The exit code of a failed stage is read from DVC's error line: DVC itself always exits 255.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prefect.states import Failed

from pipelines import training
from pipelines.training import retry_unless_permanent
from pspnet.ops.dvc import StageFailed, repro_stage, stage_exit_code


def failed_state(exc: BaseException) -> Failed:
    """What Prefect hands ``retry_condition_fn`` when a task raises ``exc``."""
    return Failed(data=exc, message=f"Task run encountered unexpected exception: {exc!r}")


@pytest.mark.parametrize(("code", "retried"), [(3, False), (2, False), (127, False), (1, True), (137, True)])
def test_retry_condition_refuses_config_and_data_errors(code: int, retried: bool) -> None:
    state = failed_state(StageFailed("train", code, 255, "..."))
    assert retry_unless_permanent(None, None, state) is retried


def test_unexpected_exceptions_are_retried() -> None:
    assert retry_unless_permanent(None, None, failed_state(RuntimeError("connection reset"))) is True


def test_stage_exit_code_is_parsed_from_dvc_error_line() -> None:
    output = (
        "Running stage 'train':\n> pspnet train\npspnet train: error: bad data\n"
        "ERROR: failed to reproduce 'train': failed to run: pspnet train, exited with 3\n"
    )
    assert stage_exit_code(output) == 3
    assert stage_exit_code("ERROR: failed to reproduce 'x': output 'y' does not exist") is None


def test_stages_and_retry_policy() -> None:
    assert list(training.STAGE_TASKS) == ["prepare", "validate", "train", "evaluate", "test", "register"]
    assert training.STAGE_TASKS["validate"].retries == 0
    for name in ("train", "evaluate", "test", "register"):
        task = training.STAGE_TASKS[name]
        assert task.retries == 2 and task.retry_condition_fn is retry_unless_permanent


@pytest.mark.integration  # real dvc repro
def test_real_dvc_repro_reports_the_stage_exit_code(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  prepare:\n"
        "    cmd: python -c \"open('ok.txt', 'w').write('ok')\"\n"
        "    outs: [ok.txt]\n"
        "  validate:\n"
        "    cmd: python -c \"import sys; print('bad data', file=sys.stderr); sys.exit(3)\"\n"
        "    deps: [ok.txt]\n"
    )
    lines: list[str] = []

    class Logger:
        def info(self, msg: str, *args: object) -> None:
            lines.append(msg % args if args else msg)

    assert repro_stage("prepare", tmp_path, Logger())["ran"] is True
    assert repro_stage("prepare", tmp_path)["ran"] is False  # up to date: DVC skips it
    with pytest.raises(StageFailed) as info:
        repro_stage("validate", tmp_path, Logger())
    assert info.value.exit_code == 3 and info.value.dvc_returncode == 255
    assert "bad data" in info.value.output_tail
    assert any("bad data" in line for line in lines), "stage output is streamed to the logger"
