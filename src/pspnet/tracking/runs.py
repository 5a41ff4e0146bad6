"""Run references and tags: which MLflow run a pipeline's stages share, and what ties a run to
its code, experiment and data."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from pspnet import atomic_files
from pspnet.config import ModelConfig, TrainConfig
from pspnet.data.manifest import load_dataset_record
from pspnet.errors import DataError, PspnetError

#: Environment variable naming a preset run (set by ``pspnet experiment``); runs are tagged with it.
RUN_NAME_ENV = "PSPNET_RUN_NAME"
#: Characters of the data version a run name shows.
SHORT_VERSION = 8


def run_label() -> str:
    """What ran: the DVC experiment's name, else the preset run's, else ``train``."""
    return os.environ.get("DVC_EXP_NAME") or os.environ.get(RUN_NAME_ENV) or "train"


def run_name(label: str, model: ModelConfig, train: TrainConfig, data_version: str | None) -> str:
    """A runs-table name that says what ran, e.g.
    ``abl-fcn-s0 · resnet18 os8 fcn · 18 ep bs 8 lr 0.01 · data 1a2b3c4d``."""
    head = "psp " + ",".join(map(str, model.ppm_bins)) if model.ppm else "fcn"
    data = f"data {data_version[:SHORT_VERSION]}" if data_version else "data ?"
    return (f"{label} · {model.encoder} os{model.output_stride} {head} · "
            f"{train.epochs} ep bs {train.batch_size} lr {train.lr:g} · {data}")


def unique_run_name(experiment_id: str, name: str) -> str:
    """``name``, or ``name #N`` when the experiment already has runs of that name (a rerun of
    the same settings on the same data)."""
    import mlflow

    quoted = name.replace("'", "")
    existing = mlflow.MlflowClient().search_runs(
        [experiment_id], filter_string=f"attributes.run_name LIKE '{quoted}%'", max_results=10_000)
    taken = {r.info.run_name for r in existing}
    if quoted not in taken:
        return quoted
    return next(f"{quoted} #{n}" for n in range(2, len(taken) + 3) if f"{quoted} #{n}" not in taken)


def dataset_tags(prepared_dir: str | Path) -> dict[str, str]:
    """Tags naming the data a run used: source, location, the prepared data version (a content
    hash of every prepared file) and the raw data version DVC recorded (``dvc update`` changes
    it). Empty when the prepared dataset has no record."""
    try:
        record = load_dataset_record(prepared_dir)
    except DataError:
        return {}
    if not record:
        return {}
    tags = {"data.source": str(record.get("source")), "data.version": str(record.get("version"))}
    for field, item in (record.get("inputs") or {}).items():
        short = field.removeprefix("data.source.")
        tags[f"data.{short}"] = str(item.get("location"))
        if item.get("dvc_version"):
            tags[f"data.{short}.dvc_md5"] = str(item["dvc_version"])
    return tags


def run_tags(root: str | Path | None = None) -> dict[str, str]:
    """Tags that tie a run to its code and experiment: git commit, DVC experiment name."""
    tags: dict[str, str] = {}
    cwd = Path(root or os.getcwd())
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        tags["mlflow.source.git.commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get(RUN_NAME_ENV):
        tags["pspnet.run_name"] = os.environ[RUN_NAME_ENV]
    return tags


@dataclass(frozen=True)
class RunRef:
    """Which MLflow run a pipeline's stages share: written by ``train``, read by later stages."""

    run_id: str
    experiment_id: str
    tracking_uri: str

    def save(self, path: str | Path) -> None:
        atomic_files.write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> RunRef:
        path = Path(path)
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise PspnetError(f"{path}: no MLflow run reference. Run the `train` stage first.") from None
        except (TypeError, ValueError) as err:
            raise PspnetError(f"{path}: malformed MLflow run reference ({err}). Re-run `train`.") from None
