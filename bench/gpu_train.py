"""GPU figures of PSPNet-R50 training and inference, with torchvision's DeepLabV3-R50 as the peer.

Measures, on one CUDA device (or the CPU, tiny, to check the script):

- training step (forward + loss + backward + SGD step, through the library's
  :func:`pspnet.train.loop.train_one_epoch`) images/s and peak memory
  (``torch.cuda.max_memory_allocated``) per precision / layout / compilation variant and batch
  size: the median of the timed steps after the warm-up ones, each step ended by a device
  synchronisation;
- model FLOPs per image counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions
  and matrix products, 2 FLOPs per multiply-add): the forward pass in training mode (aux head
  included), and forward + backward as the counter sees them (training FLOPs); achieved FLOP/s
  and the model FLOP utilisation (MFU) against the card's dense peak and against a matrix
  product measured on the card in the same run;
- inference images/s (eval mode, single scale, logits at input size) at 480x360;
- the same for torchvision's ``deeplabv3_resnet50`` (output stride 8, aux head) at equal input.

No MLflow, DVC or Prefect import: it needs torch, torchvision, pydantic and
segmentation-models-pytorch (for the encoder) only.

    python bench/gpu_train.py --phase eager --out eager.json      # H100: about 8 minutes
    python bench/gpu_train.py --phase compile --out compile.json  # H100: about 90 s a row
    python bench/gpu_train.py --render eager.json compile.json --merged gpu.json --markdown gpu.md
    python bench/gpu_train.py --out /tmp/x.json --smoke # tiny, any device: checks the script
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pspnet import atomic_files
from pspnet.config import ModelConfig, TrainConfig  # noqa: E402
from pspnet.model.pspnet import build_model, count_parameters  # noqa: E402
from pspnet.train.accel import checkpoint_blocks, configure_cudnn, make_scaler, memory_format  # noqa: E402
from pspnet.train.loop import EpochPlan, TrainStep, train_one_epoch  # noqa: E402
from pspnet.train.loss import SegmentationCriterion  # noqa: E402
from pspnet.train.optim import build_optimizer, build_scheduler  # noqa: E402

NUM_CLASSES = 150  # ADE20K
IGNORE_INDEX = 255
AUX_WEIGHT = 0.4
#: Dense (no sparsity) tensor-core peaks of an H100 SXM5 80GB, TFLOP/s, from NVIDIA's H100
#: datasheet (nvidia.com/en-us/data-center/h100, "H100 SXM": BF16 1,979 and TF32 989 with
#: sparsity, i.e. half that dense; FP32 non-tensor 67).
DATASHEET_PEAKS_TFLOPS = {
    "NVIDIA H100 80GB HBM3": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "NVIDIA H200": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
}
#: Side of the square matrices of the measured matrix-product peak.
MATMUL_SIZE = 8192
#: Input batches kept on the device and cycled through (random data, never zeros).
RESIDENT_BATCHES = 2


@dataclass(frozen=True)
class Variant:
    """One training configuration: precision, memory layout, compilation, recomputation."""

    name: str
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    grad_checkpoint: bool = False
    #: Micro-batches per optimizer step (the loader batch is ``batch * accumulate``).
    accumulate: int = 1


VARIANTS = {
    v.name: v
    for v in (
        Variant("fp32"),
        Variant("bf16", "bf16"),
        Variant("bf16+cl", "bf16", channels_last=True),
        Variant("bf16+cl+compile", "bf16", channels_last=True, compile=True),
        Variant("bf16+cl+gc", "bf16", channels_last=True, grad_checkpoint=True),
        Variant("bf16+cl+acc2", "bf16", channels_last=True, accumulate=2),
        Variant("fp16+cl", "fp16", channels_last=True),
    )
}


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class DeepLabPeer(nn.Module):
    """torchvision's DeepLabV3-ResNet50 (output stride 8, aux FCN head on layer3), returning
    ``(logits, aux)`` in training and logits in eval, like :class:`pspnet.model.pspnet.PSPNet`."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        from torchvision.models.segmentation import deeplabv3_resnet50

        self.net = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=True)
        self.encoder = self.net.backbone  # its layer1..layer4 (gradient checkpointing finds them)

    def forward(self, x: torch.Tensor) -> Any:
        out = self.net(x)
        return (out["out"], out["aux"]) if self.training else out["out"]


