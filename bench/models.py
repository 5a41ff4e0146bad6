"""CPU figures of the network: training step, inference, and peak training memory.

Ours is PSPNet-R50 as the library builds it (deep stem, output stride 8, PPM, aux head), the
peer torchvision's ``deeplabv3_resnet50`` (output stride 8, aux FCN head): the models, their
optimisers, the random batches and the FLOP counting are those of ``bench/gpu_train.py``
(150 classes, SGD momentum 0.9, CE + 0.4 aux CE, 255 ignored). A training step is one call of
the library's own loop (:func:`pspnet.train.loop.train_one_epoch`) over a one-batch loader:
forward in train mode, loss, backward, SGD step, poly schedule step.

Run as ``python -m bench.models memory --precision bf16 --configs '[["pspnet", 473, 2, false]]'``,
it measures the training memory of each configuration ([kind, crop, batch, grad_checkpoint]) in
this fresh process, one after the other, and prints one ``BENCH_RESULT {json}`` line each.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import gpu_train as g
from bench.timing import (
    Progress,
    current_rss_bytes,
    figure,
    peak_rss_bytes,
    ratio,
    reset_peak_rss,
    run_measured,
    subprocess_env,
)
from pspnet.config import EvaluateConfig
from pspnet.evaluate.inference import predict_logits
from pspnet.train.accel import checkpoint_blocks, make_scaler, memory_format, resolve_channels_last, resolve_precision
from pspnet.train.loop import EpochPlan, TrainStep, train_one_epoch
from pspnet.train.loss import SegmentationCriterion
from pspnet.train.optim import build_scheduler

#: Ours first, then the peer.
KINDS = ("pspnet", "deeplabv3")
CPU = torch.device("cpu")
#: FLOPs are counted on the meta device: shapes only, no arithmetic (exact, and instant).
META = torch.device("meta")
#: The paper's test scales (``evaluate.scales``), with flip, for the MS+flip figure.
PAPER_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
#: Crop of the small step a memory child runs first, so that the measured step starts with the
#: gradients and the momentum buffers allocated (the steady state of training).
PRESTEP_CROP = 65
#: The batch of that first step (BatchNorm of the PPM's 1x1 bin needs two images).
PRESTEP_BATCH = 2
#: Prefix of the line a memory child prints its result on.
RESULT_PREFIX = "BENCH_RESULT "
#: How long one memory child may run.
MEMORY_CHILD_TIMEOUT_S = 900.0


def resolve_precisions(names: list[str]) -> list[str]:
    """``auto`` -> what ``train.precision: auto`` picks on this CPU (bf16 with AVX512-BF16 / AMX)."""
    out = []
    for name in names:
        resolved = resolve_precision(name, CPU)
        if resolved not in out:
            out.append(resolved)
    return out


# --------------------------------------------------------------------------------------------
# Training step
# --------------------------------------------------------------------------------------------


@dataclass
class TrainRig:
    """One model ready to take training steps on one resident random batch."""

    kind: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    criterion: SegmentationCriterion
    batch: tuple[torch.Tensor, torch.Tensor]
    precision: str
    channels_last: bool

    @classmethod
    def build(
        cls, kind: str, batch: int, crop: tuple[int, int], precision: str, steps: int, channels_last: bool = False, grad_checkpoint: bool = False
    ) -> TrainRig:
        torch.manual_seed(0)
        model = g.build(kind).to(memory_format=memory_format(channels_last))
        if grad_checkpoint:
            checkpoint_blocks(model.encoder)
        optimizer = g.optimizer_for(kind, model)
        scheduler = build_scheduler(optimizer, max_iter=steps + 1, power=0.9)
        criterion = SegmentationCriterion(g.AUX_WEIGHT, g.IGNORE_INDEX)
        data = g.random_batches(1, batch, crop, CPU, channels_last)[0]
        return cls(kind, model, optimizer, scheduler, criterion, data, precision, channels_last)

    def step(self, batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
        """One training step through the library's loop; its wall time in seconds."""
        start = time.perf_counter()
        step = TrainStep(
            self.model, self.optimizer, self.scheduler, self.criterion, CPU, precision=self.precision,
            channels_last=self.channels_last, scaler=make_scaler(self.precision, CPU),
        )  # fmt: skip
        train_one_epoch(step, [batch or self.batch], EpochPlan(progress=False))
        return time.perf_counter() - start


