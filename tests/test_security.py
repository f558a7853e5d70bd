"""Issue #23's refusals, in process (unit tier): model archives (item 1), S3 keys as local paths (item 3),
multi-model names and urls (item 12), whole-JSON bodies in streamed hosting (item 13).

The same archives run inside the image with its own Python in tests/test_image.py; the multi-model
refusals through container/serve in tests/test_multi_model_serve.py.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
from pathlib import Path
from typing import Callable

import pytest

from sagemaker_deepar import contract
from sagemaker_deepar.contract import (
    MODEL_TARBALL_MAX_MEMBERS,
    ArchiveTooLargeError,
    UnsafeArchiveError,
    UnsafePathError,
    confined_path,
    extract_model_tarball,
    key_path,
)

pytestmark = pytest.mark.unit


# ---------------------------------------------------------------- item 1: model.tar.gz


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _file(archive: tarfile.TarFile, name: str, data: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def symlink_chain_archive(path: Path) -> Path:
    """#23 item 1, reproduced black-box: `a -> .`, `a/b -> ..`, then `b/evil` lands in the target's parent."""
    with tarfile.open(path, "w:gz") as archive:
        archive.addfile(_link("a", "."))
        archive.addfile(_link("a/b", ".."))
        _file(archive, "b/evil", b"written outside")
    return path


def hardlink_archive(path: Path) -> Path:
    """#23 item 1: a hardlink's name is resolved from the archive root (`x/y/h` -> `../victim`, i.e. the
    target's parent), then a regular `x/y/h` is written through it, overwriting the victim."""
    with tarfile.open(path, "w:gz") as archive:
        _file(archive, "x/y/placeholder")
        archive.addfile(_link("x/y/h", "../victim", tarfile.LNKTYPE))
        _file(archive, "x/y/h", b"overwritten")
    return path


def inside_link_archive(path: Path) -> Path:
    """A symlink that stays inside: refused too (a model archive needs no link at all)."""
    with tarfile.open(path, "w:gz") as archive:
        _file(archive, "deepar-metadata.json", b"{}")
        archive.addfile(_link("alias.json", "deepar-metadata.json"))
    return path


def many_members_archive(path: Path, members: int = MODEL_TARBALL_MAX_MEMBERS + 1) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for i in range(members):
            _file(archive, f"f{i}", b"")
    return path


def gzip_bomb(path: Path, gib: int = 5) -> Path:
    """A 5 GiB file of zeros in ~5 MB: gzip members concatenated (each 1 MiB of zeros compresses to 1 kB)."""
    header = tarfile.TarInfo("predictor/weights.bin")
    header.size = gib * 2**30
    zeros = gzip.compress(b"\0" * 2**20, compresslevel=9)
    with open(path, "wb") as out:
        out.write(gzip.compress(header.tobuf(format=tarfile.GNU_FORMAT)))
        for _ in range(gib * 1024):
            out.write(zeros)
        out.write(gzip.compress(b"\0" * 1024))  # end-of-archive blocks
    return path


