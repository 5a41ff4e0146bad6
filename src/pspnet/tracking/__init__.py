"""MLflow tracking: where runs are stored, how they are tagged, which run a pipeline shares."""
