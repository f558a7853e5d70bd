"""SageMaker-compatible DeepAR: training, evaluation and serving on GluonTS (torch or mxnet)."""

__version__ = "0.1.0"
