"""The pipeline's stages, one module each: ``pspnet.stages.<name>.run(params, root)``.

A stage's name is its module here, its ``params.yaml`` section, its ``dvc.yaml`` stage and its
``pspnet <name>`` command. Stage modules are thin: read inputs, call domain code, write
outputs, log.
"""

#: In pipeline order. ``test`` is optional (``test.enabled``, off by default: it records a skip).
STAGE_NAMES = ("prepare", "validate", "train", "evaluate", "test", "register")
