"""Does ``torch.compile`` give PSPNet the gradients of the eager model? One training-mode
forward + loss + backward from two identical copies, eager and compiled; prints, per
parameter, the relative gradient error and lists the parameters whose compiled gradient is zero
(or missing) where the eager one is not. Exit code 1 on a mismatch.

    python bench/compile_check.py --device cuda --encoder resnet18 --size 64 80
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pspnet.config import ModelConfig  # noqa: E402
from pspnet.model.pspnet import build_model  # noqa: E402
from pspnet.train.loss import SegmentationCriterion  # noqa: E402

#: Relative gradient error (norm of the difference over the eager norm) still called equal: float32
#: rounding differs between fused and unfused kernels, TF32 on a GPU more so.
TOLERANCE = 1e-2
NUM_CLASSES = 150


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--size", nargs=2, type=int, default=[64, 80], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    eager = build_model(ModelConfig(encoder=args.encoder, dropout=0.0), NUM_CLASSES).to(device).train()
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin)
    criterion = SegmentationCriterion(0.4).to(device)
    image = torch.randn(args.batch, 3, *args.size, device=device)
    mask = torch.randint(0, NUM_CLASSES, (args.batch, *args.size), device=device)
    losses = []
    for model in (eager, compiled):
        loss = criterion(model(image), mask)
        loss.backward()
        losses.append(loss.item())
    lost, errors = [], {}
    for (name, p), q in zip(eager.named_parameters(), twin.parameters(), strict=True):
        if p.grad is None or p.grad.abs().max() == 0:
            continue
        if q.grad is None or q.grad.abs().max() == 0:
            lost.append(name)
            continue
        errors[name] = float((p.grad - q.grad).norm() / p.grad.norm())
    worst = sorted(errors.items(), key=lambda kv: -kv[1])[:5]
    print(f"torch {torch.__version__} on {device}: loss eager {losses[0]:.6f}, compiled {losses[1]:.6f}")
    print(f"parameters with a gradient: {len(errors) + len(lost)}; compiled gradient zero or missing: {len(lost)} {lost[:5]}")
    print(f"largest relative gradient errors: {worst}")
    ok = not lost and all(e <= TOLERANCE for e in errors.values())
    print("compiled gradients MATCH the eager ones" if ok else "compiled gradients DIFFER from the eager ones")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
