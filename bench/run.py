"""``make bench`` / ``python -m bench``: CPU benchmarks of the pipeline -> docs/benchmarks.md + .json.

Sections (``--only`` takes a comma-separated subset):

- ``training``: training step of PSPNet-R50 vs torchvision DeepLabV3-R50, FLOPs and FLOP/s;
- ``inference``: images/s at 480x360, single scale and MS+flip;
- ``pipeline``: input pipeline (decode + the paper's augmentation + collation) images/s per core;
- ``validation``: ``pspnet validate`` samples/s and peak memory at 5,000 / 10,000 / 20,000 samples;
- ``dvc``: full and no-op ``dvc repro``, pipeline overhead;
- ``memory``: peak training memory per batch size, crop and gradient checkpointing;
- ``gpu``: the GPU figures of docs/results/gpu-h100.json (measured by bench/gpu_train.py);
- ``runtimes``: the registered network on PyTorch eager, torch.export and ONNX Runtime at 360x480 and 713x713;
- ``serving``: ``mlflow models serve`` of the registered layout under 1, 4 and 16 concurrent clients.

Every figure is the median of repeated runs, with a ratio against a peer measured in the same
run. ``--quick`` runs every section at toy sizes (a smoke test, seconds, not figures to quote).
The JSON is written after every section (a run cut short keeps what it measured) and the
Markdown at the end, both atomically.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/run.py` as well as `python -m bench`
    sys.path.insert(0, str(REPO))

from bench import report  # noqa: E402
from bench.timing import Progress, clock, git_state, load_average, machine, versions  # noqa: E402
from pspnet import atomic_files

SECTIONS = ("training", "inference", "pipeline", "validation", "dvc", "memory", "gpu", "runtimes", "serving")
#: The paper's test scales (also ``bench.models.PAPER_SCALES``; repeated here so that loading
#: the settings does not import torch).
PAPER_SCALES = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]

#: What ``make bench`` measures. Budget on a 2-core CPU: about 22 minutes in all (runtimes: 5, serving: 5).
FULL: dict[str, dict[str, Any]] = {
    "training": {"crop": 473, "batch": 2, "precisions": ["auto", "fp32"], "channels_last": ["auto"], "warmup_steps": 1,
                 "timed_steps": 3},  # fmt: skip
    "inference": {"height": 360, "width": 480, "scales": PAPER_SCALES, "warmup_runs": 1, "single_scale_runs": 5, "ms_flip_runs": 3},
    "pipeline": {"images": 48, "batch": 8, "crop": [473, 473], "workers": [0, 2], "warmup_epochs": 1, "epochs": 3,
                 "generated_hw": [360, 480]},  # fmt: skip
    "validation": {"sizes": [5000, 10000, 20000], "height": 48, "width": 64, "runs": 2, "warmup_size": 500},
    "dvc": {"runs": 5, "target": []},
    "memory": {"precision": "auto", "configs": [
        ["pspnet", 233, 2, False], ["pspnet", 233, 2, True], ["pspnet", 233, 4, False], ["pspnet", 233, 4, True],
        ["pspnet", 473, 2, False], ["pspnet", 473, 2, True],
        ["pspnet", 473, 4, False], ["pspnet", 473, 4, True], ["deeplabv3", 473, 2, False], ["deeplabv3", 473, 2, True],
    ]},  # fmt: skip
    "gpu": {"json": "docs/results/gpu-h100.json", "markdown": "docs/results/gpu-h100.md"},
    "runtimes": {"encoder": "resnet50", "stem": "deep", "sizes": [[360, 480], [713, 713]], "warmup_runs": 1, "timed_runs": 4},
    "serving": {"encoder": "resnet50", "stem": "deep", "size": [360, 480], "runtimes": ["torch", "onnxruntime"],
                "clients": [1, 4, 16], "requests": 24, "max_seconds": 90, "warmup_requests": 2},
}
#: ``--quick``: the same code paths at toy sizes (for the test and a smoke run).
QUICK: dict[str, dict[str, Any]] = {
    "training": {"crop": 65, "batch": 2, "precisions": ["fp32"], "channels_last": ["auto"], "warmup_steps": 0, "timed_steps": 2},
    "inference": {"height": 40, "width": 56, "scales": PAPER_SCALES, "warmup_runs": 0, "single_scale_runs": 2, "ms_flip_runs": 1},
    "pipeline": {"images": 8, "batch": 4, "crop": [33, 33], "workers": [0, 2], "warmup_epochs": 1, "epochs": 2,
                 "generated_hw": [36, 48]},  # fmt: skip
    "validation": {"sizes": [60, 120], "height": 48, "width": 64, "runs": 1, "warmup_size": 0},
    "dvc": {"runs": 2, "target": ["prepare"]},
    "memory": {"precision": "fp32", "configs": [["pspnet", 65, 2, False], ["pspnet", 65, 2, True], ["deeplabv3", 65, 2, False]]},
    "gpu": FULL["gpu"],
    "runtimes": {"encoder": "resnet18", "stem": "auto", "sizes": [[40, 56], [45, 61]], "warmup_runs": 0, "timed_runs": 2},
    "serving": {"encoder": "resnet18", "stem": "auto", "size": [40, 56], "runtimes": ["torch", "onnxruntime"],
                "clients": [1, 4], "requests": 4, "max_seconds": 30, "warmup_requests": 1},
}
#: A-priori seconds of each section on a 2-core CPU (for the ETA only).
ESTIMATES_S = {"training": 190, "inference": 70, "pipeline": 35, "validation": 85, "dvc": 85, "memory": 110, "gpu": 1,
               "runtimes": 300, "serving": 300}  # fmt: skip
QUICK_ESTIMATES_S = {"training": 10, "inference": 8, "pipeline": 6, "validation": 10, "dvc": 10, "memory": 12, "gpu": 1,
                     "runtimes": 25, "serving": 60}  # fmt: skip
#: Bytecode cache of the measured subprocesses: outside the venv, kept between runs.
PYCACHE_DIR = Path(tempfile.gettempdir()) / "pspnet-bench-pycache"


def run_section(name: str, settings: dict[str, Any], progress: Progress, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    pycache = None if args.no_pycache else PYCACHE_DIR
    if name == "training":
        from bench.models import training

        return training(settings, progress)
    if name == "inference":
        from bench.models import inference

        return inference(settings, progress)
    if name == "pipeline":
        from bench.data import input_pipeline

        return input_pipeline(settings, progress, REPO, work)
    if name == "validation":
        from bench.data import validation

        return validation(settings, progress, REPO, work, pycache, args.validate_pythonpath)
    if name == "dvc":
        from bench.dvcrun import dvc_pipeline

        return dvc_pipeline(settings, progress, REPO, work, pycache)
    if name == "memory":
        from bench.models import memory

        return memory(settings, progress, REPO, pycache)
    if name == "gpu":
        return report.gpu_section(REPO, settings)
    if name == "runtimes":
        from bench.runtimes import runtimes

        return runtimes(settings, progress)
    if name == "serving":
        from bench.serving import serving

        return serving(settings, progress, work)
    raise ValueError(name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections (default: all): {','.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="toy sizes: checks that every section runs (figures not meaningful)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "docs", help="where benchmarks.md and benchmarks.json go")
    parser.add_argument("--json", type=Path, help="JSON path (default: OUT_DIR/benchmarks.json)")
    parser.add_argument("--markdown", type=Path, help="Markdown path (default: OUT_DIR/benchmarks.md)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=JSON",
                        help="override one setting, e.g. --set training.precisions='[\"fp32\",\"bf16\"]'")  # fmt: skip
    parser.add_argument("--render", type=Path, metavar="JSON", help="only render an existing results JSON to Markdown")
    parser.add_argument("--stop-on-error", action="store_true", help="stop at the first failing section (default: record it, go on, exit 1)")
    parser.add_argument("--no-pycache", action="store_true", help="measured subprocesses without a bytecode cache")
    parser.add_argument("--validate-pythonpath", help=argparse.SUPPRESS)  # another source tree for `pspnet validate` (before/after)
    args = parser.parse_args(argv)
    unknown = [s for s in args.only.split(",") if s and s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    args.sections = [s for s in SECTIONS if s in args.only.split(",")]
    args.json = args.json or args.out_dir / "benchmarks.json"
    args.markdown = args.markdown or args.out_dir / "benchmarks.md"
    return args


def settings_for(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    settings = copy.deepcopy(QUICK if args.quick else FULL)
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, field = key.partition(".")
        if section not in settings or not field:
            raise SystemExit(f"--set {item}: expected SECTION.KEY=JSON with SECTION one of {', '.join(SECTIONS)}")
        settings[section][field] = json.loads(value)
    return settings


def carry_over(data: dict[str, Any], args: argparse.Namespace) -> None:
    """With ``--only``, keep the other sections of the report being replaced (same JSON path,
    not quick), each marked with the date of the run that measured it."""
    if args.quick or not data["not_run"] or not args.json.is_file():
        return
    try:
        previous = json.loads(args.json.read_text())
    except ValueError:
        return
    if previous.get("quick"):
        return
    for name in list(data["not_run"]):
        section = previous.get("sections", {}).get(name)
        if section and "error" not in section:
            section.setdefault("carried_over_from", previous.get("date_utc"))
            data["sections"][name] = section
            data["settings"][name] = previous.get("settings", {}).get(name)
            data["not_run"].remove(name)
            data.setdefault("carried_over", []).append(name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        data = json.loads(args.render.read_text())
        atomic_files.write_text(args.markdown, report.render(data))
        print(f"wrote {args.markdown}")
        return 0
    settings = settings_for(args)
    saved_bytecode = (sys.pycache_prefix, sys.dont_write_bytecode)
    if sys.dont_write_bytecode and not args.no_pycache:
        # The environment turned bytecode caching off (PYTHONDONTWRITEBYTECODE): every import would
        # compile its sources again. Cache it outside the source tree instead, as the subprocesses do
        # (put back at the end).
        sys.pycache_prefix, sys.dont_write_bytecode = str(PYCACHE_DIR), False
    estimates = QUICK_ESTIMATES_S if args.quick else ESTIMATES_S
    progress = Progress({s: estimates[s] for s in args.sections})
    data: dict[str, Any] = {
        "generated_by": "python -m bench" + (" --quick" if args.quick else "") + (f" --only {','.join(args.sections)}" if args.sections != list(SECTIONS) else ""),
        "quick": args.quick,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "versions": versions(),
        "git": git_state(REPO),
        "load_average_start": load_average(),
        "settings": {s: settings[s] for s in args.sections},
        "sections": {},
        "not_run": [s for s in SECTIONS if s not in args.sections],
    }  # fmt: skip
    carry_over(data, args)
    print(f"bench: {', '.join(args.sections)}{' (quick)' if args.quick else ''} -> {args.json}, {args.markdown}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="pspnet-bench-"))
    failed = False
    try:
        for name in args.sections:
            start = time.perf_counter()
            load_before = load_average()
            with progress.run_section(name):
                try:
                    result = run_section(name, settings[name], progress, work, args)
                except Exception as err:  # noqa: BLE001 - recorded in the report; the run goes on unless --stop-on-error
                    traceback.print_exc()
                    result = {"error": f"{type(err).__name__}: {err}"}
                    failed = True
            result["section_wall_s"] = time.perf_counter() - start
            result["load_average_before"], result["load_average_after"] = load_before, load_average()
            data["sections"][name] = result
            data["bench_wall_s"] = time.perf_counter() - progress.start
            atomic_files.write_json(args.json, data)
            if failed and args.stop_on_error:
                break
    finally:
        shutil.rmtree(work, ignore_errors=True)
        total = progress.close()
        sys.pycache_prefix, sys.dont_write_bytecode = saved_bytecode
    data["bench_wall_s"] = total
    data["load_average_end"] = load_average()
    atomic_files.write_json(args.json, data)
    atomic_files.write_text(args.markdown, report.render(data))
    print(f"bench: done in {clock(total)}; wrote {args.json} and {args.markdown}", flush=True)
    return 1 if failed else 0