def training_flops(crop: tuple[int, int]) -> dict[str, dict[str, float]]:
    """FLOPs per image of each model (``gpu_train.count_flops`` on the meta device)."""
    return {kind: g.count_flops(kind, crop, META) for kind in KINDS}


def resolve_layouts(settings: list[Any]) -> list[bool]:
    """``train.channels_last`` values (``auto``, true, false) -> the layouts used on the CPU."""
    out: list[bool] = []
    for value in settings:
        layout = resolve_channels_last(value, CPU)
        if layout not in out:
            out.append(layout)
    return out


def training(settings: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Training-step time, images/s and achieved FLOP/s of ours and the peer, steps interleaved,
    for every precision x memory layout asked for."""
    crop = (settings["crop"], settings["crop"])
    batch, warmup, rounds = settings["batch"], settings["warmup_steps"], settings["timed_steps"]
    progress.step("counting FLOPs (meta device)", 0.0)
    flops = training_flops(crop)
    precisions = resolve_precisions(settings["precisions"])
    layouts = resolve_layouts(settings.get("channels_last", ["auto"]))
    combos = [(p, cl) for p in precisions for cl in layouts]
    total = len(combos) * (warmup + rounds) * len(KINDS)
    done = 0
    rows = []
    for precision, channels_last in combos:
        name = precision + ("+channels_last" if channels_last else "")
        rigs = {kind: TrainRig.build(kind, batch, crop, precision, warmup + rounds, channels_last) for kind in KINDS}
        times: dict[str, list[float]] = {kind: [] for kind in KINDS}
        first: dict[str, float] = {}
        for r in range(warmup + rounds):
            # ours-peer, then peer-ours: each pair shares the load of its moment.
            for kind in KINDS if r % 2 == 0 else KINDS[::-1]:
                phase = "warm-up" if r < warmup else "timed"
                progress.step(f"{name} {kind} step {r + 1}/{warmup + rounds} ({phase})", done / total)
                seconds = rigs[kind].step()
                done += 1
                first.setdefault(kind, seconds)
                if r >= warmup:
                    times[kind].append(seconds)
        rigs.clear()
        gc.collect()
        models = {}
        for kind in KINDS:
            train_flops = flops[kind]["train"]
            models[kind] = {
                "step_s": figure(times[kind], "s"),
                "first_step_s": first[kind],
                "images_per_s": figure([batch / t for t in times[kind]], "images/s"),
                "train_gflop_per_image": train_flops / 1e9,
                "achieved_gflops": figure([train_flops * batch / t / 1e9 for t in times[kind]], "GFLOP/s"),
            }
        ours, peer = models["pspnet"], models["deeplabv3"]
        rows.append(
            {
                "variant": name,
                "precision": precision,
                "channels_last": channels_last,
                "models": models,
                "ratio_step_time": ratio(ours["step_s"], peer["step_s"], paired=True),
                "ratio_images_per_s": ratio(ours["images_per_s"], peer["images_per_s"], paired=True),
                "ratio_flops_per_s": ratio(ours["achieved_gflops"], peer["achieved_gflops"], paired=True),
            }
        )
    return {
        "settings": {**settings, "crop": list(crop), "precisions_setting": settings["precisions"], "precisions": precisions,
                     "layouts": layouts,
                     "channels_last_auto": resolve_channels_last("auto", CPU), "num_classes": g.NUM_CLASSES,
                     "torch_threads": torch.get_num_threads()},  # fmt: skip
        "flops": {kind: {k: float(v) for k, v in f.items()} for kind, f in flops.items()},
        "rows": rows,
    }


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------


def inference_flops(model: torch.nn.Module, hw: tuple[int, int], cfg: EvaluateConfig) -> float:
    """FLOPs per image of :func:`predict_logits` under ``cfg``, counted on ``model`` (in eval
    mode, on the meta device: shapes only)."""
    image = torch.empty(1, 3, *hw, device=META)
    with FlopCounterMode(display=False) as counter:
        predict_logits(model, image, cfg)
    return float(counter.get_total_flops())


def inference(settings: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Eval-mode images/s at ``hw`` (batch 1, float32, through ``predict_logits``): ours single
    scale and MS+flip, the peer single scale."""
    hw = (settings["height"], settings["width"])
    single = EvaluateConfig()
    multi = EvaluateConfig(scales=tuple(settings["scales"]), flip=True)
    torch.manual_seed(0)
    models = {kind: g.build(kind).eval() for kind in KINDS}
    image = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(0))

    def timed(kind: str, cfg: EvaluateConfig) -> float:
        start = time.perf_counter()
        predict_logits(models[kind], image, cfg).argmax(1)
        return time.perf_counter() - start

    rounds, ms_rounds, warmup = settings["single_scale_runs"], settings["ms_flip_runs"], settings["warmup_runs"]
    total = (warmup + rounds) * len(KINDS) + ms_rounds
    done = 0
    single_times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for r in range(warmup + rounds):
        for kind in KINDS if r % 2 == 0 else KINDS[::-1]:
            progress.step(f"single scale {kind} {r + 1}/{warmup + rounds}", done / total)
            seconds = timed(kind, single)
            done += 1
            if r >= warmup:
                single_times[kind].append(seconds)
    ms_times = []
    for r in range(ms_rounds):
        progress.step(f"MS+flip pspnet {r + 1}/{ms_rounds} ({len(multi.scales)} scales x 2)", done / total)
        ms_times.append(timed("pspnet", multi))
        done += 1
    meta = {kind: model.to(META) for kind, model in models.items()}  # the weights are no longer needed
    flops = {
        "pspnet_single": inference_flops(meta["pspnet"], hw, single),
        "deeplabv3_single": inference_flops(meta["deeplabv3"], hw, single),
        "pspnet_ms_flip": inference_flops(meta["pspnet"], hw, multi),
    }
    models.clear()
    meta.clear()
    gc.collect()
    ours_single = figure([1 / t for t in single_times["pspnet"]], "images/s")
    peer_single = figure([1 / t for t in single_times["deeplabv3"]], "images/s")
    ours_ms = figure([1 / t for t in ms_times], "images/s")
    return {
        "settings": {**settings, "scales": list(multi.scales), "flip": True, "batch": 1, "precision": "fp32",
                     "torch_threads": torch.get_num_threads()},  # fmt: skip
        "pspnet_single": ours_single,
        "deeplabv3_single": peer_single,
        "pspnet_ms_flip": ours_ms,
        "gflop_per_image": {k: v / 1e9 for k, v in flops.items()},
        "ratio_single": ratio(ours_single, peer_single, paired=True),
        "ratio_ms_flip_vs_peer_single": ratio(ours_ms, peer_single),
        "ratio_ms_flip_vs_single": ratio(ours_ms, ours_single),
    }


