"""Segment image files with a trained or registered PSPNet (``pspnet predict``).

:mod:`~pspnet.predict.inputs` finds and reads the images, :mod:`~pspnet.predict.outputs`
writes masks, overlays and the summary, :mod:`~pspnet.predict.run` ties them to the model.
Bad inputs and options are ConfigErrors (exit 2); an unreadable image is a DataError (exit 3)
found before the model loads, unless ``skip_bad`` leaves it out.
"""

from pspnet.predict.run import PredictOptions, parse_scales, predict

__all__ = ["PredictOptions", "parse_scales", "predict"]
