"""Where one upload's results live in the output bucket, shared by ``batch_forecast`` and ``transform``.

For ``incoming/<name>``: ``forecasts/<name>.jsonl``, ``errors/<name>.jsonl`` and, written last,
``forecasts/<name>.manifest.json`` (its presence means the forecasts are complete for the object
version it names). Both the request route and the transform route read and write these keys, so they
are stated once here rather than each importing the other.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple, Optional

from awsinfra.errors import error_code

INCOMING = "incoming/"


class OutputKeys(NamedTuple):
    forecasts: str
    errors: str
    manifest: str


def output_name(key: str) -> str:
    """The upload's key without ``incoming/``: the name its outputs carry."""
    return key[len(INCOMING) :] if key.startswith(INCOMING) else key


def output_keys(name: str) -> OutputKeys:
    return OutputKeys(f"forecasts/{name}.jsonl", f"errors/{name}.jsonl", f"forecasts/{name}.manifest.json")


def read_manifest(s3: Any, bucket: str, key: str) -> Optional[dict]:
    """The manifest at ``key``, or None when there is none yet."""
    from botocore.exceptions import ClientError

    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as error:
        if error_code(error) in ("NoSuchKey", "404"):
            return None
        raise
