"""Convert the authors' released PSPNet weights (``semseg`` .pth, ``keras-h5``) into this project's model."""

from pspnet.model.official.conversion import FORMATS, Conversion, convert

__all__ = ["FORMATS", "Conversion", "convert"]
