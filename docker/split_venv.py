"""Split an installed venv into one folder per image layer, so `docker history` shows what each
dependency costs and a change to one group does not re-ship the others.

    python docker/split_venv.py /opt/venv /layers torch=torch mxnet=mxnet sympy=sympy,mpmath,networkx ...

Each NAME=DIST[,DIST...] moves the files those distributions installed (their RECORD, as pip wrote it)
to /layers/NAME/<same absolute path>; everything else in the venv (the interpreter links, the other
distributions) goes to /layers/rest. The Dockerfile then does `COPY --from=... /layers/NAME/ /` per
layer. It writes /opt/venv/layers.json (in the `rest` layer): per layer its distributions and bytes,
and per distribution its bytes; bench/image_cold_start.py prints it beside `docker history`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from importlib.metadata import Distribution, distributions
from pathlib import Path

MANIFEST = "layers.json"
REST = "rest"


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def installed_files(dist: Distribution) -> list[Path]:
    """Absolute paths of the files a distribution installed that still exist (trimmed ones are gone)."""
    paths = (Path(os.path.normpath(dist.locate_file(f))) for f in dist.files or [])
    return [p for p in paths if p.is_file() or p.is_symlink()]


def move_under(path: Path, dest_root: Path) -> int:
    target = dest_root / path.relative_to("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    size = path.lstat().st_size
    shutil.move(path, target)
    return size


def tree_bytes(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() or p.is_symlink())


def prune_empty_dirs(root: Path) -> None:
    for dirpath, _, _ in sorted(os.walk(root), key=lambda entry: -len(entry[0])):
        if dirpath != str(root) and not os.listdir(dirpath):
            os.rmdir(dirpath)


def parse_groups(specs: list[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, dists = spec.partition("=")
        if not sep or not name or not dists or name == REST:
            raise ValueError(f"layer spec {spec!r}: expected NAME=DIST[,DIST...] with NAME other than {REST!r}")
        groups[name] = [canonical(d) for d in dists.split(",")]
    return groups


def split(venv: Path, out: Path, groups: dict[str, list[str]]) -> dict:
    site_packages = next(venv.glob("lib/python3.*/site-packages"))
    installed = {canonical(d.metadata["Name"]): d for d in distributions(path=[str(site_packages)])}
    layer_of = {dist: name for name, dists in groups.items() for dist in dists}
    unknown = sorted(set(layer_of) - set(installed))
    if unknown:
        raise ValueError(f"layer specs name distributions that are not installed: {', '.join(unknown)}")
    manifest: dict = {"layers": {}, "distributions": {}}
    for dist_name, dist in sorted(installed.items()):
        files = installed_files(dist)
        manifest["distributions"][dist_name] = sum(p.lstat().st_size for p in files)
        if dist_name in layer_of:
            for path in files:
                move_under(path, out / layer_of[dist_name])
    for name, dists in groups.items():
        manifest["layers"][name] = {"distributions": dists, "bytes": tree_bytes(out / name)}
    prune_empty_dirs(site_packages)
    rest = sorted(set(installed) - set(layer_of))
    manifest["layers"][REST] = {"distributions": rest, "bytes": tree_bytes(venv)}
    (venv / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    (out / REST / venv.relative_to("/")).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(venv, out / REST / venv.relative_to("/"))
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("venv", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("layers", nargs="+", help="NAME=DIST[,DIST...]")
    args = parser.parse_args()
    manifest = split(args.venv.resolve(), args.out, parse_groups(args.layers))
    for name, layer in manifest["layers"].items():
        print(f"layer {name:>8}: {layer['bytes'] / 1e6:8.1f} MB  {', '.join(layer['distributions'])}")


if __name__ == "__main__":
    main()
