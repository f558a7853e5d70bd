"""Fast in-process unit tests (`scripts/test.sh --fast`) of the library code around the entrypoints:
data reading, the accuracy report, sample data, the one-line error helper, the evaluation commands'
option plumbing and the ingestion helpers. The black-box tests drive the same code through processes."""

from __future__ import annotations

import argparse
import gzip
import json

import numpy as np
import pandas as pd
import pytest

from sagemaker_deepar import cli, contract
from sagemaker_deepar.errors import DataError, UserError
from sagemaker_deepar.training import sample_data
from sagemaker_deepar.training.data import read_channel
from sagemaker_deepar.training.metrics import score_forecasts
from sagemaker_deepar.training.report import AccuracyReport

pytestmark = pytest.mark.unit


# ---------------------------------------------------------------- data reading


def test_read_channel_decodes_every_format_and_keeps_statistics(tmp_path):
    channel = tmp_path / "train"
    contract.write_jsonl(
        [{"start": "2024-01-01 00:00:00", "target": [1, None, "NaN", 4], "cat": [2]}], channel / "a.json"
    )
    contract.write_jsonl([{"start": "2024-01-02", "target": [5.0, 6.0], "cat": [0]}], channel / "sub" / "b.json.gz")
    (channel / ".hidden.json").write_text("not json")
    (channel / "_SUCCESS").write_text("")
    read = read_channel("train", channel, "h")
    assert read.locations == ["train/a.json:1", "train/sub/b.json.gz:1"]
    assert read.stats.as_dict()["num_series"] == 2 and read.stats.num_missing == 2
    assert read.entries[0]["target"].dtype == np.float32 and np.isnan(read.entries[0]["target"][1])
    assert read.cat_max == [2]


def test_read_channel_locates_every_bad_record(tmp_path):
    channel = tmp_path / "train"
    channel.mkdir()
    (channel / "d.json").write_text(
        '{"start": "2024-01-01", "target": [1, 2]}\n'
        '{"start": "2024-01-01T00:00:00Z", "target": [1]}\n'
        '{"start": "2024-01-01", "target": [1, "x"]}\n'
        "{oops\n"
    )
    with pytest.raises(DataError) as raised:
        read_channel("train", channel, "h")
    lines = str(raised.value).splitlines()
    assert lines[0].startswith("train/d.json:2: start:") and "(and 2 more problem(s)" in lines[0]
    assert lines[1].startswith("train/d.json:3: target[1]: 'x' is not a number")
    assert lines[2].startswith("train/d.json:4: record: not valid JSON")


