"""S3 prefixes copied into local folders: one loop for every command that reads a lake or forecasts from
S3, each key placed by the contract's one mapping of keys to paths (``key_path``, issue #23 item 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from sagemaker_deepar.contract import key_path


def download_prefix(s3: Any, bucket: str, prefix: str, folder: Path, wanted: Callable[[str], bool]) -> int:
    """Every object under ``prefix`` whose key ``wanted`` accepts (folder markers never) downloaded below
    ``folder``, the layout after the prefix kept; the number copied. A key that would leave ``folder``
    (``..``, ``.``, an absolute or empty part) raises ``UnsafePathError`` before anything of it is written."""
    copied = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith("/") or not wanted(key):
                continue
            target = key_path(Path(folder), key, prefix)
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(target))
            copied += 1
    return copied
