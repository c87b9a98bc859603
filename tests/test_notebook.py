"""notebooks/tour.ipynb: committed without outputs, and runs top to bottom on CPU (slow).

The execution test needs the notebook extra (``pip install -e ".[notebook]"``: nbclient, nbformat,
ipykernel); without it the test fails rather than skips, so CI cannot pass it by accident.
"""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "tour.ipynb"
KERNEL_NAME = "jaxpool-tour-test"


def _code_cells(nb: dict) -> list[dict]:
    return [cell for cell in nb["cells"] if cell["cell_type"] == "code"]


def _source(cell: dict) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def test_committed_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    for i, cell in enumerate(_code_cells(nb)):
        assert cell["outputs"] == [], f"code cell {i} has outputs: strip them before committing"
        assert cell["execution_count"] is None, f"code cell {i} has an execution count"
    assert "widgets" not in nb["metadata"]


def test_first_cell_installs_and_chooses_dataset():
    first = _source(_code_cells(json.loads(NOTEBOOK.read_text()))[0])
    for needle in (
        "pip",
        "install",
        "REPO_URL",
        "DATASET",
        "jax.devices()",
        "JAXPOOL_TOUR_WORKDIR",
    ):
        assert needle in first, f"the first code cell should mention {needle}"


def _kernel_manager(tmp_path: pathlib.Path):
    """A kernel manager whose only kernel runs this interpreter (not whatever `python3` resolves to)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "jaxpool tour test",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


@pytest.mark.slow
def test_notebook_executes(tmp_path, monkeypatch):
    # Plain imports: a missing extra must fail this test, not skip it.
    import nbclient
    import nbformat

    workdir = tmp_path / "tour"
    # The kernel inherits this environment: offline digits data, the sweep in tmp_path, CPU only,
    # and Jupyter/IPython state kept out of the home directory.
    monkeypatch.setenv("JAXPOOL_TOUR_DATASET", "digits")
    monkeypatch.setenv("JAXPOOL_TOUR_WORKDIR", str(workdir))
    monkeypatch.delenv("JAXPOOL_TOUR_DATA_DIR", raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        km=_kernel_manager(tmp_path),
        timeout=600,  # per cell; the sweep cell is the long one
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},  # run where Jupyter would
    )
    client.execute()  # raises CellExecutionError naming the failing cell

    images = sum(
        1
        for cell in _code_cells(nb)
        for out in cell["outputs"]
        if out.get("output_type") == "display_data" and "image/png" in out.get("data", {})
    )
    # 2 pooler figures + 2 TDGS figures + the sweep report's PNGs (at least accuracy and loss).
    assert images >= 6, f"expected at least 6 figures, got {images}"
    report = workdir / "report"
    assert (report / "report.md").is_file() and (report / "results.csv").is_file()
