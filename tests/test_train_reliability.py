"""Training reliability through the real entrypoint (and the image where it matters).

- SIGTERM at any moment: a loadable model and exit 0 once training started, a failure file before;
  the moments are made deterministic with DEEPAR_FAULT (sagemaker_deepar/training/faults.py), and one test
  `docker stop`s a training container mid-epoch;
- user mistakes that used to surface as internal errors after training fail as ClientErrors naming
  file:line / series / hyperparameter, before any epoch runs;
- unusable output folders (a file, read-only, full) fail in seconds, before the data is read.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from sagemaker_deepar.contract import METADATA_FILE, ONNX_FILE
from sagemaker_deepar.errors import OutputError
from sagemaker_deepar.paths import probe_output_dirs
from sagemaker_deepar.runtimes.model import Model

from .conftest import OptMl, run_train, series, standard_job
from .test_image import container_names, docker, image  # noqa: F401 (fixtures)

FAST = {"epochs": "4", "num_batches_per_epoch": "4"}


def assert_loadable_model(m: OptMl) -> dict:
    """The model folder holds a complete model that serving's loader accepts; returns its metadata."""
    model_dir = m.root / "model"
    metadata = m.metadata
    onnx = [ONNX_FILE] if (metadata.get("onnx") or {}).get("file") else []  # torch exports the network too
    assert sorted(p.name for p in model_dir.iterdir()) == sorted([METADATA_FILE, "predictor", *onnx])  # no staging left
    model = Model.load(model_dir)
    assert model.prediction_length == 6
    return metadata


def no_epoch_ran(result: subprocess.CompletedProcess) -> bool:
    return "train loss" not in result.stdout and "train loss" not in result.stderr


# ---------------------------------------------------------------- SIGTERM at any moment


@pytest.mark.parametrize("backend", ["torch", "mxnet"])
def test_sigterm_mid_epoch_writes_a_loadable_model(opt_ml: OptMl, backend: str):
    standard_job(opt_ml, backend=backend, **FAST)
    result = run_train(opt_ml, DEEPAR_FAULT="sigterm@batch:6")  # batch 2 of 4 in the second epoch
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SIGTERM received while training" in result.stderr
    train = assert_loadable_model(opt_ml)["train"]
    assert train["interrupted"] and train["epochs_run"] == 2  # the cut epoch is closed, not continued
    assert opt_ml.metrics["test"] is None  # scoring skipped: the job has seconds left
    state = json.loads((opt_ml.root / "checkpoints/deepar-checkpoint.json").read_text())
    # A restart resumes: torch after the cut epoch, mxnet (weights only) runs the cut epoch again.
    assert state["epochs_done"] == {"torch": 2, "mxnet": 1}[backend] and not state.get("completed")


def test_sigterm_in_the_first_epoch_still_gives_a_model(opt_ml: OptMl):
    """Our decision: weights after one partial epoch are a usable (if early) model; the metadata says so."""
    standard_job(opt_ml, **FAST)
    result = run_train(opt_ml, DEEPAR_FAULT="sigterm@batch:2")
    assert result.returncode == 0, result.stderr[-3000:]
    train = assert_loadable_model(opt_ml)["train"]
    assert train["interrupted"] and train["epochs_run"] == 1 and train["best_epoch"] == 0


@pytest.mark.parametrize("backend", ["torch", "mxnet"])
def test_sigterm_during_test_scoring_skips_it_and_writes_the_model(opt_ml: OptMl, backend: str):
    standard_job(opt_ml, backend=backend, **FAST)
    result = run_train(opt_ml, DEEPAR_FAULT="sigterm@scoring")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SIGTERM during test scoring" in result.stderr
    meta = assert_loadable_model(opt_ml)
    assert meta["train"]["epochs_run"] == 4 and meta["test_metrics"] is None
    assert "test RMSE" not in result.stdout


@pytest.mark.parametrize("backend", ["torch", "mxnet"])
def test_sigterm_while_writing_the_model_finishes_it(opt_ml: OptMl, backend: str):
    standard_job(opt_ml, backend=backend, **FAST)
    result = run_train(opt_ml, DEEPAR_FAULT="sigterm@writing")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SIGTERM received while writing" in result.stderr
    meta = assert_loadable_model(opt_ml)
    assert meta["test_metrics"]["RMSE"] > 0


