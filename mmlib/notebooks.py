"""Execute a project notebook with papermill (what each dvc stage runs), showing progress on the terminal.

``python -m mmlib notebook notebooks/amss/amss_02_table2.ipynb --profile demo`` writes
``reports/demo/amss/amss_02_table2/executed.ipynb``; the notebook writes its tables, figure and metrics beside it
(``mmlib.report.stage_dir``). While the kernel runs, the sweeps inside it report runs done / total and an ETA
through ``$MMLIB_PROGRESS`` (a file this runner copies to its stderr), so progress is visible under
``dvc repro`` and nothing of it enters the notebook's outputs.
"""
from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from .progress import ENV


def executed_path(notebook: Path, profile: str, project: Path, reports_dir: str = "reports") -> Path:
    """``<project>/<reports_dir>/<profile>/<folder under notebooks/>/<stem>/executed.ipynb``."""
    relative = notebook.resolve().relative_to((project / "notebooks").resolve())
    return project / reports_dir / profile / relative.parent / relative.stem / "executed.ipynb"


def _copy_progress(path: Path, stop: threading.Event, stream) -> None:
    with path.open("r", encoding="utf-8") as fh:
        while True:
            chunk = fh.read()
            if chunk:
                stream.write(chunk)
                stream.flush()
            elif stop.is_set():
                break
            else:
                time.sleep(0.5)


def run_notebook(notebook: str | Path, profile: str, reports_dir: str = "reports") -> Path:
    """Execute ``notebook`` with ``profile`` and ``reports_dir`` as its parameters; returns the executed copy."""
    import papermill

    from .config import find_params_file

    notebook = Path(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"{notebook}: no such notebook")
    project = find_params_file(notebook.resolve().parent).parent
    out = executed_path(notebook, profile, project, reports_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        progress = Path(tmp) / "progress"
        progress.touch()
        stop = threading.Event()
        copier = threading.Thread(target=_copy_progress, args=(progress, stop, sys.stderr), daemon=True)
        copier.start()
        previous = os.environ.get(ENV)
        os.environ[ENV] = str(progress)  # inherited by the kernel
        print(f"{notebook} ({profile}) -> {out.parent}", file=sys.stderr, flush=True)
        try:
            papermill.execute_notebook(str(notebook), str(out), parameters={"profile": profile,
                                       "reports_dir": reports_dir}, cwd=str(notebook.parent),
                                       kernel_name="python3", progress_bar=False)
        finally:
            if previous is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = previous
            stop.set()
            copier.join()
    print("", file=sys.stderr, flush=True)
    return out
