"""A corpus of bad inputs: each makes `container/train` exit non-zero with a failure file naming the problem."""

import gzip

import pytest

from .conftest import OptMl, run_train, series, standard_job


def bad_train_line(line: str):
    def setup(m: OptMl) -> None:
        standard_job(m, with_test=False)
        m.channel("train", [series(), line])

    return setup


def bad_train_record(**fields):
    base = series()

    def setup(m: OptMl) -> None:
        standard_job(m, with_test=False)
        record = {**base, **fields}
        m.channel("train", [series(), {k: v for k, v in record.items() if v != "<drop>"}])

    return setup


def with_hyperparameters(**overrides):
    def setup(m: OptMl) -> None:
        standard_job(m, with_test=False)
        m.hyperparameters(**overrides)

    return setup


def two_records(first: dict, second: dict, **hp):
    def setup(m: OptMl) -> None:
        standard_job(m, with_test=False, **hp)
        m.channel("train", [first, second])

    return setup


def no_hyperparameters(m: OptMl) -> None:
    standard_job(m)
    (m.root / "input/config/hyperparameters.json").unlink()


def hyperparameters_not_json(m: OptMl) -> None:
    standard_job(m)
    m.config("hyperparameters.json", "{epochs: 3")


def only_test_channel(m: OptMl) -> None:
    standard_job(m)
    m.channels(test="application/jsonlines")


def unknown_channel(m: OptMl) -> None:
    standard_job(m)
    m.channels(train=None, validation=None)


def pipe_mode(m: OptMl) -> None:
    standard_job(m, with_test=False)
    m.config("inputdataconfig.json", {"train": {"TrainingInputMode": "Pipe"}})


def empty_train_folder(m: OptMl) -> None:
    standard_job(m, with_test=False)
    (m.root / "input/data/train/data.json").unlink()


def short_test_series(m: OptMl) -> None:
    standard_job(m)
    m.channel("test", [series(n=6)])


def mismatched_test_cat(m: OptMl) -> None:
    standard_job(m)
    m.channel("test", [series(cat=[0, 1])])


def corrupt_gzip(m: OptMl) -> None:
    standard_job(m, with_test=False)
    (m.root / "input/data/train/data.json").unlink()
    (m.root / "input/data/train/broken.json.gz").write_bytes(
        gzip.compress(b'{"start": "2024-01-01", "target": [1]}\n')[:20]
    )


def garbage_parquet(m: OptMl) -> None:
    standard_job(m, with_test=False)
    (m.root / "input/data/train/data.parquet").write_bytes(b"PAR1 this is not parquet")