def test_sigterm_while_reading_data_fails_clearly(opt_ml: OptMl):
    standard_job(opt_ml, **FAST)
    result = run_train(opt_ml, DEEPAR_FAULT="sigterm@reading")
    assert result.returncode == 1
    assert opt_ml.failure.startswith("ClientError: the job was stopped (SIGTERM) before training started")
    assert not (opt_ml.root / "model/deepar-metadata.json").exists()


def test_killed_while_writing_leaves_nothing_that_looks_like_a_model(opt_ml: OptMl):
    standard_job(opt_ml, with_test=False, **FAST)
    killed = run_train(opt_ml, DEEPAR_FAULT="kill@writing")
    assert killed.returncode == -9
    assert not (opt_ml.root / "model/deepar-metadata.json").exists()
    with pytest.raises(FileNotFoundError):
        Model.load(opt_ml.root / "model")
    again = run_train(opt_ml)  # the next run replaces the half-written staging folder
    assert again.returncode == 0, again.stderr[-3000:]
    assert_loadable_model(opt_ml)


def test_an_internal_error_while_writing_leaves_no_model(opt_ml: OptMl):
    standard_job(opt_ml, with_test=False, **FAST)
    result = run_train(opt_ml, DEEPAR_FAULT="error@writing")
    assert result.returncode == 2
    assert opt_ml.failure.startswith("AlgorithmError: internal error (not caused by your input): InjectedFault")
    assert not (opt_ml.root / "model/deepar-metadata.json").exists()


def test_docker_stop_mid_epoch_leaves_a_loadable_model(image, opt_ml: OptMl, container_names):  # noqa: F811
    standard_job(opt_ml, with_test=False, epochs="200", num_batches_per_epoch="30")
    name = f"deepar-test-{uuid.uuid4().hex[:8]}"
    container_names.append(name)
    docker("run", "-d", "--name", name, "-v", f"{opt_ml.root}:/opt/ml", image, "train", check=True)
    deadline = time.monotonic() + 300
    while "epoch=0, train loss" not in docker("logs", name).stdout:
        assert time.monotonic() < deadline, docker("logs", name).stderr[-3000:]
        assert docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true", docker(
            "logs", name
        ).stderr[-3000:]
        time.sleep(0.5)
    time.sleep(1.0)  # well inside the second epoch (30 batches take seconds)
    stopped = time.monotonic()
    docker("stop", "-t", "60", name, check=True)
    assert time.monotonic() - stopped < 60
    assert docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip() == "0", docker("logs", name).stderr[
        -3000:
    ]
    train = assert_loadable_model(opt_ml)["train"]
    assert train["interrupted"] and 1 <= train["epochs_run"] < 200


# ---------------------------------------------------------------- user mistakes: ClientErrors before any epoch


def too_short(m: OptMl) -> None:
    standard_job(m, with_test=False)
    m.channel("train", [series(n=10), series(n=17)])  # context 12 + prediction 6 = 18


def nested_json(m: OptMl) -> None:
    standard_job(m, with_test=False)
    m.channel("train", [series(), "[" * 100_000 + "]" * 100_000])


def huge_integer(m: OptMl) -> None:
    standard_job(m, with_test=False)
    m.channel("train", [series(), '{"start": "2024-01-01", "target": [1, 2, ' + "7" * 400 + "]}"])


def near_float_limit(m: OptMl) -> None:
    standard_job(m, with_test=False)
    m.channel("train", [series(), {"start": "2024-01-01", "target": [1e37] * 30}])


def huge_dynamic_feat(m: OptMl) -> None:
    standard_job(m, with_test=False)
    m.channel("train", [series(n=30, dynamic_feat=[[1.0] * 29 + [1e35]])])


def huge_cat(m: OptMl) -> None:
    standard_job(m, with_test=False)
    m.channel("train", [series(), '{"start": "2024-01-01", "target": [1, 2], "cat": [' + "9" * 400 + "]}"])


def huge_hyperparameter(m: OptMl) -> None:
    standard_job(m, with_test=False)
    m.hyperparameters(context_length="9" * 400)


def nested_hyperparameters(m: OptMl) -> None:
    standard_job(m, with_test=False)
    m.config("hyperparameters.json", "[" * 100_000 + "]" * 100_000)


