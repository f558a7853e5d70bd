"""sagemaker_deepar.contract: the model artifact, the feature check, the train/test cut, time_freq and
JSON Lines, in process; and that it imports with nothing but the standard library and numpy."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sagemaker_deepar import contract
from sagemaker_deepar.contract import (
    METADATA_FILE,
    SCHEMA_VERSION,
    ContractError,
    FeatureSpec,
    ModelArtifact,
    extract_model_tarball,
    holdout,
    iter_jsonl,
    pandas_freq,
    parse_time_freq,
    read_jsonl,
    split_train_test,
    target_array,
    train_cut,
    write_jsonl,
)

from .conftest import REPO

pytestmark = pytest.mark.unit

# What the train job wrote before the contract existed (format_version 1), abridged.
TODAYS_METADATA = {
    "format_version": 1,
    "backend": "torch",
    "hyperparameters": {"time_freq": "H", "prediction_length": 6},
    "freq": "h",
    "prediction_length": 6,
    "context_length": 12,
    "likelihood": "student-T",
    "cardinality": [6, 2],
    "num_dynamic_feat": 1,
    "library_versions": {"gluonts": "0.17.0"},
    "training_statistics": {"train": {"num_series": 9}},
    "train": {"final_loss": 1.25, "best_epoch": 2},
    "test_metrics": {"RMSE": 0.5, "mean_wQuantileLoss": 0.1},
}


def test_imports_with_only_stdlib_and_numpy(tmp_path):
    """A Lambda bundle or the SDK environment has no torch, GluonTS, pandas, pydantic (maybe no orjson)."""
    code = textwrap.dedent("""
        import sys
        for name in ("torch", "gluonts", "pandas", "mxnet", "pydantic", "lightning", "orjson", "flask", "scipy"):
            sys.modules[name] = None  # any import of these now raises ImportError
        from sagemaker_deepar import contract
        contract.write_jsonl([{"a": contract.np.float32(1.5)}], __import__("pathlib").Path(sys.argv[1]))
        print(open(sys.argv[1]).read().strip())
    """)
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "x.jsonl")], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == {"a": 1.5}


@pytest.mark.parametrize(
    "spelling, pandas",
    [
        ("H", "h"),
        ("2H", "2h"),
        ("h", "h"),
        ("5min", "5min"),
        ("D", "D"),
        ("W", "W"),
        ("M", "M"),
        ("3M", "3M"),
        ("1D", "D"),
    ],
)
def test_time_freq_to_pandas(spelling, pandas):
    assert parse_time_freq(spelling).pandas == pandas_freq(spelling) == pandas


@pytest.mark.parametrize("bad", ["", "0H", "5 min", "S", "Hourly", "2", None, "05min"])
def test_time_freq_rejects_with_the_allowed_spellings(bad):
    with pytest.raises(ContractError, match=r"--time-freq: .*M, W, D, H, min"):
        parse_time_freq(bad, "--time-freq")


def test_artifact_reads_todays_files_and_round_trips(tmp_path):
    (tmp_path / METADATA_FILE).write_text(json.dumps(TODAYS_METADATA))
    artifact = ModelArtifact.read(tmp_path)
    assert artifact.schema_version == SCHEMA_VERSION == 1
    assert artifact.features == FeatureSpec(cardinality=(6, 2), num_dynamic_feat=1)
    assert (artifact.freq, artifact.time_freq, artifact.prediction_length) == ("h", "H", 6)
    assert artifact.metrics() == {"train:final_loss": 1.25, "test:RMSE": 0.5, "test:mean_wQuantileLoss": 0.1}
    (tmp_path / "copy").mkdir()
    artifact.write(tmp_path / "copy")
    again = json.loads((tmp_path / "copy" / METADATA_FILE).read_text())
    assert again == TODAYS_METADATA


def test_artifact_without_test_channel_has_only_the_train_metric():
    artifact = ModelArtifact.from_dict({**TODAYS_METADATA, "test_metrics": None, "cardinality": []})
    assert artifact.metrics() == {"train:final_loss": 1.25} and artifact.features.num_cat == 0
    assert artifact.to_dict()["test_metrics"] is None


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format_version": 2}, r"format_version 2 is newer than this code reads \(1\)"),
        ({"format_version": "1"}, "format_version: '1' is not a positive integer"),
        ({"backend": "jax"}, "backend: 'jax'; expected one of torch, mxnet"),
        ({"freq": "fortnightly"}, "freq: 'fortnightly'"),
        ({"prediction_length": 0}, "prediction_length: 0 is not a positive integer"),
        ({"cardinality": [3, 0]}, r"cardinality: \[3, 0\] is not a list of positive integers"),
        ({"num_dynamic_feat": -1}, "num_dynamic_feat: -1"),
        ({"backend": None}, "missing field"),
    ],
)
def test_artifact_errors_name_the_file_and_field(tmp_path, change, message):
    data = {k: v for k, v in {**TODAYS_METADATA, **change}.items() if v is not None}
    path = tmp_path / METADATA_FILE
    path.write_text(json.dumps(data))
    with pytest.raises(ContractError, match=f"^{re.escape(str(path))}: .*{message}"):
        ModelArtifact.read(path)


def test_artifact_not_json_or_missing(tmp_path):
    (tmp_path / METADATA_FILE).write_text("{")
    with pytest.raises(ContractError, match="not JSON"):
        ModelArtifact.read(tmp_path)
    with pytest.raises(FileNotFoundError, match="model trained by this container"):
        ModelArtifact.read(tmp_path / "nothing")


SPEC = FeatureSpec(cardinality=(3, 2), num_dynamic_feat=1)


def test_feature_check_accepts_a_matching_instance():
    record = {"target": [1.0] * 30, "cat": [2, 1], "dynamic_feat": [[0.0] * 48]}
    assert SPEC.check(record, prediction_length=18, where="instances[3].") == []
    assert SPEC.check({**record, "dynamic_feat": [[0.0] * 30]}) == []  # training: len(target)
    assert FeatureSpec().check({"target": [1], "cat": "ignored"}) == []


def test_feature_check_names_every_problem():
    record = {"target": [1.0] * 30, "cat": [3, -1], "dynamic_feat": [[0.0] * 30]}
    assert SPEC.check(record, prediction_length=18, where="instances[3].") == [
        "instances[3].cat[0]: 3 is out of range; the model knows 0..2",
        "instances[3].cat[1]: -1 is not a non-negative integer",
        "instances[3].dynamic_feat[0]: length 30, expected 48 (len(target) + prediction_length)",
    ]


@pytest.mark.parametrize(
    "record, message",
    [
        ({"target": [1]}, "cat: required: the model was trained with 2 categorical feature(s)"),
        ({"target": [1], "cat": [1]}, "cat: has 1 value(s), the model expects 2"),
        ({"target": [1], "cat": 5}, "cat: expected a list of non-negative integers, got int"),
    ],
)
def test_feature_check_cat(record, message):
    assert FeatureSpec(cardinality=(3, 2)).check(record, where="line 5: ") == [f"line 5: {message}"]


@pytest.mark.parametrize(
    "record, message",
    [
        (
            {"target": [1]},
            "dynamic_feat: required: the model was trained with 1 dynamic feature(s) of length len(target) + 4",
        ),
        ({"target": [1], "dynamic_feat": [[1] * 5, [1] * 5]}, "dynamic_feat: has 2 feature(s), the model expects 1"),
        ({"target": [1], "dynamic_feat": 3}, "dynamic_feat: expected a list of lists of numbers"),
    ],
)
def test_feature_check_dynamic_feat(record, message):
    assert FeatureSpec(num_dynamic_feat=1).check(record, prediction_length=4) == [message]


def test_feature_check_works_on_arrays():
    entry = {"target": np.zeros(10), "cat": np.array([1, 1]), "dynamic_feat": np.zeros((1, 12))}
    assert SPEC.check(entry, prediction_length=2) == []


def test_train_cut_and_holdout():
    record = {"start": "2024-01-01", "target": [1, 2, None, 4, 5], "cat": [0], "dynamic_feat": [[1, 2, 3, 4, 5]]}
    assert train_cut(record, 2) == {**record, "target": [1, 2, None], "dynamic_feat": [[1, 2, 3]]}
    assert holdout(record, 2) == {**record, "target": [1, 2, None]}  # dynamic_feat still covers the horizon
    assert record["target"] == [1, 2, None, 4, 5]  # not modified
    train, test = split_train_test([record], 2)
    assert train == [train_cut(record, 2)] and test == [record]


def test_split_names_a_series_too_short():
    long, short = {"start": "x", "target": [1, 2, 3]}, {"start": "x", "target": [1, 2]}
    with pytest.raises(
        ContractError, match=r"^data.json:7: 2 points, the test channel needs more than prediction_length=2"
    ):
        split_train_test([long, short], 2, locations=["data.json:1", "data.json:7"])
    with pytest.raises(ContractError, match=r"^series 0: a series needs \"start\" and a \"target\" list"):
        split_train_test([{"start": "x"}], 2)
    with pytest.raises(ContractError, match="prediction_length: 0"):
        split_train_test([long], 0)


def test_target_array_marks_gaps():
    np.testing.assert_array_equal(target_array([1, None, "NaN", 2.5]), [1.0, np.nan, np.nan, 2.5])


def test_jsonl_round_trip_plain_and_gzip(tmp_path):
    records = [{"target": np.array([1.5, 2.0], dtype=np.float32), "n": np.int64(3)}, {"x": "é"}]
    plain = write_jsonl(records, tmp_path / "a" / "x.json")
    zipped = write_jsonl(records, tmp_path / "x.json", compress=True)
    assert zipped.name == "x.json.gz" and gzip.open(zipped).read() == plain.read_bytes()
    assert read_jsonl(plain) == read_jsonl(zipped) == [{"target": [1.5, 2.0], "n": 3}, {"x": "é"}]
    assert read_jsonl(plain, limit=1) == [{"target": [1.5, 2.0], "n": 3}]


def test_jsonl_reader_skips_blank_lines_and_locates_bad_ones(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"a": 2}\n{oops\n')
    lines = iter_jsonl(path)
    assert [next(lines), next(lines)] == [(1, {"a": 1}), (4, {"a": 2})]
    with pytest.raises(ContractError, match=rf"^{re.escape(str(path))}:5: not JSON"):
        next(lines)


def _tarball(path: Path, members: dict[str, bytes], link: tuple[str, str] | None = None) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link[0])
            info.type, info.linkname = tarfile.SYMTYPE, link[1]
            archive.addfile(info)
    return path


@pytest.mark.parametrize("has_data_filter", [True, False], ids=["filter=data", "python-3.11.2-checks"])
def test_model_tarball_extracts_plain_files_and_refuses_escapes(tmp_path, monkeypatch, has_data_filter):
    """The image's Python 3.11.2 has no tarfile filter=: the member checks must refuse the same archives."""
    import tarfile

    if not has_data_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    good = _tarball(tmp_path / "good.tar.gz", {"deepar-metadata.json": b"{}", "predictor/x": b"1"})
    extract_model_tarball(good, tmp_path / "out")
    assert (tmp_path / "out" / "predictor" / "x").read_bytes() == b"1"
    for name, archive in {
        "dotdot": _tarball(tmp_path / "a.tar.gz", {"../evil": b"x"}),
        "link out": _tarball(tmp_path / "c.tar.gz", {}, link=("l", "/etc/passwd")),
    }.items():
        with pytest.raises(tarfile.TarError):
            extract_model_tarball(archive, tmp_path / f"out-{name}")
    assert not (tmp_path / "evil").exists()
    # An absolute name never lands outside: filter="data" strips the slash, the member checks refuse it.
    absolute = _tarball(tmp_path / "b.tar.gz", {"/tmp/evil-deepar": b"x"})
    try:
        extract_model_tarball(absolute, tmp_path / "out-absolute")
    except tarfile.TarError:
        pass
    assert not Path("/tmp/evil-deepar").exists()


