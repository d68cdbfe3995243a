"""docs/circuits_tour.ipynb runs from top to bottom through a real Jupyter kernel, and its views display inline."""

import os

import nbformat
from nbclient import NotebookClient

from conftest import REPO


def test_tour_notebook_runs_and_displays_html():
    notebook = nbformat.read(os.path.join(REPO, "docs", "circuits_tour.ipynb"), as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": os.path.join(REPO, "docs")}}).execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    html = [out["data"]["text/html"] for out in outputs if "text/html" in out.get("data", {})]
    assert any(h.startswith("<img") for h in html) and any(h.startswith("<iframe") for h in html)
    text = "".join(out.get("text", "") for out in outputs)
    assert "induction tensor" in text and "sum of attributions" in text
    assert "95% CI" in text and "attribution and exact patching" in text  # one scale for both methods
