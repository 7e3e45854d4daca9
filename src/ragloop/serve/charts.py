"""Charts of the dashboard, drawn on the server as inline SVG.

Why SVG from the server and not a charting library in the browser: the dashboard must work air-gapped (no
CDN) and with JavaScript off, a vendored JS library would be another few hundred kilobytes to keep patched,
and a chart that is markup renders the same in a test, in a browser and on paper (printing needs nothing).
Each point carries a ``<title>`` (the browser's tooltip) and its value in ``data-y``, so a test can count a
chart's series and points and read their values from the page:

    <svg class="chart" data-chart="NAME">  …  <g class="series" data-series="LABEL" data-points="N">
        <circle class="pt" data-x="…" data-y="…"><title>…</title></circle> …

Every chart has a title, the unit of its values on the y axis, an x-axis label and a legend. These
functions compute nothing about the records: they draw the numbers a stage function returned.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from markupsafe import Markup, escape

# Okabe–Ito: distinguishable with the common colour-vision deficiencies, and in greyscale print.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
WIDTH, HEIGHT = 680, 300
LEFT, RIGHT, TOP, BOTTOM = 62, 16, 34, 58  # plot margins: y ticks left, title top, x ticks + legend below


@dataclass(frozen=True)
class Series:
    """One line (or one set of bars): ``points`` are (x, y); a y of None is a gap, drawn as no point.
    ``dashed``: a dashed line with hollow points (a second condition of the same thing); ``colour``: a
    colour of its own instead of the next of the palette (to pair it with another series)."""

    label: str
    points: Sequence[tuple[Any, float | None]] = field(default_factory=list)
    dashed: bool = False
    colour: str | None = None


@dataclass(frozen=True)
class Band:
    """A shaded interval around a line (a confidence band): (x, low, high) triples."""

    label: str
    points: Sequence[tuple[Any, float, float]]


@dataclass(frozen=True)
class Threshold:
    """A horizontal reference line (a limit, a threshold, zero)."""

    label: str
    y: float


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "chart"


def fmt(v: float | None) -> str:
    """A value as a person reads it: integers plainly, small values with three significant digits."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if float(v).is_integer() and abs(v) < 1e9:
        return f"{int(v):,}"
    return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3g}"


def _x_text(x: Any) -> str:
    if isinstance(x, datetime):
        return x.strftime("%Y-%m-%d %H:%M")
    if isinstance(x, date):
        return x.isoformat()
    return fmt(x) if isinstance(x, int | float) else str(x)


class _Scale:
    """x values to pixels: numbers and dates on a linear axis, anything else as evenly spaced categories
    in the order they first appear."""

    def __init__(self, xs: list[Any], lo: float, hi: float):
        self.lo, self.hi = lo, hi
        self.kind = (
            "date"
            if xs and all(isinstance(x, date) for x in xs)
            else "number"
            if xs and all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs)
            else "category"
        )
        if self.kind == "category":
            self.cats = list(dict.fromkeys(str(x) for x in xs))
            self.vmin, self.vmax = -0.5, len(self.cats) - 0.5
        else:
            values = [self._num(x) for x in xs] or [0.0]
            self.vmin, self.vmax = min(values), max(values)
            if self.vmin == self.vmax:
                self.vmin, self.vmax = self.vmin - 1, self.vmax + 1

    def _num(self, x: Any) -> float:
        if isinstance(x, datetime):
            return x.timestamp() / 86400
        if isinstance(x, date):
            return float(x.toordinal())
        return float(x)

    def __call__(self, x: Any) -> float:
        v = self.cats.index(str(x)) if self.kind == "category" else self._num(x)
        return self.lo + (v - self.vmin) / (self.vmax - self.vmin) * (self.hi - self.lo)

    def ticks(self, xs: list[Any], n: int = 7) -> list[tuple[float, str]]:
        if self.kind == "category":
            step = max(1, math.ceil(len(self.cats) / 10))
            return [(self(c), c[:14]) for c in self.cats[::step]]
        unique = sorted(set(xs), key=self._num)
        step = max(1, math.ceil(len(unique) / n))
        # Times within a day or two (an experiment's checks, minutes apart) need the hour to tell apart.
        timed = (
            all(isinstance(x, datetime) for x in unique) and self._num(unique[-1]) - self._num(unique[0]) < 2
        )
        when = "%H:%M" if timed and len({x.date() for x in unique}) == 1 else "%d %H:%M" if timed else "%m-%d"
        out = []
        for x in unique[::step]:
            text = x.strftime(when) if isinstance(x, date) else fmt(x)
            out.append((self(x), text))
        return out