@pytest.mark.unit
def test_backtest_cuts_end_at_the_training_series_end_and_drop_the_oldest_when_short():
    assert contract.backtest_cuts(100, 14, 3) == [58, 72, 86]
    assert contract.backtest_cuts(30, 14, 3, min_history=2) == [2, 16]  # 30 - 42 < 2: the oldest window is dropped
    assert contract.backtest_cuts(10, 14, 2) == []
    with pytest.raises(contract.ContractError):
        contract.backtest_cuts(100, 0, 2)


@pytest.mark.unit
def test_backtest_window_keeps_dynamic_feat_through_the_horizon():
    record = {"start": "2024-01-01", "target": list(range(10)), "dynamic_feat": [list(range(10, 20))]}
    history, truth = contract.backtest_window(record, 6, 2)
    assert history["target"] == [0, 1, 2, 3, 4, 5] and truth == [6, 7]
    assert history["dynamic_feat"] == [[10, 11, 12, 13, 14, 15, 16, 17]]
    with pytest.raises(contract.ContractError, match="no full window"):
        contract.backtest_window(record, 9, 2)


# ---------------------------------------------------------------- rules stated once (issue #26 item 2)


def test_network_shape_is_the_hyperparameters_that_shape_the_network():
    from sagemaker_deepar.training.backends import checkpoint_fingerprint
    from sagemaker_deepar.training.hyperparameters import DeepARHyperparameters

    given = {"time_freq": "H", "epochs": "5", "num_cells": "8", "learning_rate": "0.01", "likelihood": "gaussian"}
    assert contract.network_shape(given) == {"time_freq": "H", "likelihood": "gaussian", "num_cells": "8"}
    params = DeepARHyperparameters(time_freq="H", prediction_length=6, context_length=12, epochs=3)
    fingerprint = checkpoint_fingerprint(params, FeatureSpec(cardinality=(4,), num_dynamic_feat=1))
    assert list(fingerprint) == [*contract.NETWORK_HYPERPARAMETERS, "cardinality", "num_dynamic_feat"]
    assert "epochs" not in fingerprint and fingerprint["cardinality"] == [4]


