"""The environment the pipeline's tools run in when started as subprocesses (DVC, and through
it the ``pspnet <stage>`` commands of ``dvc.yaml``).

DVC runs each stage's command through the shell, so ``pspnet`` must be found on ``PATH`` even
when the virtual environment was never activated (``.venv/bin/pspnet experiment ...``, a
Prefect worker, a cron job): the directory of the running interpreter goes first on ``PATH``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def tool_env() -> dict[str, str]:
    """``os.environ`` with this interpreter's bin directory first on PATH, unbuffered Python
    output (stage logs stream as they happen) and no DVC telemetry."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    path = env.get("PATH", "")
    if path.split(os.pathsep)[0] != bin_dir:
        env["PATH"] = bin_dir + (os.pathsep + path if path else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env
