"""The serving container: the HTTP apps, request codec, batching, multi-model, mlflow formats."""
