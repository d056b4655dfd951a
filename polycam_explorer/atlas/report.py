"""The atlas's shareable report (issue 12, item 5): one static HTML file for people who do not run
Jupyter. Every picture is embedded as a base64 PNG ``data:`` URI, the style is inline and the only
script (sorting a table by a click on its header) is inline too, so the file opens in any browser,
offline, and requests nothing from anywhere.

Contents: a header (model identity, date, how many images, what the numbers mean, the paper), a
sortable table of the selected rows (photo, map overlay with its colour bar, predicted class and
probability, label, correct or not, Ins-Del per variant, context reliance) and the per-class
aggregates of :mod:`.aggregates` (mean maps of correct and wrong images, the Ins-Del table).
"""
from __future__ import annotations

import base64
import datetime
import html
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from .. import render
from ..cancel import CancelFlag, Cancelled, cancel_check
from ..files import atomic_write
from ..polycam import canonical_variant
from .aggregates import class_means, insdel_table
from .index import Index, Row
from .store import VARIANTS

CMAP = "turbo"
MEAN_SIZE = 96  # side of a class's mean map in the report, pixels
VARIANT_NAMES = {"+": "PCAM+", "-": "PCAM-", "+-": "PCAM±"}
PAPER = ("A. Englebert, O. Cornu and C. De Vleeschouwer, <i>Poly-CAM: High resolution class activation map "
         "for convolutional neural networks</i>, ICPR 2022 (arXiv 2204.13359)")

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: middle; }
th { background: #f2f2f2; } table.sortable th { cursor: pointer; } td.num { text-align: right; }
tr.wrong { background: #fdecea; } tr.right { background: #eef8ee; }
img { display: block; image-rendering: auto; } .pic { display: flex; align-items: stretch; gap: 3px; }
.bar { width: 10px; display: flex; flex-direction: column; justify-content: space-between;
       font-size: 9px; color: #fff; text-align: center; }
.meta { color: #555; } dl { margin: .3em 0; } dt { font-weight: 600; } dd { margin: 0 0 .4em 1.2em; }
.means { display: flex; flex-wrap: wrap; gap: 14px; } .mean { border: 1px solid #ddd; padding: 6px; }
.mean .maps { display: flex; gap: 6px; } figure { margin: 0; } figcaption { font-size: 11px; color: #555; }
"""

# a click on a header sorts the table's body by that column (data-v when given, else the text);
# empty values go last, numbers compare as numbers; a second click reverses
_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var up = th.dataset.order !== 'up'; th.dataset.order = up ? 'up' : 'down';
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var key = function (r) { var c = r.cells[col]; return c.dataset.v !== undefined ? c.dataset.v : c.textContent; };
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === '' || y === '') return (x === '') - (y === '');
        var nx = Number(x), ny = Number(y);
        var d = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
        return up ? d : -d;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


class ReportCancelled(Cancelled):
    """Raised by :func:`write_report` when its ``cancel`` flag is set between two rows (nothing is
    written)."""


Progress = Callable[[int, int], None]  # (rows done, rows in all)


def write_report(index: Index, rows: Iterable[Row | str], path: str | os.PathLike, *, variant: str = "+-",
                 title: str | None = None, thumb_size: int = 128, progress: Progress | None = None,
                 cancel: CancelFlag = None) -> Path:
    """Write the report of ``rows`` (rows of ``index`` or their files) to ``path``, atomically: the
    file is complete or not there (an earlier one stays whole when writing fails).

    ``variant`` picks the map drawn over each photo and the mean maps (full depth, predicted
    class); ``thumb_size`` is the longest side of each picture in pixels (keeps the file small:
    about 2 x 30 kB per row at 128). Map sets are loaded one at a time; a row whose map set
    cannot be loaded any more shows the index's thumbnail instead, with a warning.

    ``progress(done, total)`` is called before the first row (``done`` 0) and after each row;
    ``cancel`` (a ``threading.Event`` or a callable returning True) is looked at right after each
    call: once set, no other row is loaded, :class:`ReportCancelled` is raised and nothing is
    written (an earlier file at ``path`` stays whole).

    Raises:
        ValueError: an unknown variant, a ``thumb_size`` below 16; TypeError: a ``progress`` or
            ``cancel`` that is neither None nor callable (nor an Event); KeyError: a file not in
            the index; OSError: ``path`` cannot be written (nothing is left there);
            ReportCancelled: ``cancel`` was set.
    """
    variant = canonical_variant(variant)
    if isinstance(thumb_size, bool) or not isinstance(thumb_size, int) or thumb_size < 16:
        raise ValueError(f"thumb_size must be an int >= 16, got {thumb_size!r}")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be a callable (done, total) or None, got {type(progress).__name__}")
    stop_now = cancel_check(cancel)
    rows = [r if isinstance(r, Row) else index.row(r) for r in rows]

    def between_rows(done: int) -> None:
        if progress is not None:
            progress(done, len(rows))
        if stop_now():
            raise ReportCancelled(f"atlas report cancelled after {done} of {len(rows)} rows: nothing written "
                                  f"to {str(path)!r}")

    title = title or f"Poly-CAM atlas report: {index.folder.resolve().name}"
    parts = [_header(rows, title, variant),
             _rows_table(index, rows, variant, thumb_size, between_rows),
             _aggregates(index, rows, variant)]
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(parts) + f"\n<script>{_SCRIPT}</script>"
            "</body></html>\n")
    path = Path(path)
    with atomic_write(path) as f:
        f.write(page.encode("utf-8"))
    return path


# ----- pieces of the page ------------------------------------------------------------------
def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _png_uri(pixels: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(render.png_bytes(pixels)).decode("ascii")


def _img(pixels: np.ndarray, alt: str, **attributes: str) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{_e(v)}"' for k, v in attributes.items())
    return (f'<img src="{_png_uri(pixels)}" width="{pixels.shape[1]}" height="{pixels.shape[0]}" '
            f'alt="{_e(alt)}"{extra}>')


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _num(value: float | None, digits: int = 3) -> str:
    """A numeric cell whose ``data-v`` keeps the full value for sorting (empty when missing)."""
    return f'<td class="num" data-v="{"" if value is None else repr(float(value))}">{_fmt(value, digits)}</td>'


def _gradient(cmap: str) -> str:
    """The colour map as a CSS gradient, low at the bottom (the colours of :func:`render.colormap`)."""
    lut = render.colormap(cmap)
    stops = ", ".join(f"rgb({r},{g},{b}) {100 * i / 255:.1f}%" for i, (r, g, b) in
                      ((i, lut[i]) for i in range(0, 256, 17)))
    return f"linear-gradient(to top, {stops})"


def _header(rows: Sequence[Row], title: str, variant: str) -> str:
    models = Counter((r.model_name, r.model_id) for r in rows)
    sizes = Counter(f"{r.height} x {r.width}" for r in rows)
    labelled = [r for r in rows if r.correct is not None]
    evaluated = sum(r.insdel(variant) is not None for r in rows)
    accuracy = (f"; {sum(r.correct for r in labelled)} of {len(labelled)} labelled images are classified correctly"
                if labelled else "; no labels were given")
    model_text = "; ".join(f"{_e(name)} (fingerprint <code>{_e(mid)}</code>, {n} images)"
                           for (name, mid), n in models.most_common()) or "none"
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    name = VARIANT_NAMES[variant]
    return f"""<header><h1>{_e(title)}</h1>
<p class="meta">Made {_e(now)} by polycam-explorer. <b>{len(rows)} images</b>{accuracy}; Ins-Del of {name}
recorded for {evaluated}.<br>Model: {model_text}.<br>Input sizes: {_e(", ".join(
        f"{s} ({n})" for s, n in sizes.most_common()) or "none")}.</p>
<dl>
<dt>Map</dt><dd>The {name} map of the predicted class at full depth (the paper's channel weights, eqs. 4-6, per-layer
CAMs, eq. 2, and recursion, eq. 3), drawn
over the photo in the {CMAP} colour map: 0 (blue, no evidence) to 1 (red, the most). PCAM+ weighs each
channel by the class score when only its region is shown (insertion), PCAM- by the score lost when
its region is hidden (deletion), PCAM± by both.</dd>
<dt>Probability</dt><dd>The model's probability of its predicted class.</dd>
<dt>Correct</dt><dd>Whether the label (when given) names the predicted class.</dd>
<dt>Ins-Del</dt><dd>Insertion AUC minus deletion AUC of the map (Petsiuk et al. 2018, as the paper's
Section 4 runs them): pixels are put onto a blurred copy (insertion) or blurred away (deletion) in order
of decreasing saliency and the class probability is averaged over the steps. Higher is more faithful:
the map ranks first the pixels the model really uses. — means not evaluated
(<code>polycam-explorer evaluate</code> records it).</dd>
<dt>Context reliance</dt><dd>The mean over pixels of max(PCAM- − PCAM+, 0): where hiding a region lowers
the score but showing it alone does not raise it, the model needs that region as context around its
evidence. High values flag images whose decision leans on surroundings (the paper's plaster-cast case).</dd>
</dl>
<p class="meta">Method: {PAPER}. Click a column header to sort the table.</p></header>"""


def _fit(pixels: np.ndarray, frame: tuple[int, int] | None, size: int) -> np.ndarray:
    """``pixels`` at the photo's aspect ratio (its ``frame``), longest side ``size`` at most."""
    frame = frame or pixels.shape[:2]
    return render.fit_picture(pixels, render.fitted_size(frame, min(size, max(frame))))


def _pictures(index: Index, row: Row, variant: str, size: int) -> tuple[np.ndarray | None, np.ndarray]:
    """The photo and its map overlay, or (None, the index's thumbnail) without a readable map set."""
    try:
        ms = index.open_mapset(row)
    except (OSError, ValueError) as exc:
        warnings.warn(f"atlas report: the map set {row.file!r} cannot be loaded ({exc}); the report shows "
                      "its indexed thumbnail (PCAM±) instead", RuntimeWarning, stacklevel=4)
        return None, _fit(index.thumbnail(row), None, size)
    photo = render.image_uint8(ms.image, ms.mean, ms.std)
    overlay = render.overlay(photo, ms.saliency(row.pred_class, variant, ms.depth_available), CMAP, 0.5)
    return _fit(photo, ms.frame, size), _fit(overlay, ms.frame, size)


def _rows_table(index: Index, rows: Sequence[Row], variant: str, size: int,
                between_rows: Callable[[int], None]) -> str:
    """The rows' table; ``between_rows(done)`` runs before each row and after the last (it
    reports progress and raises on a cancel)."""
    bar = (f'<div class="bar" style="background: {_gradient(CMAP)}" title="{CMAP}: 0 (bottom) to 1 (top)">'
           "<span>1</span><span>0</span></div>")
    head = ("<tr><th>#</th><th>Image</th><th>Photo</th><th>Map (" + VARIANT_NAMES[variant] + ")</th>"
            "<th>Predicted class</th><th>Probability</th><th>Label</th><th>Correct</th>"
            + "".join(f"<th>Ins-Del {VARIANT_NAMES[v]}</th>" for v in VARIANTS)
            + "<th>Context reliance</th></tr>")
    body = []
    for number, row in enumerate(rows, 1):
        between_rows(number - 1)
        photo, overlay = _pictures(index, row, variant, size)
        photo_cell = _img(photo, f"{row.image}") if photo is not None else "map set not found"
        correct = {None: ("", "—", ""), True: ("1", "yes", "right"), False: ("0", "no", "wrong")}[row.correct]
        body.append(
            f'<tr class="{correct[2]}" data-file="{_e(row.file)}"><td class="num" data-v="{number}">{number}</td>'
            f"<td>{_e(row.image)}</td><td>{photo_cell}</td>"
            f'<td><div class="pic">{_img(overlay, f"{VARIANT_NAMES[variant]} of {row.image}", data_row=row.file)}'
            f"{bar}</div></td>"
            f'<td data-v="{_e(row.pred_name)}">{_e(row.pred_name)} ({row.pred_class})</td>'
            f"{_num(row.confidence)}<td>{_e(row.label) if row.label is not None else '—'}</td>"
            f'<td data-v="{correct[0]}">{correct[1]}</td>'
            + "".join(_num(row.insdel(v)) for v in VARIANTS) + _num(row.context, 4) + "</tr>")
    between_rows(len(rows))
    return (f'<section><h2>Images ({len(rows)})</h2><table class="sortable" id="rows"><thead>{head}</thead>'
            f"<tbody>\n" + "\n".join(body) + "</tbody></table></section>")


def _mean_figure(values: np.ndarray | None, caption: str) -> str:
    if values is None:
        return ""
    picture = render.fit_picture(render.heatmap(values, CMAP), (MEAN_SIZE, MEAN_SIZE))
    return f"<figure>{_img(picture, caption)}<figcaption>{_e(caption)}</figcaption></figure>"


def _aggregates(index: Index, rows: Sequence[Row], variant: str) -> str:
    name = VARIANT_NAMES[variant]
    means = class_means(rows, index.small_maps(rows), variant=variant) if rows else []
    cards = []
    for m in means:
        figures = (_mean_figure(m.correct, f"correct ({m.n_correct})") + _mean_figure(m.wrong, f"wrong ({m.n_wrong})")
                   + _mean_figure(m.unlabelled, f"no label ({m.n_unlabelled})"))
        cards.append(f'<div class="mean"><b>{_e(m.name)}</b> ({_e(m.class_key)})<div class="maps">{figures}</div></div>')
    table = "".join(
        f"<tr><td>{_e(t.name)}{'' if t.class_index is None else f' ({t.class_index})'}</td>"
        f'<td class="num" data-v="{t.n}">{t.n}</td>'
        + "".join(_num(t.means[v]) + f'<td class="num" data-v="{t.counts[v]}">{t.counts[v]}</td>' for v in VARIANTS)
        + "</tr>" for t in insdel_table(rows))
    head = "<tr><th>Predicted class</th><th>Images</th>" + "".join(
        f"<th>Mean Ins-Del {VARIANT_NAMES[v]}</th><th>Evaluated</th>" for v in VARIANTS) + "</tr>"
    return f"""<section><h2>Per class: where the model looks</h2>
<p class="meta">The mean {name} map of each predicted class over the input frame, for the images it got right,
those it got wrong (a wrong mean that lies elsewhere than the right one hints at a shortcut) and those
without a label.</p><div class="means">{"".join(cards) or "no images"}</div>
<h2>Per class: mean Ins-Del</h2><table class="sortable" id="insdel"><thead>{head}</thead>
<tbody>{table}</tbody></table></section>"""
