"""`serve` outside SageMaker: fetch the model that ``DEEPAR_MODEL_URL`` names into /opt/ml/model first.

SageMaker puts ``ModelDataUrl`` in place before the container starts; ECS and a plain ``docker run``
do not. With ``DEEPAR_MODEL_URL`` set, `serve` (sagemaker_deepar/serving/serve.py) calls ``fetch_model``
before nginx or gunicorn listen, so /ping cannot answer 200 before the model is in place and loaded.

What the URL may name:
- ``s3://bucket/path/model.tar.gz``: an object, downloaded and unpacked with the contract's safe
  ``extract_model_tarball``;
- ``s3://bucket/path/`` (no such object): every object under that prefix, an unpacked model folder;
- ``/a/local/path`` or ``file:///a/local/path``: a model.tar.gz or a model folder on a mounted volume.

Requests retry with botocore's standard mode (throttling, 5xx and connection errors, with jittered
exponential back-off, ``DEEPAR_MODEL_FETCH_ATTEMPTS`` attempts); a body cut off mid-stream is fetched
again as many times. Every failure is a ``ModelFetchError`` starting with ``DEEPAR_MODEL_URL=<url>``
and naming the reason: no such object, access denied, unreachable (after the retries), not a readable
tarball, no model inside, an object key that would land outside the model folder.

botocore is imported only here, only when the variable is set: SageMaker's cold start is unchanged.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from ..contract import ContractError, ModelArtifact, extract_model_tarball
from ..errors import UserError
from .server_config import MODEL_URL_VARIABLE, ModelSource

log = logging.getLogger("sagemaker_deepar.model_fetch")

# Left in the model folder: what was fetched there, so a restarted container replaces it, while a
# folder that holds anything else (a mounted or baked-in model) is never overwritten.
MARKER = ".deepar-model-url"
MAX_BACKOFF_S = 20.0
CHUNK_BYTES = 1 << 20


class ModelFetchError(UserError):
    """The model named by DEEPAR_MODEL_URL could not be put in place; the message says why."""

    def __init__(self, source: ModelSource, reason: str):
        reason = " ".join(line.strip() for line in reason.splitlines() if line.strip())  # one log line
        super().__init__(f"{MODEL_URL_VARIABLE}={source.url}: {reason}")
        self.reason = reason


def fetch_model(source: ModelSource, model_dir: Path) -> ModelArtifact:
    """Fetch, unpack and check the model, then move it into ``model_dir`` (replacing a previous fetch)."""
    model_dir = Path(model_dir)
    _check_target(source, model_dir)
    started = time.monotonic()
    try:
        model_dir.parent.mkdir(parents=True, exist_ok=True)
        # Beside the target: the final moves are renames on one file system.
        staging = Path(tempfile.mkdtemp(prefix=".model-fetch-", dir=model_dir.parent))
    except OSError as error:
        raise ModelFetchError(source, f"cannot write beside {model_dir} (it must be writable): {error}") from None
    try:
        unpacked = staging / "model"
        unpacked.mkdir()
        if source.scheme == "s3":
            fetched = _fetch_s3(source, staging, unpacked)
        else:
            fetched = _fetch_local(source, unpacked)
        artifact = _checked_artifact(source, unpacked)
        (unpacked / MARKER).write_text(source.url + "\n", encoding="utf-8")
        _install(unpacked, model_dir)
    except OSError as error:
        raise ModelFetchError(source, f"cannot write the model into {model_dir}: {error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info(
        "fetched the model from %s (%s) into %s in %.1f s", source.url, fetched, model_dir, time.monotonic() - started
    )
    return artifact


def _check_target(source: ModelSource, model_dir: Path) -> None:
    if not model_dir.is_dir() or (model_dir / MARKER).exists():
        return
    present = sorted(p.name for p in model_dir.iterdir())
    if present:
        raise ModelFetchError(
            source,
            f"{model_dir} already holds files ({', '.join(present[:5])}): a mounted or built-in model would be "
            f"replaced; unset {MODEL_URL_VARIABLE} or empty the folder",
        )


def _install(unpacked: Path, model_dir: Path) -> None:
    """Empty ``model_dir`` (a previous fetch, see _check_target) and move the new model's files in.

    Children are moved rather than the folder renamed: ``model_dir`` may be a mount point."""
    model_dir.mkdir(parents=True, exist_ok=True)
    for old in model_dir.iterdir():
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    for new in unpacked.iterdir():
        os.replace(new, model_dir / new.name)


def _checked_artifact(source: ModelSource, unpacked: Path) -> ModelArtifact:
    try:
        return ModelArtifact.read(unpacked)
    except FileNotFoundError:
        found = sorted(str(p.relative_to(unpacked)) for p in unpacked.rglob("*"))[:8]
        raise ModelFetchError(
            source,
            "holds no model trained by this container: no deepar-metadata.json at its top level "
            f"(found: {', '.join(found) or 'nothing'})",
        ) from None
    except ContractError as error:
        # the staging folder means nothing to the reader: name the file inside the model
        raise ModelFetchError(source, f"not a usable model: {str(error).replace(f'{unpacked}/', '')}") from None


def _unpack(source: ModelSource, tarball: Path, unpacked: Path) -> None:
    try:
        extract_model_tarball(tarball, unpacked)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise ModelFetchError(source, f"not a readable model.tar.gz: {error}") from None


# ---------------------------------------------------------------- local paths


def _fetch_local(source: ModelSource, unpacked: Path) -> str:
    path = Path(source.location)
    if path.is_dir():
        shutil.copytree(path, unpacked, dirs_exist_ok=True)
        return "a folder"
    if path.is_file():
        _unpack(source, path, unpacked)
        return f"{path.stat().st_size} bytes"
    raise ModelFetchError(source, "no such file or folder")


# ---------------------------------------------------------------- S3


def _s3_client(source: ModelSource) -> Any:
    """botocore alone (boto3 is not in the image); AWS_ENDPOINT_URL, credentials (the ECS task role's
    included) and the region come from the environment as for any AWS SDK."""
    import botocore.session
    from botocore.config import Config

    session = botocore.session.get_session()
    return session.create_client(
        "s3",
        region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None,
        config=Config(
            retries={"total_max_attempts": source.attempts, "mode": "standard"},
            connect_timeout=source.timeout,
            read_timeout=source.timeout,
        ),
    )


@contextmanager
def _aws_errors(source: ModelSource, what: str) -> Iterator[None]:
    """botocore's exceptions (raised after its retries) as one named reason."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        yield
    except ClientError as error:
        info = error.response.get("Error", {})
        code = str(info.get("Code", "")) or str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        message = info.get("Message") or ""
        hint = {
            "403": "access denied (a missing object reads as 403 to a role without s3:ListBucket)",
            "AccessDenied": "access denied (a missing object reads as 403 to a role without s3:ListBucket)",
            "404": "no such object",
            "NoSuchKey": "no such object",
            "NoSuchBucket": "no such bucket",
        }.get(code, f"S3 answered {code}")
        raise ModelFetchError(source, f"{what}: {hint}{': ' + message if message else ''}") from None
    except NoCredentialsError:
        raise ModelFetchError(
            source, f"{what}: no AWS credentials (on ECS the task role provides them; elsewhere set AWS_* variables)"
        ) from None
    except BotoCoreError as error:
        raise ModelFetchError(source, f"{what}: S3 unreachable after {source.attempts} attempt(s): {error}") from None


