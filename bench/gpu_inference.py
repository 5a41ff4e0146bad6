"""GPU inference figures of the registered network (PSPNet-R50, raw RGB in, logits out): images/s
and p50 / p99 latency per precision, layout and runtime, at 360x480 and 713x713, batch 1 and 8,
plus the paper's multi-scale + flip protocol.

Variants: PyTorch eager fp32 (cuDNN's TF32 as PyTorch ships it), eager bf16 autocast, bf16 +
channels_last, the ``torch.export`` program ``register`` logs (fp32), and ``torch.compile`` of
the bf16 channels_last model (batch 1 only: one compilation per size). Each run is timed from
launch to ``torch.cuda.synchronize``; the image is already on the GPU (no host copy), the class
map is the argmax on the GPU. Every variant's class map is compared with eager fp32's.

No MLflow, DVC or Prefect import (a GPU box needs torch, numpy, pyyaml and pydantic only)::

    python bench/gpu_inference.py --out gpu-inference.json            # H200: about 4 minutes
    python bench/gpu_inference.py --out /tmp/x.json --smoke           # tiny, any device
    python bench/gpu_inference.py --render gpu-inference.json --markdown gpu-inference.md
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import percentile  # noqa: E402
from pspnet import atomic_files  # noqa: E402
from pspnet.config import ModelConfig  # noqa: E402
from pspnet.evaluate.multiscale import predict_scores  # noqa: E402
from pspnet.model.export import SegmentationModel, export_program  # noqa: E402
from pspnet.model.normalize import normalize  # noqa: E402
from pspnet.model.pspnet import build_model  # noqa: E402

NUM_CLASSES = 150  # ADE20K, as the other benchmark sections
PAPER_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
#: (height, width) the export is traced at: neither measured size.
TRACE_SIZE = (64, 96)
FULL = {"sizes": [(360, 480), (713, 713)], "batches": [1, 8], "warmup": 5, "timed": {1: 50, 8: 20}, "msflip_runs": 10,
        "encoder": "resnet50", "stem": "deep"}  # fmt: skip
SMOKE = {"sizes": [(40, 56)], "batches": [1, 2], "warmup": 1, "timed": {1: 3, 2: 2}, "msflip_runs": 1,
         "encoder": "resnet18", "stem": "auto"}  # fmt: skip


def timed(run: Callable[[], torch.Tensor], warmup: int, runs: int, device: torch.device) -> tuple[list[float], torch.Tensor]:
    """Milliseconds of each of ``runs`` calls after ``warmup`` ones, and the last output."""
    out = None
    for _ in range(warmup):
        out = run()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    if device.type == "cuda":  # the peak of the timed runs, not of cuDNN's algorithm search in the warm-up
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = run()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return times, out


def summary(times_ms: list[float], batch: int) -> dict[str, Any]:
    p50 = statistics.median(times_ms)
    return {"runs": len(times_ms), "p50_ms": p50, "p99_ms": percentile(times_ms, 99), "min_ms": min(times_ms),
            "images_per_s": batch * 1000 / p50}  # fmt: skip


def variants(model: SegmentationModel, device: torch.device, compile_ok: bool) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """``raw RGB (N, 3, H, W) on device -> class map`` per variant."""
    program = export_program(model.cpu(), TRACE_SIZE).module().to(device)
    model.to(device)
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    bf16 = torch.autocast(device.type, dtype=torch.bfloat16)

    def eager(x: torch.Tensor) -> torch.Tensor:
        return model(x).argmax(1)

    def eager_bf16(x: torch.Tensor) -> torch.Tensor:
        with bf16:
            return model(x).argmax(1)

    def bf16_cl(x: torch.Tensor) -> torch.Tensor:
        with bf16:
            return channels_last(x.contiguous(memory_format=torch.channels_last)).argmax(1)

    out = {"eager_fp32": eager, "eager_bf16": eager_bf16, "bf16_channels_last": bf16_cl,
           "torch_export_fp32": lambda x: program(x).argmax(1)}  # fmt: skip
    if compile_ok:
        compiled = torch.compile(channels_last)

        def compiled_bf16(x: torch.Tensor) -> torch.Tensor:
            with bf16:
                return compiled(x.contiguous(memory_format=torch.channels_last)).argmax(1)

        out["compile_bf16_channels_last"] = compiled_bf16
    return out


def measure(settings: dict[str, Any], device: torch.device, out_path: Path) -> dict[str, Any]:
    cfg = ModelConfig(encoder=settings["encoder"], stem=settings["stem"], output_stride=8)
    torch.manual_seed(0)
    model = SegmentationModel(build_model(cfg, NUM_CLASSES).eval(), cfg.input_mean, cfg.input_std)
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "torch": torch.__version__, "settings": {**settings, "timed": {str(k): v for k, v in settings["timed"].items()}},
                              "network": f"PSPNet {settings['encoder']} ({settings['stem']} stem), output stride 8, {NUM_CLASSES} classes",
                              "rows": [], "msflip": [], "errors": []}  # fmt: skip
    runners = variants(model, device, compile_ok=device.type == "cuda")
    with torch.inference_mode():
        for h, w in settings["sizes"]:
            for batch in settings["batches"]:
                x = torch.randint(0, 256, (batch, 3, h, w), generator=torch.Generator().manual_seed(0)).float().to(device)
                reference = None
                for name, run in runners.items():
                    if name.startswith("compile") and batch != 1:
                        continue
                    try:
                        times, maps = timed(lambda: run(x), settings["warmup"], settings["timed"][batch], device)
                    except Exception as err:  # noqa: BLE001 - a variant that fails is reported, the rest still run
                        result["errors"].append({"variant": name, "size": [h, w], "batch": batch,
                                                 "error": f"{type(err).__name__}: {str(err)[:400]}"})  # fmt: skip
                        traceback.print_exc()
                        continue
                    reference = maps if reference is None else reference
                    row = {"variant": name, "size": [h, w], "batch": batch, **summary(times, batch),
                           "agreement_vs_eager_fp32": float((maps == reference).float().mean()),
                           "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}  # fmt: skip
                    result["rows"].append(row)
                    print(f"{h}x{w} b{batch} {name}: {row['images_per_s']:.1f} img/s, p50 {row['p50_ms']:.2f} ms, "
                          f"p99 {row['p99_ms']:.2f} ms, agreement {row['agreement_vs_eager_fp32']:.5f}", flush=True)  # fmt: skip
                    atomic_files.write_json(out_path, result)
        result["msflip"] = msflip(model, device, settings)
    atomic_files.write_json(out_path, result)
    return result


def msflip(model: SegmentationModel, device: torch.device, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper's protocol (6 scales x flip, probabilities averaged) at the first size, batch 1."""
    h, w = settings["sizes"][0]
    x = torch.randint(0, 256, (1, 3, h, w), generator=torch.Generator().manual_seed(1)).float().to(device)
    normalized = normalize(x, model.mean, model.std)
    cfg = argparse.Namespace(mode="whole", batch_size=1, crop_size=(h, w), stride_rate=2 / 3, flip=True,
                             scales=PAPER_SCALES, base_size=None)  # fmt: skip
    rows = []
    for name, dtype in [("fp32", None), ("bf16", torch.bfloat16)]:
        def run() -> torch.Tensor:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                return predict_scores(model.net, normalized, cfg).argmax(1)

        times, _ = timed(run, 1, settings["msflip_runs"], device)
        rows.append({"precision": name, "size": [h, w], "passes": 2 * len(PAPER_SCALES), **summary(times, 1)})
        print(f"MS+flip {name} {h}x{w}: p50 {rows[-1]['p50_ms']:.1f} ms", flush=True)
    return rows


