"""Standard figures, drawn from saved results (xarray) so a figure never needs a rerun."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402,F401
import numpy as np  # noqa: E402

from engine.errors import require  # noqa: E402


def save(fig, path) -> str:
    """Write a figure (130 dpi), free it, return the path."""
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return str(path)


def figure(rows: int, cols: int, size: tuple, **options):
    """(fig, axes) of a rows x cols grid of axes, `size` inches wide and high, laid out
    so that nothing overlaps (matplotlib's subplots with constrained layout)."""
    return plt.subplots(rows, cols, figsize=size, constrained_layout=True, **options)


def _fmt(value) -> str:
    """A coordinate value for a label: numbers as %g, names as they are."""
    return f"{value:g}" if isinstance(value, (float, np.floating, int, np.integer)) else str(value)


def draw_lines(ax, da, x: str, hue: str, over: str | None, notes: dict | None = None, colors=None,
               style: str = "o-") -> None:
    """One line per value of `hue`: the median over `over` with its min-max band."""
    colors = plt.cm.viridis(np.linspace(0, 0.9, da.sizes[hue])) if colors is None else colors
    for c, value in zip(colors, da[hue].values):
        line = da.sel({hue: value})
        if over is not None and over in line.dims:
            lo, mid, hi = line.min(over), line.median(over), line.max(over)
            ax.fill_between(line[x].values, lo.values, hi.values, color=c, alpha=0.2, lw=0)
        else:
            mid = line
        label = f"{hue} = {_fmt(value)}"
        if notes and value in notes:
            label += f"  {notes[value]}"
        ax.plot(mid[x].values, mid.values, style, color=c, ms=3, label=label)


def lines(da, x: str, hue: str, path, *, over: str | None = "seed", logx=False, logy=False,
          title: str = "", ylabel: str | None = None, xlabel: str | None = None,
          notes: dict | None = None) -> str:
    """One line per value of `hue` of `da` against coordinate `x`: the median over `over`
    with its min-max band; `notes[value]` is appended to that line's label. Saves to
    `path`, returns it."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2), constrained_layout=True)
    draw_lines(ax, da, x, hue, over, notes)
    ax.set(xscale="log" if logx else "linear", yscale="log" if logy else "linear",
           xlabel=xlabel or x, ylabel=ylabel or da.name, title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return save(fig, path)


def lines_grid(da, x: str, hue: str, panel: str, path, *, over: str | None = "seed", logx=False,
               logy=False, title: str = "", ylabel: str | None = None, cols: int = 4) -> str:
    """Small multiples: one panel per value of `panel`, in each one line per value of
    `hue` against `x` (median over `over`, min-max band), shared axes."""
    n = da.sizes[panel]
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows + 0.5), sharex=True, sharey=True,
                             constrained_layout=True, squeeze=False)
    for ax, value in zip(axes.flat, da[panel].values):
        draw_lines(ax, da.sel({panel: value}), x, hue, over)
        ax.set(xscale="log" if logx else "linear", yscale="log" if logy else "linear", title=f"{panel} = {value:g}")
        if logx:  # label the measured x values, not every minor tick
            ax.set_xticks(da[x].values, [f"{v:g}" for v in da[x].values])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3, which="both")
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel or da.name)
    for ax in axes[-1]:
        ax.set_xlabel(x)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="outside right center", frameon=False)
    fig.suptitle(title)
    return save(fig, path)


def panels(path, rows: list[dict], *, x: str = "step", hue: str, over: str | None = "seed",
           title: str = "", logx: bool = False) -> str:
    """Stacked panels sharing the x axis, one line per value of `hue` in each (median
    over `over`, min-max band). Each row is a dict with `da` (DataArray), `ylabel`,
    optional `logy` and `refs` ({hue value: y or a DataArray over x}, drawn as dashed
    lines of the same colour, e.g. the stability threshold 2/eta of each learning rate, or
    2/eta_t under a schedule) and `ylim`."""
    fig, axes = plt.subplots(len(rows), 1, figsize=(7.5, 2.6 * len(rows) + 0.6), sharex=True,
                             constrained_layout=True, squeeze=False)
    for ax, row in zip(axes[:, 0], rows):
        da = row["da"]
        colors = plt.cm.viridis(np.linspace(0, 0.85, da.sizes[hue]))
        for c, value in zip(colors, da[hue].values):
            line = da.sel({hue: value})
            if over is not None and over in line.dims:
                ax.fill_between(line[x].values, line.min(over).values, line.max(over).values,
                                color=c, alpha=0.2, lw=0)
                line = line.median(over)
            ax.plot(line[x].values, line.values, "-", color=c, lw=1.2, label=f"{hue} = {_fmt(value)}")
            ref = (row.get("refs") or {}).get(value)
            if ref is not None and hasattr(ref, "dims"):  # a threshold that moves, e.g. 2/eta_t
                ax.plot(ref[x].values, ref.values, "--", color=c, lw=1)
            elif ref is not None:
                ax.axhline(ref, color=c, ls="--", lw=1)
        ax.set(ylabel=row["ylabel"], yscale="log" if row.get("logy") else "linear",
               xscale="log" if logx else "linear")
        if row.get("ylim"):
            ax.set_ylim(*row["ylim"])
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel(x)
    return save(fig, path)


REGIME_COLORS = ("#4c9f70", "#e0a030", "#c04040", "#4a6fb5", "#8c6bb1", "#7f7f7f", "#17becf", "#bcbd22", "#e377c2")


def regime_map(ax, labels, regimes: tuple, x: str, y: str, curves: dict | None = None) -> None:
    """Colour the (x, y) plane of `labels` (a DataArray of regime names with dims y, x)
    by regime, draw `curves` ({legend: (xs, ys, style)}, e.g. theoretical boundaries)
    on top, and add a legend entry per regime."""
    require(len(regimes) <= len(REGIME_COLORS), "regimes", f"{len(regimes)} regimes to colour",
            f"group them into at most {len(REGIME_COLORS)}")
    cmap = matplotlib.colors.ListedColormap(REGIME_COLORS[:len(regimes)])
    codes = np.vectorize(regimes.index)(labels.transpose(y, x).values)
    ax.pcolormesh(labels[x].values, labels[y].values, codes, cmap=cmap, vmin=-0.5, vmax=len(regimes) - 0.5,
                  shading="nearest")
    for name, (xs, ys, style) in (curves or {}).items():
        ax.plot(xs, ys, style, lw=1.5, label=name)
    for i, r in enumerate(regimes):
        ax.scatter([], [], marker="s", color=cmap(i), label=f"measured: {r}")
    _cell_limits(ax, labels, x, y)
    ax.legend(fontsize=7, loc="lower right")


def _cell_limits(ax, da, x: str, y: str) -> None:
    """Axis labels and limits that show every cell of a (x, y) grid whole, and no more."""
    pad = {c: 0.5 * float(np.min(np.diff(np.sort(da[c].values)))) if da.sizes[c] > 1 else 0.5 for c in (x, y)}
    ax.set(xlabel=x, ylabel=y, xlim=(float(da[x].min()) - pad[x], float(da[x].max()) + pad[x]),
           ylim=(float(da[y].min()) - pad[y], float(da[y].max()) + pad[y]))


def value_map(ax, da, x: str, y: str, label: str, curves: dict | None = None, fmt: str = "{:+.2f}") -> None:
    """Colour the (x, y) plane by the values of `da` (dims y, x) on a diverging scale
    centred at 0, print each value in its cell, and draw `curves` ({legend: (xs, ys,
    style)}, e.g. theoretical boundaries) on top."""
    values = da.transpose(y, x).values
    tiny = 1e-12 + 1e-6 * float(np.nanmax(np.abs(values)))
    norm = matplotlib.colors.TwoSlopeNorm(0.0, min(float(np.nanmin(values)), -tiny), max(float(np.nanmax(values)), tiny))
    mesh = ax.pcolormesh(da[x].values, da[y].values, values, cmap="RdBu_r", norm=norm, shading="nearest")
    plt.colorbar(mesh, ax=ax, label=label)
    for j, yv in enumerate(da[y].values):
        for i, xv in enumerate(da[x].values):
            if np.isfinite(values[j, i]):
                ax.text(xv, yv, fmt.format(values[j, i]), ha="center", va="center", fontsize=6)
    for name, (xs, ys, style) in (curves or {}).items():
        ax.plot(xs, ys, style, lw=1.5, label=name)
    _cell_limits(ax, da, x, y)
    if curves:
        ax.legend(fontsize=7, loc="upper left")


def cosine_map(ax, w, title: str = "") -> None:
    """Heat map of the cosine similarities of the rows of w [m, d] (neurons' input
    weights), rows ordered so that similar orientations sit together: condensation shows
    as a few +-1 blocks (Zhou et al. 2021)."""
    from engine import analysis
    order = analysis.cluster_order(w)
    ax.imshow(analysis.cosine_similarity(w)[np.ix_(order, order)], cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([]), ax.set_yticks([])


def decades(ax, traces: dict, *, xlabel: str, ylabel: str, title: str = "") -> None:
    """Trajectories on log-log axes, {label: (steps, log10 values, line style)} (e.g.
    from `engine.analysis.above_floor`); steps are drawn from 1."""
    for label, (t, y, style) in traces.items():
        ax.plot(np.maximum(t, 1), 10 ** y, style, label=label)
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")


def grouped_bars(ax, da, x: str, hue: str, ylabel: str) -> None:
    """Bars of a 2-D DataArray [x, hue]: one group per value of `x`, one bar per `hue`."""
    pos = np.arange(da.sizes[x])
    width = 0.8 / da.sizes[hue]
    for j, h in enumerate(da[hue].values):
        ax.bar(pos + width * (j + 0.5) - 0.4, da.sel({hue: h}).transpose(x).values, width=width, label=f"{hue} = {h:g}")
    ax.set_xticks(pos, [f"{x} = {v:g}" for v in da[x].values])
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)


def spike_trace(axes, steps, loss, series: dict, threshold: float, threshold_label: str, spikes: list) -> None:
    """Two stacked axes: the loss, and curvature `series` ({label: values}) against a
    stability threshold, with each spike's peak (red) and threshold crossing (green)
    marked on both (spikes as from `engine.analysis.spikes`)."""
    axes[0].semilogy(steps, loss, lw=1)
    axes[0].set_ylabel("train loss")
    for label, values in series.items():
        axes[1].semilogy(steps, np.abs(values), lw=1, alpha=0.85, label=label)
    axes[1].axhline(threshold, color="k", ls="--", lw=1, label=threshold_label)
    axes[1].set_xlabel("step")
    axes[1].legend(fontsize=8)
    for s in spikes:
        for ax in axes[:2]:
            ax.axvline(s["peak_step"], color="C3", lw=0.6, alpha=0.6)
            if s.get("threshold_crossing_step") is not None:
                ax.axvline(s["threshold_crossing_step"], color="C2", lw=0.6, alpha=0.6)


def spike_report(path, steps, loss, series: dict, threshold: float, threshold_label: str, spikes: list,
                 counts, counts_label: str, title: str) -> str:
    """One run's `spike_trace` (loss above, curvature `series` against the threshold
    below, spikes marked) over `grouped_bars` of the spike counts [x, hue] of a sweep."""
    fig, axes = figure(3, 1, (9, 8), height_ratios=(1, 1, 0.7))
    axes[1].sharex(axes[0])
    spike_trace(axes, steps, loss, series, threshold, threshold_label, spikes)
    axes[0].set_title(title)
    grouped_bars(axes[2], counts, *counts.dims, counts_label)
    return save(fig, path)


def outcome_scatter(path, groups: dict, panels: list[dict], *, x: str, xlabel: str, vlines=(),
                    title: str = "") -> str:
    """Per-run outcomes against a control parameter, side by side, one colour per group.
    groups: {label: {x: [runs], "alive": [runs] bool, panel key: [runs], optional
    "marker" and "mfc"}}; panels: [{"key", "ylabel", "title", optional "logy",
    "mark_dead" (runs not alive drawn as x at the top instead of left out), "lines"
    ({label: (xs, ys, style)}) and "hlines" ({label: (y, style)})}]; `vlines` ((x, style),
    ...) are drawn on every panel, e.g. stability thresholds."""
    fig, axes = figure(1, len(panels), (6 * len(panels), 4.4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        key = panel["key"]
        if panel.get("mark_dead"):
            top = max([1.0] + [3 * float(np.nanmax(np.where(g["alive"], g[key], np.nan))) for g in groups.values()])
        for i, (label, g) in enumerate(groups.items()):
            xs, alive, ys = (np.ravel(g[k]) for k in (x, "alive", key))
            ax.plot(xs[alive], ys[alive], g.get("marker", "o"), color=f"C{i}", ms=4, mfc=g.get("mfc"), label=label)
            if panel.get("mark_dead"):
                ax.plot(xs[~alive], np.full((~alive).sum(), top), "x", color=f"C{i}",
                        label=f"{label}: diverged (drawn at the top)")
        for label, (xs, ys, style) in panel.get("lines", {}).items():
            ax.plot(xs, ys, style, lw=1, label=label)
        for label, (y, style) in panel.get("hlines", {}).items():
            ax.axhline(y, color="k", ls=style, lw=1, label=label)
        for v, style in vlines:
            ax.axvline(v, color="grey", lw=0.8, ls=style)
        ax.set(xlabel=xlabel, ylabel=panel["ylabel"], title=panel.get("title", ""),
               yscale="log" if panel.get("logy") else "linear")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return save(fig, path)