def test_read_channel_without_files_is_a_user_error(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(UserError, match="channel 'train' has no data files"):
        read_channel("train", tmp_path / "train", "h")


# ---------------------------------------------------------------- report and scores


def forecast(mean: list[float], low: list[float], high: list[float]) -> dict:
    return {"mean": mean, "quantiles": {"0.1": low, "0.5": mean, "0.9": high}}


def test_accuracy_report_scores_like_the_definitions(tmp_path):
    report = AccuracyReport(prediction_length=2, freq="H")
    record = {"start": "2024-01-01 00:00:00", "target": [5, 5, 1, 3]}
    report.add("s", record, forecast([2, 2], [1, 1], [3, 3]), plot_dir=tmp_path)
    scores = report.scores()
    assert scores["RMSE"] == pytest.approx(np.sqrt((1 + 1) / 2))
    # wQuantileLoss[0.1] = 2 * sum(pinball_0.1) / sum|y| = 2 * (0.9*0 + 0.1*2) / 4
    assert scores["wQuantileLoss[0.1]"] == pytest.approx(2 * 0.2 / 4)
    assert (tmp_path / "s.png").stat().st_size > 0
    assert report.series_scores()[0]["RMSE"] == pytest.approx(scores["RMSE"])


def test_accuracy_report_refuses_incomplete_forecasts():
    report = AccuracyReport(prediction_length=2)
    record = {"start": "2024-01-01", "target": [1, 2, 3]}
    with pytest.raises(ValueError, match="forecast has 1 points, expected 2"):
        report.add("s", record, forecast([1], [1], [1]))
    with pytest.raises(ValueError, match="lacks quantiles 0.9"):
        report.add("s", record, {"mean": [1, 2], "quantiles": {"0.1": [1, 2], "0.5": [1, 2]}})
    with pytest.raises(ValueError, match="answered with an error: boom"):
        report.add("s", record, {"error": "boom"})


def test_scores_skip_missing_actuals():
    actuals = np.array([[1.0, np.nan, 3.0]])
    scores = score_forecasts(actuals, np.array([[1.0, 100.0, 3.0]]), {0.5: np.array([[1.0, 100.0, 3.0]])})
    assert scores["RMSE"] == 0.0 and scores["mean_wQuantileLoss"] == 0.0


# ---------------------------------------------------------------- sample data


def test_sample_data_has_the_documented_shape():
    records = sample_data.generate(num_sensors=2, days=3, with_dynamic_feat=True)
    assert len(records) == 2 * len(sample_data.POLLUTANTS)
    assert [r["cat"] for r in records[:2]] == [[0, 0], [0, 1]]
    assert all(len(r["target"]) == 72 and len(r["dynamic_feat"][0]) == 72 for r in records)
    assert sample_data.generate(num_sensors=1, days=2) == sample_data.generate(num_sensors=1, days=2)  # seeded


def test_the_pollutant_list_is_the_same_everywhere():
    from ingestion.glue_job import POLLUTANTS

    assert tuple(sample_data.POLLUTANTS) == POLLUTANTS  # the generator's parameters cover the lake's columns


# ---------------------------------------------------------------- one-line errors


def test_explain_names_aws_errors_and_what_to_do():
    from botocore.exceptions import ClientError, NoCredentialsError

    denied = ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no iam:PassRole"}}, "CreateModel")
    assert cli.explain(denied) == (
        "CreateModel failed: AccessDeniedException: no iam:PassRole "
        "-- the credentials or the role lack a permission (see the message)"
    )
    assert cli.explain(NoCredentialsError(), " or pass --local").endswith("set AWS_PROFILE, or pass --local")
    assert cli.explain(UserError("--hp 'x': expected KEY=VALUE")) == "--hp 'x': expected KEY=VALUE"
    assert cli.explain(contract.ContractError("f:3: not JSON")) == "f:3: not JSON"


def test_run_command_prints_one_line_and_returns_the_status(capsys, monkeypatch):
    def failing(argv):
        raise UserError("what to fix")

    monkeypatch.delenv("DEEPAR_DEBUG", raising=False)
    assert cli.run_command(failing, []) == 1
    assert capsys.readouterr().err == "error: what to fix\n"
    assert cli.run_command(lambda argv: 3, []) == 3
    assert cli.run_command(lambda argv: {"a": 1}, []) == 0


# ---------------------------------------------------------------- evaluation: one command calls another


def test_options_fill_defaults_and_check_required():
    from evaluation import common, deploy, train

    args = common.options(train.parser(), train="file:///d/train", hp=[("epochs", 5)], local=True)
    assert args.instance_count == 1 and args.quiet is False and args.local is True
    assert train.hyperparameters(args)["epochs"] == 5
    with pytest.raises(TypeError, match="missing required option"):
        common.options(train.parser(), local=True)
    with pytest.raises(TypeError, match="no option"):
        common.options(train.parser(), train="x", trian="y")
    delete = common.options(deploy.command_parser("delete"), name="e", local=True)
    assert delete.command == "delete" and delete.timeout == 1800


def test_deploy_variant_and_wait_take_a_typed_fleet():
    """mlops builds a Fleet directly; the commands build it from their options."""
    from evaluation import common, deploy

    args = common.options(deploy.command_parser("create"), name="e", model_data=["file:///m.tar.gz"], local=True)
    assert deploy.Fleet.of(args) == deploy.Fleet(local=True, timeout=1800)
    assert deploy.variant("variant-1", "m", deploy.Fleet.of(args))["InstanceType"] == "local"
    assert deploy.variant("v", "m", deploy.Fleet(instance_type="ml.m5.large", instance_count=2), 0.5) == {
        "VariantName": "v",
        "ModelName": "m",
        "InitialInstanceCount": 2,
        "InstanceType": "ml.m5.large",
        "InitialVariantWeight": 0.5,
    }


def test_hp_values_decode_as_json_else_stay_strings():
    from evaluation import train

    parsed = train.parser().parse_args(
        ["--train", "x", "--hp", "epochs=5", "--hp", "test_quantiles=[0.1, 0.9]", "--hp", "time_freq=H"]
    )
    assert parsed.hp == [("epochs", 5), ("test_quantiles", [0.1, 0.9]), ("time_freq", "H")]
    with pytest.raises(UserError, match="--hp 'epochs': expected KEY=VALUE"):
        train.parser().parse_args(["--train", "x", "--hp", "epochs"])


def test_prepare_split_names_the_file_and_line(tmp_path):
    from evaluation import prepare

    data = tmp_path / "s.json"
    data.write_text('{"start": "2024-01-01", "target": [1, 2, 3, 4, 5]}\n\n{"start": "2024-01-01", "target": [1, 2]}\n')
    args = prepare.parser().parse_args(
        ["--local", "--data", str(data), "--prediction-length", "3", "--output", str(tmp_path)]
    )
    with pytest.raises(contract.ContractError, match=f"{data}:3: 2 points"):
        prepare.run(args)


# ---------------------------------------------------------------- ingestion helpers


def test_glue_job_arguments_ignore_what_glue_adds():
    from ingestion.glue_job import parse_args

    args = parse_args(
        [
            "--JOB_NAME",
            "j",
            "--raw-path",
            "r",
            "--curated-path",
            "c",
            "--quarantine-path",
            "q",
            "--TempDir",
            "s3://t/",
            "--enable-metrics",
            "true",
        ]
    )
    assert (args.raw_path, args.curated_path, args.quarantine_path, args.partitions) == ("r", "c", "q", 0)
    with pytest.raises(SystemExit):
        parse_args(["--raw-path", "r"])


def test_glue_job_splits_concatenated_and_broken_records():
    from ingestion.glue_job import decode_object, split_records

    text = decode_object(gzip.compress(b'{"a": 1}{"a": 2}\n{broken\n{"a": 3}\n'))
    parsed = [(value, error) for value, error, _ in split_records(text)]
    assert [v for v, e in parsed if e is None] == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert [e for _, e in parsed if e] and all(e.startswith("not JSON") for _, e in parsed if e)


def test_to_deepar_builds_series_with_gaps_and_features():
    from ingestion.to_deepar import build_series

    times = pd.date_range("2024-01-01", periods=6, freq="30min")
    frame = pd.DataFrame(
        {
            "device_id": "d1",
            "timestamp": times,
            "ozone": [1.0, 3.0, np.nan, np.nan, 5.0, 7.0],
            "nitrogen_dioxide": [2.0, 2.0, np.nan, np.nan, 4.0, 4.0],
        }
    )
    [series] = build_series(frame, ["ozone"], contract.parse_time_freq("H"), True, ["nitrogen_dioxide"])
    assert series["target"] == [2.0, "NaN", 6.0] and series["cat"] == [0] and series["item_id"] == "d1"
    assert series["dynamic_feat"] == [[2.0, 2.0, 4.0]]  # gaps filled: DeepAR needs complete features
    assert series["start"] == "2024-01-01 00:00:00"


def test_ingestion_config_errors_name_the_file_and_field(tmp_path):
    from ingestion.config import load_config

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"prefix": "Bad_Prefix"}))
    with pytest.raises(UserError, match=f"^{path}: prefix: "):
        load_config(path, {})
    path.write_text("[]")
    with pytest.raises(UserError, match="expected a JSON object"):
        load_config(path, {})
    assert load_config(None, {"devices": 4, "region": None}).thing_names[-1] == "deepar-iot-sensor-4"


def test_simulator_step_and_settings_errors_are_user_errors(tmp_path):
    from ingestion.simulator import load_devices, parse_step

    assert parse_step("5min").total_seconds() == 300
    with pytest.raises(UserError, match="--step '5x'"):
        parse_step("5x")
    args = argparse.Namespace(settings=tmp_path / "missing.json")
    with pytest.raises(UserError, match="--settings"):
        load_devices(args)
