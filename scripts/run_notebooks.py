"""Execute notebooks in place and save them with their outputs (used by `make notebooks`).

The saved outputs are what nbval compares against in `make test`, so this script keeps them
free of run-to-run noise: no per-cell timing metadata, kernelspec always `python3`, and the
kernel starts in the notebook's own folder, as under nbval and jupyter-book.

Usage: python scripts/run_notebooks.py notebooks/01_next_scale_prediction.ipynb [...]
"""
from __future__ import annotations

import argparse
import os
import pathlib

import nbformat
from nbclient import NotebookClient

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def run(path: pathlib.Path, timeout: int) -> None:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(path.parent.resolve())}},
    )
    client.execute()
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # timestamps nbclient may still add
    nbformat.validate(nb)
    nbformat.write(nb, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=pathlib.Path)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args()
    # A non-interactive backend inherited by the kernel would swallow every figure.
    os.environ.pop("MPLBACKEND", None)
    for path in args.notebooks:
        run(path, args.timeout)
        print("executed", path)


if __name__ == "__main__":
    main()
