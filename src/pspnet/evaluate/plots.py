"""Evaluation figures as PNG files: confusion matrix, training and learning curves, receptive
fields, prediction overlays.

Image plots rather than DVC's Vega plots because ``dvc plots show`` loads Vega from a CDN and
renders blank offline, while PNGs show anywhere. Figures use matplotlib's object API on an
Agg canvas (no pyplot, no GUI backend, no global figure state), and every file is written
through :func:`pspnet.atomic_files.atomic_path`, so a reader never sees half a PNG.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Patch

from pspnet import atomic_files
from pspnet.evaluate.receptive_field import ReceptiveField

log = logging.getLogger(__name__)

#: Annotate confusion-matrix cells with their value up to this many classes.
_MAX_ANNOTATED_CLASSES = 20
#: Class-label font size (points) of the confusion matrix; above _LABEL_FONT_BUDGET / size
#: classes it shrinks to fit, down to _MIN_LABEL_FONT_SIZE.
_LABEL_FONT_SIZE = 10.0
_MIN_LABEL_FONT_SIZE = 3.0
_LABEL_FONT_BUDGET = 450.0


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically; returns ``path``."""
    path = Path(path)
    with atomic_files.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_message(path: str | Path, title: str, message: str) -> Path:
    """A PNG that only says why the real figure is missing (keeps declared outputs present)."""
    fig = _new_figure(6, 2.5)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes)
    return save_figure(fig, path)


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: str | Path, title: str | None = None) -> Path:
    """Row-normalised confusion matrix heatmap (row: ground truth, column: prediction).

    Each row shows where the pixels of one true class went (the diagonal is that class's
    accuracy); a class with no ground-truth pixels has an empty (all-zero) row.
    """
    m = np.asarray(matrix, dtype=np.float64)
    n = len(class_names)
    if m.shape != (n, n):
        raise ValueError(f"confusion matrix shape {m.shape} does not match {n} class names")
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)

    side = min(max(4.0, 0.55 * n + 2.5), 30.0)
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true-class pixels")
    # Many classes (ADE20K's 150) get smaller labels so that the matrix keeps its room.
    fontsize = min(_LABEL_FONT_SIZE, max(_MIN_LABEL_FONT_SIZE, _LABEL_FONT_BUDGET / n))
    ax.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right", rotation_mode="anchor", fontsize=fontsize)
    ax.set_yticks(range(n), labels=list(class_names), fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "Confusion matrix (row-normalised)")
    if n <= _MAX_ANNOTATED_CLASSES:
        for i in range(n):
            for j in range(n):
                if rows[i, 0] > 0:
                    value = norm[i, j]
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if value > 0.5 else "black")
    return save_figure(fig, path)


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(frame[column], errors="coerce")


def plot_learning_curve(curve_csv: str | Path, path: str | Path, title: str = "Learning curve") -> Path:
    """mIoU of each scored split (``train_curve.csv``'s columns after ``train_minutes``) against
    training minutes; ``*_raw`` columns (the weights before averaging) dashed."""
    curve_csv = Path(curve_csv)
    try:
        frame = pd.read_csv(curve_csv)
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError):
        return plot_message(path, title, f"no learning curve ({curve_csv.name} missing or empty)")
    splits = [str(c) for c in frame.columns if c not in ("epoch", "train_minutes")]
    if frame.empty or not splits:
        return plot_message(path, title, f"no learning curve in {curve_csv.name} (train.curve_every_n_epochs is 0)")
    fig = _new_figure(7, 4)
    ax = fig.add_subplot()
    for split in splits:
        ax.plot(frame["train_minutes"], _numeric(frame, split), marker="o", label=split,
                linestyle="--" if split.endswith("_raw") else "-")
    ax.set_xlabel("training minutes")
    ax.set_ylabel("mIoU")
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return save_figure(fig, path)


