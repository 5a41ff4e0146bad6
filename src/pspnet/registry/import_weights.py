"""``pspnet import-weights``: bring the authors' released PSPNet weights into the registry.

1. :func:`pspnet.model.official.convert` maps every key and shape of the release file into our
   model (strict unless ``allow_partial``);
2. the result is saved as an ordinary checkpoint (``models/imported/<dataset>-<encoder>.pt``)
   with the class names and colours of the dataset the weights were trained on;
3. an MLflow run (experiment ``mlflow.experiment_name``, run name ``import <dataset> <encoder>``)
   records the source file, its SHA-256 and the conversion; the model is logged exactly as
   ``register`` logs a trained one (a ``torch.export`` pyfunc, checked against the checkpoint
   on a probe image), registered under ``register.model_name`` and given the alias
   ``official-<dataset>`` (or ``--alias``).

It never touches the champion alias: an imported model is there to be run (``pspnet predict
--model models:/pspnet@official-ade20k``), scored (``pspnet evaluate --model ...``) or
fine-tuned from, not promoted. Importing the same file again with the same options reuses its
version and only moves the alias.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pspnet.config import Params
from pspnet.errors import PspnetError

log = logging.getLogger(__name__)

#: Datasets the authors released weights for -> the source module holding its class table.
DATASETS = {
    "ade20k": "pspnet.data.sources.ade20k",
    "voc": "pspnet.data.sources.voc",
    "cityscapes": "pspnet.data.sources.cityscapes",
}
#: Default alias of an imported model: ``official-<dataset>``.
ALIAS_PREFIX = "official-"
#: Model-version tags of an imported model.
TAG_SOURCE_SHA = "import.source_sha256"
TAG_IMPORT = "import.identity"


def dataset_classes(dataset: str) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """Class names and colours of ``dataset`` (one of :data:`DATASETS`), as its data source defines them."""
    import importlib

    if dataset not in DATASETS:
        raise PspnetError(f"--dataset: unknown dataset {dataset!r}; accepted: {', '.join(DATASETS)}.")
    module = importlib.import_module(DATASETS[dataset])
    return tuple(module.CLASS_NAMES), tuple(tuple(int(v) for v in c) for c in module.CLASS_COLORS)


def _find_imported(client: Any, model_name: str, identity: str) -> Any | None:
    """The version of ``model_name`` an earlier import of the same file and options made, if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{model_name}'")
    except MlflowException:
        return None
    for mv in sorted(versions, key=lambda m: int(m.version), reverse=True):
        if mv.tags.get(TAG_IMPORT) == identity:
            return mv
    return None


def _log_import_run(params: Params, root: Path, source: Path, fmt: str, dataset: str, source_sha: str, conversion: Any) -> str:
    """Open the import's MLflow run (source file, its SHA-256, the converted architecture); its id."""
    import mlflow

    from pspnet.tracking.runs import run_tags

    cfg = conversion.model_cfg
    mlflow.set_experiment(params.mlflow.experiment_name)
    with mlflow.start_run(run_name=f"import {dataset} {cfg.encoder}", tags=run_tags(root)) as run:
        mlflow.set_tags({"pspnet.imported": fmt, TAG_SOURCE_SHA: source_sha})
        mlflow.log_params({
            "import.source": source.name, "import.format": fmt, "import.dataset": dataset,
            "model.encoder": cfg.encoder, "model.stem": cfg.resolved_stem,
            "model.block_stride": cfg.block_stride, "model.aux_head": conversion.model.aux_head is not None,
            "num_classes": conversion.num_classes, "model.input_mean": list(cfg.input_mean),
            "model.input_std": list(cfg.input_std),
        })
    return run.info.run_id


def import_weights(
    params: Params,
    root: Path,
    source: Path,
    fmt: str,
    dataset: str,
    *,
    out: Path | None = None,
    alias: str | None = None,
    block_stride: str | None = None,
    allow_partial: bool = False,
) -> dict[str, Any]:
    """Convert ``source`` (format ``fmt``, trained on ``dataset``), save, log and register it.

    Returns a summary: the checkpoint path, model name / version / alias and URIs, the run id,
    the architecture found and what did not map (empty unless ``allow_partial``).
    """
    from mlflow.tracking import MlflowClient

    from pspnet.layout import Layout
    from pspnet.model.checkpoint import LoadedCheckpoint, save_checkpoint
    from pspnet.model.official import convert
    from pspnet.model.pspnet import count_parameters
    from pspnet.registry.logged_model import register_checkpoint, sha256_file
    from pspnet.tracking.store import setup_mlflow

    root = Path(root)
    source = Path(source)
    names, colors = dataset_classes(dataset)
    # The store is checked before minutes of conversion and export.
    setup_mlflow(params.mlflow, root)
    conversion = convert(source, fmt, num_classes=len(names), block_stride=block_stride, allow_partial=allow_partial)
    cfg = conversion.model_cfg
    source_sha = sha256_file(source)
    identity = f"{source_sha}:{fmt}:{dataset}:{cfg.block_stride}:{'partial' if allow_partial else 'strict'}"
    meta = {
        "class_names": list(names),
        "class_colors": [list(c) for c in colors],
        "imported_from": {"file": source.name, "sha256": source_sha, "format": fmt, "dataset": dataset},
        "unmapped_keys": conversion.unmapped,
        "missing_keys": conversion.missing,
    }
    out = Path(out) if out is not None else Layout(root, params.paths).imported / f"{dataset}-{cfg.encoder}.pt"
    save_checkpoint(out, conversion.model, cfg, conversion.num_classes, meta)
    checkpoint_sha = sha256_file(out)
    ckpt = LoadedCheckpoint(conversion.model, cfg, conversion.num_classes, meta)

    model_name = params.register_.model_name
    alias = alias or f"{ALIAS_PREFIX}{dataset}"
    client = MlflowClient()
    mv = _find_imported(client, model_name, identity)
    if mv is not None:
        log.info("reusing version %s of %s (the same file, imported with the same options)", mv.version, model_name)
        run_id = mv.run_id
    else:
        run_id = _log_import_run(params, root, source, fmt, dataset, source_sha, conversion)
        log.info("exporting the converted %s for MLflow (torch.export)", cfg.encoder)
        mv, _ = register_checkpoint(ckpt, run_id, checkpoint_sha, model_name, params,
                                    {TAG_SOURCE_SHA: source_sha, TAG_IMPORT: identity})
    version = str(mv.version)
    client.set_registered_model_alias(model_name, alias, version)
    log.info("imported %s as %s version %s (alias %r)", source, model_name, version, alias)
    return {
        "checkpoint": str(out),
        "model_name": model_name,
        "version": version,
        "alias": alias,
        "model_uri": f"models:/{model_name}@{alias}",
        "run_id": run_id,
        "encoder": cfg.encoder,
        "block_stride": cfg.block_stride,
        "num_classes": conversion.num_classes,
        "dataset": dataset,
        "parameters": count_parameters(conversion.model),
        "source_sha256": source_sha,
        "unmapped_keys": conversion.unmapped,
        "missing_keys": conversion.missing,
    }
