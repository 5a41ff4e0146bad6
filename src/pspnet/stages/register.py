"""Stage ``register`` (being moved here from :mod:`pspnet.registry.register`)."""

from pspnet.registry.register import register as run

__all__ = ["run"]