def _nice_range(values: list[float], y_min: float | None, y_max: float | None) -> tuple[float, float]:
    lo = min(values) if values else 0.0
    hi = max(values) if values else 1.0
    lo = min(lo, 0.0) if y_min is None else y_min  # counts, rates and latencies start at 0
    hi = hi if y_max is None else y_max
    if hi <= lo:
        hi = lo + 1.0
    span = hi - lo
    step = 10 ** math.floor(math.log10(span / 4))
    for m in (1, 2, 2.5, 5, 10):
        if span / (step * m) <= 5:
            step *= m
            break
    return math.floor(lo / step) * step, math.ceil(hi / step) * step


def _y_scale(lo: float, hi: float) -> tuple[Any, list[float]]:
    top, bottom = TOP, HEIGHT - BOTTOM

    def y(v: float) -> float:
        return bottom - (v - lo) / (hi - lo) * (bottom - top)

    span = hi - lo
    step = 10 ** math.floor(math.log10(span / 4))
    for m in (1, 2, 2.5, 5, 10):
        if span / (step * m) <= 5:
            step *= m
            break
    ticks, v = [], lo
    while v <= hi + step / 1000:
        ticks.append(round(v, 10))
        v += step
    return y, ticks


# Font sizes in viewBox units: a chart is drawn at about 70 % of its viewBox in the dashboard's two-column
# grid, so 13 reads as ~9 px there; 11 (read as ~7.7 px) was too small to read in the screenshots.
FONT, TITLE_FONT, LEGEND_ROW = 13, 15, 17
CHAR_W = 0.6 * FONT  # a generous average glyph width, to lay the legend out without measuring text


def _legend_rows(legend: list[tuple[str, str, bool]]) -> list[list[tuple[float, str, str, bool]]]:
    """The legend's entries as rows of (x, label, colour, dashed), wrapped to the chart's width: with
    many series (versions, conditions) one row ran past the right edge and the last labels were cut."""
    rows: list[list[tuple[float, str, str, bool]]] = [[]]
    lx = float(LEFT)
    for label, colour, dashed in legend:
        width = 26 + CHAR_W * len(label)
        if rows[-1] and lx + width > WIDTH - RIGHT:
            rows.append([])
            lx = float(LEFT)
        rows[-1].append((lx, label, colour, dashed))
        lx += width + 10
    return rows


def _title(title: str, y: int) -> str:
    """The chart's title, squeezed to the chart's width when it is longer (SVG ``textLength``): a long
    title (a drift signal's name and statistic) ran past the right edge and lost its end."""
    room = WIDTH - 24
    fit = (
        f' textLength="{room}" lengthAdjust="spacingAndGlyphs"'
        if 0.56 * TITLE_FONT * len(title) > room
        else ""
    )
    return (f'<text class="chart-title" x="12" y="{y}"{fit} style="font-size:{TITLE_FONT}px;font-weight:600">'
            f"{escape(title)}</text>")  # fmt: skip


def _frame(name: str, title: str, unit: str, x_label: str, body: list[str], legend: list[tuple[str, str, bool]],
           y: Any, y_ticks: list[float], x_ticks: list[tuple[float, str]]) -> Markup:  # fmt: skip
    e = escape
    rows = _legend_rows(legend)
    height = HEIGHT + LEGEND_ROW * (len(rows) - 1)  # extra legend rows below, the plot unchanged
    out = [
        f'<svg class="chart" data-chart="{e(name)}" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="{e(title)}" xmlns="http://www.w3.org/2000/svg" style="width:100%;height:auto;'
        f'font:{FONT}px system-ui,sans-serif">',
        f"<title>{e(title)}</title>",
        _title(title, 18),
        f'<text class="unit" x="14" y="{(TOP + HEIGHT - BOTTOM) / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(TOP + HEIGHT - BOTTOM) / 2:.0f})" fill="#475467">{e(unit)}</text>',
    ]
    for t in y_ticks:
        py = y(t)
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{py:.1f}" y2="{py:.1f}" stroke="#e4e7ec"/>'
                   f'<text x="{LEFT - 6}" y="{py + 4:.1f}" text-anchor="end" fill="#475467">{e(fmt(t))}</text>')  # fmt: skip
    base = HEIGHT - BOTTOM
    for px, text in x_ticks:
        out.append(f'<text x="{px:.1f}" y="{base + 15}" text-anchor="middle" fill="#475467">{e(text)}</text>')
    out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{base}" y2="{base}" stroke="#98a2b3"/>')
    out.append(f'<text class="x-label" x="{(LEFT + WIDTH - RIGHT) / 2:.0f}" y="{base + 31}" text-anchor="middle" '
               f'fill="#475467">{e(x_label)}</text>')  # fmt: skip
    out.extend(body)
    # Legend: one swatch per series (and band, threshold), in rows under the x label.
    out.append('<g class="legend">')
    for i, row in enumerate(rows):
        ly = HEIGHT - 8 + LEGEND_ROW * i
        for lx, label, colour, dashed in row:
            dash = ' stroke-dasharray="5 3"' if dashed else ""
            out.append(f'<line x1="{lx:.0f}" x2="{lx + 18:.0f}" y1="{ly - 4}" y2="{ly - 4}" stroke="{colour}" '
                       f'stroke-width="3"{dash}/><text x="{lx + 22:.0f}" y="{ly}">{e(label)}</text>')  # fmt: skip
    out.append("</g></svg>")
    return Markup("".join(out))


