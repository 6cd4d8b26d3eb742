"""Execute a notebook with what the venv installs (nbclient + ipykernel; no Jupyter server or nbconvert needed) and
save the executed copy under ``outputs/notebooks/`` (the notebook in ``notebooks/`` stays without outputs).

    python experiments/run_notebook.py                      # notebooks/explore_cem.ipynb
    python experiments/run_notebook.py notebooks/other.ipynb --out /tmp/nb
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nbclient
import nbformat

from cemap import results

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebook", nargs="?", default=str(REPO / "notebooks" / "explore_cem.ipynb"))
    ap.add_argument("--out", default=str(REPO / "outputs" / "notebooks"))
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = ap.parse_args()
    source = Path(args.notebook)
    nb = nbformat.read(source, as_version=4)
    nbclient.NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO)}}).execute()
    target = Path(args.out) / source.name
    results.atomic_write_bytes(target, nbformat.writes(nb).encode())
    print(f"executed: {target} (open it in Jupyter or VS Code; `jupyter lab` needs `pip install jupyterlab`)")


if __name__ == "__main__":
    main()
