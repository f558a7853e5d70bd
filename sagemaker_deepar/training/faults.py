"""Named points of the train job where a test can make it receive SIGTERM or fail.

``DEEPAR_FAULT=sigterm@batch:5`` sends the job SIGTERM after its 5th training batch;
``error@writing`` raises an internal error there; ``kill@writing`` ends it with SIGKILL (what
follows an ignored SIGTERM). Several entries are separated by commas.
Points: ``reading`` (data being read), ``batch:N`` (after the N-th batch since the job started),
``scoring`` (after the first test forecast), ``writing`` (predictor written, metadata not yet).
Unset in production, where every call is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "DEEPAR_FAULT"


class InjectedFault(RuntimeError):
    """Stands for a bug of ours at a named point (tests of the internal-error path)."""


def reached(point: str) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    for item in spec.split(","):
        action, _, where = item.strip().partition("@")
        if where != point:
            continue
        if action == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        elif action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "error":
            raise InjectedFault(f"fault injected at {point} ({FAULT_ENV})")