def test_record_fields_split_model_inputs_from_forwarded_ids():
    record = {"id": "a-1", "start": "2024-01-01", "target": [1], "cat": [0], "dynamic_feat": [[1, 2]], "x": 1}
    assert list(contract.record_inputs(record)) == list(contract.RECORD_FIELDS)
    assert contract.record_extras(record) == {"id": "a-1", "x": 1}


@pytest.mark.parametrize(
    "record, message",
    [
        ([1, 2], "record: expected a JSON object with start and target, got list"),
        ({"target": [1]}, "start: missing"),
        ({"start": "2024-01-01"}, "target: missing"),
        ({"start": 5, "target": [1]}, "start: expected a timestamp string such as 'YYYY-MM-DD HH:MM:SS', got int"),
        (
            {"start": "2024-01-01", "target": "1,2"},
            'target: expected a list of numbers (null or "NaN" for missing), got str',
        ),
        (
            {"start": "2024-01-01", "target": [1, "x"]},
            "target[1]: 'x' is not a number (missing values are null or \"NaN\")",
        ),
        (
            {"start": "2024-01-01", "target": [1, int("1" * 400)]},
            "target[1]: an integer of 400 digits is beyond ±1e+30",
        ),
        ({"start": "2024-01-01", "target": [1, None, -3e37]}, "target[2]: -3e+37 is beyond ±1e+30"),
        ({"start": "2024-01-01", "target": [[1], [2]]}, "target: expected a flat list of numbers, got nested lists"),
    ],
)
def test_record_problem_names_the_field_once(record, message):
    problem = contract.record_problem(record)
    assert problem is not None and str(problem).startswith(message)
    assert problem.at("instances[3].").startswith(f"instances[3].{message}")


