"""Inference runtimes side by side: the registered network (raw RGB -> logits, class map by
argmax) on PyTorch eager, as the ``torch.export`` program ``register`` logs, and as the ONNX
graph it logs beside it (ONNX Runtime, CPU, its default graph optimisations: BN folding, conv
fusion) in float32 and quantised to int8, at each size, batch 1, the runtimes interleaved
round by round.
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.timing import Progress, figure, latency_figure, ratio
from pspnet.config import ModelConfig
from pspnet.model.export import SegmentationModel, export_program
from pspnet.model.onnx_export import export_onnx, onnx_session, quantize_int8, run_onnx
from pspnet.model.pspnet import build_model

#: Runtimes in the order of the report; ``eager`` is the one every ratio divides by.
RUNTIMES = ("eager", "torch_export", "onnxruntime", "onnxruntime_int8")
#: Random images the int8 graph's activation ranges are measured on: the network's weights are
#: random too, so int8 is timed here; its accuracy cost is measured on real data (docs/registry.md).
CALIBRATION_IMAGES = 4
#: Classes of the benchmarked network (ADE20K's 150, as the other sections).
NUM_CLASSES = 150
#: (height, width) the exported graphs are traced at: neither benchmarked size.
TRACE_SIZE = (64, 96)


def _network(settings: dict[str, Any]) -> SegmentationModel:
    cfg = ModelConfig(encoder=settings["encoder"], stem=settings["stem"], output_stride=8)
    torch.manual_seed(0)
    net = build_model(cfg, NUM_CLASSES).eval()
    return SegmentationModel(net, cfg.input_mean, cfg.input_std)


def _runners(model: SegmentationModel, work: Path) -> tuple[dict[str, Any], dict[str, float]]:
    """One ``images (N, 3, H, W) float32 -> class map`` callable per runtime, and export seconds."""
    started = time.perf_counter()
    program = export_program(model, TRACE_SIZE).module()
    export_s = {"torch_export": time.perf_counter() - started}
    started = time.perf_counter()
    graph = export_onnx(model, work / "network.onnx", TRACE_SIZE)
    session = onnx_session(graph, threads=torch.get_num_threads())
    export_s["onnxruntime"] = time.perf_counter() - started
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    calibration = [rng.integers(0, 256, (1, 3, *TRACE_SIZE)).astype(np.float32) for _ in range(CALIBRATION_IMAGES)]
    int8 = onnx_session(quantize_int8(graph, work / "network-int8.onnx", calibration), threads=torch.get_num_threads())
    export_s["onnxruntime_int8"] = time.perf_counter() - started

    def torch_runner(net: Any) -> Any:
        def run(images: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return net(torch.from_numpy(images)).argmax(1).numpy()

        return run

    runners = {
        "eager": torch_runner(model),
        "torch_export": torch_runner(program),
        "onnxruntime": lambda images: run_onnx(session, images).argmax(1),
        "onnxruntime_int8": lambda images: run_onnx(int8, images).argmax(1),
    }
    return runners, export_s


def runtimes(settings: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Images/s and latency per runtime and size, same-run ratios against eager, and how far
    the exported graphs' class maps are from eager's."""
    model = _network(settings)
    out: dict[str, Any] = {"settings": {**settings, "batch": 1, "precision": "fp32", "trace_size": list(TRACE_SIZE),
                                        "threads": torch.get_num_threads()}, "sizes": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="pspnet-bench-onnx-") as tmp:
        progress.step("exporting (torch.export, ONNX)", 0.0)
        runners, out["export_seconds"] = _runners(model, Path(tmp))
        sizes = [tuple(s) for s in settings["sizes"]]
        rounds = settings["warmup_runs"] + settings["timed_runs"]
        total, done = len(sizes) * rounds * len(RUNTIMES), 0
        for h, w in sizes:
            image = np.random.default_rng(0).integers(0, 256, (1, 3, h, w)).astype(np.float32)
            maps = {name: run(image) for name, run in runners.items()}
            times: dict[str, list[float]] = {name: [] for name in RUNTIMES}
            for r in range(rounds):
                for name in RUNTIMES if r % 2 == 0 else RUNTIMES[::-1]:
                    progress.step(f"{h}x{w} {name} {r + 1}/{rounds}", 0.1 + 0.9 * done / total)
                    start = time.perf_counter()
                    runners[name](image)
                    if r >= settings["warmup_runs"]:
                        times[name].append(time.perf_counter() - start)
                    done += 1
            rates = {name: figure([1 / t for t in times[name]], "images/s") for name in RUNTIMES}
            out["sizes"][f"{h}x{w}"] = {
                "images_per_s": rates,
                "latency_ms": {name: latency_figure([t * 1000 for t in times[name]]) for name in RUNTIMES},
                "ratio_vs_eager": {name: ratio(rates[name], rates["eager"], paired=True) for name in RUNTIMES[1:]},
                "class_agreement_vs_eager": {name: float((maps[name] == maps["eager"]).mean()) for name in RUNTIMES[1:]},
            }
    runners.clear()
    gc.collect()
    return out
