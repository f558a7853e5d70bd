"""DeepAR hyperparameters: the built-in's 16 names and defaults, plus ``backend``,
``num_batches_per_epoch``, ``seed``, ``forecaster`` and ``backtest_windows``.

SageMaker delivers every value as a string. SDK v3 writes JSON (``"true"``, ``"[0.1, 0.5]"``),
SDK v2 local mode writes Python reprs (``"True"``, ``"{'a': 1}"``); both decode here.
"""

from __future__ import annotations

import ast
import difflib
import json
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from ..contract import ContractError, parse_time_freq
from ..errors import UserError

LIKELIHOODS = ("gaussian", "beta", "negative-binomial", "student-T", "deterministic-L1")
BACKENDS = ("torch", "mxnet")
DEFAULT_TEST_QUANTILES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]

# Keys the SageMaker service, tuning jobs or the SDKs add; the built-in accepts and ignores them.
IGNORED_KEYS = ("_tuning_objective_metric", "_kvstore", "_num_gpus", "_num_kv_servers")
IGNORED_PREFIXES = ("sagemaker_",)

MAX_LENGTH = 100_000
MAX_EPOCHS = 1_000_000
MAX_BATCHES_PER_EPOCH = 10**9
MAX_BACKTEST_WINDOWS = 20
DEFAULT_BACKTEST_WINDOWS = 3  # not yet measured against 1 and 5 (docs/ensemble.md, "Cost"): a first choice
MAX_SHOWN_VALUE = 80  # characters of a bad value repeated in an error message


class DeepARHyperparameters(BaseModel):
    # Each field's docstring is its description in docs/reference/hyperparameters.md (python -m devtools.reference).
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    time_freq: str
    """the series' period: an optional integer multiple + `M`, `W`, `D`, `H`, `min` (`5min`, `2H`)"""
    # Upper bounds keep absurd values (a 400-digit integer) a clear error here instead of an
    # overflow deep inside GluonTS after the data was read.
    prediction_length: int = Field(gt=0, le=MAX_LENGTH)
    """time steps forecast"""
    context_length: int = Field(gt=0, le=MAX_LENGTH)
    """time steps the network sees before the forecast"""
    epochs: int = Field(gt=0, le=MAX_EPOCHS)
    """passes over the training data"""
    likelihood: str = "student-T"
    """the output distribution: `gaussian`, `beta`, `negative-binomial`, `student-T`, `deterministic-L1` (any case)"""
    num_cells: int = Field(40, ge=1, le=1024)
    """cells per LSTM layer"""
    num_layers: int = Field(2, ge=1, le=16)
    """LSTM layers"""
    dropout_rate: float = Field(0.1, ge=0.0, lt=1.0)
    """dropout between layers"""
    learning_rate: float = Field(0.001, gt=0.0, le=1.0)
    """the optimiser's step size (`5E-4` works)"""
    mini_batch_size: int = Field(128, ge=1, le=100_000)
    """windows per batch"""
    embedding_dimension: int = Field(10, ge=1, le=1024)
    """one embedding size for every categorical feature"""
    cardinality: Union[Literal["auto", "ignore"], list[int]] = "auto"
    """`auto` (max+1 per `cat` position), `ignore` / `""`, or a list of ints checked against the data"""
    num_dynamic_feat: Union[Literal["auto", "ignore"], int] = "auto"
    """`auto`, `ignore` / `""`, or an int that must match the data"""
    early_stopping_patience: Optional[int] = Field(None, ge=1, le=MAX_EPOCHS)
    """stop when the loss that picks the best epoch has not improved for N epochs (torch: the validation loss on each series' held-out last window, when a series is long enough, see [Training](../training.md#the-kept-epoch); else the train loss); the best epoch's weights are kept"""
    num_eval_samples: int = Field(100, ge=1, le=10_000)
    """samples per test series when scoring the test channel"""
    test_quantiles: list[float] = Field(default_factory=lambda: list(DEFAULT_TEST_QUANTILES))
    """quantiles scored on the test channel, each in (0, 1)"""
    # Ours, not the built-in's.
    backend: Literal["torch", "mxnet"] = "torch"
    """(ours) the GluonTS backend that trains the model"""
    num_batches_per_epoch: Optional[int] = Field(None, ge=1, le=MAX_BATCHES_PER_EPOCH)
    """(ours) batches per epoch; unset: one pass over the data, and at least plain GluonTS's epoch of 50 × 32 windows: `ceil(max(series, observations / (context_length + prediction_length), 1600) / mini_batch_size)` ([why](../accuracy.md))"""
    seed: Optional[int] = Field(None, ge=0, le=2**32 - 1)
    """(ours) two runs on the same data give the same metrics"""
    forecaster: Literal["deepar", "ensemble"] = "deepar"
    """(ours) `deepar`: the network alone (the built-in's model); `ensemble`: classical members and the network, weighted on validation windows (docs/ensemble.md)"""
    backtest_windows: int = Field(DEFAULT_BACKTEST_WINDOWS, ge=0, le=MAX_BACKTEST_WINDOWS)
    """(ours) validation windows of prediction_length carved from the end of every training series (contract.backtest_cuts); the ensemble's weights are chosen on them"""

    @field_validator("time_freq")
    @classmethod
    def _check_time_freq(cls, value: str) -> str:
        try:
            parse_time_freq(value)  # the built-in accepts an optional integer multiple of M, W, D, H, min
        except ContractError:
            raise ValueError(
                "expected an optional integer multiple followed by one of M, W, D, H, min (for example 5min, 2H, D)"
            ) from None
        return value

    @field_validator("likelihood", mode="before")
    @classmethod
    def _normalise_likelihood(cls, value: Any) -> str:
        by_lower = {name.lower(): name for name in LIKELIHOODS}
        if isinstance(value, str) and value.lower() in by_lower:
            return by_lower[value.lower()]
        raise ValueError(f"expected one of {', '.join(LIKELIHOODS)}")

    @field_validator("cardinality", mode="before")
    @classmethod
    def _normalise_cardinality(cls, value: Any) -> Any:
        if value == "" or value is None:
            return "ignore"
        if isinstance(value, list) and not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
            raise ValueError("expected 'auto', 'ignore', '' or a list of positive integers")
        return value

    @field_validator("num_dynamic_feat", mode="before")
    @classmethod
    def _normalise_num_dynamic_feat(cls, value: Any) -> Any:
        if value == "" or value is None:
            return "ignore"
        if isinstance(value, bool) or (isinstance(value, int) and value < 0):
            raise ValueError("expected 'auto', 'ignore', '' or a non-negative integer")
        return value

    @field_validator("test_quantiles")
    @classmethod
    def _check_quantiles(cls, value: list[float]) -> list[float]:
        if not value or not all(0.0 < q < 1.0 for q in value):
            raise ValueError("expected a non-empty list of numbers strictly between 0 and 1")
        return value

    @field_validator("backtest_windows")
    @classmethod
    def _windows_for_the_ensemble(cls, value: int, info: ValidationInfo) -> int:
        if value == 0 and info.data.get("forecaster") == "ensemble":
            raise ValueError("forecaster=ensemble chooses its weights on validation windows: at least 1 is needed")
        return value

    @property
    def pandas_freq(self) -> str:
        """``time_freq`` spelled the way pandas 2.2 wants it (``2H`` -> ``2h``)."""
        return parse_time_freq(self.time_freq).pandas


