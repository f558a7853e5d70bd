"""The gated training pipeline (SageMaker Pipelines, SDK v2 ``sagemaker.workflow``):

Prepare (lake Parquet -> train/test JSON Lines) -> Train (our image) -> CreateModel -> Forecast (batch
transform of the train channel) -> Evaluate (evaluation.json: mean_wQuantileLoss, RMSE) -> CheckAccuracy
(mean_wQuantileLoss <= AccuracyThreshold) -> Register (PendingManualApproval, with the evaluation as
its model metrics) else Fail (the message names measured vs threshold).

Local pipelines reject a register step (see OFFLINE_AWS.md): ``local=True`` builds the same pipeline
without it and ``mlops.build`` registers through the registry API once the condition passed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from sagemaker_deepar.training.report import QUANTILES

from . import registry

PIPELINE_NAME = "deepar-retrain"
STEPS_DIR = Path(__file__).resolve().parent / "steps"
INGESTION_DIR = Path(__file__).resolve().parent.parent / "ingestion"  # the converter the prepare step runs
LIB = "/opt/ml/processing/lib"  # where the ingestion package lands in the processing containers
EVALUATION_FILE = "evaluation.json"
WQL_PATH = "regression_metrics.mean_wQuantileLoss.value"
RMSE_PATH = "regression_metrics.RMSE.value"

STEP_NAMES = ("Prepare", "Train", "CreateModel", "Forecast", "Evaluate", "CheckAccuracy", "Register", "Fail")


@dataclass(frozen=True, kw_only=True)
class PipelineSettings:
    """The instance types, hyperparameters and registry names of a build, declared once: both the
    command's settings (``mlops.build.BuildSettings``, whose CLI flags carry these names) and the
    pipeline's parameter ``Defaults`` extend it."""

    instance_type: str = "ml.c5.xlarge"
    transform_instance_type: str = "ml.c5.xlarge"
    processing_instance_type: str = "ml.t3.medium"
    time_freq: str = "H"
    prediction_length: int = 24
    context_length: int = 72
    epochs: int = 20
    num_batches_per_epoch: int = 50
    num_cells: int = 40
    num_layers: int = 2
    threshold_parameter: str = registry.DEFAULT_THRESHOLD_PARAMETER
    model_package_group: str = registry.DEFAULT_GROUP


@dataclass(frozen=True, kw_only=True)
class Defaults(PipelineSettings):
    """Default values of the pipeline's parameters (each can be overridden per execution)."""

    lake_uri: str
    image: str
    output_uri: str  # s3:// (or file:// for local pipelines): channels, models, forecasts, evaluation
    threshold: float = registry.DEFAULT_THRESHOLD
    # the production model's artifact: the Train step warm-starts from it (README "Warm start")
    warm_start_model: Optional[str] = None
    # the training job's environment: MLFLOW_* when the build is tracked (mlops.build.tracking_environment)
    training_environment: dict[str, str] = field(default_factory=dict)


