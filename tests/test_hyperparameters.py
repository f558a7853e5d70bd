"""Hyperparameter decoding and validation: SDK v2 reprs, v3 JSON, built-in defaults, every invalid case."""

import pytest

from sagemaker_deepar.errors import UserError
from sagemaker_deepar.training.hyperparameters import DEFAULT_TEST_QUANTILES, parse_hyperparameters

pytestmark = pytest.mark.unit

REQUIRED = {"time_freq": "H", "prediction_length": "24", "context_length": "48", "epochs": "10"}


def test_builtin_defaults():
    p = parse_hyperparameters(REQUIRED)
    assert (p.likelihood, p.num_cells, p.num_layers, p.dropout_rate, p.learning_rate) == (
        "student-T",
        40,
        2,
        0.1,
        0.001,
    )
    assert (p.mini_batch_size, p.embedding_dimension, p.cardinality, p.num_dynamic_feat) == (128, 10, "auto", "auto")
    assert (p.early_stopping_patience, p.num_eval_samples, p.test_quantiles) == (None, 100, DEFAULT_TEST_QUANTILES)
    assert (p.backend, p.num_batches_per_epoch, p.seed) == ("torch", None, None)


def test_sdk_v2_python_repr_values():
    p = parse_hyperparameters(
        {
            **REQUIRED,
            "test_quantiles": "[0.1, 0.5]",
            "cardinality": "[3, 4]",
            "learning_rate": "5E-4",
            "num_dynamic_feat": "2",
            "likelihood": "Gaussian",
        }
    )
    assert p.test_quantiles == [0.1, 0.5] and p.cardinality == [3, 4]
    assert p.learning_rate == 5e-4 and p.num_dynamic_feat == 2 and p.likelihood == "gaussian"


def test_sdk_v3_json_values_and_native_types():
    p = parse_hyperparameters(
        {
            **REQUIRED,
            "test_quantiles": "[0.25,0.75]",
            "epochs": 3,
            "dropout_rate": "0.2",
            "cardinality": "ignore",
            "num_dynamic_feat": "",
        }
    )
    assert p.test_quantiles == [0.25, 0.75] and p.epochs == 3 and p.dropout_rate == 0.2
    assert p.cardinality == "ignore" and p.num_dynamic_feat == "ignore"


def test_empty_cardinality_means_ignore():
    assert parse_hyperparameters({**REQUIRED, "cardinality": ""}).cardinality == "ignore"


@pytest.mark.parametrize(
    "freq,pandas", [("H", "h"), ("2H", "2h"), ("5min", "5min"), ("D", "D"), ("W", "W"), ("M", "M")]
)
def test_time_freq_spellings(freq, pandas):
    assert parse_hyperparameters({**REQUIRED, "time_freq": freq}).pandas_freq == pandas


def test_service_and_tuning_keys_are_ignored():
    parse_hyperparameters(
        {
            **REQUIRED,
            "_tuning_objective_metric": "test:RMSE",
            "_kvstore": "dist_sync",
            "_num_gpus": "auto",
            "_num_kv_servers": "auto",
            "sagemaker_program": "x",
            "sagemaker_container_log_level": "20",
        }
    )


def error_of(**overrides) -> str:
    raw = {**REQUIRED, **overrides}
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(UserError) as info:
        parse_hyperparameters(raw)
    return str(info.value)


def test_unknown_key_suggests_near_miss():
    message = error_of(epoch="3")
    assert "'epoch'" in message and "did you mean 'epochs'" in message


@pytest.mark.parametrize(
    "key,value,fragment",
    [
        ("time_freq", "3X", "M, W, D, H, min"),
        ("time_freq", "H2", "M, W, D, H, min"),
        ("prediction_length", "0", "greater than 0"),
        ("prediction_length", "abc", "valid integer"),
        ("context_length", "-5", "greater than 0"),
        ("epochs", "2.5", "valid integer"),
        ("likelihood", "poisson", "gaussian, beta, negative-binomial, student-T, deterministic-L1"),
        ("num_cells", "0", "greater than or equal to 1"),
        ("num_layers", "100", "less than or equal to 16"),
        ("dropout_rate", "1.5", "less than 1"),
        ("learning_rate", "0", "greater than 0"),
        ("mini_batch_size", "many", "valid integer"),
        ("embedding_dimension", "0", "greater than or equal to 1"),
        ("cardinality", "[0, 2]", "list of positive integers"),
        ("cardinality", "some", "auto"),
        ("num_dynamic_feat", "-1", "non-negative integer"),
        ("early_stopping_patience", "0", "greater than or equal to 1"),
        ("num_eval_samples", "0", "greater than or equal to 1"),
        ("test_quantiles", "[0.1, 1.5]", "strictly between 0 and 1"),
        ("test_quantiles", "[]", "strictly between 0 and 1"),
        ("backend", "tensorflow", "'torch' or 'mxnet'"),
        ("seed", "-1", "greater than or equal to 0"),
    ],
)
def test_invalid_value_names_key_value_and_rule(key, value, fragment):
    message = error_of(**{key: value})
    assert f"'{key}'" in message and repr(value) in message and fragment in message, message


@pytest.mark.parametrize("missing", ["time_freq", "prediction_length", "context_length", "epochs"])
def test_required_keys(missing):
    assert f"hyperparameter '{missing}' is required" in error_of(**{missing: None})


def test_every_problem_is_reported_at_once():
    message = error_of(epochs="0", num_cells="x", foo="1")
    assert all(k in message for k in ("'epochs'", "'num_cells'", "'foo'"))