def nested_hyperparameter_value(m: OptMl) -> None:
    standard_job(m, with_test=False)
    m.hyperparameters(cardinality="[" * 100_000 + "]" * 100_000)


def all_missing(m: OptMl) -> None:
    standard_job(m, with_test=False)
    m.channel(
        "train", [{"start": "2024-01-01", "target": [None] * 40}, {"start": "2024-01-01", "target": ["NaN"] * 40}]
    )


MISTAKES = {
    "every series too short": (
        too_short,
        [
            "every series is shorter than the 18 points",
            "context_length = 12",
            "prediction_length = 6",
            "train/data.json:2 with 17 points",
        ],
    ),
    "JSON nested 100,000 deep": (nested_json, ["train/data.json:2: record: not valid JSON", "depth limit"]),
    "400-digit integer in target": (
        huge_integer,
        ["train/data.json:2: target[2]", "an integer of 400 digits", "too large"],
    ),
    "target near the float limit": (near_float_limit, ["train/data.json:2: target[0]", "1e+37", "beyond ±1e+30"]),
    "dynamic_feat near the float limit": (huge_dynamic_feat, ["train/data.json:1: dynamic_feat[0][29]", "beyond"]),
    "400-digit category id": (huge_cat, ["train/data.json:2: cat[0]", "an integer of 400 digits", "too large"]),
    "400-digit hyperparameter": (huge_hyperparameter, ["hyperparameter 'context_length'", "less than or equal"]),
    "hyperparameters.json nested 100,000 deep": (nested_hyperparameters, ["hyperparameters.json", "nested too deeply"]),
    "hyperparameter value nested 100,000 deep": (nested_hyperparameter_value, ["hyperparameter 'cardinality'"]),
    "no series has an observed value": (
        all_missing,
        ["channel 'train': none of its 2 series has an observed target", "train/data.json:1, train/data.json:2"],
    ),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_user_mistakes_are_client_errors_before_any_epoch(opt_ml: OptMl, case: str):
    setup, fragments = MISTAKES[case]
    setup(opt_ml)
    result = run_train(opt_ml, timeout=120)
    assert result.returncode == 1, result.stderr[-2000:]
    first_line = opt_ml.failure.splitlines()[0]
    assert first_line.startswith("ClientError: ")
    for fragment in fragments:
        assert fragment in first_line, f"{fragment!r} not in {first_line!r}"
    assert "Traceback" not in result.stderr and no_epoch_ran(result)


def test_series_without_observations_are_counted_in_the_log(opt_ml: OptMl):
    standard_job(opt_ml, with_test=False, epochs="1")
    opt_ml.channel("train", [series(), {"start": "2024-01-01", "target": [None] * 60}, series(), series(n=10)])
    result = run_train(opt_ml)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "[train] 1 of 4 series have no observed target value" in result.stderr and "train/data.json:2" in result.stderr
    )
    assert (
        "[train] 1 of 4 series are shorter than context_length + prediction_length = 18 points (e.g. train/data.json:4)"
        in result.stderr
    )
    assert opt_ml.metadata["training_statistics"]["train"]["num_series_unobserved"] == 1


# ---------------------------------------------------------------- output folders probed before training


def test_model_folder_that_is_a_file_fails_before_reading_data(opt_ml: OptMl):
    standard_job(opt_ml, with_test=False)
    (opt_ml.root / "model").write_text("a file where a folder should be")
    result = run_train(opt_ml, timeout=120)
    assert result.returncode == 1
    assert opt_ml.failure.startswith(f"ClientError: the model folder {opt_ml.root / 'model'} is a file, not a folder")
    assert "number of time series" not in result.stderr  # failed before reading the data


def test_checkpoint_folder_that_cannot_be_created_fails_before_reading_data(opt_ml: OptMl):
    standard_job(opt_ml, with_test=False)
    (opt_ml.root / "blocker").write_text("")
    opt_ml.config("checkpointconfig.json", {"LocalPath": str(opt_ml.root / "blocker/checkpoints")})
    result = run_train(opt_ml, timeout=120)
    assert result.returncode == 1
    assert opt_ml.failure.startswith(
        f"ClientError: the checkpoint folder {opt_ml.root / 'blocker/checkpoints'} cannot be created"
    )
    assert "number of time series" not in result.stderr


