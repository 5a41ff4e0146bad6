"""Every DVC command the project runs, and what DVC's output says when a stage fails.

One place starts DVC (``python -m dvc ...`` in the project root, in
:func:`pspnet.ops.environment.tool_env`); it runs captured (:func:`run_dvc` and the ``add`` /
``import_url`` / ``update`` / ``checkout`` / ``pull`` helpers), straight to the terminal
(:func:`run_streamed`, :func:`run_experiment`) or line by line to a logger
(:func:`repro_stage`, which raises :class:`StageFailed` with the stage command's exit code).
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pspnet.errors import PspnetError
from pspnet.ops.environment import tool_env

log = logging.getLogger(__name__)

#: DVC's last error lines quoted when a captured command fails.
ERROR_DETAIL_LINES = 5
#: How many trailing output lines a failed stage's message quotes.
STAGE_TAIL_LINES = 40
#: The stage's exit code when DVC failed before or around its command (no code in its error line).
UNKNOWN_STAGE_EXIT_CODE = 1

#: Seconds a probe of an ``http(s)://`` DVC remote waits for a connection.
REMOTE_CONNECT_TIMEOUT = 10.0

#: DVC's error line for a failed stage: ``failed to reproduce '<stage>': ..., exited with <N>``.
_STAGE_FAILED = re.compile(r"failed to reproduce '(?P<stage>[^']*)'.*exited with (?P<code>-?\d+)\s*$")


class StageFailed(PspnetError):
    """``dvc repro <stage>`` failed; ``exit_code`` is the stage command's own code when known.

    Attributes:
        stage: the DVC stage that failed.
        exit_code: the stage command's exit code (2 config, 3 data, ...), or 1 when DVC failed
            before or around the command (no code in its error line).
        dvc_returncode: DVC's own exit code (255 for any failed stage).
        output_tail: the last lines of DVC's combined stdout/stderr.
    """

    def __init__(self, stage: str, exit_code: int, dvc_returncode: int, output_tail: str) -> None:
        self.stage = stage
        self.exit_code = exit_code
        self.dvc_returncode = dvc_returncode
        self.output_tail = output_tail
        super().__init__(
            f"stage {stage!r} failed (stage exit code {exit_code}, dvc exit code {dvc_returncode}). "
            f"Last output:\n{output_tail}"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # picklable with its fields (Prefect may persist it)
        return (type(self), (self.stage, self.exit_code, self.dvc_returncode, self.output_tail))


def last_failure(output: str) -> tuple[str, int] | None:
    """``(stage, exit code)`` from DVC's last ``failed to reproduce ... exited with N`` line, if any."""
    failure = None
    for line in output.splitlines():
        match = _STAGE_FAILED.search(line)
        if match:
            failure = (match.group("stage"), int(match.group("code")))
    return failure


def stage_exit_code(output: str) -> int | None:
    """The stage command's exit code from DVC's output (its last ``... exited with N`` line)."""
    failure = last_failure(output)
    return failure[1] if failure else None


def _start(root: str | Path, args: Sequence[str], env: Mapping[str, str] | None = None, **streams: Any) -> subprocess.Popen[str]:
    """The one place DVC starts: ``python -m dvc <args>`` in ``root``, in the tools' environment
    plus ``env``; ``streams`` are Popen's stdin / stdout / stderr / bufsize."""
    command = [sys.executable, "-m", "dvc", *args]
    return subprocess.Popen(command, cwd=root, env={**tool_env(), **(env or {})}, text=True, errors="replace", **streams)


def _complete(
    root: str | Path, args: Sequence[str], env: Mapping[str, str] | None = None, capture: bool = False
) -> tuple[int, str, str]:
    """Run DVC to its end like :func:`subprocess.run` (killed when this process is interrupted):
    ``(exit code, stdout, stderr)``, the texts empty unless ``capture``."""
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE} if capture else {}
    with _start(root, args, env, **streams) as proc:
        try:
            stdout, stderr = proc.communicate()
        except BaseException:
            proc.kill()
            raise
    return proc.returncode, stdout or "", stderr or ""


def run_dvc(root: str | Path, *args: str) -> str:
    """Run ``dvc <args>`` in ``root``; its output, or a :class:`PspnetError` with its message."""
    log.info("running: dvc %s", " ".join(args))
    returncode, stdout, stderr = _complete(root, args, capture=True)
    if returncode != 0:
        detail = (stderr or stdout).strip().splitlines()
        raise PspnetError(f"`dvc {' '.join(args)}` failed (exit {returncode}): " + " / ".join(detail[-ERROR_DETAIL_LINES:]))
    return stdout


def add(root: Path, target: str) -> str:
    """``dvc add <target>``: track (a new version of) a folder read in place."""
    return run_dvc(root, "add", target)


def cache_dir(root: Path) -> Path:
    """The project's DVC cache folder (``dvc cache dir``), resolved."""
    return Path(run_dvc(root, "cache", "dir").strip()).resolve()


