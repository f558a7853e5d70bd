"""What every evaluation/ command shares: the session (SageMaker or local mode), the execution role,
one-line AWS errors (sagemaker_deepar.cli) and how one command's options are made for another.

Runs in the SageMaker SDK's environment (.venv-sdk, evaluation/requirements.lock), not in the
container's: it imports only the numpy/pandas modules of sagemaker_deepar (contract, metrics, report).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from awsinfra.clients import offline_credentials, retries
from sagemaker_deepar import cli
from sagemaker_deepar.errors import UserError
from sagemaker_deepar.settings import SettingsError

from .settings import current

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")  # v2 is what these commands use, on purpose

LOCAL_ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"  # local mode wants a full ARN, never checks it
DEFAULT_INSTANCE_TYPE = "ml.c5.2xlarge"


def command_parser(module: str, description: Optional[str]) -> argparse.ArgumentParser:
    """The parser of ``python -m <module>``, its description (the module docstring) shown as written."""
    return argparse.ArgumentParser(
        prog=f"python -m {module}", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def local_image() -> str:
    """Local mode's image unless --image (DEEPAR_IMAGE, else sagemaker-deepar:latest)."""
    return current().image


def add_session_args(parser: argparse.ArgumentParser) -> None:
    settings = current()  # inside the command's main: a bad value is its one-line error
    group = parser.add_argument_group("where it runs")
    group.add_argument(
        "--local",
        action="store_true",
        help="SageMaker local mode: the local image, file:// paths, fake credentials, no AWS traffic",
    )
    group.add_argument(
        "--region",
        default=settings.region,
        help="AWS region (default: AWS_REGION / your profile's region)",
    )
    group.add_argument(
        "--role",
        default=settings.role,
        help="SageMaker execution role ARN (default: env SAGEMAKER_ROLE)",
    )
    group.add_argument(
        "--serving-port",
        type=int,
        default=settings.serving_port,
        help="local mode: the port local endpoints listen on (127.0.0.1)",
    )


def local_environment() -> None:
    """Fake credentials and region (only where none are set) and the SDK's telemetry switched off:
    otherwise the SDK calls STS and S3 even in local mode."""
    offline_credentials()
    if "SAGEMAKER_USER_CONFIG_OVERRIDE" not in os.environ:
        config = Path(tempfile.gettempdir()) / "sagemaker-deepar-local-config.yaml"
        config.write_text("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n")
        os.environ["SAGEMAKER_USER_CONFIG_OVERRIDE"] = str(config)


def quiet_sdk_logs() -> None:
    """The SDK logs every config lookup and container step at INFO; keep our progress lines readable."""
    import logging

    try:
        debug = current().debug
    except SettingsError:  # another variable is unusable: the command's parser names it; logs stay quiet
        debug = None
    if not debug:
        for name in ("sagemaker", "sagemaker.config", "sagemaker.local"):
            logging.getLogger(name).setLevel(logging.WARNING)


quiet_sdk_logs()  # before any command imports sagemaker, which logs its config lookups on import


def open_session(args: argparse.Namespace):
    """A ``sagemaker.Session`` on the caller's credentials, or a ``LocalSession`` with --local."""
    import sagemaker

    if args.local:
        local_environment()
        from sagemaker.local import LocalSession

        session = LocalSession()
        session.config = {"local": {"local_code": True, "serving_port": args.serving_port}}
        return session
    import boto3

    return sagemaker.Session(boto_session=boto3.Session(region_name=args.region))


def execution_role(args: argparse.Namespace) -> str:
    if args.local:
        return args.role or LOCAL_ROLE
    if not args.role:
        raise UserError(
            "no execution role: pass --role arn:aws:iam::<account>:role/<role SageMaker may assume> "
            "or set SAGEMAKER_ROLE"
        )
    return args.role


def default_image(args: argparse.Namespace) -> str:
    if args.image:
        return args.image
    if args.local:
        return local_image()
    raise UserError(
        "no image: pass --image <account>.dkr.ecr.<region>.amazonaws.com/<name>:<tag> "
        "(build_and_push_to_ecr.sh prints it)"
    )


def runtime_client(session, args: argparse.Namespace):
    """invoke_endpoint's client: the local runtime, or sagemaker-runtime with adaptive retries
    (botocore backs off on ThrottlingException and 5xx, up to 10 attempts)."""
    if args.local:
        return session.sagemaker_runtime_client
    return session.boto_session.client("sagemaker-runtime", config=retries("adaptive", 10, read_timeout=70))


def key_value(item: str, flag: str, what: str = "KEY=VALUE") -> tuple[str, str]:
    """One ``--flag KEY=VALUE`` argument, split; a malformed one is a one-line error naming the flag."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UserError(f"{flag} {item!r}: expected {what}")
    return key, value


def local_path(uri: str) -> Path:
    """A file:// URI (or a plain path) as a Path."""
    return Path(uri.removeprefix("file://"))


def wait_for(
    describe: Callable[[], dict],
    status_key: str,
    done: set[str],
    failed: set[str],
    timeout: float,
    what: str,
    poll: float = 15.0,
) -> dict:
    """Poll ``describe`` until its status is in ``done``; print each status change; fail clearly."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        description = describe()
        status = description[status_key]
        if status != last:
            print(f"{what}: {status}", flush=True)
            last = status
        if status in done:
            return description
        if status in failed:
            raise UserError(
                f"{what} {status}: {description.get('FailureReason', 'no reason given')} (see its CloudWatch logs)"
            )
        if time.monotonic() > deadline:
            raise UserError(f"{what} still {status} after {timeout:.0f} s: raise --timeout or check the console")
        time.sleep(poll)


def run_command(main: Callable[[Optional[list[str]]], Any], argv: Optional[list[str]] = None) -> int:
    """Run a command's main; any failure becomes one line on stderr and exit status 1
    (``DEEPAR_EVAL_DEBUG=1`` shows the traceback)."""
    return cli.run_command(main, argv, debug_env="DEEPAR_EVAL_DEBUG", credentials_hint=" or pass --local")


def options(parser: argparse.ArgumentParser, **values: Any) -> argparse.Namespace:
    """A command's options as its parser would make them, from keyword values instead of argv: how
    one command (the workflow) calls another's ``run`` directly, with every default in place."""
    defaults = {action.dest: action.default for action in parser._actions if action.dest != "help"}
    defaults.update(parser._defaults)  # set_defaults(), e.g. a sub-command's name
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise TypeError(f"{parser.prog}: no option(s) {', '.join(unknown)}")
    namespace = argparse.Namespace(**{**defaults, **values})
    missing = [action.dest for action in parser._actions if action.required and getattr(namespace, action.dest) is None]
    if missing:
        raise TypeError(f"{parser.prog}: missing required option(s) {', '.join(missing)}")
    return namespace


def session_options(args: argparse.Namespace) -> dict[str, Any]:
    """The "where it runs" options of one command, to hand to another."""
    return {name: getattr(args, name) for name in ("local", "region", "role", "serving_port")}


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
