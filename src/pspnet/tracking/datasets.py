"""The prepared dataset as an MLflow dataset input: the runs table's Dataset column and the run
page's Datasets panel name the data a run trained on.

Its digest is the data version (``dataset.json``: a content hash of every prepared file), its
source the DVC-tracked folder with the hash ``dvc.lock`` records for it, its table the manifest
(one row per sample: split, image, mask). MLflow has no DVC source, so :class:`DvcDatasetSource`
is one, registered with MLflow's own registry of sources.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import register_dataset_source

from pspnet.data.manifest import MANIFEST_FILE, load_dataset_record
from pspnet.errors import DataError

#: The ``context`` of the input in MLflow: what the run did with the data.
TRAINING_CONTEXT = "training"


class DvcDatasetSource(DatasetSource):
    """A folder tracked by DVC: its path in the project and the hash DVC recorded for it."""

    def __init__(self, path: str, md5: str | None) -> None:
        self.path = path
        self.md5 = md5

    @staticmethod
    def _get_source_type() -> str:
        return "dvc"

    def load(self) -> str:
        """The folder (``dvc checkout`` at the run's commit brings back this version)."""
        return self.path

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False  # built explicitly, never guessed from a string

    @classmethod
    def _resolve(cls, raw_source: Any) -> DvcDatasetSource:
        raise NotImplementedError("build a DvcDatasetSource from its path and hash")

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "md5": self.md5}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> DvcDatasetSource:
        return cls(str(source_dict["path"]), source_dict.get("md5"))


register_dataset_source(DvcDatasetSource)


def prepared_dataset(prepared_dir: Path, relative_path: str, dvc_md5: str | None, name: str) -> Any:
    """The prepared dataset as an MLflow ``PandasDataset`` (digest = the data version), or None
    when the folder has no record of its version (prepared before ``dataset.json`` existed)."""
    from mlflow.data.pandas_dataset import PandasDataset

    record = load_dataset_record(prepared_dir)
    if not record.get("version"):
        return None
    manifest_file = Path(prepared_dir) / MANIFEST_FILE
    try:
        manifest = pd.read_csv(manifest_file)
    except (OSError, ValueError) as err:
        raise DataError(f"{manifest_file}: cannot be read ({err}). Re-run `prepare` to rewrite it.") from None
    return PandasDataset(df=manifest, source=DvcDatasetSource(relative_path, dvc_md5), name=name, digest=str(record["version"]))


def log_dataset_input(dataset: Any, context: str = TRAINING_CONTEXT) -> None:
    """Log ``dataset`` as an input of the active run (once: a resumed run already has it)."""
    import mlflow

    run = mlflow.active_run()
    if run is None or dataset is None:
        return
    logged = mlflow.MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs
    if any(d.dataset.digest == dataset.digest and d.dataset.name == dataset.name for d in logged):
        return
    mlflow.log_input(dataset, context=context)
