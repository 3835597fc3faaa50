"""The notebooks run top to bottom (nbclient) on a synthetic run, in a kernel of this very environment."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = ("inference_time", "network_behavior", "layer_skip")


def execute(name: str) -> nbformat.NotebookNode:
    """Execute a notebook plus a last cell reporting the kernel's interpreter; a failing cell raises."""
    notebook = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
    # kernel_name python3 resolves to this environment's kernelspec; jupyter_client starts it with
    # sys.executable, which the last cell checks.
    NotebookClient(notebook, kernel_name="python3", timeout=180,
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    return notebook


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_on_a_synthetic_run(name, runs, monkeypatch):
    monkeypatch.setenv("JARVIS_RUN_DIR", str(runs.faulted))
    monkeypatch.setenv("JARVIS_BASELINE_DIR", str(runs.baseline))
    notebook = execute(name)
    first_code = next(cell for cell in notebook.cells if cell.cell_type == "code")
    assert "parameters" in first_code.metadata.get("tags", []) and "RUN_DIR" in first_code.source
    assert notebook.cells[-1].outputs[0]["text"].strip() == sys.prefix
    images = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
              if "image/png" in o.get("data", {})]
    assert images, "the notebook drew no figure"