def good_archive(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        _file(archive, "deepar-metadata.json", b"{}")
        _file(archive, "predictor/x", b"1")
    return path


ATTACKS: dict[str, tuple[Callable[[Path], Path], type]] = {
    "symlink-chain": (symlink_chain_archive, UnsafeArchiveError),
    "hardlink": (hardlink_archive, UnsafeArchiveError),
    "inside-link": (inside_link_archive, UnsafeArchiveError),
    "many-members": (many_members_archive, ArchiveTooLargeError),
    "gzip-bomb": (gzip_bomb, ArchiveTooLargeError),
}


@pytest.fixture(params=[True, False], ids=["filter=data", "python-3.11.2"])
def extraction_path(request, monkeypatch):
    """Both code paths: tarfile's data filter, and the member-by-member extraction of the image's 3.11.2."""
    if not request.param:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return request.param


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_model_tarball_refuses_links_and_bombs_and_writes_nothing(tmp_path, extraction_path, attack):
    """#23 item 1: every link refused, bombs a named error, nothing written inside or outside the target."""
    make, error = ATTACKS[attack]
    archive = make(tmp_path / f"{attack}.tar.gz")
    (tmp_path / "victim").write_text("original")
    target = tmp_path / "out" / "model"
    with pytest.raises(error, match=re.escape(str(archive))):
        extract_model_tarball(archive, target)
    assert (tmp_path / "victim").read_text() == "original"
    assert {p.name for p in tmp_path.iterdir()} <= {archive.name, "victim", "out"}
    assert not target.exists() or not any(target.iterdir())  # refused before anything was written


def test_model_tarball_errors_name_the_member(tmp_path, extraction_path):
    with pytest.raises(UnsafeArchiveError, match=r"member 'a' is a link to '\.'"):
        extract_model_tarball(symlink_chain_archive(tmp_path / "c.tar.gz"), tmp_path / "out")
    with pytest.raises(UnsafeArchiveError, match=r"member 'x/y/h' is a link to '\.\./victim'"):
        extract_model_tarball(hardlink_archive(tmp_path / "h.tar.gz"), tmp_path / "out")
    with pytest.raises(ArchiveTooLargeError, match=r"more than 1000 members \(MODEL_TARBALL_MAX_MEMBERS\)"):
        extract_model_tarball(many_members_archive(tmp_path / "m.tar.gz"), tmp_path / "out")
    with pytest.raises(ArchiveTooLargeError, match=r"MODEL_TARBALL_MAX_BYTES; at 'predictor/weights.bin'"):
        extract_model_tarball(gzip_bomb(tmp_path / "b.tar.gz"), tmp_path / "out")


def test_model_tarball_bounds_the_decompressed_stream_not_only_declared_sizes(tmp_path, extraction_path):
    """A pax header is read whole by tarfile before any member: the decompressed stream itself is bounded."""
    archive = tmp_path / "pax.tar.gz"
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("deepar-metadata.json")
        info.pax_headers = {"comment": "z" * (3 * 2**20)}
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ArchiveTooLargeError, match="once decompressed"):
        extract_model_tarball(archive, tmp_path / "out", max_bytes=2**20)


def test_model_tarball_extracts_a_model_and_plain_tar(tmp_path, extraction_path):
    extract_model_tarball(good_archive(tmp_path / "good.tar.gz"), tmp_path / "out")
    assert (tmp_path / "out" / "predictor" / "x").read_bytes() == b"1"
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as archive:
        dot = tarfile.TarInfo(".")
        dot.type = tarfile.DIRTYPE
        archive.addfile(dot)
        _file(archive, "./deepar-metadata.json", b"{}")  # `tar -C model .` writes ./ names: plain names
    extract_model_tarball(plain, tmp_path / "plain")
    assert (tmp_path / "plain" / "deepar-metadata.json").read_bytes() == b"{}"


def test_gzip_bomb_is_small_and_decompresses_to_gigabytes(tmp_path):
    """The bomb is what it claims: a few MB on disk, its header announcing 5 GiB."""
    bomb = gzip_bomb(tmp_path / "b.tar.gz")
    assert bomb.stat().st_size < 10 * 2**20
    with gzip.open(bomb) as stream:
        header = tarfile.TarInfo.frombuf(stream.read(512), "utf-8", "surrogateescape")
        assert header.size == 5 * 2**30 and stream.read(2**20) == b"\0" * 2**20


def test_every_caller_refuses_with_its_own_named_error(tmp_path):
    """#23 item 1: the mlops local endpoints and the serverless in-function model go through the same
    extraction; a refused archive is their named error, and nothing is left behind."""
    from mlops.endpoints import DeployFailed, LocalEndpoints
    from serverless.handlers.forecasting import BackendError, download_model

    archive = symlink_chain_archive(tmp_path / "model.tar.gz")
    state = tmp_path / "state"
    with pytest.raises(DeployFailed, match=r"model artifact .* was refused: .*member 'a' is a link to '\.'"):
        LocalEndpoints(state)._model_dir(str(archive))
    assert not any((state / "models").iterdir())
    cache = tmp_path / "cache"
    with pytest.raises(BackendError, match=r"FORECAST_MODEL .*model.tar.gz: .*member 'a' is a link"):
        download_model(str(archive), cache)
    assert not (cache / "deepar-model" / ".extracted").exists() and not (cache / "b").exists()


# ---------------------------------------------------------------- item 3: S3 keys as local paths


