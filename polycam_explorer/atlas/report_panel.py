"""The atlas's "export HTML report" row: the report (:func:`~.report.write_report`, one map set
loaded per row) is written in a background thread, with a progress bar, the rows done of all and
the time left at the rate so far, and a cancel button; the grid stays usable meanwhile and one
report runs at a time. The worker writes the job's numbers and outcome; the widgets follow the
job's traits."""
from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import ipywidgets as W
import traitlets as T

from ..cancel import Cancelled
from ..explorer.jobs import Job, one_torch_thread
from ..explorer.views.export import download_link, export_folder, save_numbered
from .index import Index, Row
from .report import write_report

ERROR_STYLE = "color:#b00"


class ReportPanel(W.HBox):
    """The report button, a cancel button, a progress bar with the rows done and the time left,
    and the link to the last report written (its path and a download button).

    Args:
        export_dir: the folder reports are written to (made if missing).
        status: the atlas's status line: it says when a report was written, cancelled or failed.

    Attributes:
        job: the :class:`~polycam_explorer.explorer.jobs.Job` writing the report (``running``,
            ``done``, ``total``, ``time_left``).
        path: the last report written, or None (none yet, or the last one failed or was cancelled).
    """

    def __init__(self, export_dir: Path, status: W.HTML) -> None:
        self.export_dir, self.status = export_dir, status
        self.job = Job()
        self.path: Path | None = None
        self._outcome = ""  # the status line of the report that just ended, written by the worker
        self.button = W.Button(description="export HTML report", icon="file",
                               tooltip="the images matching the filters, in the grid's order, as one "
                                       "self-contained HTML file")
        self.cancel_button = W.Button(description="cancel", icon="stop", disabled=True,
                                      tooltip="stop writing the report (no file is left)")
        self.progress = W.IntProgress(min=0, max=1, value=0, layout=W.Layout(width="160px", display="none"))
        self.progress_text = W.HTML()
        self.link = W.HTML()
        T.dlink((self.job, "total"), (self.progress, "max"))
        T.dlink((self.job, "done"), (self.progress, "value"))
        self.job.observe(lambda _: self._show_progress(), names=["done", "total", "time_left"])
        self.job.observe(self._on_running, names="running")
        self.cancel_button.on_click(lambda _: self.cancel())
        super().__init__([self.button, self.cancel_button, self.progress, self.progress_text, self.link])

    def start(self, index: Index, rows: Sequence[Row], variant: str, *, block: bool = False) -> Path | None:
        """Write the report of ``rows`` into ``export_dir`` (in a thread unless ``block``).

        Returns the path written when ``block`` (None on error or cancel: the status line says
        why); None at once otherwise. While a report runs, another is refused (status line)."""
        if self.job.running:
            self.status.value = "a report is being written: wait for it or cancel it"
            return None
        self.path, self._outcome, self.link.value = None, "", ""
        self.job.total = max(1, len(rows))
        self.job.start(lambda: self._write(index, list(rows), variant), block=block)
        return self.path if block else None

    def _write(self, index: Index, rows: list[Row], variant: str) -> None:
        """The worker: writes the report and records the outcome (path, status line)."""
        try:
            with one_torch_thread():  # one map per row: leave the other core to the grid
                path = save_numbered(export_folder(self.export_dir), "atlas_report", ".html",
                                     lambda tmp: write_report(index, rows, tmp, variant=variant,
                                                              progress=self.job.report, cancel=self.job.stop))
        except Cancelled:  # the report's, or the job's
            self._outcome = (f"report cancelled after {self.job.done} of {len(rows)} images: "
                             "no file written")
        except Exception as exc:  # noqa: BLE001 - shown in the status line
            self._outcome = (f"<span style='{ERROR_STYLE}'>report not written: {type(exc).__name__}: "
                             f"{html.escape(str(exc))}</span>")
        else:
            self.path = path
            self._outcome = f"report of {len(rows)} images written"

    def _show_progress(self) -> None:
        if not self.job.running:
            return
        left = f" · {self.job.time_left}" if self.job.time_left else ""
        self.progress_text.value = f"writing the report: {self.job.done} of {self.job.total} images{left}"

    def _on_running(self, change: dict) -> None:
        running = change["new"]
        self.button.disabled, self.cancel_button.disabled = running, not running
        self.progress.layout.display = None if running else "none"
        if running:
            self._show_progress()
            return
        self.progress_text.value = ""
        if self.path is not None:
            self.link.value = download_link(self.path)
        self.status.value = self._outcome

    def cancel(self) -> None:
        """Stop the report being written (before its next row; nothing is left on disk)."""
        self.job.cancel()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the report being written in the background has ended."""
        self.job.wait(timeout)

    def close(self) -> None:
        """Cancel a report being written, wait for it to end, close the widgets."""
        self.cancel()
        self.wait()
        for widget in (self.button, self.cancel_button, self.progress, self.progress_text, self.link):
            widget.close()
        super().close()
