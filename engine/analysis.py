"""Numbers computed from saved results (xarray), shared by experiments and figures."""
from __future__ import annotations

import numpy as np
import xarray as xr


def log_log_slope(da: xr.DataArray, dim: str) -> xr.DataArray:
    """Least-squares slope S of log(da) against log(da[dim]) along `dim`
    (e.g. S_w of RD ~ m^S_w, Luo et al. 2021). Non-positive or NaN points are skipped;
    NaN where fewer than two points remain."""
    x = np.log(da[dim].values.astype(float))

    def slope(y):
        ok = np.isfinite(y) & (y > 0)
        if ok.sum() < 2:
            return np.nan
        return np.polyfit(x[ok], np.log(y[ok]), 1)[0]

    return xr.apply_ufunc(slope, da, input_core_dims=[[dim]], vectorize=True)


def regime_of_slope(s_w: xr.DataArray, band: float) -> xr.DataArray:
    """Regime from the width slope S of a relative change (Luo et al. 2021): "linear"
    (S < -band, the weights move less the wider the net), "condensed" (S > band), else
    "critical"."""
    return xr.where(s_w < -band, "linear", xr.where(s_w > band, "condensed", "critical"))


def longest_run(mask: np.ndarray) -> tuple[int, int]:
    """(start, stop) of the longest stretch of True in a 1-D boolean array ((0, 0) if none)."""
    best, cur, span = 0, 0, (0, 0)
    for i, m in enumerate(np.asarray(mask, bool)):
        cur = cur + 1 if m else 0
        if cur > best:
            best, span = cur, (i - cur + 1, i + 1)
    return span


def slope_on_longest_run(t: np.ndarray, y: np.ndarray, mask: np.ndarray, min_len: int = 10):
    """Least-squares slope of y against t over the longest stretch where `mask` holds,
    and that stretch's length in t: (slope, span); None if it has fewer than `min_len`
    records."""
    start, stop = longest_run(mask)
    if stop - start < min_len:
        return None
    return np.polyfit(t[start:stop], y[start:stop], 1)[0], t[stop - 1] - t[start]


def spikes(loss: np.ndarray, steps: np.ndarray, factor: float, sharpness: np.ndarray | None = None,
           curvature: np.ndarray | None = None, threshold: float | None = None) -> list[dict]:
    """Loss spikes of one trajectory [steps]: a record whose loss exceeds `factor` times
    the lowest loss before it starts one; its peak is the highest loss before the loss
    falls back below that level; its onset the last record before the peak within 2x of
    the running minimum. With a (preconditioned) sharpness and directional curvature
    series and their stability threshold, each spike also gets the step at which the
    sharpness last crossed the threshold before the peak and the step at which the
    curvature first crossed it after that (Bai et al. 2025). [{name: step or value}]."""
    out, i, n = [], 1, loss.size
    runmin = np.minimum.accumulate(np.where(np.isfinite(loss), loss, np.inf))
    while i < n:
        if not loss[i] > factor * runmin[i - 1]:
            i += 1
            continue
        level, end = factor * runmin[i - 1], i
        while end + 1 < n and loss[end + 1] > level:
            end += 1
        peak = i + int(np.argmax(loss[i:end + 1]))
        onset = i - 1
        while onset > 0 and loss[onset] > 2 * runmin[onset - 1]:
            onset -= 1
        spike = {"onset_step": int(steps[onset]), "peak_step": int(steps[peak]),
                 "peak_over_min": float(loss[peak] / runmin[i - 1]) if runmin[i - 1] > 0 else float("inf")}
        if sharpness is not None:
            above = sharpness[: peak + 1] > threshold
            spike["threshold_crossing_step"] = spike["curvature_crossing_step"] = None
            if above.any():
                start = peak if above[peak] else int(np.flatnonzero(above)[-1])
                while start > 0 and above[start - 1]:
                    start -= 1
                spike["threshold_crossing_step"] = int(steps[start])
                crossed = np.flatnonzero(curvature[start: peak + 1] > threshold)
                if crossed.size:
                    spike["curvature_crossing_step"] = int(steps[start + crossed[0]])
        out.append(spike)
        i = end + 1
    return out