@pytest.mark.parametrize(
    "key, prefix, reason",
    [
        ("forecasts/../../x", "forecasts/", "'..'"),
        ("forecasts/../../x", "forecasts", "'..'"),
        ("forecasts//etc/passwd", "forecasts/", "absolute"),
        ("forecasts/a//b.out", "forecasts/", "an empty part"),
        ("forecasts/./a.out", "forecasts/", "'.'"),
        ("forecasts/.", "forecasts/", "'.'"),
        ("forecasts/a/..", "forecasts/", "'..'"),
        ("forecasts/", "forecasts/", "empty name"),
        ("other/a.out", "forecasts/", "not under the prefix"),
        ("forecasts/a\0.out", "forecasts/", "NUL"),
    ],
)
def test_key_path_refuses_keys_that_leave_the_folder(tmp_path, key, prefix, reason):
    """#23 item 3: the one helper every S3 download goes through."""
    with pytest.raises(UnsafePathError, match=re.escape(reason)) as error:
        key_path(tmp_path, key, prefix)
    assert f"s3 key {key!r}" in str(error.value)
    assert isinstance(error.value, contract.ContractError)


def test_key_path_maps_keys_below_the_prefix(tmp_path):
    assert key_path(tmp_path, "forecasts/2024/a.out", "forecasts/") == tmp_path / "2024" / "a.out"
    assert key_path(tmp_path, "forecasts/2024/a.out", "forecasts") == tmp_path / "2024" / "a.out"
    assert key_path(tmp_path, "a.out", "") == tmp_path / "a.out"
    assert key_path(tmp_path, "forecasts-x/a.out", "forecasts") == tmp_path / "-x" / "a.out"  # S3 prefixes are text
    assert confined_path(tmp_path, "a/b/", "x") == tmp_path / "a" / "b"


def test_checkpoint_state_naming_a_file_elsewhere_is_ignored(tmp_path):
    """#23 item 3: the checkpoint folder is synced from S3; its state file must not point the resume elsewhere."""
    import json

    from sagemaker_deepar.training.backends import CHECKPOINT_STATE, read_checkpoint_state

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (tmp_path / "elsewhere.ckpt").write_bytes(b"not ours")
    (checkpoints / "epoch-1.ckpt").write_bytes(b"ours")
    for name, expected in [("../elsewhere.ckpt", None), ("/etc/passwd", None), ("epoch-1.ckpt", "epoch-1.ckpt")]:
        state = {"file": name, "epochs_done": 1, "fingerprint": {"a": 1}}
        (checkpoints / CHECKPOINT_STATE).write_text(json.dumps(state))
        found = read_checkpoint_state(checkpoints, {"a": 1})
        assert (found and found["file"]) == expected


# ---------------------------------------------------------------- item 13: streamed bodies


def test_bounded_lines_never_hold_a_line_above_the_limit():
    """#23 item 13: a line over the limit is read through in small pieces and stands as an OversizedLine."""
    from sagemaker_deepar.serving.codec import OversizedLine, bounded_lines, iter_lines

    class Recording(io.BytesIO):
        largest = 0

        def readline(self, size=-1):
            line = super().readline(size)
            Recording.largest = max(Recording.largest, len(line))
            return line

    body = Recording(b'{"a": 1}\n' + b"x" * 5000 + b"\n\n" + b"y" * 100 + b"\n" + b"z" * 3000)
    lines = list(iter_lines(bounded_lines(body, max_line_bytes=1000, chunk=256)))
    assert [n for n, _ in lines] == [1, 2, 4, 5]  # the blank line 3 skipped, the numbering kept
    assert lines[0][1] == b'{"a": 1}\n' and lines[2][1] == b"y" * 100 + b"\n"
    assert lines[1][1] == lines[3][1] == OversizedLine(1000)  # also an unterminated last line
    assert Recording.largest <= 1001
    assert OversizedLine(2**20).message("line 2: ").startswith("line 2: longer than 1 MB (DEEPAR_MAX_DOCUMENT_MB)")


def test_document_limit_defaults_to_100_mb_in_async_and_to_the_payload_below_it():
    from sagemaker_deepar.serving.server_config import MAX_DOCUMENT_MB, ServerConfig

    assert ServerConfig.from_env({"DEEPAR_HOSTING_MODE": "async"}).max_document_bytes == MAX_DOCUMENT_MB * 2**20
    assert ServerConfig.from_env({}).max_document_bytes == 6 * 2**20  # real-time: the payload is the bound
    assert ServerConfig.from_env({"DEEPAR_MAX_DOCUMENT_MB": "7"}).max_document_bytes == 7 * 2**20