def test_disk_space_is_needed_per_folder_on_one_device(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**20, 0, 10 * 2**20))
    dirs = {"model folder": tmp_path / "model", "checkpoint folder": tmp_path / "ckpt"}
    probe_output_dirs(dirs, 5 * 2**20)  # two folders x 5 MB fit in 10 MB
    with pytest.raises(OutputError, match=r"model folder .*checkpoint folder .*: 10.0 MB free, .* about 12 MB"):
        probe_output_dirs(dirs, 6 * 2**20)
    assert not list((tmp_path / "model").iterdir())  # the probe file is gone


def run_image_train(tag: str, root: Path, names: list[str], *mounts: str) -> subprocess.CompletedProcess:
    name = f"deepar-test-{uuid.uuid4().hex[:8]}"
    names.append(name)
    return docker("run", "--name", name, "-v", f"{root}:/opt/ml", *mounts, tag, "train", timeout=300)


def test_read_only_model_folder_fails_in_seconds_in_the_image(image, opt_ml: OptMl, container_names):  # noqa: F811
    standard_job(opt_ml, with_test=False)
    (opt_ml.root / "model").mkdir()
    result = run_image_train(image, opt_ml.root, container_names, "-v", f"{opt_ml.root / 'model'}:/opt/ml/model:ro")
    assert result.returncode == 1, result.stderr[-3000:]
    assert opt_ml.failure.startswith(
        "ClientError: the model folder /opt/ml/model is not writable: Read-only file system"
    )
    assert "number of time series" not in result.stderr


