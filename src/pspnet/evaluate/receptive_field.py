"""Effective receptive field (ERF, Luo et al., NeurIPS 2016): how far an output pixel really looks.

The theoretical receptive field of a dilated ResNet covers the whole frame, but the gradient of
an output position with respect to the input falls off fast (roughly Gaussian), so most of what
decides a pixel's class lies close to it. The ERF map here is that gradient: ``|d logits(centre)
/ d input|`` summed over colour channels, normalised to unit mass per image and averaged over
images. Its summary is the radius around the centre holding a given share of the mass
(:meth:`ReceptiveField.radius`), and the share lying beyond a distance
(:meth:`ReceptiveField.mass_beyond`): what a cue that far away can at most contribute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

#: Shares of the gradient mass whose radii summarise a map (``r50``, ``r95``).
SUMMARY_SHARES = (0.5, 0.95)


@dataclass(frozen=True)
class ReceptiveField:
    """An ERF map: ``weights`` float64 ``(H, W)`` summing to 1, measured at output ``centre`` (row, col)."""

    weights: np.ndarray
    centre: tuple[int, int]

    def distances(self) -> np.ndarray:
        """Euclidean distance in pixels of every input pixel from the centre pixel, ``(H, W)``."""
        rows, cols = np.indices(self.weights.shape)
        return np.hypot(rows - self.centre[0], cols - self.centre[1])

    def radius(self, share: float) -> float:
        """Smallest distance ``r`` such that pixels within ``r`` of the centre hold ``share`` of the mass."""
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        distances = self.distances().ravel()
        order = np.argsort(distances, kind="stable")
        cumulative = np.cumsum(self.weights.ravel()[order])
        index = min(int(np.searchsorted(cumulative, share * cumulative[-1])), order.size - 1)
        return float(distances[order[index]])

    def mass_beyond(self, distance: float) -> float:
        """Share of the gradient mass farther than ``distance`` pixels from the centre."""
        return float(self.weights[self.distances() > distance].sum())

    def summary(self) -> dict[str, float | list[int]]:
        """``{"r50": ..., "r95": ..., "height", "width", "centre"}``, radii in pixels."""
        out: dict[str, float | list[int]] = {f"r{round(s * 100)}": round(self.radius(s), 2) for s in SUMMARY_SHARES}
        out.update(height=int(self.weights.shape[0]), width=int(self.weights.shape[1]), centre=list(self.centre))
        return out


def effective_receptive_field(
    model: nn.Module, images: torch.Tensor, centre: tuple[int, int] | None = None, batch_size: int | None = None
) -> ReceptiveField:
    """The ERF of ``model`` at output position ``centre`` (default: the middle), over ``images``.

    ``images`` float32 ``(N, 3, H, W)``, normalised as the model expects; ``model`` maps them to
    logits ``(N, K, H, W)`` (it is put in eval mode and left there; its weights get no gradient).
    They go through in chunks of ``batch_size`` (default: all at once). Each image's map is
    normalised to unit mass before averaging, so every image counts equally; an image whose
    gradient is zero everywhere is skipped.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, 3, H, W), got shape {tuple(images.shape)}")
    height, width = images.shape[-2:]
    row, col = centre if centre is not None else (height // 2, width // 2)
    if not (0 <= row < height and 0 <= col < width):
        raise ValueError(f"centre {(row, col)} lies outside the {height}x{width} input")
    model.eval()
    maps = []
    for chunk in images.split(batch_size or len(images)):
        inputs = chunk.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(inputs)
            (grad,) = torch.autograd.grad(logits[:, :, row, col].sum(), inputs)
        per_image = grad.abs().sum(dim=1).double()  # (n, H, W)
        mass = per_image.flatten(1).sum(dim=1)
        maps.append(per_image[mass > 0] / mass[mass > 0].view(-1, 1, 1))
    kept = torch.cat(maps)
    if kept.shape[0] == 0:
        raise ValueError("the output at the centre does not depend on the input (zero gradient on every image)")
    return ReceptiveField(kept.mean(dim=0).cpu().numpy(), (int(row), int(col)))
