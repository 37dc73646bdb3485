"""Numbers computed from saved results (xarray), shared by experiments and figures."""
from __future__ import annotations

import numpy as np
import xarray as xr


def late_phase(ds: xr.Dataset, fraction: float, dim: str = "step") -> xr.Dataset:
    """The last `fraction` of the records along `dim` (at least one), e.g. the phase at
    the edge of stability whose median sharpness is compared with 2/eta."""
    n = ds.sizes[dim]
    return ds.isel({dim: slice(n - max(1, int(round(fraction * n))), None)})


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


def power_law_fit(y: np.ndarray, *xs: np.ndarray) -> dict:
    """y = A prod_k x_k^a_k, fitted as log y = log A + sum_k a_k log x_k by least squares
    over the finite points (y, x_k: [points]): the exponents, their standard errors, the
    prefactor A and R^2 (None where there are no more points than coefficients). E.g.
    the maximal learning rate against depth x width (Iyer, Hanin & Rolnick 2023)."""
    ok = np.isfinite(y)
    X = np.column_stack([np.ones(ok.sum()), *[np.log(x[ok]) for x in xs]])
    t = np.log(y[ok])
    if len(t) <= X.shape[1]:
        return {"exponents": None, "stderr": None, "prefactor": None, "r2": None, "points": int(ok.sum())}
    coef, *_ = np.linalg.lstsq(X, t, rcond=None)
    resid = t - X @ coef
    cov = resid @ resid / (len(t) - X.shape[1]) * np.linalg.pinv(X.T @ X)
    r2 = 1 - resid @ resid / max(((t - t.mean()) ** 2).sum(), 1e-300)
    return {"exponents": [round(float(a), 4) for a in coef[1:]],
            "stderr": [round(float(e), 4) for e in np.sqrt(np.diag(cov))[1:]],
            "prefactor": float(np.exp(coef[0])), "r2": round(float(r2), 4), "points": int(ok.sum())}


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


def spikes_by_run(loss: xr.DataArray, factor: float, sharpness: xr.DataArray | None = None,
                  curvature: xr.DataArray | None = None, threshold: float | None = None,
                  dim: str = "step") -> xr.DataArray:
    """`spikes` of every run of loss [..., dim] (sharpness and curvature share its dims):
    a DataArray of lists of spikes over loss's other dims."""
    rest = [d for d in loss.dims if d != dim]
    found = np.empty([loss.sizes[d] for d in rest], dtype=object)
    for idx in np.ndindex(*found.shape):
        at = dict(zip(rest, idx))
        series = [None if a is None else a.isel(at).values for a in (sharpness, curvature)]
        found[idx] = spikes(loss.isel(at).values, loss[dim].values, factor, *series, threshold)
    return xr.DataArray(found, coords={d: loss[d].values for d in rest}, dims=rest)


def by_coords(da: xr.DataArray) -> dict:
    """Every element of da as {"dim=value,dim=value": element} (values formatted with :g),
    for summary.json."""
    return {",".join(f"{d}={r[d].item():g}" for d in da.dims): r.item() for r in da.stack(run=da.dims)}


def spike_precursors(found: list[dict]) -> dict:
    """How spikes (from `spikes` with a threshold) line up with their precursors
    (Bai et al. 2025): the share whose sharpness crossed the threshold before the loss
    peak, the median steps from that crossing to the peak, and the share whose
    directional curvature crossed it between the two (None without spikes)."""
    crossed = [s for s in found if s.get("threshold_crossing_step") is not None]
    first = [s for s in crossed if s["threshold_crossing_step"] < s["peak_step"]]
    between = [s for s in crossed if s["curvature_crossing_step"] is not None
               and s["threshold_crossing_step"] <= s["curvature_crossing_step"] <= s["peak_step"]]
    share = lambda a: round(len(a) / len(found), 3) if found else None
    return {"fraction_of_spikes_whose_peak_follows_a_threshold_crossing": share(first),
            "median_steps_from_threshold_crossing_to_peak":
                float(np.median([s["peak_step"] - s["threshold_crossing_step"] for s in crossed])) if crossed else None,
            "fraction_of_spikes_with_curvature_crossing_between_it_and_the_peak": share(between)}


