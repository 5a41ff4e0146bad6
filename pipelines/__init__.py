"""Prefect orchestration of the DVC pipeline (see :mod:`pipelines.training`)."""
