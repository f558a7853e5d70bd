"""Execute a walkthrough notebook with nbclient, by default the BYOC one in the .venv-sdk kernel (SDK v2).

    .venv-sdk/bin/python -m notebooks.run --output /tmp/executed.ipynb   # execute a copy (what CI does)
    .venv-sdk/bin/python -m notebooks.run --write                        # refresh the committed outputs
    .venv-sdk/bin/python -m notebooks.run --notebook notebooks/mlflow_walkthrough.ipynb \
        --kernel-python .venv/bin/python --write                         # the mlflow one, in .venv (mlflow)

The kernel starts in a fresh temporary folder that also receives everything the notebook writes
(NOTEBOOK_WORKDIR), so nothing lands in the checkout except the notebook itself with --write.
Environment variables reach the kernel (DEEPAR_IMAGE, DEEPAR_ON_AWS). The first failing cell stops
the run: its error is printed, the partly executed notebook is still written to --output, exit status 1.
The executed notebook records a digest of its code cells, so a test can tell when the committed
outputs no longer come from the committed code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NOTEBOOK = HERE / "byoc_walkthrough.ipynb"
MLFLOW_NOTEBOOK = HERE / "mlflow_walkthrough.ipynb"  # its kernel: .venv (mlflow, the training code)
DIGEST_KEY = "deepar_code_sha256"


def code_digest(notebook: dict) -> str:
    """sha256 of the code cells' sources, in order (outputs and markdown excluded)."""
    sources = [
        "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        for c in notebook["cells"]
        if c["cell_type"] == "code"
    ]
    return hashlib.sha256(json.dumps(sources).encode()).hexdigest()


def kernel_in_this_python(jupyter_dir: Path, python: str = sys.executable) -> None:
    # A kernelspec named like the notebook's ("python3") that runs ``python`` (this interpreter by default),
    # first on JUPYTER_PATH: a python3 kernelspec installed elsewhere on the machine must not win.
    spec = jupyter_dir / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (.venv-sdk)",
                "language": "python",
            }
        )
    )
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(jupyter_dir), os.environ.get("JUPYTER_PATH")]))


def execute(source: Path, output: Path, workdir: Path, cell_timeout: int, kernel_python: str = sys.executable) -> bool:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(source, as_version=4)
    workdir.mkdir(parents=True, exist_ok=True)
    jupyter_dir = Path(tempfile.mkdtemp(prefix="deepar-nb-jupyter-"))
    kernel_in_this_python(jupyter_dir, kernel_python)
    os.environ.update({"NOTEBOOK_WORKDIR": str(workdir), "DEEPAR_REPO": str(REPO)})
    client = NotebookClient(
        notebook,
        timeout=cell_timeout,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(workdir)}},
    )
    ok = True
    try:
        client.execute()
    except CellExecutionError as error:
        print(f"notebook failed: {error}", file=sys.stderr)
        ok = False
    finally:
        shutil.rmtree(jupyter_dir, ignore_errors=True)
    notebook.metadata[DIGEST_KEY] = code_digest(notebook)
    nbformat.write(notebook, output)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--output", type=Path, help="write the executed notebook here")
    target.add_argument("--write", action="store_true", help="write it back to the notebook (--notebook)")
    parser.add_argument(
        "--workdir", type=Path, help="kernel folder and NOTEBOOK_WORKDIR (default: a temporary one, removed)"
    )
    parser.add_argument("--cell-timeout", type=int, default=1800, help="seconds one cell may take")
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK, help="the notebook (default: the BYOC walkthrough)")
    parser.add_argument(
        "--kernel-python", default=sys.executable, help="the kernel's interpreter, with ipykernel (default: this one)"
    )
    args = parser.parse_args()
    notebook = args.notebook.resolve()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="deepar-nb-"))
    output = notebook if args.write else args.output
    # With --write, a failed run must not replace the committed outputs.
    executed = Path(tempfile.mkdtemp(prefix="deepar-nb-out-")) / notebook.name
    try:
        ok = execute(notebook, executed, workdir.resolve(), args.cell_timeout, args.kernel_python)
        if ok or not args.write:
            shutil.copy(executed, output)
    finally:
        shutil.rmtree(executed.parent, ignore_errors=True)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"{'executed' if ok else 'FAILED'}: {notebook.name} -> {output if ok or not args.write else '(not written)'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