def test_record_problem_accepts_gaps_and_large_finite_values():
    assert contract.record_problem({"start": "2024-01-01 00:00:00", "target": [1, None, "NaN", 1e29, -1e30]}) is None


def test_magnitude_and_gap_problems_locate_the_value_in_two_dimensions():
    feats = np.ones((2, 5), dtype=np.float32)
    assert contract.magnitude_problem(feats, "dynamic_feat") is None
    feats[1, 3] = 2e35
    assert str(contract.magnitude_problem(feats, "dynamic_feat")).startswith("dynamic_feat[1][3]: 2e+35 is beyond")
    assert contract.magnitude_problem(np.array([np.nan, np.inf]), "target").field == "target[1]"  # type: ignore[union-attr]
    feats[0, 2] = np.nan
    assert str(contract.dynamic_feat_gap_problem(feats)) == (
        "dynamic_feat[0][2]: missing or infinite value; dynamic_feat may not have missing values"
    )


def test_overflowed_rows_and_their_one_message():
    samples = np.ones((3, 2, 4), dtype=np.float32)
    samples[2, 1, 3] = np.inf
    assert contract.non_finite_rows(samples) == [2]
    assert contract.OVERFLOW.at("line 3: ").startswith("line 3: target: the forecast overflowed float32")


def test_training_data_and_the_serverless_reader_give_the_contracts_message():
    """The same bad record read by the training channel reader (data.py, the server's parser too) and the
    batch function's reader (serverless/handlers/inputs.py): one message, the contract's."""
    from sagemaker_deepar.training.data import RecordError, check_magnitude, parse_record
    from serverless.handlers.inputs import read_object

    for record in (
        {"start": "2024-01-01 00:00:00", "target": [1.0, 5e36, 2.0]},
        {"start": "2024-01-01 00:00:00", "target": [1.0, "x"]},
        {"start": 7, "target": [1.0]},
        {"target": [1.0]},
    ):
        expected = str(contract.record_problem(record))
        with pytest.raises(RecordError) as raised:
            check_magnitude(parse_record(record, "h"))
        assert str(raised.value) == expected
        (line,) = read_object("a.jsonl", json.dumps(record).encode())
        assert line.record is None and line.problem == expected


@pytest.mark.parametrize(
    "spelling, interval, numpy_unit",
    [("H", "1 hours", "h"), ("2h", "2 hours", "h"), ("5min", "5 minutes", "m"), ("W", "7 days", "D"),
     ("2W", "14 days", "D"), ("D", "1 days", "D"), ("3M", "3 months", "M")],
)  # fmt: skip
def test_a_period_as_a_sql_interval_and_a_numpy_unit(spelling, interval, numpy_unit):
    freq = parse_time_freq(spelling)
    assert (freq.interval, freq.numpy_unit) == (interval, numpy_unit)
