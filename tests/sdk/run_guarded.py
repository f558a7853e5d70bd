"""Runs one evaluation/ command's main() offline, under the network guard, for the tests.

    .venv-sdk/bin/python -m tests.sdk.run_guarded workflow --workdir DIR -- <the command's arguments>

Fake credentials and telemetry opt-out (offline.py); every connection that is not to loopback is
refused and recorded. Prints `SUMMARY <json>`: the exit status, main()'s result and the refusals.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from .offline import VIOLATIONS, guard_network, offline_environment


def main() -> int:
    command = sys.argv[1]
    workdir = Path(sys.argv[sys.argv.index("--workdir") + 1])
    arguments = sys.argv[sys.argv.index("--") + 1 :]
    offline_environment(workdir)
    guard_network()
    from evaluation import common

    module = importlib.import_module(f"evaluation.{command}")
    result: dict = {}
    status = common.run_command(lambda argv: result.update(module.main(argv)), arguments)
    print("SUMMARY " + json.dumps({"status": status, "result": result, "network_violations": VIOLATIONS}, default=str))
    return status


if __name__ == "__main__":
    sys.exit(main())
