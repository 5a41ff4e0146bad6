"""Benchmarks of the pipeline: ``make bench`` (``python -m bench``) writes docs/benchmarks.md and
docs/benchmarks.json; ``bench/gpu_train.py`` measures the GPU path on a CUDA machine."""
