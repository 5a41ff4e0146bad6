"""Turn SIGTERM / SIGINT into a stop request the training loop answers at the next step
boundary: it saves a resume checkpoint and exits cleanly (:class:`TrainingInterrupted`)
instead of dying mid-write. A second signal while stopping is not swallowed: the default
handler runs (a user pressing Ctrl-C twice means it).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from pspnet.errors import PspnetError

#: The signals a scheduler, a container runtime or a terminal sends to stop a job.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: A process stopped by signal ``n`` exits with this + ``n`` (the shell convention).
SIGNAL_EXIT_BASE = 128


class TrainingInterrupted(PspnetError):
    """Training stopped on a signal after saving a resume checkpoint; exits with 128 + signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = SIGNAL_EXIT_BASE + signum


class StopRequest:
    """Set by a stop signal; read by the training loop after every step."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Within the block, :data:`STOP_SIGNALS` set the yielded request instead of killing.

    Only the main thread can own signal handlers; elsewhere the request is never set and the
    signals keep their handlers.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        if request:  # second signal: stop now
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        request.signum = signum

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def ignore_stop_signals() -> None:
    """For DataLoader workers: leave stopping to the main process, which saves first."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
