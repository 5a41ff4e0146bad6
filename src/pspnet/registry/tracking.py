"""The one place that decides where MLflow tracks: URI, experiment, run references, run tags.

Default store: ``sqlite:////<root>/mlflow.db`` with artifacts in ``<root>/mlartifacts``, both
addressed by absolute path so that ``dvc exp run --temp`` / ``--queue`` (which run stages in a
copy under ``<root>/.dvc/tmp/exps/``) log into the project's store, not into a throwaway copy.
``MLFLOW_TRACKING_URI`` in the environment wins over ``mlflow.tracking_uri`` in params, which
wins over the default.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from pspnet import io
from pspnet.config import MlflowConfig
from pspnet.data.manifest import load_dataset_record
from pspnet.errors import DataError, PspnetError

DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
#: Path components under which DVC runs temporary / queued experiments.
_DVC_EXP_TMP = (".dvc", "tmp", "exps")


def project_root(start: str | Path | None = None) -> Path:
    """The project that owns the MLflow store, seen from ``start`` (default: the working directory).

    Inside a DVC temporary experiment (``<root>/.dvc/tmp/exps/<name>/...``) this is ``<root>``;
    otherwise ``start`` itself.
    """
    path = Path(start or os.getcwd()).resolve()
    parts = path.parts
    for i in range(len(parts) - len(_DVC_EXP_TMP) + 1):
        if parts[i : i + len(_DVC_EXP_TMP)] == _DVC_EXP_TMP:
            return Path(*parts[:i])
    return path


def resolve_tracking_uri(cfg: MlflowConfig, root: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` > ``cfg.tracking_uri`` > the SQLite file at the project root."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if cfg.tracking_uri:
        return cfg.tracking_uri
    return f"sqlite:///{project_root(root) / DB_FILE}"


def default_artifact_location(tracking_uri: str, root: str | Path | None = None) -> str | None:
    """The artifact folder for new experiments: ``<root>/mlartifacts`` for a local SQLite store.

    For a tracking server (``http(s)://``) the server decides, so ``None``.
    """
    if tracking_uri.startswith("sqlite:"):
        return (project_root(root) / ARTIFACTS_DIR).as_uri()
    return None


def setup_mlflow(cfg: MlflowConfig, root: str | Path | None = None) -> str:
    """Point MLflow (tracking + registry) at the store and ensure the experiment exists.

    Returns the experiment id. Raises :class:`PspnetError` at once when the store cannot be
    reached, so a run fails before training rather than after it.
    """
    import mlflow

    uri = resolve_tracking_uri(cfg, root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        experiment = mlflow.get_experiment_by_name(cfg.experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        location = default_artifact_location(uri, root)
        try:
            return mlflow.create_experiment(cfg.experiment_name, artifact_location=location)
        except mlflow.exceptions.MlflowException:
            # Another process created it between our lookup and our create.
            experiment = mlflow.get_experiment_by_name(cfg.experiment_name)
            if experiment is None:
                raise
            return experiment.experiment_id
    except mlflow.exceptions.MlflowException as err:
        raise PspnetError(
            f"MLflow tracking store {uri!r} is not usable: {err}. Check MLFLOW_TRACKING_URI / "
            "mlflow.tracking_uri in params.yaml, or start the tracking server."
        ) from None


#: Environment variable naming a preset run (set by ``pspnet experiment``); runs are tagged with it.
RUN_NAME_ENV = "PSPNET_RUN_NAME"
#: Where a stage records the MLflow run it logged to (under ``paths.models``).
RUN_REF_FILE = "mlflow_run.json"


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
        io.write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> RunRef:
        path = Path(path)
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise PspnetError(f"{path}: no MLflow run reference. Run the `train` stage first.") from None
        except (TypeError, ValueError) as err:
            raise PspnetError(f"{path}: malformed MLflow run reference ({err}). Re-run `train`.") from None
