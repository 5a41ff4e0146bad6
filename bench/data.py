"""CPU figures of the data path: the training input pipeline and the validation stage.

Input pipeline: the library's train loader (:func:`pspnet.train.recipe.make_train_loader`:
:class:`~pspnet.data.dataset.SegmentationDataset` decoding PNGs, the paper's augmentation of
:func:`pspnet.data.transforms.train_transform`, per-sample reseeding, default collation)
against a plain PIL decode + torchvision ``transforms.v2`` pipeline doing the same steps, both
in a DataLoader with the same batch size and workers.

Validation: the real ``pspnet validate`` in a subprocess (wall time, the stage's own time,
peak RSS) on a generated prepared dataset at several sizes, against the least work any
validator must do: decode every image and mask and count the mask's labels.
"""

from __future__ import annotations

import io as stdio
import json
import shutil
import struct
import sys
import time
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from bench.timing import Progress, figure, linear_fit, rate_figure, ratio, run_measured, subprocess_env
from pspnet.config import Params, parse_params
from pspnet.data import context_scenes
from pspnet.data.classes import CLASSES_FILE, ClassTable
from pspnet.data.manifest import MANIFEST_FILE

#: The paper's training augmentation (``train.*``): scale 0.5-2.0, rotation +-10 deg, blur,
#: flip, 473x473 crop. Rotation and blur probabilities are the library's (the official code's) 0.5.
PAPER_AUGMENTATION = {
    "scale_range": [0.5, 2.0],
    "rotate_degrees": 10.0,
    "rotate_p": 0.5,
    "blur_p": 0.5,
    "hflip": True,
}
#: Where the CamVid copy lives, relative to the repository root (used when present).
CAMVID_DIR = Path("..") / "shared" / "datasets" / "camvid"
#: Images per generated validation template (every sample reuses one of them, bytes for bytes).
VALIDATION_TEMPLATES = 64
#: One sample in this many goes to the val split.
VAL_EVERY = 5
#: How long one ``pspnet validate`` may run.
VALIDATE_TIMEOUT_S = 1800.0


def base_params(repo: Path, train: dict[str, Any]) -> Params:
    """The repository's ``params.yaml`` with ``train`` overrides."""
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw.setdefault("train", {}).update(train)
    return parse_params(raw, "bench")


def _png(array: np.ndarray) -> bytes:
    buffer = stdio.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


#: Bytes of a PNG's signature and IHDR chunk: a chunk inserted after them keeps the file valid.
PNG_HEADER_BYTES = 8 + 25


def _with_name(png: bytes, name: str) -> bytes:
    """``png`` with a ``tEXt`` chunk naming the sample: the same pixels, unique file bytes (the
    data gate fails byte-identical images in two splits), without encoding the image again."""
    data = b"sample\x00" + name.encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    return png[:PNG_HEADER_BYTES] + chunk + png[PNG_HEADER_BYTES:]


def _write_manifest(prepared: Path, rows: Iterable[tuple[str, str]]) -> int:
    lines = ["id,split,image,mask"] + [f"{sid},{split},images/{sid}.png,masks/{sid}.png" for sid, split in rows]
    (prepared / MANIFEST_FILE).write_text("\n".join(lines) + "\n")
    return len(lines) - 1


# --------------------------------------------------------------------------------------------
# Input pipeline
# --------------------------------------------------------------------------------------------


def pipeline_images(repo: Path, dest: Path, count: int, size: tuple[int, int]) -> dict[str, Any]:
    """A prepared folder of ``count`` train samples: CamVid's first frames when
    ``../shared/datasets/camvid`` exists, else generated scenes of ``size`` (H, W)."""
    prepared = dest / "prepared"
    (prepared / "images").mkdir(parents=True, exist_ok=True)
    (prepared / "masks").mkdir(parents=True, exist_ok=True)
    camvid = (repo / CAMVID_DIR).resolve()
    names: list[str] = []
    if (camvid / "train").is_dir() and (camvid / "trainannot").is_dir():
        for image in sorted((camvid / "train").glob("*.png"))[:count]:
            mask = camvid / "trainannot" / image.name
            if mask.is_file():
                shutil.copyfile(image, prepared / "images" / image.name)
                shutil.copyfile(mask, prepared / "masks" / image.name)
                names.append(image.stem)
        source = f"CamVid ({CAMVID_DIR.as_posix()}/train, first {len(names)} frames, 360x480 PNG)"
    if len(names) < count:  # no CamVid, or too few frames
        names = []
        rng = np.random.default_rng(0)
        for i in range(count):
            image, mask = context_scenes.generate_sample(rng, *size)
            (prepared / "images" / f"g{i:04d}.png").write_bytes(_png(image))
            (prepared / "masks" / f"g{i:04d}.png").write_bytes(_png(mask))
            names.append(f"g{i:04d}")
        source = f"generated scenes (pspnet.data.context_scenes), {len(names)} PNGs of {size[0]}x{size[1]} (HxW)"
    _write_manifest(prepared, [(n, "train") for n in names])
    with Image.open(prepared / "images" / f"{names[0]}.png") as first:
        hw = (first.height, first.width)
    return {"prepared": prepared, "source": source, "count": len(names), "image_hw": list(hw)}


