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


def test_a_notebook_opened_without_a_run_dir_reads_the_latest_run(runs, tmp_path, monkeypatch):
    """Opened from notebooks/ (as `make lab` does) with nothing set: the newest run under ../runs."""
    import os
    import shutil

    from analysis.load import latest_run

    older, newer = tmp_path / "runs" / "b-older", tmp_path / "runs" / "a-newer"  # names sort the other way
    shutil.copytree(runs.baseline, older)
    shutil.copytree(runs.faulted, newer)
    (tmp_path / "runs" / "c-study").mkdir()  # a skip study's directory: no summary.json
    shutil.copytree(runs.faulted, tmp_path / "runs" / "d.partial")  # still being collected
    os.utime(older / "summary.json", ns=(1, 1))
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert latest_run() == tmp_path / "runs" / "a-newer"

    monkeypatch.delenv("JARVIS_RUN_DIR", raising=False)
    notebook = nbformat.read(REPO / "notebooks" / "inference_time.ipynb", as_version=4)
    NotebookClient(notebook, kernel_name="python3", timeout=180,
                   resources={"metadata": {"path": str(tmp_path / "notebooks")}}).execute()
    shown = "".join(o.get("data", {}).get("text/markdown", "") for cell in notebook.cells
                    if cell.cell_type == "code" for o in cell.outputs)
    assert str(newer) in shown, "the notebook says which run it read"


def test_no_run_yet_says_what_to_do(tmp_path, monkeypatch):
    from analysis.load import RunDirError, latest_run

    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunDirError, match="make demo"):
        latest_run()
    (tmp_path / "runs").mkdir()
    with pytest.raises(RunDirError, match="no run directory in"):
        latest_run()
