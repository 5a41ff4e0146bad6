"""``python -m pspnet`` == the ``pspnet`` command."""

from pspnet.cli import app

app()