class PeerPairs(torch.utils.data.Dataset):
    """The peer: PIL decode + torchvision ``transforms.v2``, the same steps as ours: scale jitter
    0.5-2.0 (bilinear, masks nearest), rotation +-10 deg with p 0.5 (mean colour / 255 fill),
    5x5 Gaussian blur (sigma 1.1, image only) with p 0.5, horizontal flip, pad-if-needed and
    random crop, float + normalise; masks int64."""

    def __init__(self, prepared: Path, params: Params, hw: tuple[int, int]) -> None:
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        self.tv_tensors = tv_tensors
        rows = [line.split(",") for line in (prepared / MANIFEST_FILE).read_text().splitlines()[1:]]
        self.items = [(prepared / r[2], prepared / r[3]) for r in rows]
        t, m = params.train, params.model
        fill = {tv_tensors.Image: tuple(255.0 * v for v in m.input_mean), tv_tensors.Mask: params.data.ignore_index}
        bilinear = v2.InterpolationMode.BILINEAR
        self.transform = v2.Compose(
            [
                v2.ScaleJitter(hw, scale_range=tuple(t.scale_range), interpolation=bilinear, antialias=False),
                v2.RandomApply([v2.RandomRotation(t.rotate_degrees, interpolation=bilinear, fill=fill)], p=t.rotate_p),
                v2.RandomApply([v2.GaussianBlur(5, sigma=1.1)], p=t.blur_p),
                v2.RandomHorizontalFlip(0.5),
                v2.RandomCrop(tuple(t.crop_size), pad_if_needed=True, fill=fill),
                v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
                v2.Normalize(list(m.input_mean), list(m.input_std)),
            ]
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.transforms.v2 import functional as F

        image_path, mask_path = self.items[index]
        with Image.open(image_path) as img:
            image = self.tv_tensors.Image(F.pil_to_tensor(img.convert("RGB")))
        with Image.open(mask_path) as msk:
            mask = self.tv_tensors.Mask(torch.from_numpy(np.asarray(msk, dtype=np.uint8).copy()))
        image, mask = self.transform(image, mask)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


def _epoch_seconds(loader: Any, epoch: int) -> tuple[float, int]:
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    start = time.perf_counter()
    images = 0
    for image, _mask in loader:
        images += int(image.shape[0])
    return time.perf_counter() - start, images


def input_pipeline(settings: dict[str, Any], progress: Progress, repo: Path, work: Path) -> dict[str, Any]:
    """images/s (and per core) of ours and the peer with 0 and with N DataLoader workers."""
    import cv2

    from pspnet.data.dataset import SegmentationDataset
    from pspnet.data.transforms import train_transform
    from pspnet.train.recipe import make_train_loader

    progress.step("writing the images", 0.0)
    data = pipeline_images(repo, work / "pipeline", settings["images"], tuple(settings["generated_hw"]))
    hw = tuple(data["image_hw"])
    saved_threads = (torch.get_num_threads(), cv2.getNumThreads())
    # One thread per process: "per core" then means per process (0 workers: the main one).
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    results = []
    try:
        for w_i, workers in enumerate(settings["workers"]):
            train = {**PAPER_AUGMENTATION, "crop_size": list(settings["crop"]), "batch_size": settings["batch"], "num_workers": workers}
            params = base_params(repo, train)
            ours_set = SegmentationDataset(data["prepared"], "train", train_transform(params))
            ours = make_train_loader(ours_set, params, torch.device("cpu"))
            peer = torch.utils.data.DataLoader(
                PeerPairs(data["prepared"], params, hw), batch_size=settings["batch"], shuffle=True, drop_last=True,
                num_workers=workers, persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0),
            )  # fmt: skip
            loaders = {"ours": ours, "peer": peer}
            times: dict[str, list[float]] = {"ours": [], "peer": []}
            counts: dict[str, int] = {}
            epochs = settings["warmup_epochs"] + settings["epochs"]
            for epoch in range(1, epochs + 1):
                for name in ("ours", "peer") if epoch % 2 else ("peer", "ours"):
                    done = (w_i * epochs + epoch - 1) / (len(settings["workers"]) * epochs)
                    progress.step(f"{workers} worker(s): {name} epoch {epoch}/{epochs}", done)
                    seconds, images = _epoch_seconds(loaders[name], epoch)
                    counts[name] = images
                    if epoch > settings["warmup_epochs"]:
                        times[name].append(seconds)
            cores = max(1, workers)
            row: dict[str, Any] = {"workers": workers, "processes_doing_the_work": cores}
            for name in ("ours", "peer"):
                rate = rate_figure(times[name], counts[name], "images/s")
                row[name] = {"images_per_epoch": counts[name], "images_per_s": rate,
                             "images_per_s_per_core": figure([v / cores for v in rate["values"]], "images/s/core")}  # fmt: skip
            row["ratio"] = ratio(row["ours"]["images_per_s"], row["peer"]["images_per_s"], paired=True)
            results.append(row)
            del ours, peer, loaders
    finally:
        torch.set_num_threads(saved_threads[0])
        cv2.setNumThreads(saved_threads[1])
    return {
        "settings": {**settings, "augmentation": PAPER_AUGMENTATION, "source": data["source"], "image_hw": data["image_hw"],
                     "threads_per_process": 1},  # fmt: skip
        "rows": results,
    }


