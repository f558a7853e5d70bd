"""What every command line of the project shares: a failure is one line saying what to do, never a traceback.

Library code raises (``UserError`` for problems the user can fix, a ``ContractError`` for input that
breaks the DeepAR contract, botocore's errors from AWS); only a command's ``main`` turns them into a
line on stderr and an exit status through ``run_command``. Standard library only; botocore is
imported when an error needs explaining.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Optional

from .contract import ContractError
from .errors import UserError

# What to do about the AWS error codes people meet most.
AWS_ADVICE = {
    "AccessDenied": "the credentials or the role lack a permission (see the message)",
    "AccessDeniedException": "the credentials or the role lack a permission (see the message)",
    "UnauthorizedOperation": "the credentials or the role lack a permission (see the message)",
    "ResourceLimitExceeded": "an account quota is reached: request an increase in Service Quotas or pick another instance type",
    "ThrottlingException": "throttled even after retries: slow down or request a higher limit",
    "ExpiredTokenException": "the session token expired: refresh your credentials",
    "UnrecognizedClientException": "the credentials are not valid in this account/region",
    "ModelError": "the container answered with an error (see the message and the endpoint's logs)",
}


def explain(error: BaseException, credentials_hint: str = "") -> str:
    """One line: what went wrong (our check, AWS or the SageMaker SDK) and what to do about it."""
    if isinstance(error, (UserError, ContractError)):
        return str(error)
    try:
        from botocore.exceptions import ClientError, NoCredentialsError, NoRegionError, WaiterError
    except ImportError:  # no AWS SDK in this environment: nothing of it can have been raised
        return f"{type(error).__name__}: {error}"
    if isinstance(error, NoCredentialsError):
        return (
            f"no AWS credentials: run `aws configure`{', set AWS_PROFILE,' if credentials_hint else ' or set AWS_PROFILE'}"
            f"{credentials_hint}"
        )
    if isinstance(error, NoRegionError):
        return "no AWS region: pass --region or set AWS_REGION"
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "?")
        message = error.response.get("Error", {}).get("Message", str(error))
        advice = AWS_ADVICE.get(code, "")
        if not advice and ("AccessDenied" in code or "Unauthorized" in code):
            advice = AWS_ADVICE["AccessDenied"]
        return f"{error.operation_name} failed: {code}: {message}" + (f" -- {advice}" if advice else "")
    if isinstance(error, WaiterError):
        return f"gave up waiting: {error} -- check the resource in the console and its CloudWatch logs"
    if type(error).__name__ in ("UnexpectedStatusException", "CapacityError"):  # sagemaker.exceptions
        return f"{str(error).strip().splitlines()[0]} -- see the job's CloudWatch logs"
    return f"{type(error).__name__}: {error}"


def run_command(
    main: Callable[[Optional[list[str]]], Any],
    argv: Optional[list[str]] = None,
    *,
    debug_env: str = "DEEPAR_DEBUG",
    credentials_hint: str = "",
) -> int:
    """Run a command's ``main``: its exit status is what it returns when that is an int, else 0; any
    failure becomes ``error: <one line>`` on stderr and exit status 1 (130 on Ctrl-C). With the
    environment variable ``debug_env`` set, the traceback follows."""
    try:
        result = main(argv)
        return result if isinstance(result, int) and not isinstance(result, bool) else 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - every failure becomes one clear line, never a traceback
        print(f"error: {explain(error, credentials_hint)}", file=sys.stderr)
        if os.environ.get(debug_env):
            raise
        return 1
