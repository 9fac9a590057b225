"""One function per figure; each returns a matplotlib Figure (no pyplot, no global state) for
outputs.write_figure. Axes are labelled, colour scales have bars, titles name model, task, layer
and matrix, so a figure reads on its own.

Layout is computed in inches (fixed margins, `_panels`) rather than by constrained layout or
bbox_inches="tight": those re-measure every text element several times per save and made a
12-panel figure cost seconds to draw; this one draws in a fraction of that.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

CHARS_PER_INCH = 11  # suptitle at 10 pt, for wrapping long titles


def matrix(letter: str) -> str:
    """'q' -> 'ΔW_q' in mathtext."""
    return rf"$\Delta W_{{{letter}}}$"


def _panels(
    nrows: int,
    ncols: int,
    panel_w: float,
    panel_h: float,
    title: str,
    colorbar: bool = False,
    legend_w: float = 0.0,
) -> tuple[Figure, np.ndarray, Axes | None]:
    """A figure of nrows × ncols axes of the given size in inches, a wrapped suptitle on top and
    optionally a colour-bar axis or `legend_w` inches for a shared legend on the right."""
    left, bottom, gap_w, gap_h = 0.85, 0.6, 0.85, 0.7
    right = 0.3 + (1.0 if colorbar else 0.0) + legend_w
    width = left + right + ncols * panel_w + (ncols - 1) * gap_w
    lines = textwrap.wrap(title, max(40, int(width * CHARS_PER_INCH)))
    top = 0.45 + 0.2 * len(lines)
    height = top + bottom + nrows * panel_h + (nrows - 1) * gap_h
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=gap_w / panel_w,
        hspace=gap_h / panel_h,
    )
    fig.suptitle("\n".join(lines), y=1 - 0.12 / height, va="top", fontsize=10)
    cax = None
    if colorbar:
        x = 1 - (right - 0.25) / width
        cax = fig.add_axes((x, bottom / height, 0.15 / width, 1 - (top + bottom) / height))
    return fig, axes, cax


def _shared_legend(fig: Figure, axes: np.ndarray) -> None:
    """One legend for all panels (they plot the same series), right of the panels, so no
    legend hides a line."""
    handles, labels = {}, []
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in handles:
                handles[label] = h
                labels.append(label)
    fig.legend([handles[k] for k in labels], labels, loc="center right", fontsize=8, frameon=False)


def _legend_width(labels: list[str]) -> float:
    """Inches for a legend of these labels at 8 pt (mathtext counted as rendered)."""
    shown = [re.sub(r"\$\\Delta W_\{(\w+)\}\$", r"ΔW\1", x) for x in labels]
    return 0.5 + 0.055 * max((len(x) for x in shown), default=0)


def _plain_log_ticks(ax: Axes) -> None:
    """'0.1' rather than '10⁻¹' on a log axis, with enough labelled ticks to read values off:
    1, 2, 5 per decade when the axis spans one or two decades, every integer when it spans less,
    decades only when it spans more. Call after plotting: it reads the autoscaled limits."""
    lo, hi = ax.get_ylim()
    decades = np.log10(hi / max(lo, 1e-300))
    subs = (1.0,) if decades > 2 else (1.0, 2.0, 5.0) if decades > 0.6 else tuple(range(1, 10))
    ax.yaxis.set_major_locator(LogLocator(subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _integer_ticks(ax: Axes, x: bool = True, y: bool = True) -> None:
    if x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
    if y:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))


@dataclass
class Heatmap:
    data: np.ndarray  # φ[i-1, j-1]
    title: str


def phi_heatmaps(
    grid: list[list[Heatmap]],
    title: str,
    ylabel: str,
    xlabel: str,
    max_i: int | None = None,
    max_j: int | None = None,
) -> Figure:
    """Fig. 3/4 layout: one row per layer, one column per matrix plus the random baseline; φ on a
    shared 0..1 colour scale, i down the rows and j along the columns as in the paper."""
    nrows, ncols = len(grid), max(len(row) for row in grid)
    ri, rj = grid[0][0].data.shape
    ri, rj = min(ri, max_i or ri), min(rj, max_j or rj)
    panel_w = 2.2 * min(max(rj / ri, 1.0), 2.0)  # wide panels for r=8 vs r=64, square if equal
    fig, axes, cax = _panels(nrows, ncols, panel_w, 2.0, title, colorbar=True)
    norm = Normalize(0.0, 1.0)
    for r, row in enumerate(grid):
        for c in range(ncols):
            ax = axes[r][c]
            if c >= len(row):
                ax.set_axis_off()
                continue
            data = row[c].data[:ri, :rj]
            extent = (0.5, data.shape[1] + 0.5, data.shape[0] + 0.5, 0.5)  # 1-based i, j
            ax.imshow(
                data,
                cmap="viridis",
                norm=norm,
                aspect="auto",
                extent=extent,
                interpolation="nearest",
            )
            ax.set_title(row[c].title, fontsize=9)
            _integer_ticks(ax)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
    fig.colorbar(ScalarMappable(norm=norm, cmap="viridis"), cax=cax, label="φ(i, j)")
    return fig


def phi_by_layer(
    layers: dict[str, list[int]], curves: dict[str, dict[str, np.ndarray]], title: str
) -> Figure:
    """φ at a few (i, j) per layer, one panel per matrix, the random baseline dotted grey:
    do the top direction / the whole smaller subspace overlap, layer by layer?"""
    letters = list(curves)
    names = list(dict.fromkeys(n for c in curves.values() for n in c))
    fig, axes, _ = _panels(1, len(letters), 4.0, 3.0, title, legend_w=_legend_width(names))
    for ax, letter in zip(axes[0], letters, strict=True):
        n_random = 0
        for name, ys in curves[letter].items():
            style = {"marker": "o"}
            if name.startswith("random"):  # baselines: grey, dotted, told apart by marker
                style = {"color": "0.5", "ls": ":", "marker": "xs+D"[n_random % 4]}
                n_random += 1
            ax.plot(layers[letter], ys, ms=4, label=name, **style)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("layer")
        ax.set_ylabel("φ(i, j)")
        ax.set_title(f"{matrix(letter)}: overlap by layer", fontsize=9)
        _integer_ticks(ax, y=False)
        ax.grid(alpha=0.3)
    _shared_legend(fig, axes)
    return fig


def spectra(
    panels: list[list[tuple[str, list[int], np.ndarray]]], row_titles: list[str], title: str
) -> Figure:
    """Singular values of ΔW normalised by the largest, one line per layer (colour = layer);
    one row per run, one column per matrix. A steep drop = low intrinsic rank (§7.2)."""
    nrows, ncols = len(panels), max(len(p) for p in panels)
    fig, axes, cax = _panels(nrows, ncols, 3.6, 2.6, title, colorbar=True)
    all_layers = sorted({layer for row in panels for _, ls, _ in row for layer in ls})
    norm = Normalize(all_layers[0], max(all_layers[-1], all_layers[0] + 1))
    cmap = colormaps["viridis"]
    for r, row in enumerate(panels):
        for c in range(ncols):
            ax = axes[r][c]
            if c >= len(row):
                ax.set_axis_off()
                continue
            letter, layers, S = row[c]  # S: (L, r)
            idx = np.arange(1, S.shape[1] + 1)
            floor = (
                1e-6  # plot exact zeros (rank-deficient ΔW) at the bottom instead of dropping them
            )
            for layer, s in zip(layers, S, strict=True):
                if s[0] > 0:
                    ys = np.maximum(s / s[0], floor)
                    ax.plot(idx, ys, color=cmap(norm(layer)), lw=1.0, marker=".", ms=3)
            ax.set_yscale("log")
            _plain_log_ticks(ax)  # after the lines: it reads the limits
            ax.set_xlabel("singular value index i")
            ax.set_ylabel("σᵢ / σ₁")
            ax.set_title(f"{row_titles[r]}: {matrix(letter)}", fontsize=9)
            _integer_ticks(ax, y=False)
            ax.grid(alpha=0.3, which="major")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, label="layer")
    return fig


def by_layer(
    series: dict[str, dict[str, tuple[list[int], np.ndarray]]],
    ylabels: dict[str, str],
    title: str,
    log_y: bool = False,
    styles: dict[str, dict] | None = None,
) -> Figure:
    """One panel per measure, x = layer, one line per (run, matrix): effective ranks, amplification.
    `styles` gives per-line matplotlib keywords (e.g. colour per run, line style per matrix)."""
    names = list(series)
    labels = list(dict.fromkeys(k for v in series.values() for k in v))
    fig, axes, _ = _panels(1, len(names), 4.0, 3.0, title, legend_w=_legend_width(labels))
    for ax, name in zip(axes[0], names, strict=True):
        for label, (layers, ys) in series[name].items():
            style = {"marker": "o", "ms": 3, **(styles or {}).get(label, {})}
            ax.plot(layers, ys, label=label, **style)
        if log_y:
            ax.set_yscale("log")
            _plain_log_ticks(ax)
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabels[name])
        ax.set_title(name, fontsize=9)
        _integer_ticks(ax, y=False)
        ax.grid(alpha=0.3)
    _shared_legend(fig, axes)
    return fig