def above_floor(x: np.ndarray, steps: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """(steps, log10|x|) of a trajectory up to the first record where |x| is not above
    `floor` (e.g. where a converged run was frozen) or not finite."""
    y = np.log10(np.abs(x))
    ok = np.isfinite(y) & (y > np.log10(floor))
    end = ok.size if ok.all() else int(np.argmin(ok))
    return steps[:end].astype(float), y[:end]


def _unit_rows(w: np.ndarray) -> np.ndarray:
    """The rows of w [m, d] scaled to unit length (zero rows stay zero)."""
    w = np.asarray(w, float)
    return w / np.maximum(np.linalg.norm(w, axis=-1, keepdims=True), 1e-300)


def cosine_similarity(w: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity of the rows of w [m, d]: [m, m] (rows of zero norm give 0)."""
    unit = _unit_rows(w)
    return unit @ unit.T


def orientation_clusters(w: np.ndarray, cos_min: float = 0.95) -> np.ndarray:
    """Group the rows of w [m, d] by orientation (a direction, so w and -w differ):
    greedily, largest rows first, each row joins the first cluster whose leading row it
    matches with cosine >= cos_min, else starts one. Returns cluster sizes, largest
    first (condensation, Zhou et al. 2021: at most 2p clusters hold the neurons early
    on for an activation of multiplicity p)."""
    w = np.asarray(w, float)
    unit = _unit_rows(w[np.argsort(-np.linalg.norm(w, axis=1))])
    leaders, sizes = [], []
    for u in unit:
        if leaders:
            cos = np.asarray(leaders) @ u
            best = int(np.argmax(cos))
            if cos[best] >= cos_min:
                sizes[best] += 1
                continue
        leaders.append(u)
        sizes.append(1)
    return np.sort(np.asarray(sizes))[::-1]


def cluster_order(w: np.ndarray) -> np.ndarray:
    """Row order that puts neurons of similar orientation next to each other (by angle of
    the leading two principal directions), for cosine-similarity heat maps."""
    unit = _unit_rows(w)
    _, _, vt = np.linalg.svd(unit, full_matrices=False)
    coords = unit @ vt[:2].T if vt.shape[0] >= 2 else np.c_[unit @ vt[0], np.zeros(len(unit))]
    return np.argsort(np.arctan2(coords[:, 1], coords[:, 0]))


def condensation(w: xr.DataArray, top, neuron: str = "neuron", fan_in: str = "fan_in",
                 cos_min: float = 0.95, share_min: float = 0.05) -> xr.Dataset:
    """Orientation clusters of every weight matrix in `w` (dims ..., neuron, fan_in):
    `clusters`, the number of clusters holding >= share_min of the neurons, and
    `condensed_share`, the share of neurons in the `top` largest clusters (`top` an int
    or a DataArray over some of the other dims, e.g. 2p per activation)."""
    rest = [d for d in w.dims if d not in (neuron, fan_in)]
    values = w.transpose(*rest, neuron, fan_in).values
    tops = xr.DataArray(top).broadcast_like(w.isel({neuron: 0, fan_in: 0}, drop=True)).transpose(*rest).values
    counts, shares = np.zeros(values.shape[:-2]), np.zeros(values.shape[:-2])
    for idx in np.ndindex(*values.shape[:-2]):
        sizes = orientation_clusters(values[idx], cos_min) / values.shape[-2]
        counts[idx], shares[idx] = (sizes >= share_min).sum(), sizes[:int(tops[idx])].sum()
    coords = {d: w[d] for d in rest if d in w.coords}
    return xr.Dataset({"clusters": (rest, counts), "condensed_share": (rest, shares)}, coords=coords)


def first_time(hit: xr.DataArray, dim: str = "step") -> xr.DataArray:
    """The `dim` coordinate where `hit` is first True (NaN where it never is)."""
    return hit[dim].broadcast_like(hit).isel({dim: hit.argmax(dim)}).drop_vars(dim).where(hit.any(dim))


def at_first(da: xr.DataArray, hit: xr.DataArray, dim: str = "step") -> xr.DataArray:
    """`da` at the first `dim` where `hit` is True (NaN where it never is)."""
    return da.broadcast_like(hit).isel({dim: hit.argmax(dim)}).drop_vars(dim).where(hit.any(dim))
