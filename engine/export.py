"""A saved sweep, written where researchers look at runs: TensorBoard and Weights & Biases.

One run per member of the sweep (a seed x hyperparameter combination), grouped by
sweep, its hyperparameters attached, every recorded step kept (no down-sampling). The
netCDF file written by `engine.sweep.save` stays the exact record: these are views of
it for dashboards. Both writers are optional extras (`pip install -e '.[track]'`).

What becomes a scalar series: every variable with a `step` dimension, one series per
member, NaN records (a probe at its own cadence, see `engine.probes.every`) left out.
A variable with one more dimension of at most `max_series` entries (`eigen`, `layer`)
gives one series per entry, tagged `name/dim_value`; larger ones (predictions, neuron
weights, spectral densities) are not scalars and are skipped, by name, in the return
value. Per-run variables without `step` (`diverged`, `converged_step`, ...) go with the
hyperparameters as the run's final metrics.
"""
from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import numpy as np
import xarray as xr

from engine.errors import ConfigError


def _dataset(ds_or_path) -> xr.Dataset:
    if isinstance(ds_or_path, xr.Dataset):
        return ds_or_path
    from engine import sweep
    return sweep.load(ds_or_path)


def members(ds: xr.Dataset) -> list[dict]:
    """The sweep's members, each {dim: value} over the run dims (those of `diverged`:
    seed, then the grid), in the dataset's order."""
    dims = ds["diverged"].dims
    values = [ds[d].values.tolist() for d in dims]
    return [dict(zip(dims, combo)) for combo in itertools.product(*values)]


def member_name(member: dict) -> str:
    """'seed=0,lr=0.05': the member's run name (a folder name on disk)."""
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in member.items())


def series(ds: xr.Dataset, max_series: int = 32) -> tuple[dict, list[str]]:
    """({tag: DataArray over (run dims..., step)}, [skipped variable names])."""
    tags, skipped = {}, []
    run_dims = set(ds["diverged"].dims)
    for name, da in ds.data_vars.items():
        if "step" not in da.dims:
            continue
        extra = [d for d in da.dims if d not in run_dims and d != "step"]
        if not extra:
            tags[name] = da
        elif len(extra) == 1 and da.sizes[extra[0]] <= max_series:
            for v in da[extra[0]].values.tolist():
                tags[f"{name}/{extra[0]}_{v}"] = da.sel({extra[0]: v})
        else:
            skipped.append(name)
    return tags, skipped


def finals(ds: xr.Dataset, member: dict) -> dict:
    """The member's per-run variables (no `step` dim) as plain numbers."""
    out = {}
    for name, da in ds.data_vars.items():
        if "step" not in da.dims and set(da.dims) <= set(member):
            out[name] = da.sel(member).item()
    return {k: float(v) if isinstance(v, (bool, np.bool_)) else v for k, v in out.items()}


def _points(da: xr.DataArray, member: dict):
    """(step, value) of one member's series, NaN records left out."""
    row = da.sel(member)
    for step, value in zip(row["step"].values.tolist(), row.values.tolist()):
        if not (isinstance(value, float) and math.isnan(value)):
            yield int(step), float(value)


def _plan(ds_or_path, name, max_series):
    ds = _dataset(ds_or_path)
    if "diverged" not in ds or "step" not in ds.dims:
        raise ConfigError("ds", "not a sweep's results (no `diverged` variable or no `step` dim)",
                          "pass what engine.sweep.sweep returned or the path engine.sweep.save wrote")
    config = json.loads(ds.attrs.get("config", "{}"))
    tags, skipped = series(ds, max_series)
    return ds, name or config.get("name", "sweep"), config, tags, skipped


def tensorboard(ds_or_path, logdir, name: str | None = None, max_series: int = 32) -> dict:
    """Write TensorBoard event files: `logdir/NAME/MEMBER/events.*`, one run per member
    with its scalars at their recorded steps and its hyperparameters (the HParams tab;
    the per-run variables as its metrics). Needs tensorboardX. Returns {"runs": [run
    folders], "skipped": [variables not written]}."""
    try:
        from tensorboardX import SummaryWriter
        from tensorboardX.summary import hparams
    except ImportError as e:
        raise ConfigError("export.tensorboard", "tensorboardX is not installed",
                          "pip install -e '.[track]' (or pip install tensorboardX)") from e
    ds, name, config, tags, skipped = _plan(ds_or_path, name, max_series)
    runs = []
    for member in members(ds):
        folder = Path(logdir) / name / member_name(member)
        with SummaryWriter(logdir=os.fspath(folder), flush_secs=3600) as w:
            for tag, da in tags.items():
                for step, value in _points(da, member):
                    w.add_scalar(tag, value, step)
            final = {f"final/{k}": v for k, v in finals(ds, member).items()}
            for summary in hparams(_hparams(member, config), final):
                w.file_writer.add_summary(summary)
            for tag, value in final.items():
                w.add_scalar(tag, value, int(ds["step"].values[-1]))
        runs.append(folder)
    return {"runs": runs, "skipped": skipped}


def _hparams(member: dict, config: dict) -> dict:
    """The member's coordinates plus the sweep's fixed settings that are plain values."""
    fixed = {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool)) and k != "name"}
    return {**fixed, **{k: (float(v) if isinstance(v, float) else v) for k, v in member.items()}}


def wandb(ds_or_path, directory, project: str = "engine", name: str | None = None,
          max_series: int = 32) -> dict:
    """Write Weights & Biases runs in offline mode under `directory` (upload later with
    `wandb sync DIRECTORY/wandb/offline-run-*`): one run per member, `group` = the sweep
    name, `config` = its hyperparameters, its scalars logged at their recorded steps and
    the per-run variables in the run summary. Needs wandb. Returns {"runs": [run ids],
    "skipped": [...]}."""
    try:
        import wandb as wb
    except ImportError as e:
        raise ConfigError("export.wandb", "wandb is not installed",
                          "pip install -e '.[track]' (or pip install wandb)") from e
    ds, name, config, tags, skipped = _plan(ds_or_path, name, max_series)
    Path(directory).mkdir(parents=True, exist_ok=True)
    runs = []
    for member in members(ds):
        run = wb.init(project=project, group=name, name=f"{name}/{member_name(member)}", mode="offline",
                      dir=os.fspath(directory), config=_hparams(member, config), reinit="create_new")
        by_step: dict[int, dict] = {}
        for tag, da in tags.items():
            for step, value in _points(da, member):
                by_step.setdefault(step, {})[tag] = value
        for step in sorted(by_step):
            run.log(by_step[step], step=step)
        run.summary.update(finals(ds, member))
        runs.append(run.id)
        run.finish()
    return {"runs": runs, "skipped": skipped}