# --------------------------------------------------------------------------------------------
# Training memory
# --------------------------------------------------------------------------------------------


def _release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the kernel (glibc ``malloc_trim``), so
    that one configuration's leftovers do not count in the next one's resident memory."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def memory_config(kind: str, batch: int, crop: int, precision: str, grad_checkpoint: bool) -> dict[str, Any]:
    """One configuration's training memory: build the model, take a small first step (so the
    gradients and the momentum buffers are allocated, as in steady training), then reset the
    kernel's peak-RSS mark and take one full step."""
    _release_freed_memory()
    start = current_rss_bytes()
    rig = TrainRig.build(kind, batch, (crop, crop), precision, steps=2, grad_checkpoint=grad_checkpoint)
    rig.step(g.random_batches(1, PRESTEP_BATCH, (PRESTEP_CROP, PRESTEP_CROP), CPU, False)[0])
    gc.collect()
    before = current_rss_bytes()
    reset = reset_peak_rss()
    seconds = rig.step()
    peak = peak_rss_bytes()
    del rig
    return {
        "kind": kind, "batch": batch, "crop": crop, "precision": precision, "grad_checkpoint": grad_checkpoint,
        "rss_at_start_bytes": start, "rss_before_step_bytes": before, "peak_rss_bytes": peak, "peak_is_step_only": reset,
        "step_s": seconds, "torch_threads": torch.get_num_threads(),
    }  # fmt: skip