def build_pipeline(defaults: Defaults, session: Any, role: str, local: bool, name: str = PIPELINE_NAME):
    """The ``sagemaker.workflow.pipeline.Pipeline`` on ``session`` (a PipelineSession, or a
    LocalPipelineSession with ``local``)."""
    from sagemaker.estimator import Estimator
    from sagemaker.inputs import TrainingInput
    from sagemaker.model import Model
    from sagemaker.model_metrics import MetricsSource, ModelMetrics
    from sagemaker.processing import ProcessingInput, ProcessingOutput, ScriptProcessor
    from sagemaker.transformer import Transformer
    from sagemaker.workflow.condition_step import ConditionStep
    from sagemaker.workflow.conditions import ConditionLessThanOrEqualTo
    from sagemaker.workflow.execution_variables import ExecutionVariables
    from sagemaker.workflow.fail_step import FailStep
    from sagemaker.workflow.functions import Join, JsonGet
    from sagemaker.workflow.model_step import ModelStep
    from sagemaker.workflow.parameters import ParameterFloat, ParameterInteger, ParameterString
    from sagemaker.workflow.pipeline import Pipeline
    from sagemaker.workflow.properties import PropertyFile
    from sagemaker.workflow.steps import ProcessingStep, TrainingStep, TransformStep

    lake = ParameterString("LakeUri", default_value=defaults.lake_uri)
    image = ParameterString("ImageUri", default_value=defaults.image)
    instance_type = ParameterString("TrainInstanceType", default_value=defaults.instance_type)
    transform_type = ParameterString("TransformInstanceType", default_value=defaults.transform_instance_type)
    processing_type = ParameterString("ProcessingInstanceType", default_value=defaults.processing_instance_type)
    time_freq = ParameterString("TimeFreq", default_value=defaults.time_freq)
    prediction_length = ParameterInteger("PredictionLength", default_value=defaults.prediction_length)
    context_length = ParameterInteger("ContextLength", default_value=defaults.context_length)
    epochs = ParameterInteger("Epochs", default_value=defaults.epochs)
    batches = ParameterInteger("NumBatchesPerEpoch", default_value=defaults.num_batches_per_epoch)
    num_cells = ParameterInteger("NumCells", default_value=defaults.num_cells)
    num_layers = ParameterInteger("NumLayers", default_value=defaults.num_layers)
    # The bar lives in SSM; whoever starts an execution reads it (mlops.build.read_threshold, execution_parameters) and
    # passes it here, and its name travels along so the Fail message and the metrics say where it is.
    threshold = ParameterFloat("AccuracyThreshold", default_value=defaults.threshold)
    threshold_parameter = ParameterString("ThresholdParameterName", default_value=defaults.threshold_parameter)
    group = ParameterString("ModelPackageGroupName", default_value=defaults.model_package_group)
    # what a later warm start must match (mlops.build.network_hyperparameters names the same)
    network_shape = {
        "time_freq": time_freq, "prediction_length": prediction_length, "context_length": context_length,
        "num_cells": num_cells, "num_layers": num_layers,
    }  # fmt: skip
    parameters = [
        lake, image, instance_type, transform_type, processing_type, time_freq, prediction_length,
        context_length, epochs, batches, num_cells, num_layers, threshold, threshold_parameter, group,
    ]  # fmt: skip

    root = defaults.output_uri.rstrip("/")

    def under(*parts: str):
        """Where a step writes: below the output URI, per execution on SageMaker (local runs get their
        own output URI from ``mlops.build``, and local pipelines do not resolve execution variables)."""
        if local:
            return "/".join([root, *parts])
        return Join(on="/", values=[root, ExecutionVariables.PIPELINE_EXECUTION_ID, *parts])

    processor = ScriptProcessor(
        image_uri=image,
        command=["python3"],
        role=role,
        instance_count=1,
        instance_type=processing_type,
        env={"PYTHONPATH": LIB},
        sagemaker_session=session,
    )
    prepare = ProcessingStep(
        "Prepare",
        step_args=processor.run(
            code=str(STEPS_DIR / "prepare.py"),
            inputs=[
                ProcessingInput(source=lake, destination="/opt/ml/processing/input/lake", input_name="lake"),
                ProcessingInput(source=str(INGESTION_DIR), destination=f"{LIB}/ingestion", input_name="ingestion"),
            ],
            outputs=[
                ProcessingOutput(output_name=c, source=f"/opt/ml/processing/output/{c}", destination=under("data", c))
                for c in ("train", "test")
            ],
            arguments=["--time-freq", time_freq, "--prediction-length", prediction_length.to_string()],
        ),
    )
    channels = prepare.properties.ProcessingOutputConfig.Outputs

    estimator = Estimator(
        image_uri=image,
        role=role,
        instance_count=1,
        instance_type=instance_type,
        output_path=under("models"),
        hyperparameters={
            "time_freq": time_freq,
            "prediction_length": prediction_length,
            "context_length": context_length,
            "epochs": epochs,
            "num_batches_per_epoch": batches,
            "num_cells": num_cells,
            "num_layers": num_layers,
        },
        environment=dict(defaults.training_environment) or None,
        sagemaker_session=session,
    )
    inputs = {
        "train": TrainingInput(channels["train"].S3Output.S3Uri, content_type="application/jsonlines"),
        "test": TrainingInput(channels["test"].S3Output.S3Uri, content_type="application/jsonlines"),
    }
    if defaults.warm_start_model:
        inputs["model"] = TrainingInput(defaults.warm_start_model, content_type="application/x-sagemaker-model")
    train = TrainingStep("Train", step_args=estimator.fit(inputs))
    model = Model(
        image_uri=image,
        model_data=train.properties.ModelArtifacts.S3ModelArtifacts,
        role=role,
        sagemaker_session=session,
    )
    create_model = ModelStep("CreateModel", step_args=model.create(instance_type=transform_type))

    inference = {"num_samples": 100, "output_types": ["mean", "quantiles"], "quantiles": list(QUANTILES)}
    transformer = Transformer(
        model_name=create_model.properties.ModelName,
        instance_count=1,
        instance_type=transform_type,
        strategy="MultiRecord",
        assemble_with="Line",
        accept="application/jsonlines",
        output_path=under("forecasts"),
        env={"DEEPAR_INFERENCE_CONFIG": json.dumps(inference)},
        sagemaker_session=session,
    )
    forecast = TransformStep(
        "Forecast",
        step_args=transformer.transform(
            channels["train"].S3Output.S3Uri, content_type="application/jsonlines", split_type="Line"
        ),
    )

    report = PropertyFile(name="EvaluationReport", output_name="evaluation", path=EVALUATION_FILE)
    evaluate = ProcessingStep(
        "Evaluate",
        step_args=processor.run(
            code=str(STEPS_DIR / "evaluate.py"),
            inputs=[
                ProcessingInput(
                    source=channels["test"].S3Output.S3Uri,
                    destination="/opt/ml/processing/input/test",
                    input_name="test",
                ),
                ProcessingInput(
                    source=forecast.properties.TransformOutput.S3OutputPath,
                    destination="/opt/ml/processing/input/forecasts",
                    input_name="forecasts",
                ),
            ],
            outputs=[
                ProcessingOutput(
                    output_name="evaluation", source="/opt/ml/processing/evaluation", destination=under("evaluation")
                )
            ],
            arguments=["--time-freq", time_freq, "--prediction-length", prediction_length.to_string()],
        ),
        property_files=[report],
    )
    measured = JsonGet(step_name=evaluate.name, property_file=report, json_path=WQL_PATH)

    passed: list = []
    if not local:
        evaluation_uri = Join(
            on="/",
            values=[evaluate.properties.ProcessingOutputConfig.Outputs["evaluation"].S3Output.S3Uri, EVALUATION_FILE],
        )
        passed.append(
            ModelStep(
                "Register",
                step_args=model.register(
                    content_types=list(registry.CONTENT_TYPES),
                    response_types=list(registry.CONTENT_TYPES),
                    inference_instances=[transform_type],
                    transform_instances=[transform_type],
                    model_package_group_name=group,
                    approval_status=registry.PENDING,
                    # strings (CustomerMetadataProperties' type) resolved per execution
                    customer_metadata_properties=registry.hyperparameter_metadata(
                        {name: value.to_string() for name, value in network_shape.items()}
                    ),
                    model_metrics=ModelMetrics(
                        model_statistics=MetricsSource(content_type="application/json", s3_uri=evaluation_uri)
                    ),
                ),
            )
        )
    fail = FailStep(
        "Fail",
        error_message=Join(
            on=" ",
            values=[
                "mean_wQuantileLoss",
                measured,
                "is above the threshold",
                threshold,
                "(SSM parameter",
                threshold_parameter,
                "): model not registered",
            ],
        ),
    )
    check = ConditionStep(
        "CheckAccuracy",
        conditions=[ConditionLessThanOrEqualTo(left=measured, right=threshold)],
        if_steps=passed,
        else_steps=[fail],
    )
    return Pipeline(
        name=name,
        parameters=parameters,
        steps=[prepare, train, create_model, forecast, evaluate, check],
        sagemaker_session=session,
    )