def _empty(name: str, title: str) -> Markup:
    e = escape
    return Markup(
        f'<svg class="chart empty" data-chart="{e(name)}" viewBox="0 0 {WIDTH} 80" role="img" aria-label="{e(title)}" '
        f'style="width:100%;height:auto;font:{FONT}px system-ui,sans-serif"><title>{e(title)}</title>'
        + _title(title, 18)
        + '<text x="12" y="50" fill="#475467">No data for this view.</text></svg>'
    )


def line_chart(
    title: str,
    unit: str,
    series: Sequence[Series],
    *,
    x_label: str,
    band: Band | None = None,
    threshold: Threshold | Sequence[Threshold] | None = None,
    name: str | None = None,
    y_min: float | None = None,
    y_max: float | None = None,
) -> Markup:
    """Lines with a dot per point (the dot's tooltip: series, x, y and unit), an optional shaded band and
    horizontal threshold lines. Series of one point show the dot alone."""
    name = name or slug(title)
    thresholds = (
        [] if threshold is None else [threshold] if isinstance(threshold, Threshold) else list(threshold)
    )
    # Gaps take their place on the x axis too, so a line breaks where a value is missing.
    xs = [x for s in series for x, _ in s.points] + [x for x, _, _ in (band.points if band else [])]
    if not any(v is not None for s in series for _, v in s.points) and not (band and band.points):
        return _empty(name, title)
    ys = [v for s in series for _, v in s.points if v is not None]
    ys += [v for _, lo, hi in (band.points if band else []) for v in (lo, hi)] + [t.y for t in thresholds]
    lo, hi = _nice_range(ys, y_min, y_max)
    y, y_ticks = _y_scale(lo, hi)
    x = _Scale(xs, LEFT + 8, WIDTH - RIGHT - 8)
    body, legend = [], []
    if band is not None and band.points:
        pts = sorted(band.points, key=lambda p: x(p[0]))
        upper = " ".join(f"{x(px):.1f},{y(h):.1f}" for px, _, h in pts)
        lower = " ".join(f"{x(px):.1f},{y(low):.1f}" for px, low, _ in reversed(pts))
        body.append(f'<g class="band" data-series="{escape(band.label)}" data-points="{len(pts)}">'
                    f'<polygon points="{upper} {lower}" fill="#0072B2" fill-opacity="0.15"/></g>')  # fmt: skip
        legend.append((band.label, "#9cc3e0", False))
    for t in thresholds:
        body.append(f'<g class="threshold" data-series="{escape(t.label)}" data-y="{t.y}"><line x1="{LEFT}" '
                    f'x2="{WIDTH - RIGHT}" y1="{y(t.y):.1f}" y2="{y(t.y):.1f}" stroke="#b42318" stroke-dasharray="6 4">'
                    f"<title>{escape(t.label)}: {escape(fmt(t.y))} {escape(unit)}</title></line></g>")  # fmt: skip
        legend.append((t.label, "#b42318", True))
    for i, s in enumerate(series):
        colour = s.colour or PALETTE[i % len(PALETTE)]
        pts = [(px, v) for px, v in s.points if v is not None]
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        part = [f'<g class="series" data-series="{escape(s.label)}" data-points="{len(pts)}">']
        # A gap (None) breaks the line, so a missing day is not drawn as a slope through it.
        runs: list[list[str]] = [[]]
        for px, v in sorted(s.points, key=lambda p: x(p[0])):
            if v is None:
                runs.append([])
            else:
                runs[-1].append(f"{x(px):.1f},{y(v):.1f}")
        for run in runs:
            if len(run) > 1:
                part.append(
                    f'<polyline points="{" ".join(run)}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>'
                )
        for px, v in pts:
            tip = f"{s.label} · {_x_text(px)}: {fmt(v)} {unit}"
            fill = f'fill="#fff" stroke="{colour}" stroke-width="2"' if s.dashed else f'fill="{colour}"'
            part.append(f'<circle class="pt" cx="{x(px):.1f}" cy="{y(v):.1f}" r="3.5" {fill} '
                        f'data-x="{escape(_x_text(px))}" data-y="{v}"><title>{escape(tip)}</title></circle>')  # fmt: skip
        part.append("</g>")
        body.extend(part)
        legend.append((s.label, colour, s.dashed))
    return _frame(name, title, unit, x_label, body, legend, y, y_ticks, x.ticks(xs))


