"""Every artifact path of the pipeline, in one place.

Stages, the registry and the apps ask a :class:`Layout` where a file lives; the folders come
from ``params.yaml``'s ``paths:`` section (which ``dvc.yaml`` reads too), the file names are
fixed here. Domain packages (``data``, ``model``, ``train``, ``evaluate``) never import this:
they take paths as arguments. The prepared dataset's own files (``manifest.csv``,
``classes.json``, ...) are the data package's format and stay there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pspnet.config import PathsConfig

# Under paths.models
CHECKPOINT_FILE = "checkpoint.pt"
RUN_REF_FILE = "mlflow_run.json"
IMPORTED_DIR = "imported"
TRAIN_STATE_DIR = "train_state"
# Under paths.metrics
TRAIN_METRICS_FILE = "train.json"
TRAIN_HISTORY_FILE = "train_history.csv"
#: The learning curve: mIoU by split against training minutes (empty without train.curve_every_n_epochs).
TRAIN_CURVE_FILE = "train_curve.csv"
EVAL_METRICS_FILE = "eval.json"
PER_CLASS_IOU_FILE = "per_class_iou.csv"
PER_IMAGE_SCORES_FILE = "per_image.npz"
#: The confusion matrix as (actual, predicted) rows for DVC's confusion template (``dvc plots``).
CONFUSION_ROWS_FILE = "confusion.json"
#: ``evaluate --model`` reports: ``<paths.metrics>/models/<model>/``.
MODEL_REPORTS_DIR = "models"
#: The test split's scores, apart from val's: ``<paths.metrics>/test/{eval.json,per_class_iou.csv}``.
TEST_REPORTS_DIR = "test"
# Under paths.plots
TRAINING_CURVE_FILE = "training_curve.png"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
OVERLAYS_DIR = "overlays"
# Under paths.reports
VALIDATION_DIR = "validation"
VALIDATION_SUMMARY_FILE = "summary.json"
VALIDATION_HISTORY_FILE = "history.json"
VALIDATION_PROFILE_FILE = "profile.csv"
QUARANTINE_FILE = "quarantine.csv"
DATA_DOCS_DIR = "data_docs"
REGISTRY_REPORT_FILE = "registry.json"
MODEL_CARD_FILE = "model_card.md"
# Project-level files
DVC_LOCK_FILE = "dvc.lock"
DVC_CACHE_DIR = ".dvc/cache"
#: Held for a whole flow run, so that runs in one project never interleave.
PIPELINE_LOCK_FILE = ".dvc/tmp/pspnet-pipeline.lock"
PRESETS_DIR = "configs"
RESULTS_DIR = "docs/results"


@dataclass(frozen=True)
class Layout:
    """The artifact paths of one project: ``Layout(root, params.paths)``."""

    root: Path
    paths: PathsConfig

    @property
    def raw(self) -> Path:
        return self.root / self.paths.raw

    @property
    def prepared(self) -> Path:
        return self.root / self.paths.prepared

    @property
    def models(self) -> Path:
        return self.root / self.paths.models

    @property
    def metrics(self) -> Path:
        return self.root / self.paths.metrics

    @property
    def plots(self) -> Path:
        return self.root / self.paths.plots

    @property
    def reports(self) -> Path:
        return self.root / self.paths.reports

    @property
    def checkpoint(self) -> Path:
        return self.models / CHECKPOINT_FILE

    @property
    def run_ref(self) -> Path:
        return self.models / RUN_REF_FILE

    @property
    def train_state(self) -> Path:
        return self.models / TRAIN_STATE_DIR

    @property
    def imported(self) -> Path:
        return self.models / IMPORTED_DIR

    @property
    def train_metrics(self) -> Path:
        return self.metrics / TRAIN_METRICS_FILE

    @property
    def train_history(self) -> Path:
        return self.metrics / TRAIN_HISTORY_FILE

    @property
    def train_curve(self) -> Path:
        return self.metrics / TRAIN_CURVE_FILE

    @property
    def eval_metrics(self) -> Path:
        return self.metrics / EVAL_METRICS_FILE

    @property
    def per_class_iou(self) -> Path:
        return self.metrics / PER_CLASS_IOU_FILE

    @property
    def confusion_rows(self) -> Path:
        return self.metrics / CONFUSION_ROWS_FILE

    @property
    def per_image_scores(self) -> Path:
        return self.metrics / PER_IMAGE_SCORES_FILE

    @property
    def model_reports(self) -> Path:
        return self.metrics / MODEL_REPORTS_DIR

    @property
    def test_reports(self) -> Path:
        return self.metrics / TEST_REPORTS_DIR

    @property
    def test_metrics(self) -> Path:
        return self.test_reports / EVAL_METRICS_FILE

    @property
    def test_per_class_iou(self) -> Path:
        return self.test_reports / PER_CLASS_IOU_FILE

    @property
    def training_curve(self) -> Path:
        return self.plots / TRAINING_CURVE_FILE

    @property
    def confusion_matrix(self) -> Path:
        return self.plots / CONFUSION_MATRIX_FILE

    @property
    def overlays(self) -> Path:
        return self.plots / OVERLAYS_DIR

    @property
    def validation(self) -> Path:
        return self.reports / VALIDATION_DIR

    @property
    def validation_summary(self) -> Path:
        return self.validation / VALIDATION_SUMMARY_FILE

    @property
    def validation_history(self) -> Path:
        return self.validation / VALIDATION_HISTORY_FILE

    @property
    def data_docs(self) -> Path:
        return self.validation / DATA_DOCS_DIR

    @property
    def quarantine(self) -> Path:
        return self.validation / QUARANTINE_FILE

    @property
    def registry_report(self) -> Path:
        return self.reports / REGISTRY_REPORT_FILE

    @property
    def model_card(self) -> Path:
        return self.reports / MODEL_CARD_FILE

    @property
    def dvc_lock(self) -> Path:
        return self.root / DVC_LOCK_FILE

    @property
    def dvc_cache(self) -> Path:
        return self.root / DVC_CACHE_DIR

    @property
    def pipeline_lock(self) -> Path:
        return self.root / PIPELINE_LOCK_FILE