def _is_missing(error: Exception) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(error, ClientError) and str(error.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey")


def _fetch_s3(source: ModelSource, staging: Path, unpacked: Path) -> str:
    s3 = _s3_client(source)
    # A tarball's name is not HEAD first: GET's error names a missing bucket, HEAD's bodiless 404 does not.
    is_tarball = source.key.endswith((".tar.gz", ".tgz"))
    if source.key.endswith("/") or not (is_tarball or _object_exists(source, s3)):
        return _fetch_s3_folder(source, s3, unpacked)
    tarball = staging / "model.tar.gz"
    size = _download(source, s3, source.key, tarball)
    _unpack(source, tarball, unpacked)
    tarball.unlink()
    return f"{size} bytes"


def _object_exists(source: ModelSource, s3: Any) -> bool:
    """HEAD the key: False when there is no such object and the URL may name a folder instead."""
    from botocore.exceptions import ClientError

    with _aws_errors(source, f"HEAD s3://{source.bucket}/{source.key}"):
        try:
            s3.head_object(Bucket=source.bucket, Key=source.key)
            return True
        except ClientError as error:
            if _is_missing(error):
                return False
            raise


def _fetch_s3_folder(source: ModelSource, s3: Any, unpacked: Path) -> str:
    prefix = source.key.rstrip("/") + "/"
    keys: list[str] = []
    token: dict[str, str] = {}
    with _aws_errors(source, f"listing s3://{source.bucket}/{prefix}"):
        while True:
            page = s3.list_objects_v2(Bucket=source.bucket, Prefix=prefix, **token)
            keys += [item["Key"] for item in page.get("Contents", []) if not item["Key"].endswith("/")]
            if not page.get("IsTruncated"):
                break
            token = {"ContinuationToken": page["NextContinuationToken"]}
    if not keys:
        raise ModelFetchError(
            source,
            f"no object s3://{source.bucket}/{source.key.rstrip('/')} and no objects under s3://{source.bucket}/{prefix}",
        )
    total = 0
    for key in keys:
        total += _download(source, s3, key, _inside(source, unpacked, key[len(prefix) :], key))
    return f"{len(keys)} objects, {total} bytes"


def _inside(source: ModelSource, root: Path, relative: str, key: str) -> Path:
    """Where an object of a model folder goes; a key that would land outside ``root`` is refused."""
    parts = PurePosixPath(relative).parts
    if not parts or relative.startswith("/") or ".." in relative.split("/") or "\\" in relative:
        raise ModelFetchError(source, f"object key {key!r} would be written outside {root.name}/: refused")
    path = root.joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _download(source: ModelSource, s3: Any, key: str, target: Path) -> int:
    """GET one object into ``target``; a body cut off mid-stream is fetched again (botocore retries the
    request, not the reading of its body)."""
    from botocore.exceptions import ConnectionClosedError, IncompleteReadError, ReadTimeoutError, ResponseStreamingError

    where = f"GET s3://{source.bucket}/{key}"
    for attempt in range(1, source.attempts + 1):
        with _aws_errors(source, where):
            response = s3.get_object(Bucket=source.bucket, Key=key)
        expected = int(response.get("ContentLength", -1))
        written = 0
        try:
            with open(target, "wb") as out:
                for chunk in response["Body"].iter_chunks(CHUNK_BYTES):
                    out.write(chunk)
                    written += len(chunk)
            if expected >= 0 and written != expected:
                raise IncompleteReadError(actual_bytes=written, expected_bytes=expected)
            return written
        except (ResponseStreamingError, IncompleteReadError, ReadTimeoutError, ConnectionClosedError) as error:
            if attempt == source.attempts:
                raise ModelFetchError(
                    source, f"{where}: the body was cut off {source.attempts} time(s); last: {error}"
                ) from None
            log.warning("%s: body cut off after %d bytes (%s); fetching it again", where, written, error)
            time.sleep(min(MAX_BACKOFF_S, 0.5 * 2 ** (attempt - 1)))
    raise AssertionError("unreachable")  # the loop returns or raises