def bar_chart(
    title: str,
    unit: str,
    series: Sequence[Series],
    *,
    x_label: str,
    name: str | None = None,
    y_min: float | None = None,
    y_max: float | None = None,
    threshold: Threshold | None = None,
) -> Markup:
    """Grouped bars: the x values of all series are categories, one bar per series within each."""
    name = name or slug(title)
    cats = list(dict.fromkeys(str(px) for s in series for px, v in s.points if v is not None))
    if not cats:
        return _empty(name, title)
    ys = [v for s in series for _, v in s.points if v is not None] + ([threshold.y] if threshold else [])
    lo, hi = _nice_range(ys, y_min, y_max)
    y, y_ticks = _y_scale(lo, hi)
    x = _Scale(cats, LEFT, WIDTH - RIGHT)
    slot = (WIDTH - RIGHT - LEFT) / len(cats)
    width = slot * 0.8 / max(1, len(series))
    body, legend = [], []
    for i, s in enumerate(series):
        colour = s.colour or PALETTE[i % len(PALETTE)]
        pts = [(str(px), v) for px, v in s.points if v is not None]
        part = [f'<g class="series" data-series="{escape(s.label)}" data-points="{len(pts)}">']
        for cat, v in pts:
            left = x(cat) - slot * 0.4 + i * width
            top, bottom = sorted((y(v), y(max(lo, 0.0))))
            tip = f"{s.label} · {cat}: {fmt(v)} {unit}"
            part.append(f'<rect class="pt" x="{left:.1f}" y="{top:.1f}" width="{width:.1f}" height="{max(bottom - top, 0.5):.1f}" '
                        f'fill="{colour}" data-x="{escape(cat)}" data-y="{v}"><title>{escape(tip)}</title></rect>')  # fmt: skip
        part.append("</g>")
        body.extend(part)
        legend.append((s.label, colour, False))
    if threshold is not None:
        body.append(f'<g class="threshold" data-series="{escape(threshold.label)}" data-y="{threshold.y}"><line x1="{LEFT}" '
                    f'x2="{WIDTH - RIGHT}" y1="{y(threshold.y):.1f}" y2="{y(threshold.y):.1f}" stroke="#b42318" '
                    'stroke-dasharray="6 4"/></g>')  # fmt: skip
        legend.append((threshold.label, "#b42318", True))
    return _frame(name, title, unit, x_label, body, legend, y, y_ticks, x.ticks(cats))


def histogram(
    title: str,
    unit: str,
    edges: Sequence[float],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    x_label: str,
    name: str | None = None,
    density: bool = True,
) -> Markup:
    """Counts per bin (``edges`` has one more value than each series has counts), series overlaid and
    translucent. With ``density`` each series is drawn as shares of its total, so a reference of 800 and a
    window of 60 can be compared by shape; ``unit`` should then say "share"."""
    name = name or slug(title)
    if len(edges) < 2 or not series or not any(sum(c) for _, c in series):
        return _empty(name, title)
    drawn = []
    for label, counts in series:
        total = sum(counts) or 1
        drawn.append((label, counts, [c / total if density else c for c in counts]))
    ys = [v for _, _, vs in drawn for v in vs]
    lo, hi = _nice_range(ys, 0.0, None)
    y, y_ticks = _y_scale(lo, hi)
    x = _Scale([float(edges[0]), float(edges[-1])], LEFT + 4, WIDTH - RIGHT - 4)
    body, legend = [], []
    for i, (label, counts, values) in enumerate(drawn):
        colour = PALETTE[i % len(PALETTE)]
        part = [f'<g class="series" data-series="{escape(label)}" data-points="{len(values)}">']
        for j, v in enumerate(values):
            left, right = x(float(edges[j])), x(float(edges[j + 1]))
            tip = f"{label} · [{fmt(edges[j])}, {fmt(edges[j + 1])}): {fmt(counts[j])} ({fmt(v)} {unit})"
            part.append(f'<rect class="pt" x="{left:.1f}" y="{y(v):.1f}" width="{max(right - left - 1, 0.5):.1f}" '
                        f'height="{max(y(0) - y(v), 0):.1f}" fill="{colour}" fill-opacity="0.55" data-x="{edges[j]}" '
                        f'data-y="{v}"><title>{escape(tip)}</title></rect>')  # fmt: skip
        part.append("</g>")
        body.extend(part)
        legend.append((label, colour, False))
    x_ticks = [(x(float(v)), fmt(float(v))) for v in edges[:: max(1, math.ceil(len(edges) / 8))]]
    return _frame(name, title, unit, x_label, body, legend, y, y_ticks, x_ticks)


__all__ = ["Band", "Series", "Threshold", "bar_chart", "histogram", "line_chart"]
