"""Resume checkpoints: the whole training state, saved every ``train.checkpoint_every_n_steps``
steps so that a crash, a kill or a preemption costs at most that many steps.

A state file (``<models>/train_state/step-<global step>.pt``) holds everything the next step
depends on, so a resumed run continues bit for bit (on the CPU) where the saved one was:

- model, optimizer (SGD momentum buffers) and LR scheduler state dicts, and the fp16 gradient
  scaler's (its current scale and growth tracker; ``None`` for fp32 / bf16, which need none);
- the RNG states of torch (CPU and CUDA), NumPy and Python (dropout draws from torch's);
- the position: epoch, batches done in it, global step (the sample order and augmentation are
  a function of the position: :mod:`pspnet.train.sampling`), and the epoch's running sums. A
  batch is one optimizer step, all its accumulated micro-batches included
  (``train.accumulate_steps``), so a state never holds a partial accumulation;
- the finished epochs' statistics, the MLflow run id (the resumed run logs into the same run);
- a fingerprint of what the run trains on (model and train parameters, the train sample ids,
  the data version): a state from another configuration is never resumed.

Files are written atomically (:func:`pspnet.atomic_files.atomic_path`) and only the newest
``train.keep_checkpoints`` are kept; a state that fails to load falls back to the one before.
Every file is plain tensors and JSON-like values, read with ``torch.load(weights_only=True)``.
The folder is removed when training finishes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pspnet import atomic_files
from pspnet.config import Params

log = logging.getLogger(__name__)

STATE_DIR = "train_state"
STATE_FORMAT = "pspnet-train-state"
STATE_VERSION = 1
_STATE_NAME = re.compile(r"step-(\d+)\.pt")
#: ``train.*`` fields that do not change what is computed, so a state saved under other values
#: of them still resumes (where to run, how often to save, log or score the learning curve, how
#: many loader workers, and how the same arithmetic is laid out and scheduled on the hardware:
#: memory order, compilation, cuDNN kernel choice, activation recomputation). Precision and
#: ``accumulate_steps`` do change it, so they are part of the fingerprint.
NON_NUMERIC_TRAIN_FIELDS = frozenset(
    {
        "device", "num_workers", "log_every_n_steps", "checkpoint_every_n_steps", "keep_checkpoints", "resume",
        "channels_last", "compile", "cudnn_benchmark", "grad_checkpoint", "nproc_per_node",
        "curve_every_n_epochs", "curve_images",
    }
)  # fmt: skip


def fingerprint_fields(
    params: Params, sample_ids: list[str], data_version: str | None, world_size: int = 1
) -> dict[str, Any]:
    """What a resumable state must agree on, flattened (``model.*``, ``train.*``, data, and the
    number of data-parallel processes, which sets how many images a step sees)."""
    fields = {f"model.{k}": v for k, v in params.model.model_dump(mode="json").items()}
    fields |= {
        f"train.{k}": v for k, v in params.train.model_dump(mode="json").items() if k not in NON_NUMERIC_TRAIN_FIELDS
    }
    fields["data.ignore_index"] = params.data.ignore_index
    fields["data.version"] = data_version
    fields["data.train_ids"] = hashlib.sha256("\n".join(sample_ids).encode()).hexdigest()
    if world_size != 1:  # absent for one process: states saved before distributed training still match
        fields["distributed.world_size"] = world_size
    return fields


def fingerprint(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# RNG states (as tensors and lists: loadable with weights_only=True)
# --------------------------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """The global RNG states of torch (CPU, every CUDA device), NumPy and Python."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }  # fmt: skip


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the states :func:`capture_rng` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


# --------------------------------------------------------------------------------------------
# The state folder
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedState:
    """A state read back: its file and its payload (see :meth:`StateStore.save`)."""

    path: Path
    payload: dict[str, Any]

    @property
    def global_step(self) -> int:
        return int(self.payload["position"]["global_step"])


class StateStore:
    """The resume checkpoints of one project (``<models>/train_state``)."""

    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def files(self) -> list[Path]:
        """State files, newest (highest step) first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _STATE_NAME.fullmatch(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def save(self, payload: dict[str, Any], global_step: int) -> Path:
        """Write ``payload`` as the state at ``global_step`` (atomically), then drop the oldest."""
        path = self.directory / f"step-{global_step:09d}.pt"
        with atomic_files.atomic_path(path) as tmp:
            torch.save({"format": STATE_FORMAT, "version": STATE_VERSION, **payload}, tmp)
        for old in self.files()[self.keep :]:
            old.unlink(missing_ok=True)
        return path

    def remove_partial_writes(self) -> None:
        """Delete temp files a killed save left behind (``.step-*.pt.*``)."""
        if self.directory.is_dir():
            for leftover in self.directory.glob(".step-*"):
                leftover.unlink(missing_ok=True)

    def latest(self, expected: dict[str, Any]) -> SavedState | None:
        """The newest readable state of the configuration ``expected`` (fingerprint fields).

        States that cannot be read are skipped (the one before is tried); a readable state of
        another configuration stops the search: the folder belongs to another run, which this
        one replaces (the log says which fields differ).
        """
        wanted = fingerprint(expected)
        for path in self.files():
            try:
                payload = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # torch raises many types for a damaged file
                log.warning("resume: skipping %s, which cannot be read (%s)", path, str(err).splitlines()[0] if str(err) else err)
                continue
            if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT or payload.get("version") != STATE_VERSION:
                log.warning("resume: skipping %s: not a version-%d %s file", path, STATE_VERSION, STATE_FORMAT)
                continue
            if payload.get("fingerprint") != wanted:
                saved = payload.get("fingerprint_fields", {})
                differ = sorted(k for k in expected.keys() | saved.keys() if expected.get(k) != saved.get(k))
                log.warning(
                    "resume: not resuming from %s: it was saved by a run with other settings or data (%s); "
                    "training starts from scratch and replaces it", path, ", ".join(differ) or "unknown",
                )  # fmt: skip
                return None
            return SavedState(path, payload)
        return None

    def clear(self) -> None:
        """Remove every state file (training finished)."""
        for path in self.files():
            path.unlink(missing_ok=True)
        self.remove_partial_writes()
        if self.directory.is_dir() and not any(self.directory.iterdir()):
            self.directory.rmdir()
