"""The notebooks run top to bottom (nbclient) and are committed without outputs."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == [
        "01_quickstart.ipynb", "02_variants_and_layers.ipynb", "03_teaching_the_recursion.ipynb",
        "04_faithfulness.ipynb", "05_dataset_atlas.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path_factory, monkeypatch):
    # one cache for every notebook of the session: the sample's sweep runs once
    monkeypatch.setenv("POLYCAM_EXPLORER_CACHE", str(tmp_path_factory.getbasetemp() / "mapset-cache"))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=1200, kernel_name="python3",  # 04 sweeps three samples in one cell
                   resources={"metadata": {"path": str(tmp_path_factory.mktemp("run"))}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert images, "the notebook shows no figure"
