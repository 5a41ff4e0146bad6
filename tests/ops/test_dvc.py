"""The one DVC runner: captured, streamed and stage runs; DVC's failure line; the project lock."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from pspnet.errors import ConfigError, PspnetError
from pspnet.ops import dvc
from pspnet.ops.project_lock import pipeline_lock


def test_exp_run_arguments_carry_values_as_dvc_parses_them() -> None:
    args = dvc.exp_run_args("abl-x", {"evaluate.scales": [0.75, 1.0], "model.ppm_pooling": "max", "model.ppm": False})
    assert args == ["exp", "run", "-n", "abl-x", "-S", "evaluate.scales=[0.75,1.0]", "-S", "model.ppm_pooling=max", "-S", "model.ppm=false"]


def test_the_last_failure_line_names_the_stage_that_failed() -> None:
    output = (
        "ERROR: failed to reproduce 'prepare': failed to run: pspnet prepare, exited with 2\n"
        "ERROR: failed to reproduce 'validate': failed to run: pspnet validate, exited with 3\n"
    )
    assert dvc.last_failure(output) == ("validate", 3)
    assert dvc.last_failure("Data and pipelines are up to date.") is None


def test_a_failed_captured_command_is_named_with_dvcs_message(tmp_path: Path) -> None:
    with pytest.raises(PspnetError, match=r"^`dvc status` failed \(exit \d+\): .*not inside of a DVC repository"):
        dvc.run_dvc(tmp_path, "status")


@pytest.mark.integration  # real dvc repro
def test_a_streamed_command_gets_the_extra_environment_and_a_failure_names_it(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  echo:\n"
        "    cmd: python -c \"import os; open('out.txt', 'w').write(os.environ['PSPNET_TEST_VALUE'])\"\n"
        "    outs: [out.txt]\n"
    )
    assert dvc.run_streamed(tmp_path, ["repro"], {"PSPNET_TEST_VALUE": "from env"}) > 0
    assert (tmp_path / "out.txt").read_text() == "from env"
    with pytest.raises(PspnetError, match=r"^`dvc repro nowhere` exited with \d+; its output above says why\.$"):
        dvc.run_streamed(tmp_path, ["repro", "nowhere"])


def test_the_pipeline_lock_needs_a_dvc_project(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not a DVC repository \(no \.dvc/\)"):
        with pipeline_lock(tmp_path, logging.getLogger(__name__)):
            pass


def test_a_check_that_can_wait_skips_while_another_process_holds_the_pipeline_lock(tmp_path: Path) -> None:
    """What the folder watcher relies on: while a run (here another process) holds the lock, the
    check gets False at once; after, it gets the lock."""
    import subprocess
    import sys

    from pspnet.ops.project_lock import pipeline_lock_if_free

    probe = ("import pathlib, sys\nfrom pspnet.ops.project_lock import pipeline_lock_if_free\n"
             "with pipeline_lock_if_free(pathlib.Path(sys.argv[1])) as free: print(free)")  # fmt: skip
    with pipeline_lock_if_free(tmp_path) as held:
        assert held
        other = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, check=True)
        assert other.stdout.strip() == "False"
    other = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == "True"
