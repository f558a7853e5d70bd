"""SQL over the lake: run a query of ``queries/`` with DuckDB on the curated Parquet, or on Athena.

    python -m ingestion.query --list
    python -m ingestion.query NAME [--lake DIR|s3://bucket/prefix] [--forecasts DIR|s3://...]
                              [--param key=value ...] [--format table|csv|json]
    python -m ingestion.query NAME --athena --workgroup W --output s3://bucket/prefix [--database D] [--param ...]

A query is one file ``queries/NAME.sql`` in DuckDB's dialect, which Athena's DuckDB engine runs
unchanged. Its header declares what it reads and takes::

    -- tables: readings, quarantine
    -- param: start_date DATE = 1970-01-01
    -- param: device VARCHAR = NULL    -- a comment

and its text reads every parameter once, through one ``?`` each, in the declared order (a ``params``
CTE at the top), so the same text binds positionally on both engines: DuckDB's prepared statement
locally, Athena's ``ExecutionParameters`` (typed constants) remotely. Values are never pasted into the
SQL text.

Locally the tables are views over the Glue job's output: ``readings`` (``<lake>/readings/date=…/*.parquet``,
or the lake folder itself when it holds the ``date=`` partitions), ``quarantine`` (``<lake>/quarantine/``;
empty when the job quarantined nothing) and ``forecasts`` (JSON Lines under ``--forecasts``, default
``<lake>/forecasts``). An ``s3://`` lake is copied to a temporary folder first (DuckDB's S3 extension
cannot be installed offline). On Athena the tables are the Glue catalog's (the crawler names them after
their folders).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from sagemaker_deepar.cli import run_command
from sagemaker_deepar.contract import ContractError, UnsafePathError, parse_time_freq
from sagemaker_deepar.errors import UserError

QUERIES = Path(__file__).resolve().parent.parent / "queries"
TABLES = ("readings", "quarantine", "forecasts")
PARQUET_MAGIC = b"PAR1"
FORECAST_SUFFIXES = (".jsonl", ".json", ".out")
# The quarantine output's columns (ingestion/glue_job.py), for a lake where the job quarantined nothing.
EMPTY_QUARANTINE = (
    'SELECT NULL::VARCHAR AS reason, NULL::VARCHAR AS raw, NULL::TIMESTAMP AS "timestamp", '
    'NULL::VARCHAR AS source, NULL::VARCHAR AS "date" WHERE false'
)
INTERVAL_TEXT = re.compile(r"\s*\d+\s+(second|minute|hour|day|week|month|year)s?\s*", re.IGNORECASE)
ATHENA_POLL_SECONDS = 0.5


# ---------------------------------------------------------------- the query files


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    default: Optional[str]  # the declared default's text; None: required


@dataclass(frozen=True)
class Query:
    name: str
    path: Path
    description: str
    tables: tuple[str, ...]
    parameters: tuple[Parameter, ...]
    sql: str


PARAMETER_TYPES: dict[str, Callable[[str], Any]] = {
    "DATE": date.fromisoformat,
    "TIMESTAMP": datetime.fromisoformat,
    "VARCHAR": str,
    "INTEGER": int,
    "DOUBLE": float,
    "INTERVAL": lambda text: _interval(text),
}


def _interval(text: str) -> str:
    """An interval's text; a DeepAR time_freq (H, 5min, 2W, M) is spelled as the interval it steps by."""
    if INTERVAL_TEXT.fullmatch(text):
        return text.strip()
    try:
        freq = parse_time_freq(text.strip())
    except ContractError:
        raise ValueError(
            "expected a time_freq (H, 5min, 2W, M) or a count and a unit ('1 hour', '5 minutes', '1 month')"
        ) from None
    return freq.interval


def query_names(folder: Path = QUERIES) -> list[str]:
    return sorted(path.stem for path in folder.glob("*.sql"))