CASES = {
    "no hyperparameters.json": (no_hyperparameters, ["hyperparameters.json is missing"]),
    "hyperparameters.json not JSON": (hyperparameters_not_json, ["hyperparameters.json", "not valid JSON"]),
    "misspelled hyperparameter": (with_hyperparameters(epoch="3"), ["'epoch'", "did you mean 'epochs'"]),
    "bad likelihood": (with_hyperparameters(likelihood="poisson"), ["'likelihood'", "'poisson'", "student-T"]),
    "missing context_length": (with_hyperparameters(context_length=None), ["'context_length' is required"]),
    "only a test channel": (only_test_channel, ["'train' channel is required"]),
    "unknown channel": (unknown_channel, ["'validation'", "not supported"]),
    "pipe mode": (pipe_mode, ["Pipe input mode"]),
    "empty train folder": (empty_train_folder, ["no data files"]),
    "invalid JSON line": (
        bad_train_line('{"start": "2024-01-01", "target": [1, 2'),
        ["train/data.json:2", "not valid JSON"],
    ),
    "record is a list": (bad_train_line("[1, 2, 3]"), ["train/data.json:2", "record: expected a JSON object"]),
    "missing start": (bad_train_record(start="<drop>"), ["train/data.json:2: start: missing"]),
    "missing target": (bad_train_record(target="<drop>"), ["train/data.json:2: target: missing"]),
    "start in UTC": (bad_train_record(start="2024-01-01T00:00:00Z"), ["train/data.json:2: start", "time zone"]),
    "start with offset": (
        bad_train_record(start="2024-01-01 00:00:00+02:00"),
        ["train/data.json:2: start", "time zone"],
    ),
    "start not a date": (
        bad_train_record(start="yesterday"),
        ["train/data.json:2: start", "'yesterday' is not a timestamp"],
    ),
    "target value is text": (
        bad_train_record(target=[1, 2, 3, "abc", 5]),
        ["train/data.json:2: target[3]", "'abc' is not a number"],
    ),
    "target not a list": (bad_train_record(target=5), ["train/data.json:2: target: expected a list"]),
    "target overflows float32": (bad_train_record(target=[1, 2, 1e39]), ["train/data.json:2: target[2]", "infinite"]),
    "cat not an integer": (
        bad_train_record(cat=["a"]),
        ["train/data.json:2: cat[0]", "'a' is not a non-negative integer"],
    ),
    "cat negative": (bad_train_record(cat=[-1]), ["train/data.json:2: cat[0]", "-1"]),
    "cat counts differ": (two_records(series(cat=[1]), series(cat=[1, 2])), ["train/data.json:2: cat", "same number"]),
    "dynamic_feat too short": (
        two_records(series(n=30, dynamic_feat=[[0.0] * 30]), series(n=30, dynamic_feat=[[0.0] * 20])),
        ["train/data.json:2: dynamic_feat[0]: length 20, expected 30"],
    ),
    "dynamic_feat missing value": (
        two_records(series(n=3, dynamic_feat=[[0.0] * 3]), series(n=3, dynamic_feat=[[0.0, None, 1.0]])),
        ["train/data.json:2: dynamic_feat[0][1]", "missing"],
    ),
    "dynamic_feat counts differ": (
        two_records(series(n=3, dynamic_feat=[[0.0] * 3]), series(n=3, dynamic_feat=[[0.0] * 3] * 2)),
        ["train/data.json:2: dynamic_feat", "same number"],
    ),
    "cardinality too small": (
        two_records(series(cat=[1]), series(cat=[4]), cardinality="[3]"),
        ["train/data.json:2: cat[0] = 4", "cardinality[0] = 3"],
    ),
    "cardinality wrong length": (
        two_records(series(cat=[1]), series(cat=[2]), cardinality="[3, 3]"),
        ["'cardinality'", "2 entries", "1 'cat'"],
    ),
    "num_dynamic_feat mismatch": (
        two_records(series(), series(), num_dynamic_feat="2"),
        ["'num_dynamic_feat' = 2", "0 dynamic_feat"],
    ),
    "test series too short": (short_test_series, ["test/data.json:1: target", "at least 7"]),
    "test cat count differs": (mismatched_test_cat, ["test/data.json:1: cat: has 2 value(s), the model expects 1"]),
    "beta needs (0, 1)": (with_hyperparameters(likelihood="beta"), ["train/data.json:1: target[0]", "between 0 and 1"]),
    "negative-binomial needs counts": (
        two_records(series(), series(offset=-100), likelihood="negative-binomial"),
        ["train/data.json:2: target", "non-negative"],
    ),
    "corrupt gzip": (corrupt_gzip, ["broken.json.gz", "cannot be read"]),
    "garbage parquet": (garbage_parquet, ["data.parquet", "cannot be read as Parquet"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_writes_failure_and_exits_non_zero(opt_ml, case):
    setup, fragments = CASES[case]
    setup(opt_ml)
    result = run_train(opt_ml, timeout=120)
    assert result.returncode == 1, result.stderr[-2000:]
    failure = opt_ml.failure
    assert failure is not None and failure.startswith("ClientError: ")
    first_line = failure.splitlines()[0]
    for fragment in fragments:
        assert fragment in first_line, f"{fragment!r} not in {first_line!r}"
    assert "Traceback" not in failure and "Traceback" not in result.stderr
    assert not (opt_ml.root / "model" / "deepar-metadata.json").exists()


def test_all_bad_records_are_listed_with_locations(opt_ml):
    standard_job(opt_ml, with_test=False)
    opt_ml.channel("train", [series(), {"start": "x", "target": [1]}, "nope", series(), {"target": [1]}])
    result = run_train(opt_ml, timeout=120)
    assert result.returncode == 1
    lines = opt_ml.failure.removeprefix("ClientError: ").splitlines()
    assert "(and 2 more problem(s) in the input data)" in lines[0]
    assert [line.split(": ")[0] for line in lines] == ["train/data.json:2", "train/data.json:3", "train/data.json:5"]


def test_internal_errors_are_marked_as_ours(opt_ml):
    standard_job(opt_ml, with_test=False)
    # A bug of ours (injected after the first batch) is not the user's input: the failure must say so.
    # (An unusable model folder used to stand in for one; it is now a ClientError found before training.)
    result = run_train(opt_ml, timeout=300, DEEPAR_FAULT="error@batch:1")
    assert result.returncode == 2
    assert opt_ml.failure.startswith("AlgorithmError: internal error (not caused by your input): InjectedFault")
    assert not (opt_ml.root / "model" / "deepar-metadata.json").exists()