def build(kind: str) -> nn.Module:
    if kind == "pspnet":
        # PSPNet-R50 of the paper: deep stem, output stride 8, PPM, aux head (0.4), 150 classes.
        return build_model(ModelConfig(encoder="resnet50", stem="deep", output_stride=8, aux_weight=AUX_WEIGHT), NUM_CLASSES)
    if kind == "deeplabv3":
        return DeepLabPeer(NUM_CLASSES)
    raise ValueError(kind)


def optimizer_for(kind: str, model: nn.Module) -> torch.optim.Optimizer:
    """SGD momentum 0.9, weight decay 1e-4 (ours: the two LR groups of the recipe)."""
    cfg = TrainConfig(lr=0.01)
    if kind == "pspnet":
        return build_optimizer(model, cfg)  # type: ignore[arg-type]
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_batches(n: int, batch: int, size: tuple[int, int], device: torch.device, cl: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator(device="cpu").manual_seed(n * 1000 + batch)
    out = []
    for _ in range(n):
        image = torch.randn(batch, 3, *size, generator=g)
        mask = torch.randint(0, NUM_CLASSES, (batch, *size), generator=g)
        mask[:, : size[0] // 10] = IGNORE_INDEX  # some ignored pixels, as in real labels
        out.append((image.to(device, memory_format=memory_format(cl)), mask.to(device)))
    return out


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def count_flops(kind: str, size: tuple[int, int], device: torch.device) -> dict[str, float]:
    """FLOPs per image: train-mode forward, forward + backward, eval forward (2 per MAC)."""
    torch.manual_seed(0)
    model = build(kind).to(device)
    criterion = SegmentationCriterion(AUX_WEIGHT, IGNORE_INDEX).to(device)
    batch = 2  # BatchNorm over the 1x1 pyramid bin needs two images in training
    image, mask = random_batches(1, batch, size, device, False)[0]
    model.train()
    with FlopCounterMode(display=False) as fwd:
        outputs = model(image)
    loss = criterion(outputs, mask)
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as ev:
        model(image)
    result = {
        "forward_train": fwd.get_total_flops() / batch,
        "backward": bwd.get_total_flops() / batch,
        "forward_eval": ev.get_total_flops() / batch,
        "parameters": count_parameters(model),
    }
    result["train"] = result["forward_train"] + result["backward"]
    del model, outputs, loss
    free(device)
    return result


def eval_flops(kind: str, size: tuple[int, int], device: torch.device) -> float:
    torch.manual_seed(0)
    model = build(kind).to(device).eval()
    image = random_batches(1, 1, size, device, False)[0][0]
    with torch.no_grad(), FlopCounterMode(display=False) as ev:
        model(image)
    del model
    free(device)
    return float(ev.get_total_flops())


def matmul_peaks(device: torch.device, size: int, repeats: int) -> dict[str, float]:
    """Measured dense matrix-product rates (TFLOP/s, median of ``repeats`` after 3 warm-ups) on
    random data: bf16, and float32 with and without TF32 tensor cores."""
    if device.type != "cuda":
        return {}
    rates = {}
    saved = torch.backends.cuda.matmul.allow_tf32
    for name, dtype, tf32 in (("bf16", torch.bfloat16, False), ("tf32", torch.float32, True), ("fp32", torch.float32, False)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        times = []
        for i in range(3 + repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            if i >= 3:
                times.append(start.elapsed_time(end) / 1e3)
        rates[name] = 2 * size**3 / statistics.median(times) / 1e12
        del a, b
    torch.backends.cuda.matmul.allow_tf32 = saved
    free(device)
    return rates


def train_run(
    kind: str, variant: Variant, batch: int, size: tuple[int, int], device: torch.device, warmup: int, steps: int
) -> dict[str, Any]:
    """Time ``warmup + steps`` training steps of the library loop; median of the last ``steps``.
    ``batch`` is the micro-batch; an optimizer step takes ``batch * variant.accumulate`` images."""
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = build(kind).to(device, memory_format=memory_format(variant.channels_last))
    if variant.grad_checkpoint:
        checkpoint_blocks(model.encoder)
    optimizer = optimizer_for(kind, model)
    scheduler = build_scheduler(optimizer, max_iter=warmup + steps + 1, power=0.9)
    criterion = SegmentationCriterion(AUX_WEIGHT, IGNORE_INDEX).to(device)
    data = random_batches(RESIDENT_BATCHES, batch * variant.accumulate, size, device, variant.channels_last)
    resident = sum(t.numel() * t.element_size() for pair in data for t in pair)
    loader = [data[i % len(data)] for i in range(warmup + steps)]
    network = torch.compile(model) if variant.compile else model
    stamps: list[float] = []

    steady: dict[str, int] = {}

    def on_step(_: Any, __: float) -> None:
        sync(device)
        stamps.append(time.perf_counter())
        if device.type == "cuda" and len(stamps) == warmup:
            # cuDNN's autotuning tries kernels with large workspaces during the first steps:
            # the steady-state peak is taken over the timed steps only.
            steady["run"] = torch.cuda.max_memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)

    sync(device)
    start = time.perf_counter()
    step = TrainStep(
        network, optimizer, scheduler, criterion, device, precision=variant.precision, channels_last=variant.channels_last,
        scaler=make_scaler(variant.precision, device), micro_batch=batch if variant.accumulate > 1 else None,
    )
    train_one_epoch(step, loader, EpochPlan(on_step=on_step, progress=False))  # fmt: skip
    step_times = [b - a for a, b in zip(stamps, stamps[1:])][warmup - 1 :]
    median = statistics.median(step_times)
    result = {
        "model": kind,
        "variant": variant.name,
        "batch": batch,
        "images_per_step": batch * variant.accumulate,
        "crop": list(size),
        "first_step_s": stamps[0] - start,
        "step_s_median": median,
        "step_s_min": min(step_times),
        "step_s_max": max(step_times),
        "timed_steps": len(step_times),
        "images_per_s": batch * variant.accumulate / median,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "warmup_peak_memory_bytes": steady.get("run"),
        "resident_input_bytes": resident,
    }
    del model, network, optimizer, scheduler, data, loader
    if variant.compile:
        torch._dynamo.reset()
    free(device)
    return result


def inference_run(
    kind: str, precision: str, cl: bool, batch: int, size: tuple[int, int], device: torch.device, warmup: int, steps: int
) -> dict[str, Any]:
    """Eval-mode forward (logits at input size) images/s: median of ``steps`` timed passes."""
    torch.manual_seed(0)
    model = build(kind).to(device, memory_format=memory_format(cl)).eval()
    data = random_batches(RESIDENT_BATCHES, batch, size, device, cl)
    times = []
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with torch.inference_mode(), (torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()):
        for i in range(warmup + steps):
            sync(device)
            t0 = time.perf_counter()
            model(data[i % len(data)][0]).argmax(1)
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    del model, data
    free(device)
    return {
        "model": kind, "precision": precision, "channels_last": cl, "batch": batch, "size_hw": list(size),
        "pass_s_median": median, "images_per_s": batch / median, "timed_passes": len(times),
    }  # fmt: skip


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


def environment(device: torch.device) -> dict[str, Any]:
    import torchvision

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with contextlib.suppress(ImportError):
        import segmentation_models_pytorch as smp

        env["segmentation_models_pytorch"] = smp.__version__
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env |= {"gpu": p.name, "gpu_memory_bytes": p.total_memory, "multiprocessors": p.multi_processor_count,
                "compute_capability": f"{p.major}.{p.minor}"}  # fmt: skip
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            query = "driver_version,power.limit,clocks.max.sm,clocks.max.mem"
            env["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
            ).stdout.strip()
    return env


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


class Recorder:
    """Collects results and rewrites the JSON after every measurement (a run cut short keeps
    what it measured)."""

    def __init__(self, path: Path, deadline_s: float) -> None:
        self.path = path
        self.start = time.perf_counter()
        self.deadline = deadline_s
        self.data: dict[str, Any] = {"train": [], "inference": [], "skipped": []}

    def save(self) -> None:
        self.data["bench_seconds"] = round(time.perf_counter() - self.start, 1)
        atomic_files.write_json(self.path, self.data)

    def measure(self, section: str, label: str, fn: Callable[[], dict[str, Any]]) -> None:
        if time.perf_counter() - self.start > self.deadline:
            self.data["skipped"].append({"what": label, "why": "deadline"})
            print(f"skip {label}: past the deadline", flush=True)
            return
        t0 = time.perf_counter()
        try:
            result = fn()
        except torch.cuda.OutOfMemoryError as err:
            result = {"label": label, "error": "out of memory", "detail": str(err).splitlines()[0]}
            free(torch.device("cuda"))
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        self.data[section].append(result)
        print(f"{label}: {_short(result)}", flush=True)
        self.save()


def _short(r: dict[str, Any]) -> str:
    if "error" in r:
        return r["error"]
    mem = r.get("peak_memory_bytes")
    mem_s = f", peak {mem / 2**30:.2f} GiB" if mem else ""
    first = f", first step {r['first_step_s']:.1f} s" if "first_step_s" in r else ""
    return f"{r['images_per_s']:.1f} img/s{mem_s}{first} (wall {r['wall_s']} s)"


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    configure_cudnn(device, benchmark=True)  # what train.cudnn_benchmark: true does
    crop = (args.crop, args.crop)
    infer = (args.infer_hw[0], args.infer_hw[1])
    rec = Recorder(Path(args.out), args.deadline)
    rec.data["environment"] = environment(device)
    rec.data["settings"] = {
        "crop": list(crop), "batches": args.batches, "warmup_steps": args.warmup, "timed_steps": args.steps,
        "inference_hw": list(infer), "inference_batches": args.infer_batches, "variants": args.variants,
        "models": args.models, "resident_input_batches": RESIDENT_BATCHES,
    }  # fmt: skip
    rec.save()
    rec.data["matmul_tflops_measured"] = matmul_peaks(device, args.matmul_size, args.matmul_repeats)
    rec.data["flops"] = {kind: count_flops(kind, crop, device) for kind in args.models}
    for kind in args.models:
        rec.data["flops"][kind]["eval_forward_inference"] = eval_flops(kind, infer, device)
        rec.data["flops"][kind]["inference_hw"] = list(infer)
    rec.save()
    print(f"flops: {json.dumps(rec.data['flops'])}\nmatmul: {rec.data['matmul_tflops_measured']}", flush=True)

    eager = [v for v in args.variants if not VARIANTS[v].compile]
    compiled = [v for v in args.variants if VARIANTS[v].compile]
    for name in eager if args.phase in ("all", "eager") else []:
        for kind in args.models:
            for batch in args.batches:
                rec.measure("train", f"train {kind} {name} b{batch}",
                            lambda k=kind, n=name, b=batch: train_run(k, VARIANTS[n], b, crop, device, args.warmup, args.steps))  # fmt: skip
    for big in args.big_crops if args.phase in ("all", "eager") else []:
        for kind in args.models:
            for name in ("bf16+cl", "bf16+cl+gc"):
                rec.measure("train", f"train {kind} {name} b{args.big_batch} crop{big}",
                            lambda k=kind, n=name, c=big: train_run(k, VARIANTS[n], args.big_batch, (c, c), device, args.warmup, args.steps))  # fmt: skip
    for kind in args.models if args.phase in ("all", "eager") else []:
        for precision, cl in (("fp32", False), ("bf16", True)):
            for batch in args.infer_batches:
                rec.measure("inference", f"infer {kind} {precision}{'+cl' if cl else ''} b{batch}",
                            lambda k=kind, p=precision, c=cl, b=batch: inference_run(k, p, c, b, infer, device, args.warmup, args.steps))  # fmt: skip
    for name in compiled if args.phase in ("all", "compile") else []:
        for kind in args.models:
            for batch in args.batches:
                rec.measure("train", f"train {kind} {name} b{batch}",
                            lambda k=kind, n=name, b=batch: train_run(k, VARIANTS[n], b, crop, device, args.warmup, args.steps))  # fmt: skip
    rec.save()
    return rec.data


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def derive(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Training rows with achieved TFLOP/s and MFU (datasheet and measured peaks)."""
    env = data["environment"]
    peaks = DATASHEET_PEAKS_TFLOPS.get(env.get("gpu", ""), {})
    measured = data.get("matmul_tflops_measured", {})
    tf32_convs = env.get("cudnn_allow_tf32", False)
    for r in data["train"]:
        if "error" in r:
            yield r
            continue
        flops = data["flops"][r["model"]]
        # fp32 convolutions run on TF32 tensor cores when cuDNN may use TF32 (PyTorch's default).
        unit = "bf16" if r["variant"].startswith(("bf16", "fp16")) else ("tf32" if tf32_convs else "fp32")
        scale = (r["crop"][0] * r["crop"][1]) / (data["settings"]["crop"][0] * data["settings"]["crop"][1])
        achieved = flops["train"] * scale * r["images_per_s"] / 1e12
        yield r | {
            "train_tflop_per_image": flops["train"] * scale / 1e12,
            "achieved_tflops": achieved,
            "peak_unit": unit,
            "mfu_datasheet": achieved / peaks[unit] if unit in peaks else None,
            "mfu_measured_matmul": achieved / measured[unit] if unit in measured else None,
        }


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs (e.g. the eager and the compile phase, one after the other on one machine)
    as one: the first run's environment and counts; measurements concatenated; each run's
    environment, matrix-product peaks and duration kept under ``runs``."""
    merged = json.loads(json.dumps(runs[0]))
    for key in ("train", "inference", "skipped"):
        merged[key] = [r for run in runs for r in run.get(key, [])]
    merged["runs"] = [
        {"environment": r["environment"], "settings": r["settings"], "matmul_tflops_measured": r.get("matmul_tflops_measured"),
         "bench_seconds": r.get("bench_seconds")}
        for r in runs
    ]  # fmt: skip
    return merged


def render(data: dict[str, Any]) -> str:
    env = data["environment"]
    rows = list(derive(data))
    gib = 2**30
    lines = [
        "| model | variant | batch | images/step | crop | images/s | step ms (median) | peak memory GiB | TFLOP/s | MFU (datasheet) | MFU (measured matmul) | first step s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | | | | | {r['error']} | | | | | | |")
            continue
        pct = lambda x: f"{100 * x:.1f}%" if x is not None else "n/a"  # noqa: E731
        mem = f"{r['peak_memory_bytes'] / gib:.2f}" if r["peak_memory_bytes"] else "n/a"
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['batch']} | {r.get('images_per_step', r['batch'])} | "
            f"{r['crop'][0]}x{r['crop'][1]} | {r['images_per_s']:.1f} | "
            f"{1e3 * r['step_s_median']:.1f} | {mem} | {r['achieved_tflops']:.1f} | {pct(r['mfu_datasheet'])} | "
            f"{pct(r['mfu_measured_matmul'])} | {r['first_step_s']:.1f} |"
        )
    ratio_lines = [
        "| variant | batch | crop | ours images/s | peer images/s | ours / peer (images/s) | ours / peer (achieved FLOP/s) |",
        "|---|---|---|---|---|---|---|",
    ]
    by = {(r["model"], r["variant"], r["batch"], tuple(r["crop"])): r for r in rows if "error" not in r}
    for (model, variant, batch, crop), r in by.items():
        peer = by.get(("deeplabv3", variant, batch, crop))
        if model == "pspnet" and peer is not None:
            ratio_lines.append(
                f"| {variant} | {batch} | {crop[0]}x{crop[1]} | {r['images_per_s']:.1f} | {peer['images_per_s']:.1f} | "
                f"{r['images_per_s'] / peer['images_per_s']:.2f} | {r['achieved_tflops'] / peer['achieved_tflops']:.2f} |"
            )
    inf = ["| model | precision | batch | images/s | ms per pass |", "|---|---|---|---|---|"]
    for r in data["inference"]:
        if "error" in r:
            inf.append(f"| {r['label']} | | | {r['error']} | |")
            continue
        p = r["precision"] + ("+channels_last" if r["channels_last"] else "")
        inf.append(f"| {r['model']} | {p} | {r['batch']} | {r['images_per_s']:.1f} | {1e3 * r['pass_s_median']:.1f} |")
    flops = ["| model | parameters | forward GFLOP/image (train mode) | forward+backward GFLOP/image | eval forward GFLOP/image at inference size |", "|---|---|---|---|---|"]
    for kind, f in data["flops"].items():
        flops.append(
            f"| {kind} | {f['parameters']:,} | {f['forward_train'] / 1e9:.1f} | {f['train'] / 1e9:.1f} | "
            f"{f['eval_forward_inference'] / 1e9:.1f} ({f['inference_hw'][0]}x{f['inference_hw'][1]}) |"
        )
    measured = data.get("matmul_tflops_measured", {})
    peaks = DATASHEET_PEAKS_TFLOPS.get(env.get("gpu", ""), {})
    return "\n".join(
        [
            "### Training step",
            "",
            *lines,
            "",
            "### PSPNet-R50 against torchvision DeepLabV3-R50 (same run, same input)",
            "",
            *ratio_lines,
            "",
            "### Inference",
            "",
            *inf,
            "",
            "### FLOPs counted",
            "",
            *flops,
            "",
            f"Peaks used for MFU: datasheet (dense) {json.dumps(peaks)} TFLOP/s; measured {MATMUL_SIZE}^3 "
            f"matrix products on this card {json.dumps({k: round(v, 1) for k, v in measured.items()})} TFLOP/s.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON file to write the results to")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=["pspnet", "deeplabv3"], choices=["pspnet", "deeplabv3"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--phase", default="all", choices=["all", "eager", "compile"],
                        help="eager: every variant but the compiled ones, the large crops and inference; compile: the compiled ones")
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--crop", type=int, default=473)
    parser.add_argument("--big-crops", nargs="*", type=int, default=[713], help="larger crops for the memory rows")
    parser.add_argument("--big-batch", type=int, default=8)
    parser.add_argument("--infer-hw", nargs=2, type=int, default=[360, 480], metavar=("H", "W"))
    parser.add_argument("--infer-batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--matmul-size", type=int, default=MATMUL_SIZE)
    parser.add_argument("--matmul-repeats", type=int, default=10)
    parser.add_argument("--deadline", type=float, default=540.0, help="seconds after which remaining runs are skipped")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the script on any device")
    parser.add_argument("--render", nargs="+", help="results JSON file(s) to render as Markdown (no measuring); several are merged")
    parser.add_argument("--merged", help="with --render: also write the merged JSON here")
    parser.add_argument("--markdown", help="where --render writes (default: stdout)")
    args = parser.parse_args(argv)
    if args.render:
        data = merge([json.loads(Path(p).read_text()) for p in args.render])
        if args.merged:
            atomic_files.write_json(args.merged, data)
        text = render(data)
        if args.markdown:
            atomic_files.write_text(args.markdown, text)
        else:
            print(text)
        return 0
    if not args.out:
        parser.error("--out is required when measuring")
    if args.smoke:
        args.crop, args.batches, args.big_crops, args.big_batch = 65, [2], [97], 2
        args.infer_hw, args.infer_batches, args.warmup, args.steps = [48, 64], [2], 1, 2
    data = run(args)
    print(render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