def load_query(name: str, folder: Path = QUERIES) -> Query:
    """``queries/NAME.sql`` with its header parsed; an unknown name lists the known ones."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", name) or not (folder / f"{name}.sql").is_file():
        raise UserError(f"unknown query {name!r}: the queries are {', '.join(query_names(folder)) or '(none)'}")
    path = folder / f"{name}.sql"
    sql = path.read_text()
    description: list[str] = []
    tables: tuple[str, ...] = ()
    parameters: list[Parameter] = []
    for number, line in enumerate(sql.splitlines(), 1):
        if not line.startswith("--"):
            break
        text = line[2:].strip()
        if text.startswith("tables:"):
            tables = tuple(t.strip() for t in text[len("tables:") :].split(",") if t.strip())
            unknown = [t for t in tables if t not in TABLES]
            if unknown:
                raise UserError(f"{path}:{number}: unknown table(s) {unknown}; known: {list(TABLES)}")
        elif text.startswith("param:"):
            parameters.append(_parameter(text[len("param:") :], f"{path}:{number}"))
        else:
            description.append(text)
    placeholders = _placeholders(sql)
    if placeholders != len(parameters):
        raise UserError(f"{path}: {placeholders} '?' placeholder(s) for {len(parameters)} declared parameter(s)")
    return Query(name, path, " ".join(description), tables, tuple(parameters), sql)


def _parameter(text: str, where: str) -> Parameter:
    declaration = text.split("--", 1)[0].strip()
    match = re.fullmatch(r"([a-z_][a-z0-9_]*)\s+([A-Z]+)(?:\s*=\s*(.+))?", declaration)
    if not match or match.group(2) not in PARAMETER_TYPES:
        raise UserError(f"{where}: expected 'param: name TYPE [= default]' with TYPE in {sorted(PARAMETER_TYPES)}")
    return Parameter(match.group(1), match.group(2), match.group(3).strip() if match.group(3) else None)


def _placeholders(sql: str) -> int:
    """The ``?`` outside comments and string literals."""
    without_comments = re.sub(r"--[^\n]*", "", sql)
    without_strings = re.sub(r"'(?:[^']|'')*'", "''", without_comments)
    return without_strings.count("?")


def bind(query: Query, given: dict[str, str]) -> list[Any]:
    """The values in declaration order, typed; a parameter the query does not declare, a value of the
    wrong type or a missing required one is a named error before anything runs."""
    declared = {p.name: p for p in query.parameters}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        names = ", ".join(f"{p.name} {p.type}" for p in query.parameters) or "none"
        raise UserError(f"query {query.name} takes no parameter {', '.join(unknown)} (it takes: {names})")
    values: list[Any] = []
    for parameter in query.parameters:
        text = given.get(parameter.name, parameter.default)
        if text is None:
            raise UserError(f"query {query.name}: --param {parameter.name}=... is required ({parameter.type})")
        if text.upper() == "NULL":
            values.append(None)
            continue
        try:
            values.append(PARAMETER_TYPES[parameter.type](text))
        except ValueError as error:
            raise UserError(
                f"query {query.name}: --param {parameter.name}={text!r} is not a {parameter.type} ({error})"
            ) from None
    return values


def parse_params(pairs: Sequence[str]) -> dict[str, str]:
    given: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--param {pair!r}: expected key=value")
        given[key.strip()] = value
    return given


# ---------------------------------------------------------------- the lake, locally


def _s3_parts(url: str) -> tuple[str, str]:
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise UserError(f"{url}: expected s3://bucket/prefix")
    return bucket, prefix


def copy_from_s3(url: str, folder: Path, client: Any = None) -> Path:
    """Every object under ``s3://bucket/prefix`` copied below ``folder`` (the layout kept); a key that
    would leave the folder is refused, naming it."""
    from awsinfra.clients import client as aws_client
    from awsinfra.s3 import download_prefix

    bucket, prefix = _s3_parts(url)
    try:
        copied = download_prefix(client or aws_client("s3"), bucket, prefix, folder, lambda key: True)
    except UnsafePathError as error:
        raise UserError(f"{error}: refused") from None
    if not copied:
        raise UserError(f"{url}: no objects (an empty or missing lake)")
    return folder


def _parquet_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*.parquet") if not p.name.startswith((".", "_")))
    for path in files:  # a truncated or foreign file is named here, before DuckDB reads anything
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(max(size - 4, 0))
            tail = f.read(4)
        if size < 12 or head != PARQUET_MAGIC or tail != PARQUET_MAGIC:
            raise UserError(f"{path}: not a Parquet file (malformed or truncated: no PAR1 marker at both ends)")
    return files


def readings_folder(lake: Path) -> Path:
    if (lake / "readings").is_dir():
        return lake / "readings"
    if any(lake.glob("date=*")):
        return lake
    raise UserError(
        f"lake {lake}: no readings (expected the Glue job's curated Parquet under {lake}/readings/date=YYYY-MM-DD/)"
    )


def _forecast_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix in FORECAST_SUFFIXES and not p.name.endswith(".manifest.json")
    )


def connect_lake(lake: Path, tables: Sequence[str], forecasts: Optional[Path] = None) -> Any:
    """A DuckDB connection with a view per table the query reads."""
    import duckdb

    if not lake.exists():
        raise UserError(f"lake {lake}: no such folder")
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")  # our output is the result, not a progress bar
    if "readings" in tables:
        folder = readings_folder(lake)
        files = _parquet_files(folder)
        if not files:
            raise UserError(f"lake {lake}: no Parquet files under {folder} (an empty lake)")
        _view(con, "readings", lambda: con.read_parquet([str(f) for f in files], hive_partitioning=True))
    if "quarantine" in tables:
        files = _parquet_files(lake / "quarantine") if (lake / "quarantine").is_dir() else []
        if files:
            _view(con, "quarantine", lambda: con.read_parquet([str(f) for f in files], hive_partitioning=True))
        else:
            con.execute(f"CREATE VIEW quarantine AS {EMPTY_QUARANTINE}")
    if "forecasts" in tables:
        folder = forecasts or lake / "forecasts"
        files = _forecast_files(folder) if folder.is_dir() else []
        if not files:
            raise UserError(f"forecasts {folder}: no JSON Lines forecasts (pass --forecasts DIR|s3://...)")
        _view(con, "forecasts", lambda: con.read_json([str(f) for f in files], format="newline_delimited"))
    return con


def _view(con: Any, name: str, relation: Callable[[], Any]) -> None:
    import duckdb

    try:
        relation().create_view(name)
    except duckdb.Error as error:
        raise UserError(f"{name}: cannot be read: {error}") from None


@dataclass
class Result:
    columns: list[str]
    rows: list[tuple]


def run_local(query: Query, values: list[Any], lake: Path, forecasts: Optional[Path] = None) -> Result:
    import duckdb

    con = connect_lake(lake, query.tables, forecasts)
    try:
        cursor = con.execute(query.sql, values)
        return Result([d[0] for d in cursor.description], cursor.fetchall())
    except duckdb.Error as error:
        raise UserError(f"query {query.name} on {lake}: {error}") from None
    finally:
        con.close()


def run(query: Query, values: list[Any], lake: str, forecasts: Optional[str] = None) -> Result:
    """The query on a local or ``s3://`` lake (S3 copied to a temporary folder that is removed after)."""
    with tempfile.TemporaryDirectory(prefix="lake-") as tmp:
        lake_path = copy_from_s3(lake, Path(tmp) / "lake") if lake.startswith("s3://") else Path(lake)
        forecasts_path = None
        if forecasts:
            forecasts_path = (
                copy_from_s3(forecasts, Path(tmp) / "forecasts") if forecasts.startswith("s3://") else Path(forecasts)
            )
        return run_local(query, values, lake_path, forecasts_path)