def test_full_disk_fails_in_seconds_in_the_image(image, opt_ml: OptMl, container_names):  # noqa: F811
    standard_job(opt_ml, with_test=False)
    result = run_image_train(
        image, opt_ml.root, container_names, "--mount", "type=tmpfs,destination=/opt/ml/model,tmpfs-size=1048576"
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert opt_ml.failure.startswith(
        "ClientError: not enough disk space for the model folder /opt/ml/model: 1.0 MB free"
    )
    assert "number of time series" not in result.stderr


# ---------------------------------------------------------------- long lines: the streamed target decoder


@pytest.fixture
def small_chunks(monkeypatch):
    from sagemaker_deepar.training import data

    monkeypatch.setattr(data, "LONG_LINE_BYTES", 64)  # every line below is "long": many chunks each
    return data


def test_streamed_targets_equal_whole_line_decoding(tmp_path, small_chunks):
    import gzip

    import numpy as np

    values = [round(i * 0.37 - 50, 3) for i in range(2000)]
    values[5], values[700], values[1999] = None, "NaN", None
    records = [
        {"start": "2024-01-01", "cat": [1], "target": values},
        {"target": values[:300], "start": "2024-01-02", "cat": [2]},  # target first
        {"start": "2024-01-03", "target": [1, 2], "cat": [0]},  # a short line between long ones
    ]
    text = "\n".join([json.dumps(records[0]), json.dumps(records[1], separators=(",", ":")), json.dumps(records[2])])
    (tmp_path / "train").mkdir()
    (tmp_path / "train/a.json").write_text(text + "\n")
    (tmp_path / "train/b.json.gz").write_bytes(gzip.compress(text.encode()))  # no final newline
    channel = small_chunks.read_channel("train", tmp_path / "train", "D")
    assert channel.locations == [
        "train/a.json:1",
        "train/a.json:2",
        "train/a.json:3",
        "train/b.json.gz:1",
        "train/b.json.gz:2",
        "train/b.json.gz:3",
    ]
    expected = np.array([np.nan if v in (None, "NaN") else v for v in values], dtype=np.float32)
    for entry in (channel.entries[0], channel.entries[3]):
        assert entry["target"].dtype == np.float32
        np.testing.assert_array_equal(entry["target"], expected)
        assert entry["feat_static_cat"] == [1]
    np.testing.assert_array_equal(channel.entries[1]["target"], expected[:300])
    assert channel.entries[1]["feat_static_cat"] == [2] and channel.entries[2]["target"].tolist() == [1, 2]
    assert channel.stats.num_missing == 2 * (3 + 1)


@pytest.mark.parametrize(
    "bad, problem",
    [
        ('"abc"', "train/data.json:1: target[1500]: 'abc' is not a number"),
        ("1" * 400, "train/data.json:1: target[1500]: an integer of 400 digits is too large"),
        ("1e39", "train/data.json:1: target[1500]: is infinite"),
        ("[1]", "train/data.json:1: target[1500]: [1] is not a number"),
    ],
)
def test_a_bad_value_deep_in_a_long_line_is_reported_exactly(tmp_path, small_chunks, bad, problem):
    numbers = ", ".join(["1.5"] * 1500 + [bad] + ["2.5"] * 500)
    (tmp_path / "train").mkdir()
    (tmp_path / "train/data.json").write_text(
        '{"start": "2024-01-01", "target": ['
        + numbers
        + "]}\n"
        + json.dumps({"start": "2024-01-01", "target": [1.0] * 30})
        + "\n"
    )
    with pytest.raises(small_chunks.DataError) as error:
        small_chunks.read_channel("train", tmp_path / "train", "D")
    assert str(error.value).startswith(problem) and error.value.total == 1  # line 2 is read normally


def test_a_long_line_cut_inside_its_target_is_invalid_json(tmp_path, small_chunks):
    (tmp_path / "train").mkdir()
    (tmp_path / "train/data.json").write_text(
        '{"start": "2024-01-01", "target": ['
        + "1.5, " * 500
        + "\n"
        + json.dumps({"start": "2024-01-01", "target": [1.0] * 30})
        + "\n"
    )
    with pytest.raises(small_chunks.DataError) as error:
        small_chunks.read_channel("train", tmp_path / "train", "D")
    assert str(error.value).startswith("train/data.json:1: record: not valid JSON") and error.value.total == 1


def test_streamed_dynamic_feat_equals_whole_line_decoding(tmp_path, small_chunks, monkeypatch):
    import numpy as np

    target = [round(i * 0.5 - 40, 2) for i in range(600)]
    target[10] = None
    rows = [[round(i * 0.01 + k, 3) for i in range(600)] for k in range(3)]
    records = [
        {"start": "2024-01-01", "target": target, "dynamic_feat": rows},
        {"dynamic_feat": rows[::-1], "start": "2024-01-02", "target": target},  # dynamic_feat first
        {"start": "2024-01-03", "target": target[:5], "dynamic_feat": [[1, 2, 3, 4, 5]] * 3},  # short
    ]
    (tmp_path / "train").mkdir()
    (tmp_path / "train/a.json").write_text("\n".join(json.dumps(r, separators=(",", ":")) for r in records) + "\n")
    streamed, stream = [], small_chunks._stream_arrays
    monkeypatch.setattr(small_chunks, "_stream_arrays", lambda reader: streamed.append(stream(reader)) or streamed[-1])
    channel = small_chunks.read_channel("train", tmp_path / "train", "D")
    assert len(streamed) == 3  # every line is long at 64-byte chunks, and none fell back to a whole decode
    assert [e["feat_dynamic_real"].shape for e in channel.entries] == [(3, 600), (3, 600), (3, 5)]
    for entry, expected_rows in zip(channel.entries, (rows, rows[::-1])):
        assert entry["feat_dynamic_real"].dtype == np.float32
        np.testing.assert_array_equal(entry["feat_dynamic_real"], np.asarray(expected_rows, dtype=np.float32))
        assert np.isnan(entry["target"][10]) and entry["target"].size == 600


@pytest.mark.parametrize(
    "rows, problem",
    [
        ("[" + "1.5, " * 599 + '"x"], [' + "2.5, " * 599 + "2.5]", "train/data.json:1: dynamic_feat[0][599]"),
        ("[" + "1.5, " * 599 + "1.5], [" + "2.5, " * 300 + "null]", "train/data.json:1: dynamic_feat[1]: length 301"),
        ("[" + "1.5, " * 599 + "1.5], [" + "2.5, " * 599 + "null]", "train/data.json:1: dynamic_feat[1][599]: missing"),
    ],
)
def test_a_bad_dynamic_feat_in_a_long_line_is_reported_exactly(tmp_path, small_chunks, rows, problem):
    (tmp_path / "train").mkdir()
    (tmp_path / "train/data.json").write_text(
        '{"start": "2024-01-01", "target": [' + "1.0, " * 599 + '1.0], "dynamic_feat": [' + rows + "]}\n"
    )
    with pytest.raises(small_chunks.DataError) as error:
        small_chunks.read_channel("train", tmp_path / "train", "D")
    assert str(error.value).startswith(problem), str(error.value)
