"""mlflow's scoring formats on ``/invocations``: recognise them, and read the long frame and params they carry.

``dataframe_split``, ``dataframe_records``, ``instances`` and ``inputs`` (rows, or an object of columns), each
with optional ``params`` (mlflow.pyfunc.scoring_server). The frame then goes through the pyfunc's own
conversion (``frames.frame_request``), so the server and ``mlflow.pyfunc.load_model(...).predict`` turn the
same rows into the same DeepAR request. No mlflow import: the server reads these JSON shapes itself.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import pandas as pd

from ..contract import ContractError
from .frames import FrameRequest

MLFLOW_INPUT_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
PARAMS_KEY = "params"
ITEM_ID, TIMESTAMP = "item_id", "timestamp"

Columns = dict[str, list[Any]]


def is_mlflow_request(payload: Any) -> bool:
    """Whether a decoded JSON body is one of mlflow's scoring formats rather than DeepAR's request.

    Both may use ``instances``: DeepAR's instances have ``start``; mlflow's are the frame's rows (with
    ``timestamp``/``item_id``) or its columns (an object). ``configuration`` only exists in DeepAR's
    request; ``params``, ``dataframe_*`` and ``inputs`` only in mlflow's.
    """
    if not isinstance(payload, dict) or "configuration" in payload:
        return False
    if PARAMS_KEY in payload or any(key in payload for key in MLFLOW_INPUT_KEYS if key != "instances"):
        return True
    instances = payload.get("instances")
    if isinstance(instances, dict):
        return True
    if isinstance(instances, list) and instances and isinstance(instances[0], dict):
        first = instances[0]
        return "start" not in first and (TIMESTAMP in first or ITEM_ID in first)
    return False


def parse_mlflow_request(payload: dict[str, Any]) -> tuple[Columns, dict[str, Any]]:
    """(columns, params) of an mlflow scoring request; ContractError names the key and the row."""
    keys = [key for key in MLFLOW_INPUT_KEYS if key in payload]
    unknown = sorted(set(payload) - {*MLFLOW_INPUT_KEYS, PARAMS_KEY})
    if unknown:
        raise ContractError(
            f"body: unknown field(s) {', '.join(unknown)}; an mlflow request has one of "
            f"{', '.join(MLFLOW_INPUT_KEYS)} and optionally {PARAMS_KEY}"
        )
    if len(keys) != 1:
        raise ContractError(f"body: expected exactly one of {', '.join(MLFLOW_INPUT_KEYS)}, got {len(keys)}")
    key = keys[0]
    params = payload.get(PARAMS_KEY) or {}
    if not isinstance(params, dict):
        raise ContractError(f"{PARAMS_KEY}: expected an object (num_samples, quantiles, seed)")
    data = payload[key]
    if key == "dataframe_split":
        return _split_columns(data), params
    if key == "dataframe_records" or isinstance(data, list):
        return _records_columns(data, key), params
    if isinstance(data, dict):
        return _dict_columns(data, key), params
    raise ContractError(f"{key}: expected a list of rows or an object of columns")


def request_frame(payload: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The long frame (a pandas DataFrame, as mlflow hands it to the pyfunc) and the params of a request."""
    columns, params = parse_mlflow_request(payload)
    return pd.DataFrame(columns), params


def _split_columns(data: Any) -> Columns:
    where = "dataframe_split"
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("columns"), list)
        or not isinstance(data.get("data"), list)
    ):
        raise ContractError(f'{where}: expected {{"columns": [...], "data": [[...], ...]}}')
    names = data["columns"]
    if not all(isinstance(name, str) for name in names) or len(set(names)) != len(names):
        raise ContractError(f"{where}.columns: expected distinct column names")
    columns: Columns = {name: [] for name in names}
    for row, values in enumerate(data["data"]):
        if not isinstance(values, list) or len(values) != len(names):
            raise ContractError(f"{where}.data[{row}]: expected a list of {len(names)} values (one per column)")
        for name, value in zip(names, values):
            columns[name].append(value)
    return columns


def _records_columns(data: Any, where: str) -> Columns:
    if not isinstance(data, list):
        raise ContractError(f"{where}: expected a list of rows (objects)")
    names: dict[str, None] = {}
    for row, record in enumerate(data):
        if not isinstance(record, dict):
            raise ContractError(f"{where}[{row}]: expected an object (one row of the frame)")
        names.update(dict.fromkeys(record))
    # A key absent from a row is a missing value, as pandas reads records.
    return {name: [record.get(name) for record in data] for name in names}


def _dict_columns(data: dict[str, Any], where: str) -> Columns:
    lengths = {name: len(values) if isinstance(values, list) else -1 for name, values in data.items()}
    bad = [name for name, length in lengths.items() if length < 0]
    if bad:
        raise ContractError(f"{where}.{bad[0]}: expected a list of values (one per row)")
    if len(set(lengths.values())) > 1:
        sizes = ", ".join(f"{name}: {length}" for name, length in lengths.items())
        raise ContractError(f"{where}: columns of different lengths ({sizes})")
    return {name: list(values) for name, values in data.items()}


def answer_rows(request: FrameRequest, predictions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The pyfunc's long answer (``frames.predictions_frame``) as mlflow's scoring server writes a DataFrame:
    records of ``item_id``, ``timestamp`` (ISO 8601), ``mean`` and the quantile columns, in the same order.

    Built straight from the DeepAR predictions, without a DataFrame per item: the same rows, a fraction
    of the time (tests/test_mlflow_serve.py checks them against the pyfunc's answer).
    """
    if len(predictions) != len(request.item_ids):
        raise RuntimeError(f"{len(predictions)} predictions for {len(request.item_ids)} items")
    rows: list[dict[str, Any]] = []
    keys = request.quantile_keys
    for item_id, horizon, prediction in zip(request.item_ids, request.horizons, predictions):
        quantiles = [prediction["quantiles"][key] for key in keys]
        for k, stamp in enumerate(horizon.strftime("%Y-%m-%dT%H:%M:%S")):
            row = {ITEM_ID: item_id, TIMESTAMP: stamp, "mean": prediction["mean"][k]}
            row.update(zip(keys, (values[k] for values in quantiles)))
            rows.append(row)
    return rows
