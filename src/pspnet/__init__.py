"""pspnet: PSPNet (Zhao et al., CVPR 2017) and the pipeline that trains, evaluates and registers it."""

__version__ = "0.1.0"