def render(data: dict[str, Any]) -> str:
    lines = [f"# GPU inference: {data['network']}", "",
             f"Device: {data['device']}, torch {data['torch']}. Generated by `python bench/gpu_inference.py` "
             "(the image already on the GPU; each run timed to `torch.cuda.synchronize`; the class map is the "
             "argmax on the GPU; agreement: share of pixels with eager fp32's class).", "",
             "| size | batch | variant | images/s | p50 ms | p99 ms | runs | agreement | peak MiB |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in data["rows"]:
        mem = f"{r['peak_memory_mib']:.0f}" if r.get("peak_memory_mib") is not None else "n/a"
        lines.append(f"| {r['size'][0]}x{r['size'][1]} | {r['batch']} | {r['variant']} | {r['images_per_s']:.1f} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['runs']} | {r['agreement_vs_eager_fp32']:.5f} | {mem} |")  # fmt: skip
    lines += ["", "Multi-scale + flip (the paper's 6 scales, each also mirrored, probabilities averaged), batch 1:", "",
              "| size | precision | passes | p50 ms | p99 ms | runs |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in data["msflip"]:
        lines.append(f"| {r['size'][0]}x{r['size'][1]} | {r['precision']} | {r['passes']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['runs']} |")
    for e in data["errors"]:
        lines.append(f"\nFailed: {e['variant']} at {e['size']} batch {e['batch']}: {e['error']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and network, any device: checks the script")
    parser.add_argument("--render", type=Path, help="a JSON this script wrote: write its Markdown to --markdown")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    if args.render:
        atomic_files.write_text(args.markdown, render(json.loads(args.render.read_text())))
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    data = measure(SMOKE if args.smoke else FULL, device, args.out)
    print(render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
