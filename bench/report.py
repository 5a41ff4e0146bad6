"""docs/benchmarks.md from the results JSON of :mod:`bench.run` (and the GPU section, read
from docs/results/gpu-h100.json and rendered by ``bench/gpu_train.py``'s own renderer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GIB = 2**30
MIB = 2**20

#: What profiling the validation stage led to, with the before/after figures measured by this
#: benchmark's validation section on the code before and after the change (see the Markdown).
VALIDATION_CHANGES = """\
**What profiling found and what was changed** (cProfile of the stage at 5,000 and 20,000 samples, then
the parts timed alone; in `src/pspnet/data/profile.py` and `validate.py`):

| hot spot (20,000 samples) | before | after | change |
|---|---|---|---|
| per-sample profiling on 4 threads: the work is mostly Python (path checks, PIL headers), so the threads fight over the GIL | 25 s (1 thread: 12 s) | 5.6 s | worker processes (at most the usable CPUs, from 512 samples on; below that, the calling thread), chunks of 64 samples |
| all 20,000 tasks submitted at once, their results kept as 20,000 row dicts | 3.8 KiB of peak RSS per sample | 1.1 KiB per sample | at most 2 chunks per worker in flight, rows appended to columns |
| `failing_samples`: a pandas `groupby` over every sample id, even when none failed | 5.7 s | 0 s | groups only the ids that failed |
| class tables: one JSON parse per sample, twice, into a long (sample, label) DataFrame | 1.5 s | 0.6 s | one pass summing per split and label (`LabelSums`) |

The profile table is identical to the one before (checked on 5,000 samples, and by
`tests/test_bench.py` with bad samples in worker processes against the calling thread).