def decode_value(raw: Any) -> Any:
    """Decode one hyperparameter string: JSON first, then a Python literal, else the string itself."""
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def _is_ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


def _unknown_key_message(key: str) -> str:
    known = list(DeepARHyperparameters.model_fields)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"hyperparameter '{key}' is not recognised{hint} Known hyperparameters: {', '.join(known)}"


def _format_validation_error(error: ValidationError, raw: dict[str, Any]) -> list[str]:
    messages = []
    for item in error.errors():
        key = str(item["loc"][0]) if item["loc"] else "?"
        if item["type"] == "missing":
            messages.append(f"hyperparameter '{key}' is required but was not given")
            continue
        detail = item["msg"].removeprefix("Value error, ")
        shown = repr(raw.get(key))
        if len(shown) > MAX_SHOWN_VALUE:
            shown = f"{shown[:MAX_SHOWN_VALUE]}... ({len(shown)} characters)"
        messages.append(f"hyperparameter '{key}' = {shown} is invalid: {detail}")
    return messages


def parse_hyperparameters(raw: dict[str, Any]) -> DeepARHyperparameters:
    """Validate the raw ``hyperparameters.json`` mapping; raise ``UserError`` naming every bad key."""
    if not isinstance(raw, dict):
        raise UserError("hyperparameters.json must hold a JSON object of name -> value")
    problems = [
        _unknown_key_message(k) for k in raw if k not in DeepARHyperparameters.model_fields and not _is_ignored(k)
    ]
    decoded = {k: decode_value(v) for k, v in raw.items() if k in DeepARHyperparameters.model_fields}
    try:
        params = DeepARHyperparameters(**decoded)
    except ValidationError as error:
        problems += _format_validation_error(error, raw)
        params = None
    if problems:
        raise UserError("\n".join(problems))
    assert params is not None
    return params


def load_hyperparameters(path) -> DeepARHyperparameters:
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise UserError(
            f"{path} is missing: the hyperparameters time_freq, prediction_length, "
            "context_length and epochs are required"
        ) from None
    except ValueError as error:
        raise UserError(f"{path} is not valid JSON: {error}") from None
    except RecursionError:
        raise UserError(
            f"{path} is nested too deeply to be a hyperparameters file (a JSON object of name -> value)"
        ) from None
    return parse_hyperparameters(raw)
