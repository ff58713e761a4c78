"""Every committed notebook was run top to bottom before it was saved.

nbval compares fresh outputs with the saved ones, but it cannot compare a cell that was never
run (its execution count is null). So each notebook must have been executed in one go, in
order (`make notebooks`), with the python3 kernel and no errors.
"""
from __future__ import annotations

import pathlib

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_was_executed_in_order(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    assert kernel == "python3", f"{path.name}: saved with kernel {kernel!r}"

    expected = 1
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        where = f"{path.name}, cell {index}"
        count = cell.execution_count
        # nbval does not run cells tagged nbval-skip; they may be saved unrun
        if count is None and "nbval-skip" in cell.metadata.get("tags", []):
            continue
        assert count == expected, f"{where}: execution count {count}, expected {expected}"
        expected += 1
        errors = [out for out in cell.outputs if out.output_type == "error"]
        assert not errors or "raises-exception" in cell.metadata.get("tags", []), where
        assert "execution" not in cell.metadata, f"{where}: timing metadata was saved"
