"""The flywheel page's plots as inline SVG, drawn on the server: bars stacked by source over days, the
histogram of annotation quality, the pre-annotation progress bar and the gate figures across policy versions.
Every text that comes from data is escaped here; each plot is an <svg role="img"> with a <title> per mark, which
a browser shows on hover."""
from __future__ import annotations

import math
from html import escape

# colour-blind-safe (Okabe-Ito), in the order sources are met; known sources keep their colour
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999")
KNOWN = {"human": "#0072B2", "correction": "#E69F00", "scratch": "#009E73"}
WIDTH, HEIGHT = 560, 210
LEFT, RIGHT, TOP, BOTTOM = 40, 12, 12, 30


def colours(sources: list[str]) -> dict[str, str]:
    free = [colour for colour in PALETTE if colour not in KNOWN.values()]
    chosen: dict[str, str] = {}
    for source in sources:
        chosen[source] = KNOWN.get(source) or free[len([s for s in chosen if s not in KNOWN]) % len(free)]
    return chosen


def nice_ceiling(value: float) -> int:
    """The smallest of 1, 2, 5 times a power of ten at least `value` (at least 1)."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    return int(next(step * power for step in (1, 2, 5, 10) if step * power >= value))


def _svg(name: str, label: str, body: list[str], width: int = WIDTH, height: int = HEIGHT) -> str:
    return (f'<svg class="plot" data-figure="{escape(name)}" role="img" aria-label="{escape(label)}" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
            + "".join(body) + "</svg>")


def _y_axis(top: int, unit: float = 1.0, fraction: bool = False) -> list[str]:
    """Grid lines and labels at 0, half and the top of the scale."""
    plot = HEIGHT - TOP - BOTTOM
    marks = []
    for share in (0.0, 0.5, 1.0):
        y = TOP + plot * (1 - share)
        value = f"{share * unit:.1f}" if fraction else f"{share * top:g}"
        marks.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value}</text>')
    return marks


def stacked_days(name: str, label: str, days: list[str], series: dict[str, list[int]]) -> str:
    """One bar a day, its sources stacked in the order given."""
    palette = colours(list(series))
    daily = [sum(counts[i] for counts in series.values()) for i in range(len(days))]
    top = nice_ceiling(max(daily, default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(len(days), 1)
    bar = min(max(step * 0.78, 1.0), 36.0)  # a few days stay bars, not blocks
    body = _y_axis(top)
    every = max(1, math.ceil(len(days) / 8))
    for i, day in enumerate(days):
        x, base = LEFT + i * step + (step - bar) / 2, float(TOP + plot_h)
        for source, counts in series.items():
            if not counts[i]:
                continue
            height = plot_h * counts[i] / top
            base -= height
            body.append(f'<rect class="bar" x="{x:.1f}" y="{base:.1f}" width="{bar:.1f}" height="{height:.1f}" '
                        f'fill="{palette[source]}"><title>{escape(day)}: {counts[i]} {escape(source)}</title></rect>')
        if i % every == 0 or i == len(days) - 1:
            body.append(f'<text class="tick" x="{x + bar / 2:.1f}" y="{HEIGHT - BOTTOM + 16}" '
                        f'text-anchor="middle">{escape(day[5:])}</text>')
    return _svg(name, label, body)


def histogram(name: str, label: str, counts: list[int]) -> str:
    """Equal bins over [0, 1], coloured from red (poor) to green (good)."""
    top = nice_ceiling(max(counts, default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(len(counts), 1)
    body = _y_axis(top)
    for i, count in enumerate(counts):
        low, high = i / len(counts), (i + 1) / len(counts)
        height = plot_h * count / top
        x, y = LEFT + i * step + 1, TOP + plot_h - height
        hue = round(120 * (i + 0.5) / len(counts))
        body.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{step - 2:.1f}" height="{height:.1f}" '
                    f'fill="hsl({hue}, 55%, 48%)"><title>{count} annotations scored {low:.1f} to {high:.1f}'
                    f'</title></rect>')
        if count:
            body.append(f'<text class="count" x="{x + (step - 2) / 2:.1f}" y="{y - 3:.1f}" '
                        f'text-anchor="middle">{count}</text>')
    for i in range(0, len(counts) + 1, max(1, len(counts) // 5)):
        body.append(f'<text class="tick" x="{LEFT + i * step:.1f}" y="{HEIGHT - BOTTOM + 16}" '
                    f'text-anchor="middle">{i / len(counts):.1f}</text>')
    return _svg(name, label, body)


def progress_bar(name: str, label: str, parts: list[tuple[str, int, str]], total: int) -> str:
    """One horizontal bar of `total`, its parts (name, count, colour) side by side, the rest left empty."""
    width, height = WIDTH, 28
    body = [f'<rect class="track" x="0" y="4" width="{width}" height="20" rx="4"/>']
    x = 0.0
    for part, count, colour in parts:
        if not count or not total:
            continue
        span = width * count / total
        body.append(f'<rect class="bar" x="{x:.1f}" y="4" width="{span:.1f}" height="20" fill="{colour}">'
                    f'<title>{count} {escape(part)}</title></rect>')
        x += span
    return _svg(name, label, body, width, height)


def gate_lines(name: str, label: str, versions: list[tuple[str, dict, bool, bool]],
               metrics: dict[str, str]) -> str:
    """Each metric of the gate (a share, 0 to 1) across versions, oldest left: a filled dot for a version
    promoted, a hollow one for one rejected, a ring around the active one. versions: (name, candidate's figures,
    promoted, active)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = min(plot_w / max(len(versions), 1), 120.0)  # a few versions stay close together, from the left
    body = _y_axis(1, fraction=True)
    palette = dict(zip(metrics, PALETTE, strict=False))
    for metric, title in metrics.items():
        points = [(LEFT + (i + 0.5) * step, TOP + plot_h * (1 - min(max(float(figures[metric]), 0.0), 1.0)),
                   version, figures[metric], promoted)
                  for i, (version, figures, promoted, _) in enumerate(versions) if metric in figures]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, *_ in points)
            body.append(f'<polyline class="line" points="{path}" stroke="{palette[metric]}"/>')
        for x, y, version, value, promoted in points:
            fill = palette[metric] if promoted else "#fff"
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5" fill="{fill}" stroke="{palette[metric]}" '
                        f'stroke-width="2"><title>{escape(version)}: {escape(title)} {float(value):.3f}</title>'
                        '</circle>')
    for i, (version, _, _, active) in enumerate(versions):
        x = LEFT + (i + 0.5) * step
        if active:  # under the lines and dots
            body.insert(3, f'<rect class="active" x="{x - step / 2 + 2:.1f}" y="{TOP}" width="{step - 4:.1f}" '
                        f'height="{plot_h}" rx="4"/>')
        body.append(f'<text class="tick{" strong" if active else ""}" x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" '
                    f'text-anchor="middle">{escape(version)}</text>')
    return _svg(name, label, body)
