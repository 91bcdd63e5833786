"""Small matplotlib figures rendered to inline SVG.

The object API (``Figure``, no pyplot) keeps no global state; text stays text (``svg.fonttype``
none), and the SVG ids are salted with a fixed string and carry no date, so the same data gives
the same bytes and the file needs no font or script to show.
"""

from __future__ import annotations

import io
import re

import matplotlib
import numpy as np
from matplotlib.figure import Figure

matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "flowsense", "font.size": 9,
                            "axes.spines.top": False, "axes.spines.right": False})

ACCENT, MUTED, REFERENCE = "#c0392b", "#7f8c8d", "#2471a3"
SIZE = (5.2, 2.6)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)  # RDF boilerplate: bytes, not information


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.tight_layout()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    return _METADATA.sub("", text[text.index("<svg"):])


def histogram(values, xlabel: str, title: str, refs: tuple = (), bins: int = 30, log: bool = False) -> str:
    """Distribution of ``values``; ``refs`` are (x, label) lines such as what an ordinary ping does."""
    fig = Figure(figsize=SIZE)
    ax = fig.add_subplot()
    values = np.asarray(values, float)
    if len(values):
        lo, hi = float(values.min()), float(values.max())
        for x, _ in refs:
            lo, hi = min(lo, x), max(hi, x)
        span = hi - lo or max(abs(hi), 1.0)
        ax.hist(values, bins=np.linspace(lo - span * 0.05, hi + span * 0.05, bins + 1), color=ACCENT,
                label="this alert")
    for (x, label), style in zip(refs, ("--", ":", "-.")):
        ax.axvline(x, color=REFERENCE, linestyle=style, linewidth=1.4, label=label)
    if log:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel="count", title=title)
    if refs:
        ax.legend(loc="best", fontsize=7, frameon=False)
    return _svg(fig)


def timeline(series: list[tuple[str, np.ndarray, np.ndarray]], t0_ns: int, ylabel: str, title: str,
             step: bool = False) -> str:
    """Events over time: each series is (label, times in ns, values); x is minutes after ``t0_ns``."""
    fig = Figure(figsize=SIZE)
    ax = fig.add_subplot()
    for k, (label, ts, ys) in enumerate(series):
        x = (np.asarray(ts, np.int64) - t0_ns) / 60e9
        colour = (ACCENT, REFERENCE, MUTED, "#27ae60", "#8e44ad")[k % 5]
        if step:
            ax.step(x, ys, where="post", color=colour, label=label)
        else:
            ax.scatter(x, ys, s=12, color=colour, label=label)
    ax.set(xlabel="minutes after first event", ylabel=ylabel, title=title)
    if len(series) > 1:
        ax.legend(loc="best", fontsize=7, frameon=False)
    return _svg(fig)


def lanes(lanes_: list[tuple[str, np.ndarray, np.ndarray]], t0_ns: int, title: str) -> str:
    """Named lanes of intervals (start, end in ns): what happened when, one lane per kind of event."""
    fig = Figure(figsize=(SIZE[0], 0.6 + 0.45 * max(len(lanes_), 1)))
    ax = fig.add_subplot()
    for k, (label, starts, ends) in enumerate(lanes_):
        s = (np.asarray(starts, np.int64) - t0_ns) / 60e9
        e = (np.asarray(ends, np.int64) - t0_ns) / 60e9
        colour = (REFERENCE, ACCENT, MUTED, "#27ae60")[k % 4]
        ax.hlines(np.full(len(s), k), s, np.maximum(e, s + 0.05), color=colour, linewidth=6)
        ax.scatter(s, np.full(len(s), k), marker="|", s=120, color="black", linewidths=0.8)
    ax.set_yticks(range(len(lanes_)), [label for label, _, _ in lanes_])
    ax.set_ylim(-0.7, len(lanes_) - 0.3)
    ax.set(xlabel="minutes after first event", title=title)
    return _svg(fig)


def bars(labels: list[str], values: list[float], xlabel: str, title: str, highlight: set[str] = frozenset()) -> str:
    """Horizontal bars, largest on top; ``highlight`` marks the labels the alert is about."""
    fig = Figure(figsize=(SIZE[0], 0.7 + 0.24 * max(len(labels), 1)))
    ax = fig.add_subplot()
    y = np.arange(len(labels))[::-1]
    ax.barh(y, values, color=[ACCENT if lab in highlight else MUTED for lab in labels])
    ax.set_yticks(y, labels)
    ax.set(xlabel=xlabel, title=title)
    return _svg(fig)


def scatter(groups: list[tuple[str, np.ndarray, np.ndarray]], xlabel: str, ylabel: str, title: str) -> str:
    """Points in named groups, the first group (the alert's) drawn on top."""
    fig = Figure(figsize=SIZE)
    ax = fig.add_subplot()
    for k, (label, x, y) in reversed(list(enumerate(groups))):
        ax.scatter(x, y, s=10, alpha=0.7, color=ACCENT if k == 0 else MUTED, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(loc="best", fontsize=7, frameon=False)
    return _svg(fig)
