"""The `pspnet` command: one subcommand per stage, readable errors, exit codes orchestration relies on."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from pspnet.cli import app, resolve_stage
from pspnet.stages import STAGE_NAMES
from pspnet.errors import ConfigError, DataError

runner = CliRunner()


def test_every_stage_has_a_subcommand_and_a_library_function() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in STAGE_NAMES:
        assert name in result.output
        assert callable(resolve_stage(name))


def test_invalid_params_exit_2_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("train:\n  epoch: 3\n")
    result = runner.invoke(app, ["prepare", "--root", str(tmp_path)])
    assert result.exit_code == ConfigError.exit_code == 2
    assert "train.epoch: unknown key" in result.output and "epochs" in result.output
    assert "Traceback" not in result.output


def test_missing_data_exits_3_and_says_what_to_run(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("{}\n")
    result = runner.invoke(app, ["train", "--root", str(tmp_path)])
    assert result.exit_code == DataError.exit_code == 3
    assert "prepare" in result.output
    assert not (tmp_path / "models" / "checkpoint.pt").exists()


def test_prepare_writes_the_dataset_and_prints_a_json_summary(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(
        "data:\n  synthetic: {train_size: 3, val_size: 2, height: 48, width: 64}\n"
    )
    result = runner.invoke(app, ["prepare", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert '"num_samples": 5' in result.output
    assert (tmp_path / "data" / "prepared" / "manifest.csv").is_file()