def plot_receptive_fields(fields: Mapping[str, ReceptiveField], path: str | Path, title: str = "Effective receptive field") -> Path:
    """One panel per model: log10 of its ERF map, with circles at the radii holding 50% and 95%
    of the gradient mass (:mod:`pspnet.evaluate.receptive_field`)."""
    fig = _new_figure(4.2 * max(1, len(fields)), 3.8)
    axes = fig.subplots(1, max(1, len(fields)), squeeze=False)[0]
    for ax, (name, field) in zip(axes, fields.items(), strict=False):
        floor = field.weights[field.weights > 0].min() if (field.weights > 0).any() else 1e-12
        image = ax.imshow(np.log10(np.maximum(field.weights, floor)), cmap="magma")
        fig.colorbar(image, ax=ax, shrink=0.8, label="log10 share of gradient")
        for share, style in ((0.5, ":"), (0.95, "-")):
            radius = field.radius(share)
            ax.add_patch(Circle(field.centre[::-1], radius, fill=False, color="cyan", linestyle=style))
        ax.plot(field.centre[1], field.centre[0], "c+")
        ax.set_title(f"{name}: r50 {field.radius(0.5):.0f} px, r95 {field.radius(0.95):.0f} px", fontsize=9)
        ax.set_axis_off()
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_training_curve(history_csv: str | Path, path: str | Path) -> Path:
    """Loss (every ``*loss*`` column) and learning rate (``lr`` / ``lr*`` columns) against the step.

    The x axis is ``step`` when present, else ``epoch``, else the row number; other columns are
    ignored, except ``val_*`` ones, which get a third panel. A missing or empty history gives a
    PNG saying so instead of an error.
    """
    history_csv = Path(history_csv)
    if not history_csv.is_file():
        return plot_message(path, "Training curve", f"no training history ({history_csv.name} not found)")
    try:
        frame = pd.read_csv(history_csv)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        log.warning("cannot read %s: %s", history_csv, err)
        return plot_message(path, "Training curve", f"{history_csv.name} is empty or unreadable")
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    x_name = next((c for c in ("step", "epoch") if c in columns), None)
    x = _numeric(frame, x_name) if x_name else pd.Series(np.arange(len(frame)), dtype=float)
    loss_cols = [c for c in columns if "loss" in c.lower() and _numeric(frame, c).notna().any()]
    lr_cols = [c for c in columns if c.lower().startswith("lr") and _numeric(frame, c).notna().any()]
    val_cols = [c for c in columns if c.lower().startswith("val_") and "loss" not in c.lower()
                and _numeric(frame, c).notna().any()]
    if not loss_cols and not lr_cols:
        return plot_message(path, "Training curve", f"{history_csv.name} has no loss or lr column")

    panels = [(cols, label) for cols, label in ((loss_cols, "loss"), (lr_cols, "learning rate"), (val_cols, "validation"))
              if cols]
    fig = _new_figure(8, 2.6 * len(panels) + 0.4)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (cols, label) in zip(axes, panels):
        for col in cols:
            y = _numeric(frame, col)
            ok = y.notna() & x.notna()
            ax.plot(x[ok].to_numpy(), y[ok].to_numpy(), label=col, marker="." if ok.sum() < 30 else None)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if label == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        if len(cols) > 1 or label == "validation":
            ax.legend(fontsize=8)
    axes[-1].set_xlabel(x_name or "row")
    fig.suptitle("Training curve")
    return save_figure(fig, path)


def colorize(mask: np.ndarray, colors: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """``(H, W)`` class ids -> ``(H, W, 3)`` uint8 RGB; ``ignore_index`` (and any unknown id) is black."""
    mask = np.asarray(mask)
    palette = np.zeros((max(256, len(colors), int(mask.max(initial=0)) + 1), 3), dtype=np.uint8)
    palette[: len(colors)] = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    if 0 <= ignore_index < len(palette):
        palette[ignore_index] = 0
    return palette[np.clip(mask, 0, len(palette) - 1).astype(np.int64)]


def blend(image: np.ndarray, mask: np.ndarray, colors: Sequence[Sequence[int]], ignore_index: int = 255,
          alpha: float = 0.5) -> np.ndarray:
    """Class colours over ``image`` ``(H, W, 3)`` uint8 with opacity ``alpha``; ignored pixels solid black."""
    image = np.asarray(image, dtype=np.float64)
    mask = np.asarray(mask)
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
    out = (1.0 - alpha) * image + alpha * colorize(mask, colors, ignore_index).astype(np.float64)
    out[mask == ignore_index] = 0.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def plot_overlay(
    image: np.ndarray,
    target: np.ndarray,
    pred: np.ndarray,
    class_names: Sequence[str],
    colors: Sequence[Sequence[int]],
    path: str | Path,
    ignore_index: int = 255,
    alpha: float = 0.5,
    title: str | None = None,
) -> Path:
    """Side by side: the image, ground truth over it, prediction over it (alpha-blended class
    colours; ignored pixels black), with a legend of the classes that appear."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    height, width = image.shape[:2]
    panels = (
        ("image", image),
        ("ground truth", blend(image, target, colors, ignore_index, alpha)),
        ("prediction", blend(image, pred, colors, ignore_index, alpha)),
    )
    panel_w = 4.0
    panel_h = panel_w * height / max(width, 1)
    fig = _new_figure(3 * panel_w, panel_h + 1.4)
    axes = fig.subplots(1, 3)
    for ax, (name, picture) in zip(axes, panels):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(name)
        ax.set_axis_off()
    present = sorted({int(v) for v in np.unique(np.concatenate([np.ravel(target), np.ravel(pred)]))
                      if 0 <= int(v) < len(class_names)})
    handles = [Patch(facecolor=np.asarray(colors[c]) / 255.0, edgecolor="none", label=class_names[c]) for c in present]
    if np.any(np.asarray(target) == ignore_index):
        handles.append(Patch(facecolor="black", label="ignore"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