# ---------------------------------------------------------------- Athena


def athena_constant(value: Any, type_name: str) -> str:
    """A value as the single typed constant Athena's ExecutionParameters take (never an expression)."""
    if value is None:
        return "NULL"
    if type_name in ("INTEGER", "DOUBLE"):
        return repr(value)
    text = value.isoformat(sep=" ") if isinstance(value, datetime) else str(value)
    quoted = "'" + text.replace("'", "''") + "'"
    return quoted if type_name == "VARCHAR" else f"{type_name} {quoted}"


def run_athena(
    query: Query,
    values: list[Any],
    workgroup: str,
    output: str,
    database: Optional[str] = None,
    client: Any = None,
    timeout: float = 600.0,
) -> Result:
    from awsinfra.clients import client as aws_client

    athena = client or aws_client("athena")
    request: dict[str, Any] = {
        "QueryString": query.sql,
        "WorkGroup": workgroup,
        "ResultConfiguration": {"OutputLocation": output},
    }
    if database:
        request["QueryExecutionContext"] = {"Database": database}
    if values:
        request["ExecutionParameters"] = [athena_constant(v, p.type) for v, p in zip(values, query.parameters)]
    execution = athena.start_query_execution(**request)["QueryExecutionId"]
    deadline = time.monotonic() + timeout
    while True:
        status = athena.get_query_execution(QueryExecutionId=execution)["QueryExecution"]["Status"]
        state = status["State"]
        if state == "SUCCEEDED":
            break
        if state in ("FAILED", "CANCELLED"):
            raise UserError(f"Athena query {execution} ({query.name}) {state}: {status.get('StateChangeReason', '')}")
        if time.monotonic() > deadline:
            raise UserError(f"Athena query {execution} ({query.name}) still {state} after {timeout:.0f} s")
        time.sleep(ATHENA_POLL_SECONDS)
    return _athena_rows(athena, execution)