# --------------------------------------------------------------------------------------------
# Validation stage
# --------------------------------------------------------------------------------------------


def validation_dataset(project: Path, size: int, hw: tuple[int, int], repo: Path) -> ClassTable:
    """A project folder whose ``data/prepared`` holds ``size`` generated samples (PNGs written
    from :data:`VALIDATION_TEMPLATES` generated scenes) and the repository's ``params.yaml``."""
    prepared = project / "data" / "prepared"
    (prepared / "images").mkdir(parents=True, exist_ok=True)
    (prepared / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    templates = []
    present: set[int] = set()
    for i in range(VALIDATION_TEMPLATES):
        image, mask = context_scenes.generate_sample(rng, *hw, scene=context_scenes.sample_scene(i))
        present |= set(np.unique(mask).tolist())
        templates.append((_png(image), _png(mask)))
    classes = ClassTable(names=context_scenes.CLASS_NAMES, colors=context_scenes.CLASS_COLORS)
    missing = set(range(classes.num_classes)) - present
    if missing:
        raise RuntimeError(f"the validation templates miss classes {sorted(missing)}; raise VALIDATION_TEMPLATES")
    for i in range(size):
        image, mask = templates[i % len(templates)]
        (prepared / "images" / f"s{i:07d}.png").write_bytes(_with_name(image, f"s{i:07d}"))
        (prepared / "masks" / f"s{i:07d}.png").write_bytes(mask)
    classes.save(prepared / CLASSES_FILE)
    shutil.copyfile(repo / "params.yaml", project / "params.yaml")
    return classes


def _use_first(project: Path, size: int, hw: tuple[int, int]) -> None:
    """Make the prepared dataset the first ``size`` samples (manifest and dataset record), and
    clear earlier reports (every run starts from the same state: no history)."""
    prepared = project / "data" / "prepared"
    rows = [(f"s{i:07d}", "val" if i % VAL_EVERY == 0 else "train") for i in range(size)]
    _write_manifest(prepared, rows)
    record = {"source": "synthetic", "version": f"bench-{size}", "num_samples": size,
              "expect": {"image_sizes": [list(hw)], "min_side": None, "max_side": None}}  # fmt: skip
    (prepared / "dataset.json").write_text(json.dumps(record))
    shutil.rmtree(project / "reports", ignore_errors=True)


def _stage_summary(stdout: str) -> dict[str, Any]:
    """The JSON summary ``pspnet validate`` prints last."""
    start = stdout.find("{")
    return json.loads(stdout[start:]) if start >= 0 else {}


def decode_all(prepared: Path, rows: list[tuple[str, str]], workers: int) -> float:
    """The peer: decode every image and mask (PIL, in full) and count the mask's labels, on
    ``workers`` threads; seconds."""

    def one(row: tuple[str, str]) -> int:
        image, mask = row
        with Image.open(prepared / image) as img:
            img.load()
        with Image.open(prepared / mask) as msk:
            return int(np.count_nonzero(np.bincount(np.asarray(msk).ravel(), minlength=256)))

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(one, rows, chunksize=64):
            pass
    return time.perf_counter() - start


def validation(
    settings: dict[str, Any], progress: Progress, repo: Path, work: Path, pycache: Path | None, pythonpath: str | None = None
) -> dict[str, Any]:
    """``pspnet validate`` samples/s and peak RSS at each size, the scaling fit, and the peer."""
    sizes = sorted(settings["sizes"])
    hw = (settings["height"], settings["width"])
    project = work / "validation"
    progress.step(f"writing {max(sizes):,} samples of {hw[0]}x{hw[1]}", 0.0)
    start = time.perf_counter()
    validation_dataset(project, max(sizes), hw, repo)
    written_s = time.perf_counter() - start
    env = subprocess_env(pycache)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = [str(Path(sys.executable).parent / "pspnet"), "validate", "--root", str(project)]
    num_workers = base_params(repo, {}).validate_.num_workers

    def run(size: int) -> dict[str, Any]:
        _use_first(project, size, hw)
        done = run_measured(cmd, project, env, VALIDATE_TIMEOUT_S).check()
        summary = _stage_summary(done.stdout)
        if not summary.get("success"):
            raise RuntimeError(f"pspnet validate did not pass on the generated data: {done.stdout[-2000:]}")
        return {"wall_s": done.wall_s, "stage_s": float(summary["seconds"]), "peak_rss_bytes": done.peak_rss_bytes}

    warm = None
    if settings["warmup_size"] > 0:
        progress.step(f"warm-up run ({settings['warmup_size']} samples: bytecode and file caches)", 0.02)
        warm = run(settings["warmup_size"])
    total = len(sizes) * settings["runs"] + settings["runs"]
    done_n = 0
    per_size: dict[int, list[dict[str, Any]]] = {s: [] for s in sizes}
    peer_s: list[float] = []
    rows = [(f"images/s{i:07d}.png", f"masks/s{i:07d}.png") for i in range(max(sizes))]
    for r in range(settings["runs"]):
        for size in sizes:
            progress.step(f"pspnet validate, {size:,} samples (run {r + 1}/{settings['runs']})", done_n / total)
            per_size[size].append(run(size))
            done_n += 1
        progress.step(f"peer: decode + label count of {max(sizes):,} samples (run {r + 1}/{settings['runs']})", done_n / total)
        peer_s.append(decode_all(project / "data" / "prepared", rows, num_workers))
        done_n += 1
    table = []
    for size in sizes:
        runs = per_size[size]
        table.append(
            {
                "samples": size,
                "stage_s": figure([x["stage_s"] for x in runs], "s"),
                "wall_s": figure([x["wall_s"] for x in runs], "s"),
                "samples_per_s": rate_figure([x["stage_s"] for x in runs], size, "samples/s"),
                "samples_per_s_wall": rate_figure([x["wall_s"] for x in runs], size, "samples/s"),
                "peak_rss_bytes": figure([x["peak_rss_bytes"] for x in runs], "bytes"),
            }
        )
    xs = [float(t["samples"]) for t in table]
    time_fit = linear_fit(xs, [t["stage_s"]["median"] for t in table])
    memory_fit = linear_fit(xs, [t["peak_rss_bytes"]["median"] for t in table])
    largest = table[-1]
    peer = rate_figure(peer_s, max(sizes), "samples/s")
    shutil.rmtree(project, ignore_errors=True)
    return {
        "settings": {**settings, "image_hw": list(hw), "profile_threads": num_workers, "generated_in_s": written_s,
                     "dataset": f"{max(sizes):,} samples written from {VALIDATION_TEMPLATES} generated scenes "
                                f"(pspnet.data.context_scenes, {hw[0]}x{hw[1]} PNG, 9 classes), 1 in {VAL_EVERY} in val"},  # fmt: skip
        "warmup_run": warm,
        "sizes": table,
        "time_fit": time_fit,
        "memory_fit": memory_fit,
        "marginal_ms_per_sample": time_fit["slope"] * 1e3,
        "marginal_bytes_per_sample": memory_fit["slope"],
        "peer_samples_per_s": peer,
        "ratio_vs_peer": ratio(largest["samples_per_s"], peer),
    }

