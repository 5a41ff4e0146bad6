"""Stage ``evaluate`` (being moved here from :mod:`pspnet.evaluate.stage`)."""

from pspnet.evaluate.stage import evaluate as run

__all__ = ["run"]