def _athena_rows(athena: Any, execution: str) -> Result:
    columns: list[str] = []
    rows: list[tuple] = []
    for page in athena.get_paginator("get_query_results").paginate(QueryExecutionId=execution):
        result = page["ResultSet"]
        if not columns:
            columns = [c["Name"] for c in result.get("ResultSetMetadata", {}).get("ColumnInfo", [])]
        for row in result.get("Rows", []):
            cells = tuple(d.get("VarCharValue") for d in row.get("Data", []))
            if not rows and list(cells) == columns:
                continue  # the header row Athena puts first
            rows.append(cells)
    if not columns and rows:
        columns, rows = [str(c) for c in rows[0]], rows[1:]
    return Result(columns, rows)


# ---------------------------------------------------------------- output


def _plain(value: Any) -> Any:
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, dict, str, int, float, bool)) or value is None:
        return value
    return str(value)


def render(result: Result, style: str) -> str:
    if style == "json":
        return json.dumps([dict(zip(result.columns, map(_plain, row))) for row in result.rows], indent=1)
    if style == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows([[("" if v is None else _plain(v)) for v in row] for row in result.rows])
        return buffer.getvalue().rstrip("\n")
    return _table(result)


def _table(result: Result) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(_plain(value))

    cells = [[cell(v) for v in row] for row in result.rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(result.columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(result.columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.append(f"({len(result.rows)} row{'s' if len(result.rows) != 1 else ''})")
    return "\n".join(lines)


# ---------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ingestion.query", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("name", nargs="?", help="a query of queries/ (--list shows them)")
    p.add_argument("--list", action="store_true", help="list the queries and their parameters")
    p.add_argument("--lake", default="lake", help="the curated lake: a folder or s3://bucket/prefix (default: ./lake)")
    p.add_argument(
        "--forecasts", help="stored forecasts (JSON Lines): a folder or s3://... (default: <lake>/forecasts)"
    )
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="a query parameter (repeatable)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--athena", action="store_true", help="run on Athena instead of locally")
    p.add_argument("--workgroup", help="--athena: the (DuckDB-engine) workgroup")
    p.add_argument("--output", help="--athena: s3:// location for the results")
    p.add_argument("--database", help="--athena: the Glue database (default: the workgroup's)")
    return p


def describe(folder: Path = QUERIES) -> Iterator[str]:
    for name in query_names(folder):
        query = load_query(name, folder)
        params = ", ".join(
            f"{p.name} {p.type}" + (f" = {p.default}" if p.default is not None else "") for p in query.parameters
        )
        yield f"{name}: {query.description}\n    reads {', '.join(query.tables)}; parameters: {params or 'none'}"


def main(argv: Optional[list[str]] = None) -> int:
    return run_command(_main, argv, debug_env="INGESTION_DEBUG")


def _main(argv: Optional[list[str]]) -> int:
    args = parser().parse_args(argv)
    if args.list or not args.name:
        print("\n".join(describe()))
        return 0 if args.list else 2
    query = load_query(args.name)
    values = bind(query, parse_params(args.param))
    if args.athena:
        if not args.workgroup or not args.output:
            raise UserError("--athena needs --workgroup W and --output s3://bucket/prefix")
        result = run_athena(query, values, args.workgroup, args.output, args.database)
    else:
        result = run(query, values, args.lake, args.forecasts)
    print(render(result, args.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
