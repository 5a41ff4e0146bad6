"""Stage ``validate`` (being moved here from :mod:`pspnet.data.validate`)."""

from pspnet.data.validate import validate as run

__all__ = ["run"]
