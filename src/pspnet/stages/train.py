"""Stage ``train`` (being moved here from :mod:`pspnet.train.stage`)."""

from pspnet.train.stage import train as run

__all__ = ["run"]
