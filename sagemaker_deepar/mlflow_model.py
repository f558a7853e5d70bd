"""mlflow's models-from-code entry: copied into every saved DeepAR mlflow model folder (see ``mlflow_pyfunc``)."""

from mlflow.models import set_model

from sagemaker_deepar.mlflow_pyfunc import DeepARForecaster

set_model(DeepARForecaster())