def above_floor(x: np.ndarray, steps: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """(steps, log10|x|) of a trajectory up to the first record where |x| is not above
    `floor` (e.g. where a converged run was frozen) or not finite."""
    y = np.log10(np.abs(x))
    ok = np.isfinite(y) & (y > np.log10(floor))
    end = ok.size if ok.all() else int(np.argmin(ok))
    return steps[:end].astype(float), y[:end]


def late_slope(t: np.ndarray, y: np.ndarray, log_t: bool = False) -> float:
    """Least-squares slope of y against t (or log10 t) over the late half of the records."""
    late = slice(t.size // 2, None)
    return float(np.polyfit(np.log10(t[late]) if log_t else t[late], y[late], 1)[0])


def _decay_signature(x: np.ndarray, steps: np.ndarray, floor: float, deep_log10: float) -> np.ndarray:
    t, y = above_floor(x, steps, floor)
    froze = t.size < steps.size
    if t.size < 8:
        return np.array([np.nan, float(froze), 0.0, float(froze)])
    slope = late_slope(t, y)
    skip = t.size // 10  # the first records: a transient
    return np.array([slope, float(np.min(y[skip:]) < deep_log10),
                     float(np.max(y[skip:] - np.minimum.accumulate(y[skip:]))), float(froze)])


def decay_signature(x: xr.DataArray, floor: float, deep_log10: float) -> xr.Dataset:
    """How each trajectory of x [..., step] decays, from its records above `floor`
    (`above_floor`; below it the run counts as frozen): `log10_rate`, the least-squares
    slope of log10|x| per step over the late half of them (NaN with fewer than 8);
    `deep`, whether log10|x| fell below `deep_log10` after the first tenth; `max_rise_decades`, the
    largest rise of log10|x| above its running minimum after the first tenth (spikes);
    `froze`, whether the run went below `floor`."""
    dim = x.dims[-1]
    out = xr.apply_ufunc(_decay_signature, x, x[dim], kwargs={"floor": floor, "deep_log10": deep_log10},
                         input_core_dims=[[dim]] * 2, output_core_dims=[["stat"]], vectorize=True)
    return xr.Dataset({name: out.isel(stat=i, drop=True) for i, name in
                       enumerate(("log10_rate", "deep", "max_rise_decades", "froze"))})


def grid_table(da: xr.DataArray, rows: str, cols: str, digits: int = 3) -> dict:
    """A 2-D DataArray as {row value: {column value: rounded value}}, for summary.json."""
    return {f"{r:g}": {f"{c:g}": round(float(da.sel({rows: r, cols: c})), digits) for c in da[cols].values}
            for r in da[rows].values}


def grid_of(fn, **coords) -> xr.DataArray:
    """fn(a, b) on every point of a 2-D grid given as two named coordinates, e.g.
    grid_of(theory_regime, gamma=ds.gamma, gamma_prime=ds.gamma_prime): [a, b]."""
    (na, a), (nb, b) = coords.items()
    return xr.DataArray([[fn(u, v) for v in np.asarray(b)] for u in np.asarray(a)],
                        coords={na: np.asarray(a), nb: np.asarray(b)}, dims=(na, nb))


def sign_change_across(s: xr.DataArray, on: xr.DataArray) -> list[bool]:
    """For each point of a 2-D grid where `on` holds (a boundary): is |s| there below |s|
    at every off-boundary grid neighbour, with neighbours of both signs (s changes sign
    across the boundary and passes near 0 on it)?"""
    dims = on.dims
    s, on = s.transpose(*dims).values, on.values
    out = []
    for i, j in zip(*np.nonzero(on)):
        nb = [s[a, b] for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1))
              if 0 <= a < s.shape[0] and 0 <= b < s.shape[1] and not on[a, b]]
        out.append(bool(nb) and all(abs(s[i, j]) < abs(v) for v in nb) and min(nb) < 0 < max(nb))
    return out


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


def settled_time(below: xr.DataArray, dim: str = "step") -> xr.DataArray:
    """The `dim` coordinate from which `below` stays True to the end (NaN if it is
    False at the end): e.g. the step from which an error stays under a tolerance."""
    after = below.isel({dim: slice(None, None, -1)}).cumprod(dim).isel({dim: slice(None, None, -1)}).astype(bool)
    return first_time(after, dim)


def crossing_time(da: xr.DataArray, level, dim: str = "step") -> xr.DataArray:
    """The `dim` coordinate, linearly interpolated between records, at which `da` first
    reaches `level` (a number or a DataArray over da's other dims) from below; NaN if
    it never does or already starts there."""
    hit = da >= level
    i = hit.argmax(dim)
    ok = hit.any(dim) & (i > 0)
    prev = i.where(ok, 1) - 1
    t = da[dim].astype(float)
    y0, y1 = da.isel({dim: prev}), da.isel({dim: prev + 1})
    t0, t1 = t.isel({dim: prev}), t.isel({dim: prev + 1})
    out = t0 + (level - y0) / (y1 - y0) * (t1 - t0)
    return out.drop_vars(dim, errors="ignore").where(ok)


def at_first(da: xr.DataArray, hit: xr.DataArray, dim: str = "step") -> xr.DataArray:
    """`da` at the first `dim` where `hit` is True (NaN where it never is)."""
    return da.broadcast_like(hit).isel({dim: hit.argmax(dim)}).drop_vars(dim).where(hit.any(dim))


def spectral_density(ds: xr.Dataset, grid, sigma: float | None = None, chunk: int = 512) -> xr.DataArray:
    """The eigenvalue density on `grid` (eigenvalues [g], dim `eigenvalue`) from the
    quadrature a `spectral_density` probe recorded (`spectrum_nodes`, `spectrum_weights`
    [..., spectrum_start, spectrum_node]): mean_s sum_i w[s, i] N(t; theta[s, i], sigma^2)
    (Lin, Saad & Yang 2016), for every run and step at once; NaN where the probe did not
    measure. sigma: the Gaussian width in eigenvalues, None for two grid spacings.
    [..., eigenvalue]; `chunk` records at a time bound the memory."""
    t = np.asarray(grid, dtype=float)
    sigma = 2 * (t[-1] - t[0]) / (len(t) - 1) if sigma is None else float(sigma)

    def density(nodes, weights):
        lead, flat = nodes.shape[:-2], nodes.reshape(-1, *nodes.shape[-2:])
        w, out = weights.reshape(flat.shape), np.empty((flat.shape[0], len(t)))
        for i in range(0, flat.shape[0], chunk):
            z = (t - flat[i:i + chunk, ..., None]) / sigma
            bumps = np.exp(-0.5 * z * z) / (sigma * np.sqrt(2 * np.pi))
            out[i:i + chunk] = np.mean(np.sum(w[i:i + chunk, ..., None] * bumps, axis=-2), axis=-2)
        return out.reshape(*lead, len(t))

    core = ["spectrum_start", "spectrum_node"]
    da = xr.apply_ufunc(density, ds.spectrum_nodes, ds.spectrum_weights, input_core_dims=[core, core],
                        output_core_dims=[["eigenvalue"]])
    return da.assign_coords(eigenvalue=t).rename("spectral_density")
