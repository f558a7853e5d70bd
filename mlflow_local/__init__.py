"""An embedded mlflow tracking server for local work: ``python -m mlflow_local`` (see docs/mlflow.md)."""