{before_after}
What is left: Great Expectations' import and its Data Docs, about 3 s whatever the size, and the
per-sample Python work (~0.5 ms of one core: `escaping_entry`'s `realpath` of both paths ~0.15 ms,
two PIL opens per file for `verify` + `load`). Memory still grows with the number of samples, by the
per-sample facts table that Great Expectations validates as one DataFrame (~0.36 KiB a row in it, about
1.1 KiB of peak RSS in all); no pixels are kept."""

#: Before/after of the change above, as measured (``python -m bench --only validation`` with
#: ``--validate-pythonpath`` pointing at the previous source tree; same machine, same day).
VALIDATION_BEFORE_AFTER: dict[str, Any] | None = {
    "note": "this section's settings (48x64 PNGs, medians of 2 runs), measured on 2026-11-25 on the 2-core machine "
    "of this report: before = validate.py and profile.py as committed (928b196, 6228c7d), after = this change",
    "rows": [
        (5000, {"stage_s": 10.8, "rss_mib": 314}, {"stage_s": 4.6, "rss_mib": 298}),
        (10000, {"stage_s": 17.2, "rss_mib": 340}, {"stage_s": 6.0, "rss_mib": 303}),
        (20000, {"stage_s": 33.6, "rss_mib": 371}, {"stage_s": 9.1, "rss_mib": 314}),
    ],
    "fit": {"before": (1.536, 3.78), "after": (0.300, 1.12)},
}


def _f(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def _fig(fig: dict[str, Any], digits: int = 2, scale: float = 1.0) -> str:
    """``median (min–max)``."""
    if fig["runs"] == 1:
        return _f(fig["median"] * scale, digits)
    return f"{_f(fig['median'] * scale, digits)} ({_f(fig['min'] * scale, digits)}–{_f(fig['max'] * scale, digits)})"


def _ratio(r: dict[str, Any], digits: int = 2) -> str:
    paired = r.get("paired_ratio_median")
    return f"{r['ratio']:.{digits}f}" + (f" (paired: {paired:.{digits}f})" if paired is not None else "")


def _error(section: dict[str, Any]) -> list[str]:
    return [f"**This section failed:** `{section['error']}`", ""]


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _machine(data: dict[str, Any]) -> list[str]:
    m, v = data["machine"], data["versions"]
    mem = f"{m['memory_bytes'] / GIB:.1f} GiB" if m.get("memory_bytes") else "n/a"
    lines = [
        "## Machine and versions",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {m['cpu_model']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable); {', '.join(m['cpu_flags']) or 'no AVX flags read'} |",
        f"| RAM | {mem} |",
        f"| torch threads | {m['torch_threads']}; bfloat16 fast on this CPU: {'yes' if m['bf16_fast_on_cpu'] else 'no'}; CUDA: {'yes' if m['cuda_available'] else 'no'} |",
        f"| platform | {m['platform']} |",
        f"| load average (1, 5, 15 min) | start {data.get('load_average_start')}, end {data.get('load_average_end')} |",
        f"| commit | {data['git'].get('commit')}{' + uncommitted changes' if data['git'].get('uncommitted_changes') else ''} |",
        "",
        "| " + " | ".join(v) + " |",
        "|" + "---|" * len(v),
        "| " + " | ".join(str(x) for x in v.values()) + " |",
        "",
    ]
    return lines


def _training(s: dict[str, Any]) -> list[str]:
    st = s["settings"]
    out = [
        f"Settings: crop {st['crop'][0]}x{st['crop'][1]}, batch {st['batch']}, {st['num_classes']} classes, "
        f"{st['torch_threads']} torch threads, precision(s) {', '.join(st['precisions'])} (asked: "
        f"{', '.join(str(x) for x in st.get('precisions_setting', ['auto']))}; `auto` is what `train.precision: auto` picks on "
        "this CPU), memory layout(s): "
        f"{', '.join('channels_last' if cl else 'NCHW' for cl in st['layouts'])} (`train.channels_last: auto` is "
        f"{'on' if st['channels_last_auto'] else 'off'} on a CPU). "
        f"Each model takes {st['warmup_steps']} warm-up step(s), then {st['timed_steps']} timed steps; the two models alternate "
        "step for step (ours-peer, then peer-ours), so each pair of steps shares the load of its moment. "
        "A step is one call of `pspnet.train.loop.train_one_epoch` on a one-batch loader: train-mode forward "
        "(aux head included), CE + 0.4 aux CE (255 ignored), backward, SGD (momentum 0.9, weight decay 1e-4; ours with the "
        "recipe's two LR groups), poly schedule step. Inputs are resident random tensors: no data loading.",
        "",
        "FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products, 2 FLOPs per "
        "multiply-add; BatchNorm, activations, pooling, interpolation and the loss are not counted) on the meta device, through "
        "`bench/gpu_train.py`'s `count_flops`: training FLOPs = the train-mode forward pass plus the backward pass of a real "
        "`loss.backward()`, as the counter sees them (about 3x the forward). Achieved FLOP/s = training FLOPs per image x "
        "batch / step time.",
        "",
        "| variant | model | step s, median (min–max) | images/s | train GFLOP/image | achieved GFLOP/s | first step s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in s["rows"]:
        for kind, label in (("pspnet", "ours: PSPNet-R50 (deep stem, OS 8)"), ("deeplabv3", "peer: torchvision deeplabv3_resnet50 (aux)")):
            m = row["models"][kind]
            out.append(
                f"| {row['variant']} | {label} | {_fig(m['step_s'])} | {_fig(m['images_per_s'], 3)} | "
                f"{m['train_gflop_per_image']:.1f} | {_fig(m['achieved_gflops'], 1)} | {m['first_step_s']:.1f} |"
            )
    out += ["", "| variant | ours / peer: step time | images/s | achieved FLOP/s |", "|---|---|---|---|"]
    for row in s["rows"]:
        out.append(
            f"| {row['variant']} | {_ratio(row['ratio_step_time'])} | {_ratio(row['ratio_images_per_s'])} | {_ratio(row['ratio_flops_per_s'])} |"
        )
    out.append("")
    flops = s["flops"]
    work = flops["pspnet"]["train"] / flops["deeplabv3"]["train"]
    for row in s["rows"]:
        r = row["ratio_flops_per_s"]
        paired = r.get("paired_ratio_median", r["ratio"])
        low, high = min(r["ratio"], paired), max(r["ratio"], paired)
        head = f"**{row['variant']}:"
        if low >= 1.0:
            verdict = (
                f"{head} ours is not less efficient than the peer.** It does {work:.2f}x the peer's FLOPs per image and reaches "
                f"{r['ratio']:.2f}x its FLOP/s (paired: {paired:.2f}x), i.e. {100 * (low - 1):.0f}–{100 * (high - 1):.0f}% more "
                "useful work per second."
            )
        elif high >= 1.0:
            verdict = (
                f"{head} on a par with the peer.** Ours does {work:.2f}x the peer's FLOPs per image; its FLOP/s are {r['ratio']:.2f}x "
                f"the peer's by the medians and {paired:.2f}x by the paired steps: the two estimates straddle 1, so the "
                "difference is within this run's noise (load average in the machine table)."
            )
        else:
            verdict = (
                f"{head} ours is less efficient than the peer in this run:** {r['ratio']:.2f}x its FLOP/s (paired: "
                f"{paired:.2f}x) for {work:.2f}x its FLOPs per image; see the note below."
            )
        out += [verdict, ""]
    out += [TRAINING_NOTE, ""]
    return out


#: Why the FLOP/s compare as they do: a one-off per-operator profile (torch.profiler, one step
#: of each model after a warm-up step, crop 473, batch 2, this 2-core CPU, 2026-11-25).
TRAINING_NOTE = """\
Where the difference comes from (a per-operator profile, `torch.profiler`, one step of each model at
473x473, batch 2, on this machine on 2026-11-25, not re-measured by every run):