def memory(settings: dict[str, Any], progress: Progress, repo: Path, pycache: Path | None) -> dict[str, Any]:
    """Peak RSS of a training step per model, batch, crop and gradient checkpointing: every
    configuration in one fresh subprocess, one after the other, smallest first."""
    precision = resolve_precisions([settings["precision"]])[0]
    configs = [[kind, int(crop), int(batch), bool(checkpointing)] for kind, crop, batch, checkpointing in settings["configs"]]
    configs.sort(key=lambda c: (c[1] * c[1] * c[2], not c[3]))  # pixels per step; checkpointed first
    costs = [crop * crop * batch for _kind, crop, batch, _gc in configs]
    finished = [0]

    def label(i: int) -> str:
        kind, crop, batch, checkpointing = configs[i]
        return f"{kind} crop {crop} batch {batch}{' +grad_checkpoint' if checkpointing else ''} ({i + 1}/{len(configs)}, {precision})"

    def on_line(line: str) -> None:
        if line.startswith(RESULT_PREFIX):
            finished[0] += 1
            if finished[0] < len(configs):
                progress.step(label(finished[0]), sum(costs[: finished[0]]) / sum(costs))

    progress.step(label(0), 0.0)
    cmd = [sys.executable, "-m", "bench.models", "memory", "--precision", precision, "--configs", json.dumps(configs)]
    done = run_measured(cmd, repo, subprocess_env(pycache), MEMORY_CHILD_TIMEOUT_S, on_line).check()
    rows = [json.loads(li[len(RESULT_PREFIX) :]) for li in done.stdout.splitlines() if li.startswith(RESULT_PREFIX)]
    by = {(r["kind"], r["batch"], r["crop"], r["grad_checkpoint"]): r for r in rows}
    ratios = []
    for (kind, batch, crop, checkpointing), peer in by.items():
        ours = by.get(("pspnet", batch, crop, checkpointing))
        if kind == "deeplabv3" and ours is not None:
            ratios.append({"batch": batch, "crop": crop, "grad_checkpoint": checkpointing,
                           "ours_peak_rss_bytes": ours["peak_rss_bytes"], "peer_peak_rss_bytes": peer["peak_rss_bytes"],
                           "ratio": ours["peak_rss_bytes"] / peer["peak_rss_bytes"]})  # fmt: skip
    savings = []
    for (kind, batch, crop, checkpointing), r in by.items():
        if checkpointing and (kind, batch, crop, False) in by:
            plain = by[(kind, batch, crop, False)]
            savings.append({"kind": kind, "batch": batch, "crop": crop,
                            "peak_ratio_checkpointed_vs_plain": r["peak_rss_bytes"] / plain["peak_rss_bytes"],
                            "step_growth_ratio_checkpointed_vs_plain":
                                (r["peak_rss_bytes"] - r["rss_before_step_bytes"]) / max(plain["peak_rss_bytes"] - plain["rss_before_step_bytes"], 1),
                            "step_time_ratio_checkpointed_vs_plain": r["step_s"] / plain["step_s"]})  # fmt: skip
    return {
        "settings": {**settings, "precision": precision, "order": configs,
                     "method": "peak RSS (VmHWM) of one step, high-water mark reset just before it (Linux clear_refs 5), "
                               "in one subprocess running the configurations smallest first, freed memory trimmed between them"},  # fmt: skip
        "process_peak_rss_bytes": done.peak_rss_bytes,
        "subprocess_wall_s": done.wall_s,
        "rows": rows,
        "ratio_vs_peer": ratios,
        "grad_checkpoint_effect": savings,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="training-memory measurements (run by python -m bench)")
    sub = parser.add_subparsers(dest="command", required=True)
    mem = sub.add_parser("memory")
    mem.add_argument("--precision", choices=["fp32", "bf16"], required=True)
    mem.add_argument("--configs", required=True, help='JSON list of [kind, crop, batch, grad_checkpoint], run in that order')
    args = parser.parse_args(argv)
    for kind, crop, batch, checkpointing in json.loads(args.configs):
        result = memory_config(kind, batch, crop, args.precision, checkpointing)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
