"""What every benchmark section shares: figures (median of repeated runs), ratios against a
peer, progress lines with an ETA, subprocesses measured for wall time and peak memory, and the
description of the machine and the versions.

A *figure* is a dict: ``values`` (every timed run, in order), ``runs``, ``median``, ``min``,
``max`` and ``unit``. A *ratio* compares our median with the peer's median measured in the same
run (``ratio``), and, where runs were paired (ours then the peer's, back to back, under the same
load), also the median of the per-pair ratios (``paired_ratio_median``): on a machine shared
with other work, the paired one is the steadier.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pspnet.ops.environment import tool_env

#: Seconds between two "still running" lines while a long measurement runs.
HEARTBEAT_S = 30.0
#: Distributions whose versions the report states (import name differs for some).
VERSIONED_PACKAGES = (
    "torch",
    "torchvision",
    "segmentation-models-pytorch",
    "mlflow",
    "dvc",
    "great-expectations",
    "albumentations",
    "opencv-python-headless",
    "pillow",
    "numpy",
    "pandas",
)
#: Environment variables a subprocess must not inherit (they would point MLflow at another store).
DROPPED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PYTHONDONTWRITEBYTECODE")
#: Poll interval while waiting for a measured subprocess.
POLL_S = 0.02
#: Bytes read at a time from a measured subprocess's output.
READ_CHUNK = 1 << 16
KIB = 1024


# --------------------------------------------------------------------------------------------
# Figures and ratios
# --------------------------------------------------------------------------------------------


def figure(values: Sequence[float], unit: str) -> dict[str, Any]:
    """The median (and min, max) of ``values`` (one per timed run)."""
    if not values:
        raise ValueError("a figure needs at least one run")
    vals = [float(v) for v in values]
    return {
        "values": vals,
        "runs": len(vals),
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "unit": unit,
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between the sorted values (p99 of few runs ~ the max)."""
    ordered = sorted(float(v) for v in values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_figure(milliseconds: Sequence[float]) -> dict[str, Any]:
    """:func:`figure` of latencies in ms, with their p50 and p99."""
    return {**figure(milliseconds, "ms"), "p50": percentile(milliseconds, 50), "p99": percentile(milliseconds, 99)}


def rate_figure(seconds: Sequence[float], items: float, unit: str) -> dict[str, Any]:
    """``items`` per second for each run of ``seconds`` (the median of the rates)."""
    return figure([items / s for s in seconds], unit)


def ratio(ours: dict[str, Any], peer: dict[str, Any], paired: bool = False) -> dict[str, Any]:
    """ours / peer of two figures' medians; with ``paired`` (runs interleaved one for one) also
    the median of the per-run ratios."""
    out: dict[str, Any] = {"ours": ours["median"], "peer": peer["median"], "ratio": ours["median"] / peer["median"]}
    if paired and len(ours["values"]) == len(peer["values"]):
        out["paired_ratio_median"] = statistics.median(o / p for o, p in zip(ours["values"], peer["values"]))
    return out


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """Least-squares ``y = intercept + slope * x`` and its R^2 (1 for fewer than 3 points that fit)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    return {"intercept": intercept, "slope": slope, "r2": 1.0 - ss_res / ss_tot if ss_tot else 1.0}


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------


def clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Prints ``[bench 3m10s | ETA 7m40s] section: what`` lines: at every step a section reports,
    and every :data:`HEARTBEAT_S` seconds while a step runs. The ETA sums the a-priori estimates
    of what is left, scaled by how fast the finished sections went against theirs."""

    def __init__(self, estimates: dict[str, float], stream: Any = None) -> None:
        self.estimates = dict(estimates)
        self.stream = stream or sys.stdout
        self.start = time.perf_counter()
        self.done: dict[str, float] = {}
        self.section: str | None = None
        self.section_start = self.start
        self.fraction = 0.0
        self.what = ""
        self.last_line = self.start
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, daemon=True)
        self._thread.start()

    def eta(self) -> float:
        spent = sum(self.done.values())
        planned = sum(self.estimates[s] for s in self.done)
        speed = min(max(spent / planned, 0.25), 4.0) if planned > 0 else 1.0
        left = sum(v for s, v in self.estimates.items() if s not in self.done and s != self.section)
        if self.section is not None:
            current = self.estimates.get(self.section, 0.0)
            left += max(current * (1.0 - self.fraction), 0.0)
        return left * speed

    def _print(self, text: str) -> None:
        now = time.perf_counter()
        self.last_line = now
        print(f"[bench {clock(now - self.start)} | ETA {clock(self.eta())}] {text}", file=self.stream, flush=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                if self.section and time.perf_counter() - self.last_line >= HEARTBEAT_S:
                    self._print(f"{self.section}: still running: {self.what}")

    @contextlib.contextmanager
    def run_section(self, name: str) -> Iterator[None]:
        with self._lock:
            self.section, self.section_start, self.fraction, self.what = name, time.perf_counter(), 0.0, "starting"
            self._print(f"{name}: start")
        try:
            yield
        finally:
            with self._lock:
                self.done[name] = time.perf_counter() - self.section_start
                self.section = None
                self._print(f"{name}: done in {clock(self.done[name])}")

    def step(self, what: str, fraction: float) -> None:
        """The current section is about ``fraction`` done and now does ``what``."""
        with self._lock:
            self.what, self.fraction = what, min(max(fraction, 0.0), 1.0)
            self._print(f"{self.section}: {what}")

    def close(self) -> float:
        self._stop.set()
        self._thread.join()
        return time.perf_counter() - self.start


# --------------------------------------------------------------------------------------------
# Subprocesses
# --------------------------------------------------------------------------------------------


def subprocess_env(pycache: Path | None) -> dict[str, str]:
    """The tools' environment (this venv first on PATH), no MLflow store from the caller, and
    Python's bytecode cache on: in ``pycache`` (outside the venv) when given, as after the first
    run of a normal install."""
    env = tool_env()
    for name in DROPPED_ENV:
        env.pop(name, None)
    if pycache is not None:
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    env["DVC_NO_ANALYTICS"] = "1"
    env["MPLBACKEND"] = "Agg"
    return env


@dataclass
class Measured:
    """A finished subprocess: exit code, wall time, peak resident memory, its output."""

    returncode: int
    wall_s: float
    peak_rss_bytes: int
    stdout: str
    stderr: str
    cmd: list[str] = field(default_factory=list)

    def check(self) -> Measured:
        if self.returncode != 0:
            raise RuntimeError(
                f"{' '.join(self.cmd)} exited {self.returncode}\nstdout:\n{self.stdout[-3000:]}\nstderr:\n{self.stderr[-3000:]}"
            )
        return self


def _vm_hwm_bytes(pid: int) -> int | None:
    """The peak RSS (``VmHWM``) of live process ``pid``'s current program; None once it exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * KIB
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_measured(
    cmd: Sequence[str], cwd: Path, env: dict[str, str], timeout_s: float, on_line: Callable[[str], None] | None = None
) -> Measured:
    """Run ``cmd`` and measure its wall time and its peak resident set size.

    The peak is the child's own high-water mark (``VmHWM`` of ``/proc/<pid>/status``: the
    program it executed, from exec on), read every :data:`POLL_S` while it runs (it only grows,
    so at most the last poll interval escapes). Not ``wait4``'s ``ru_maxrss``: Linux carries the
    pre-exec high-water mark into it, i.e. the RSS of the forked parent (this benchmark, with
    torch loaded). ``on_line`` gets each line of its standard output as it comes."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        peak = 0
        offset, pending = 0, ""

        def read_lines() -> None:
            nonlocal offset, pending
            data = os.pread(out.fileno(), READ_CHUNK, offset)
            while data:
                offset += len(data)
                pending += data.decode("utf-8", errors="replace")
                data = os.pread(out.fileno(), READ_CHUNK, offset)
            *lines, pending = pending.split("\n")
            for line in lines:
                on_line(line)  # type: ignore[misc]

        while True:
            hwm = _vm_hwm_bytes(proc.pid)
            if hwm is not None:
                peak = max(peak, hwm)
            if on_line is not None:
                read_lines()
            pid, status, _usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > timeout_s:
                proc.kill()
                _, status, _usage = os.wait4(proc.pid, 0)
                break
            time.sleep(POLL_S)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # wait4 reaped it; tell Popen
        if on_line is not None:
            read_lines()
        out.seek(0)
        err.seek(0)
        return Measured(proc.returncode, wall, peak, out.read(), err.read(), list(cmd))


def current_rss_bytes() -> int:
    """This process's resident set size now (``/proc/self/statm``)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS high-water mark to its current RSS (Linux ``clear_refs``
    value 5); False where the kernel does not allow it (then the peak covers the whole process)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """This process's peak RSS (``VmHWM``; ``ru_maxrss`` where /proc has no status)."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * KIB
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * KIB


# --------------------------------------------------------------------------------------------
# The machine and the versions
# --------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * KIB
    return None


def _cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in flags]
    return []


def machine() -> dict[str, Any]:
    import torch

    from pspnet.train.accel import bf16_is_fast

    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_flags": _cpu_flags(),
        "memory_bytes": _memory_bytes(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "bf16_fast_on_cpu": bf16_is_fast(torch.device("cpu")),
        "cuda_available": torch.cuda.is_available(),
    }


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(root: Path) -> dict[str, Any]:
    """The commit measured and whether the work tree had uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "uncommitted_changes": None}
    return {"commit": commit or None, "uncommitted_changes": bool(dirty.strip())}


def load_average() -> list[float] | None:
    with contextlib.suppress(OSError):
        return [round(x, 2) for x in os.getloadavg()]
    return None