| | ours bf16 | peer bf16 | ours fp32 | peer fp32 |
|---|---|---|---|---|
| step (under the profiler) | 7.54 s | 7.43 s | 14.23 s | 13.36 s |
| convolutions, forward + backward (oneDNN) | 5.39 s | 5.45 s | 10.91 s | 10.58 s |
| everything else (BatchNorm, ReLU, bilinear upsampling, log-softmax + loss, dtype casts, SGD) | 2.06 s | 1.89 s | 3.24 s | 2.69 s |

Ours does 12% more FLOPs per image (1022.8 against 913.6 GFLOP in training), all of them in
convolutions, yet its convolutions take about as long as the peer's (bf16: 1% less; fp32: 3% more):
its extra work is in large, regular convolutions (the deep stem's three 3x3 convolutions at 237x237, and
the 3x3 head over the 4,096-channel pyramid concatenation at 60x60), which oneDNN runs at a higher rate
than the peer's ASPP branches (3x3 convolutions dilated 12, 24 and 36 at 60x60, slow in backward). The
time outside convolutions, which does no counted FLOPs, is 9–20% larger for ours (six bilinear upsamplings
against three: the PPM's four bins, the logits and the aux logits). Net, in that profile: ours achieved 1.10x
(bf16) and 1.05x (fp32) the peer's FLOP/s; a margin of 5% is about what a busy machine moves a single
run by, hence the paired figures above. With `channels_last` (not what `auto` picks on a CPU) ours
measured 0.93x the peer's FLOP/s in bf16 in an earlier run of this section: the peer's convolutions gain from
NHWC on this CPU, ours do not (`--set training.channels_last='["auto", true]'` measures it)."""


def _inference(s: dict[str, Any]) -> list[str]:
    st = s["settings"]
    g = s["gflop_per_image"]
    return [
        f"Settings: {st['height']}x{st['width']} (HxW) random image, batch {st['batch']}, float32 (the evaluate stage runs "
        f"float32), {st['torch_threads']} torch threads, eval mode, through `pspnet.evaluate.inference.predict_logits` then "
        f"argmax, for both models. Single scale: {st['warmup_runs']} warm-up pass, then {st['single_scale_runs']} timed passes "
        f"per model, alternating. MS+flip: the paper's scales {st['scales']} (long side x scale) each with a flipped pass, "
        f"probabilities averaged: {st['ms_flip_runs']} timed runs, no separate warm-up (the first includes creating the kernels "
        "of the new sizes).",
        "",
        "| | images/s, median (min–max) | GFLOP/image | achieved GFLOP/s |",
        "|---|---|---|---|",
        f"| ours, single scale | {_fig(s['pspnet_single'], 3)} | {g['pspnet_single']:.1f} | {g['pspnet_single'] * s['pspnet_single']['median']:.1f} |",
        f"| ours, MS+flip ({len(st['scales'])} scales x 2) | {_fig(s['pspnet_ms_flip'], 4)} | {g['pspnet_ms_flip']:.1f} | {g['pspnet_ms_flip'] * s['pspnet_ms_flip']['median']:.1f} |",
        f"| peer (deeplabv3_resnet50), single scale | {_fig(s['deeplabv3_single'], 3)} | {g['deeplabv3_single']:.1f} | {g['deeplabv3_single'] * s['deeplabv3_single']['median']:.1f} |",
        "",
        f"Ratios (images/s): ours / peer, single scale {_ratio(s['ratio_single'])}; ours MS+flip / peer single scale "
        f"{_ratio(s['ratio_ms_flip_vs_peer_single'], 3)}; ours MS+flip / ours single scale {_ratio(s['ratio_ms_flip_vs_single'], 3)} "
        f"(the MS+flip protocol does {g['pspnet_ms_flip'] / g['pspnet_single']:.1f}x the FLOPs of one pass).",
        "",
    ]


def _pipeline(s: dict[str, Any]) -> list[str]:
    st = s["settings"]
    aug = st["augmentation"]
    out = [
        f"Data: {st['source']}. Ours: the library's train loader (`pspnet.train.recipe.make_train_loader`: "
        "`SegmentationDataset` PNG decode, `pspnet.data.transforms.train_transform`, per-sample reseeding, default collation) "
        f"with the paper's augmentation: scale {aug['scale_range']}, rotation ±{aug['rotate_degrees']}° (p {aug['rotate_p']}), "
        f"5x5 Gaussian blur (p {aug['blur_p']}), horizontal flip, pad + random crop {st['crop'][0]}x{st['crop'][1]}, normalise. "
        "Peer: PIL decode + torchvision `transforms.v2` doing the same steps (`ScaleJitter`, `RandomRotation`, `GaussianBlur`, "
        "`RandomHorizontalFlip`, `RandomCrop(pad_if_needed)`, `ToDtype`, `Normalize`), same DataLoader batch and workers. "
        f"Batch {st['batch']}, {st['images']} images per epoch, {st['warmup_epochs']} warm-up epoch then {st['epochs']} timed "
        "epochs per loader, ours and the peer alternating. Every process runs one thread (torch and OpenCV), so 'per core' "
        "is per process doing the work: the main process with 0 workers, the workers otherwise.",
        "",
        "| DataLoader workers | ours images/s | ours per core | peer images/s | peer per core | ours / peer |",
        "|---|---|---|---|---|---|",
    ]
    for row in s["rows"]:
        o, p = row["ours"], row["peer"]
        out.append(
            f"| {row['workers']} | {_fig(o['images_per_s'], 1)} | {_f(o['images_per_s_per_core']['median'], 1)} | "
            f"{_fig(p['images_per_s'], 1)} | {_f(p['images_per_s_per_core']['median'], 1)} | {_ratio(row['ratio'])} |"
        )
    out.append("")
    return out


def _validation(s: dict[str, Any]) -> list[str]:
    st = s["settings"]
    out = [
        f"Data: {st['dataset']}, written in {st['generated_in_s']:.1f} s. Each size runs the real `pspnet validate` (Great "
        "Expectations gate, Data Docs, summary) in a subprocess on the first N samples, from empty reports; "
        f"{st['runs']} run(s) per size, sizes interleaved"
        + (f", after a warm-up run of {st['warmup_size']} samples (bytecode and file caches). " if st["warmup_size"] else ". ")
        + 
        f"Profiling threads: {st['profile_threads']} (`validate.num_workers`). Stage time is the stage's own (`seconds` "
        "of its summary: after the interpreter started); wall time includes the start. Peak RSS is the subprocess's "
        "high-water mark (`VmHWM`, read every 20 ms while it runs).",
        "",
        "| samples | stage s | wall s | samples/s (stage) | samples/s (wall) | peak RSS MiB |",
        "|---|---|---|---|---|---|",
    ]
    for row in s["sizes"]:
        out.append(
            f"| {row['samples']:,} | {_fig(row['stage_s'], 1)} | {_fig(row['wall_s'], 1)} | {_fig(row['samples_per_s'], 0)} | "
            f"{_fig(row['samples_per_s_wall'], 0)} | {_fig(row['peak_rss_bytes'], 0, 1 / MIB)} |"
        )
    tf, mf = s["time_fit"], s["memory_fit"]
    out += [
        "",
        f"Scaling: stage time = {tf['intercept']:.1f} s + {s['marginal_ms_per_sample']:.3f} ms x samples (R² {tf['r2']:.3f}); "
        f"peak RSS = {mf['intercept'] / MIB:.0f} MiB + {s['marginal_bytes_per_sample'] / 1024:.2f} KiB x samples (R² {mf['r2']:.3f}). "
        + (f"At this rate 1,000,000 samples would take about {(tf['intercept'] + tf['slope'] * 1e6) / 60:.0f} min and "
           f"{(mf['intercept'] + mf['slope'] * 1e6) / GIB:.1f} GiB." if tf["slope"] > 0 else "(Too few samples to extrapolate.)"),
        "",
        f"Peer: decoding every image and mask in full (PIL) and counting the mask's labels, on the same number of threads, "
        f"in the bench process: {_fig(s['peer_samples_per_s'], 0)} samples/s. Ours at the largest size / peer: "
        f"{_ratio(s['ratio_vs_peer'], 3)} (1 = the whole gate runs as fast as merely decoding every file; besides decoding, "
        "it checks paths and headers, verifies every file, runs Great Expectations and writes the Data Docs).",
        "",
    ]
    return out


def _dvc(s: dict[str, Any]) -> list[str]:
    st = s["settings"]
    overhead_ratio = s["overhead_vs_training"]
    return [
        f"A copy of this project's pipeline (`dvc.yaml`, `src/`, `params.yaml` with {json.dumps(st['params_overrides'])}) in a "
        f"temp folder (`dvc init --no-scm`, its own MLflow store). Full run: `dvc repro` of {st['target']} "
        f"(stages run: {', '.join(st['stages_run'])}), once. Then {st['runs']} no-op `dvc repro` runs, each followed by one of "
        "the peer: a one-stage pipeline (`cp in.txt out.txt`, one dependency, one output), DVC's own floor.",
        "",
        "| | seconds |",
        "|---|---|",
        f"| full run, wall | {s['full_run_s']:.1f} |",
        f"| train stage's training loop (`metrics/train.json` `seconds`) | {s['train_stage_training_s']:.2f} |",
        f"| pipeline overhead (wall − training) | {s['pipeline_overhead_s']:.1f} ({s['overhead_per_stage_s']:.1f} per stage) |",
        f"| no-op `dvc repro`, ours, median (min–max) | {_fig(s['noop_repro_s'])} |",
        f"| no-op `dvc repro`, one-stage peer | {_fig(s['peer_noop_repro_s'])} |",
        "",
        f"Ratio no-op ours / peer: {_ratio(s['ratio_noop_vs_peer'])}."
        + (f" Overhead / training time: {overhead_ratio:.0f}x, because with the tiny parameters the training itself takes "
           f"{s['train_stage_training_s']:.1f} s. The overhead is per stage (interpreter start, imports of torch / MLflow / Great "
           "Expectations, the MLflow run, the model's export and registration), so it is a fixed cost of about "
           f"{s['pipeline_overhead_s']:.0f} s per full run, about {s['overhead_per_stage_s']:.0f} s per stage, whatever the "
           "training time." if overhead_ratio is not None else ""),  # fmt: skip
        "",
    ]


def _memory(s: dict[str, Any]) -> list[str]:
    st = s["settings"]
    out = [
        f"All configurations run in one fresh subprocess (`python -m bench.models memory ...`), smallest first. For each, "
        "it builds the model, takes one small training step (so gradients and SGD momentum are allocated, as in steady "
        "training), resets the kernel's peak-RSS mark (Linux `clear_refs` 5) and takes one full step; between "
        "configurations the freed memory is handed back to the kernel (`malloc_trim`). "
        f"Precision {st['precision']} (what `train.precision: auto` picks on this CPU), channels_last off (`auto` on a CPU). "
        "Method: peak resident set size (`VmHWM`), not tracemalloc (which does not see torch's allocations). "
        "'before step' = RSS with the Python runtime, the model, gradients, momentum and inputs in memory.",
        "",
        "| model | crop | batch | grad checkpoint | peak RSS MiB | before step MiB | step adds MiB | step s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in s["rows"]:
        out.append(
            f"| {r['kind']} | {r['crop']} | {r['batch']} | {'on' if r['grad_checkpoint'] else 'off'} | {r['peak_rss_bytes'] / MIB:,.0f} | "
            f"{r['rss_before_step_bytes'] / MIB:,.0f} | {(r['peak_rss_bytes'] - r['rss_before_step_bytes']) / MIB:,.0f} | {r['step_s']:.1f} |"
        )
    out.append("")
    if s["grad_checkpoint_effect"]:
        out += ["Gradient checkpointing (`train.grad_checkpoint: true`: the encoder's residual blocks recompute their activations "
                "in the backward pass):", "", "| model | crop | batch | peak RSS, on / off | what the step adds, on / off | step time, on / off |",
                "|---|---|---|---|---|---|"]  # fmt: skip
        for e in s["grad_checkpoint_effect"]:
            out.append(
                f"| {e['kind']} | {e['crop']} | {e['batch']} | {e['peak_ratio_checkpointed_vs_plain']:.2f} | "
                f"{e['step_growth_ratio_checkpointed_vs_plain']:.2f} | {e['step_time_ratio_checkpointed_vs_plain']:.2f} |"
            )
        out.append("")
    if s["ratio_vs_peer"]:
        out += ["Against the peer at equal input (peak RSS, ours / peer): " + "; ".join(
            f"batch {r['batch']}, crop {r['crop']}, checkpointing {'on' if r['grad_checkpoint'] else 'off'}: {r['ratio']:.2f}"
            for r in s["ratio_vs_peer"]) + ".", ""]  # fmt: skip
    out += ["One step per configuration (its step time is a single run: see section 1 for timing). Why gradient "
            "checkpointing saves less here than on the GPU (where it cut 21% at batch 16): it only drops the encoder blocks' "
            "activations, while much of a step's memory is after the encoder (arithmetic, not profiled): the 150-class logits "
            "and aux logits at full resolution in float32 are 2 x 0.13 GiB per 473x473 image, and the loss keeps their "
            "log-softmax and gradients as well.", ""]  # fmt: skip
    return out


def gpu_section(repo: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The GPU figures of ``settings['json']`` as they are (measured elsewhere, not in this run)."""
    path = repo / settings["json"]
    if not path.is_file():
        return {"available": False, "json": settings["json"]}
    results = json.loads(path.read_text())
    env = results.get("environment", {})
    return {
        "available": True,
        "json": settings["json"],
        "markdown": settings["markdown"],
        "gpu": env.get("gpu"),
        "date_utc": env.get("date_utc"),
        "results": results,
    }


def _gpu(s: dict[str, Any]) -> list[str]:
    if not s.get("available"):
        return ["No GPU figures yet: `python bench/gpu_train.py` has not been run on a CUDA machine "
                f"(`{s.get('json')}` is missing).", ""]  # fmt: skip
    from bench.gpu_train import render as render_gpu

    date = (s.get("date_utc") or "")[:10]
    body = render_gpu(s["results"]).replace("### ", "#### ")
    link = Path(s["markdown"]).relative_to("docs").as_posix() if s["markdown"].startswith("docs/") else s["markdown"]
    return [
        f"> **Measured on the {s.get('gpu')} on {date} by `bench/gpu_train.py`, not in this run** (this run's machine is "
        f"described above). The full report, with the method and what the figures say: [{s['markdown']}]({link}); "
        f"the data: `{s['json']}`.",
        "",
        body,
    ]


RUNTIME_LABELS = {"eager": "PyTorch eager", "torch_export": "torch.export program", "onnxruntime": "ONNX Runtime (fp32)",
                  "onnxruntime_int8": "ONNX Runtime (int8)"}


def _runtimes(s: dict[str, Any]) -> list[str]:
    st = s["settings"]
    out = [
        f"Settings: PSPNet ({st['encoder']}, {st['stem']} stem, output stride 8, 150 classes) as `register` logs it (raw "
        f"RGB in, logits out, class map by argmax), batch {st['batch']}, float32, {st['threads']} threads for every "
        f"runtime. The torch.export program and the ONNX graph are traced at {st['trace_size'][0]}x{st['trace_size'][1]} "
        "with dynamic batch, height and width, so both sizes below are sizes they never saw. Per size: "
        f"{st['warmup_runs']} warm-up round, then {st['timed_runs']} timed rounds, the runtimes interleaved "
        "(order reversed every other round). Export took "
        + ", ".join(f"{RUNTIME_LABELS[k]} {v:.1f} s" for k, v in s["export_seconds"].items()) + ".",
        "",
        "| size | runtime | images/s, median (min–max) | latency ms, p50 / p99 | vs eager | class maps = eager |",
        "|---|---|---|---|---|---|",
    ]
    for size, r in s["sizes"].items():
        for name, label in RUNTIME_LABELS.items():
            lat = r["latency_ms"][name]
            vs = _ratio(r["ratio_vs_eager"][name]) if name in r["ratio_vs_eager"] else "1"
            same = f"{r['class_agreement_vs_eager'][name]:.4%}" if name in r["class_agreement_vs_eager"] else "-"
            p99 = lat.get("p99", lat["max"])  # reports before p99 was recorded: the max
            out.append(f"| {size} | {label} | {_fig(r['images_per_s'][name], 3)} | {_f(lat['median'], 0)} / {_f(p99, 0)} | {vs} | {same} |")
    return out + [
        "",
        "With this few rounds the p99 is about the slowest round. The int8 graph (static QDQ, "
        "per-channel weights) is calibrated on random images of a network with random weights, so only its speed "
        "means something here (its class maps are not expected to equal eager's); its accuracy cost on real data is "
        "measured by `pspnet evaluate --model M --runtime onnxruntime-int8` (docs/registry.md).",
        "",
    ]


def _serving(s: dict[str, Any]) -> list[str]:
    st = s["settings"]
    out = [
        f"Settings: PSPNet ({st['encoder']}, {st['stem']} stem, output stride 8, 150 classes) logged as `register` logs "
        f"it and served by `mlflow models serve` on 127.0.0.1 ({st['workers']} worker, {st['threads']} torch threads), "
        "the runtime chosen with `SERVING_MODEL_CONFIG`. Each client sends one request after another: one "
        f"{st['size'][0]}x{st['size'][1]} image as a base64 PNG ({st['request_bytes'] / 1024:.0f} KiB of JSON), the "
        f"reply its class map. {st['warmup_requests']} warm-up requests per server; a level ends after "
        f"{st['requests']} requests (at least one per client) or {st['max_seconds']} s. Latency: sent to reply parsed.",
        "",
        "| runtime | clients | replies | replies/s | latency ms p50 / p99 (max) | errors |",
        "|---|---|---|---|---|---|",
    ]
    for runtime, levels in s["runtimes"].items():
        for lv in levels:
            lat = lv["latency_ms"]
            latency = f"{_f(lat['p50'], 0)} / {_f(lat['p99'], 0)} ({_f(lat['max'], 0)})" if lat else "-"
            errors = f"{lv['errors']}" + (f" ({', '.join(lv['error_kinds'])})" if lv["errors"] else "")
            out.append(f"| {runtime} | {lv['clients']} | {lv['replies']} of {lv['requests']} | {_f(lv['replies_per_s'], 3)} | {latency} | {errors} |")
    return out + [
        "",
        "On 2 cores one request already uses both, so more clients queue: replies/s stays flat and latency grows "
        "with the queue; what the table shows is that nothing fails under that queue.",
        "",
    ]


# --------------------------------------------------------------------------------------------
# The document
# --------------------------------------------------------------------------------------------

SECTION_TITLES = {
    "training": "1. Training step on the CPU: PSPNet-R50 against torchvision DeepLabV3-R50",
    "inference": "2. Inference: single scale and MS+flip",
    "pipeline": "3. Input pipeline: decode + the paper's augmentation + collation",
    "validation": "4. Validation stage at scale",
    "dvc": "5. DVC: no-op `dvc repro` and the pipeline's overhead",
    "memory": "6. Peak training memory on the CPU",
    "gpu": "7. GPU figures (not measured in this run)",
    "runtimes": "8. Inference runtimes: PyTorch eager, torch.export, ONNX Runtime fp32 and int8",
    "serving": "9. The served endpoint under concurrent load",
}
RENDERERS = {
    "training": _training,
    "inference": _inference,
    "pipeline": _pipeline,
    "validation": _validation,
    "dvc": _dvc,
    "memory": _memory,
    "gpu": _gpu,
    "runtimes": _runtimes,
    "serving": _serving,
}


def render(data: dict[str, Any]) -> str:
    quick = data.get("quick")
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{data['generated_by']}` (`make bench`) on {data['date_utc']} in {data.get('bench_wall_s', 0) / 60:.1f} min. "
        "Do not edit by hand: run `make bench` again.",
        "",
    ]
    if quick:
        lines += ["> **Quick mode (`--quick`): toy sizes that only check that every section runs. These figures mean nothing.**", ""]
    lines += [
        "How to read it: this machine is shared with other work, so absolute times move from run to run. Every figure is "
        "the **median of repeated runs** (how many is said in each section; min–max in brackets), and every section "
        "compares ours with a **peer measured in the same run**, interleaved with ours where possible: the ratios are "
        "the figures to quote. 'paired' is the median of the ratios of back-to-back runs, the steadier one under "
        "changing load. The load average at the start and end of each section is in the JSON.",
        "",
        *_machine(data),
    ]
    sections = data.get("sections", {})
    for name, title in SECTION_TITLES.items():
        lines += [f"## {title}", ""]
        if name not in sections:
            lines += ["Not run (`--only`).", ""]
            continue
        section = sections[name]
        if section.get("carried_over_from"):
            lines += [f"> From the run of {section['carried_over_from']}, kept by an `--only` run that did not measure this "
                      "section (the machine and versions above are that later run's).", ""]  # fmt: skip
        if "error" in section:
            lines += _error(section)
            continue
        lines += RENDERERS[name](section)
        if name == "validation":
            lines += [VALIDATION_CHANGES.format(before_after=_before_after()), ""]
    return "\n".join(lines).rstrip() + "\n"


def _before_after() -> str:
    if VALIDATION_BEFORE_AFTER is None:
        return ""
    b = VALIDATION_BEFORE_AFTER
    rows = ["| samples | stage s before | stage s after | peak RSS MiB before | peak RSS MiB after |", "|---|---|---|---|---|"]
    for size, before, after in b["rows"]:
        rows.append(f"| {size:,} | {before['stage_s']:.1f} | {after['stage_s']:.1f} | {before['rss_mib']:.0f} | {after['rss_mib']:.0f} |")
    (ms_b, kib_b), (ms_a, kib_a) = b["fit"]["before"], b["fit"]["after"]
    rows.append(f"| per extra sample (linear fit) | {ms_b:.3f} ms | {ms_a:.3f} ms | {kib_b:.2f} KiB | {kib_a:.2f} KiB |")
    return f"Whole stage, {b['note']}:\n\n" + "\n".join(rows) + "\n"