def import_url(root: Path, location: str, target: str) -> str:
    """``dvc import-url <location> <target>``: copy a source into the project, versioned."""
    return run_dvc(root, "import-url", location, target)


def update(root: Path, dvc_file: str) -> str:
    """``dvc update <dvc_file>``: bring an import's new version from its source."""
    return run_dvc(root, "update", dvc_file)


def remove_outs(root: Path, dvc_file: str) -> str:
    """``dvc remove --outs <dvc_file>``: drop an import and its workspace copy (the cache keeps it)."""
    return run_dvc(root, "remove", "--outs", dvc_file)


def checkout(root: Path, target: str) -> str:
    """``dvc checkout <target>``: restore tracked data from the local cache."""
    return run_dvc(root, "checkout", target)


def pull(root: Path, target: str) -> str:
    """``dvc pull <target>``: fetch tracked data from the DVC remote."""
    return run_dvc(root, "pull", target)


def default_remote(root: Path) -> tuple[str, str] | None:
    """``(name, url)`` of the project's default DVC remote, if one is set (``dvc config``: one
    value per call, where ``dvc remote list`` wraps long URLs across lines)."""
    try:
        name = run_dvc(root, "config", "core.remote").strip()
        return (name, run_dvc(root, "config", f"remote.{name}.url").strip()) if name else None
    except PspnetError:  # no default remote set
        return None


def remote_unreachable(root: Path, url: str, timeout: float = REMOTE_CONNECT_TIMEOUT) -> str | None:
    """Why the DVC remote at ``url`` cannot be reached, or ``None`` when it can (or its scheme
    is one only DVC can probe). DVC itself reports an unreachable remote as "missing files"."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
        except OSError as err:
            return f"cannot connect to {parts.hostname}:{port} ({err.strerror or err})"
        return None
    if parts.scheme in ("", "file"):
        folder = Path(parts.path if parts.scheme else url)
        folder = folder if folder.is_absolute() else (Path(root) / ".dvc" / folder).resolve()  # DVC: relative to .dvc/
        return None if folder.is_dir() else f"its folder {folder} does not exist (an unmounted share?)"
    return None


def run_streamed(root: Path, args: Sequence[str], env: Mapping[str, str] | None = None) -> float:
    """Run ``dvc <args>`` in ``root`` with its output streaming through (plus ``env``); its wall
    time in seconds, or a :class:`PspnetError` naming the command and its exit code."""
    command = shlex.join(["dvc", *args])
    log.info("running: %s", command)
    start = time.perf_counter()
    returncode, _, _ = _complete(root, args, env)
    if returncode != 0:
        raise PspnetError(f"`{command}` exited with {returncode}; its output above says why.")
    return time.perf_counter() - start


def format_value(value: Any) -> str:
    """A value as ``dvc exp run -S`` parses it (YAML flow syntax)."""
    return json.dumps(value, separators=(",", ":")) if not isinstance(value, str) else value


def exp_run_args(name: str, settings: Mapping[str, Any]) -> list[str]:
    """``exp run -n <name> -S key=value ...``: the arguments of one ``dvc exp run``."""
    args = ["exp", "run", "-n", name]
    for key, value in settings.items():
        args += ["-S", f"{key}={format_value(value)}"]
    return args


def experiment_names(root: Path) -> list[str]:
    """Names of the experiments of the current commit (``dvc exp list --name-only``)."""
    return run_dvc(root, "exp", "list", "--name-only").split()


def apply_experiment(root: Path, name: str) -> str:
    """``dvc exp apply <name>``: that experiment's params, metrics and outputs into the workspace."""
    return run_dvc(root, "exp", "apply", name)


def run_experiment(root: Path, name: str, settings: Mapping[str, Any]) -> float:
    """Run one workspace experiment (``dvc exp run``); its wall time in seconds."""
    return run_streamed(root, exp_run_args(name, settings))


def repro_stage(stage: str, project_dir: str | Path, logger: Any = None) -> dict[str, Any]:
    """Run ``dvc repro <stage>`` in ``project_dir``, streaming its output to ``logger``.

    Returns ``{"stage", "ran", "seconds"}`` (``ran`` is False when DVC found it up to date);
    raises :class:`StageFailed` on failure.
    """
    args = ["repro", stage]
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=STAGE_TAIL_LINES)
    ran = False
    if logger is not None:
        logger.info("$ %s  (in %s)", " ".join(["dvc", *args]), project_dir)
    streams = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "bufsize": 1}
    with _start(project_dir, args, **streams) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if not line:
                continue
            tail.append(line)
            if f"Running stage '{stage}'" in line:
                ran = True
            if logger is not None:
                logger.info(line)
        returncode = proc.wait()
    seconds = round(time.monotonic() - started, 2)
    if returncode != 0:
        # DVC names the stage that failed (an upstream one when it was out of date) on its last line.
        output = "\n".join(tail)
        failed, code = last_failure(output) or (stage, UNKNOWN_STAGE_EXIT_CODE)
        raise StageFailed(failed, code, returncode, output)
    return {"stage": stage, "ran": ran, "seconds": seconds}
