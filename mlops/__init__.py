"""Close the loop: lake -> gated retraining -> model registry -> staged deploy -> monitoring -> retrain.

Run from the SageMaker SDK environment: ``.venv-sdk/bin/python -m mlops {build,deploy,promote,monitor,demo}``.
"""
