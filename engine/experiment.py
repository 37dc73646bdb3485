"""The experiment contract, shared by every module in `experiments/` (README,
"Experiments"):

    python -m experiments.<name> [--preset quick|paper] [--out DIR] [--seeds N]
                                 [--set key=value ...] [--x64] [--no-progress] [--distributed]
    python -m experiments.<name> --resume DIR [--distributed]

An experiment module defines
- `NAME` and `PRESETS` ({"quick": {...}, "paper": {...}}: the full config as plain data);
- optionally `RANGES` ({field: `engine.errors.Range`}: the values a field may take,
  checked before anything is written or compiled);
- `run_sweep(config, **options) -> xarray.Dataset`, which passes `options` (progress,
  checkpoint folder) on to each `engine.sweep.sweep` it runs, each sweep with its own
  `name` when there are several;
- `summarize(ds, config) -> dict`: the numbers the experiment exists for and each
  claim's verdict under "claims";
- `figures(ds, config, out_dir) -> [paths]`.

`run` checks the config, runs the sweeps, and writes into DIR: results.nc,
config.json, summary.json and the figures, which are drawn from the saved results.
While the sweeps run they checkpoint into DIR/checkpoint/<sweep name> after every
segment (`engine.checkpoint`); `--resume DIR` continues a run that was killed, with the
config saved beside its checkpoint, and gives the results an uninterrupted run would
have given. Every file is written atomically (`engine.checkpoint.replacing`), and a
previous run's files in DIR are replaced only once the new results exist. `--x64`
computes in float64 for the whole run (`engine.sweep.precision`), restored after it.

`--distributed` first calls `jax.distributed.initialize()` (`engine.multihost.initialize`:
SLURM, Open MPI and Cloud TPU set it up themselves), then the sweeps run over the devices
of every process. Every process runs the same command; process 0 alone writes DIR's
files (results.nc, config.json, summary.json, figures); each process checkpoints into
DIR/checkpoint/<sweep>/process-<p>, and a process that does not see process 0's
DIR/checkpoint/config.json writes its own, so `--resume DIR` works whether or not DIR is
on a file system they share. The other
processes return the same summary, without figures.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import json
import time
from pathlib import Path

import numpy as np

from engine.errors import FINITE, ConfigError, check_ranges


def parse_set(items, config: dict) -> dict:
    """Apply `--set key=value` overrides; values are Python literals (numbers, lists,
    strings). ConfigError for a malformed item, an unknown key, or a value of another
    kind than the preset's (`_like`); the module checks the rest when it builds."""
    config = dict(config)
    for item in items or ():
        if "=" not in item:
            raise ConfigError("--set", f"{item!r} has no '='", "write --set key=value, e.g. --set steps=500")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key not in config:
            raise ConfigError("--set", f"unknown key {key!r}", f"use one of {', '.join(sorted(config))}")
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip()
        config[key] = _like(key, raw, value, config[key])
    return config


def _like(key: str, raw: str, value, old):
    """`value` checked against the preset's `old`: a number stays a number, an integer
    (a count: steps, seeds, widths ...) stays a whole number >= 1, a list stays a
    non-empty list whose items have the preset items' kind (number or name)."""
    field = f"--set {key}"
    if old in FINITE:
        if value not in FINITE:
            raise ConfigError(field, f"got {raw!r}, expected a number like {old!r}", f"write --set {key}={old!r}")
        if isinstance(old, (int, np.integer)):
            if not float(value).is_integer() or value < 1:
                raise ConfigError(field, f"got {raw!r}, but {key} counts something",
                                  f"use a whole number >= 1, like {old!r}")
            return int(value)
        return float(value)
    if isinstance(old, (list, tuple)):
        old = [x.item() if isinstance(x, np.generic) else x for x in old]  # shown in messages
        if not isinstance(value, (list, tuple)):
            raise ConfigError(field, f"got {raw!r}, expected a list like {list(old)!r}",
                              f"write --set '{key}={list(old)!r}'")
        if not value:
            raise ConfigError(field, "the list is empty", f"give at least one value, like {list(old)[:3]!r}")
        for kind, test in (("numbers", FINITE.__contains__), ("names", lambda x: isinstance(x, str))):
            if old and all(map(test, old)) and not all(map(test, value)):
                raise ConfigError(field, f"got {raw!r}, expected {kind} like {list(old)[:3]!r}",
                                  f"write --set '{key}={list(old)[:3]!r}'")
        return list(value)
    return value


def _write_json(path: Path, obj) -> None:
    from engine.checkpoint import replacing
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")


def _jsonable(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def run(module, config: dict, out_dir, progress: bool | None = None, resume: bool = False,
        x64: bool = False) -> dict:
    """Run `module` with `config` and write the contract's files into `out_dir`;
    returns the summary. resume: continue from the checkpoint in `out_dir/checkpoint`
    (otherwise a stale one there is discarded); x64: compute in float64."""
    import shutil

    import jax
    from engine import checkpoint, multihost, sweep

    check_ranges(config, getattr(module, "RANGES", {}))
    lead = jax.process_index() == 0  # over several processes, the one that writes DIR's files
    several = jax.process_count() > 1
    out = Path(out_dir)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "checkpoint"
    if lead:
        checkpoint.remove_stale_temporaries(out, recursive=False)
        if not resume:
            shutil.rmtree(saved, ignore_errors=True)
    if several:
        if not resume and not lead:  # its own stale files, should its disk not be shared
            for mine in saved.glob(f"*/process-{jax.process_index()}"):
                shutil.rmtree(mine, ignore_errors=True)
            (saved / "config.json").unlink(missing_ok=True)
        multihost.barrier("checkpoint folder ready")
    saved.mkdir(exist_ok=True)
    with sweep.precision(True if x64 else None):
        device = jax.devices()[0]
        meta = {"experiment": module.NAME, "config": config, "versions": sweep.versions(),
                "x64": bool(jax.config.jax_enable_x64), "device": f"{device.platform}:{device.device_kind}",
                "device_count": jax.device_count()}
        # While it runs, the config lives beside the checkpoint: a previous run's
        # config.json, results.nc and summary.json stay together until this one has results.
        if lead:
            _write_json(saved / "config.json", meta)
        if several:  # a process that does not see process 0's copy keeps its own (for --resume)
            multihost.barrier("config written")
            if not (saved / "config.json").exists():
                _write_json(saved / "config.json", meta)
        t0 = time.perf_counter()
        try:
            ds = module.run_sweep(config, progress=progress, checkpoint=saved)
        except ConfigError:
            if lead:
                shutil.rmtree(saved, ignore_errors=True)
                if created:  # a config that never ran leaves no output folder behind
                    with contextlib.suppress(OSError):
                        out.rmdir()
            raise
    elapsed = time.perf_counter() - t0
    if lead:
        for stale in ("summary.json", "results.nc"):
            (out / stale).unlink(missing_ok=True)
        _write_json(out / "config.json", meta)
        sweep.save(ds, out / "results.nc")
    if several:  # every checkpoint is kept until process 0 has written the results
        multihost.barrier("results written")
        for mine in saved.glob(f"*/process-{jax.process_index()}"):
            shutil.rmtree(mine, ignore_errors=True)
    if not lead:  # the same Dataset as process 0's: the same numbers, no files
        return {"experiment": module.NAME, "seconds": round(elapsed, 2), **module.summarize(ds, config),
                "figures": []}
    shutil.rmtree(saved, ignore_errors=True)  # the results are safe: the checkpoint is spent
    ds = sweep.load(out / "results.nc")  # figures and summary come from the saved file
    summary = {"experiment": module.NAME, "seconds": round(elapsed, 2), **module.summarize(ds, config)}
    _write_json(out / "summary.json", summary)
    summary["figures"] = [str(p) for p in module.figures(ds, config, out)]
    return summary


def _resume(module, args) -> dict:
    """--resume DIR: the config, float width and experiment of the run that was killed
    (DIR/checkpoint/config.json), or of the finished run in DIR/config.json."""
    out = Path(args.resume)
    if args.set or args.seeds is not None or args.x64 or args.out not in (None, args.resume):
        raise ConfigError("--resume", "a resumed run takes its config from DIR/config.json",
                          "drop --set, --seeds, --x64 and --out")
    running = out / "checkpoint" / "config.json"
    try:
        saved = json.loads((running if running.exists() else out / "config.json").read_text())
    except (OSError, ValueError):
        raise ConfigError("--resume", f"no readable config.json in {out}",
                          "give the --out folder of the run to continue") from None
    if saved.get("experiment") != module.NAME:
        raise ConfigError("--resume", f"{out} holds a run of {saved.get('experiment')!r}, not {module.NAME!r}",
                          f"use python -m experiments.{saved.get('experiment')} --resume {out}")
    summary = run(module, saved["config"], out, progress=False if args.no_progress else None, resume=True,
                  x64=bool(saved.get("x64")))
    _print(summary)
    return summary


def _print(summary: dict) -> None:
    import jax
    if jax.process_index() == 0:
        print(json.dumps(summary, indent=2, default=_jsonable))


def main(module, argv=None) -> dict:
    """The command line of an experiment module (see the module docstring)."""
    p = argparse.ArgumentParser(prog=f"python -m experiments.{module.NAME}",
                                description=(module.__doc__ or "").strip().splitlines()[0])
    p.add_argument("--preset", default="quick", help=f"one of {', '.join(module.PRESETS)} (default quick)")
    p.add_argument("--out", default=None, help=f"output folder (default runs/{module.NAME})")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (overrides the preset)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset value, e.g. --set steps=500 (repeatable)")
    p.add_argument("--x64", action="store_true", help="compute in float64")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the killed run in DIR with the config saved there")
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first and sweep over the devices of every process "
                        "(SLURM, Open MPI, Cloud TPU; elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
                        "JAX_PROCESS_ID)")
    args = p.parse_args(argv)
    if args.distributed:
        from engine import multihost
        multihost.initialize()
    try:
        if args.resume is not None:
            return _resume(module, args)
        if args.preset not in module.PRESETS:
            raise ConfigError("--preset", f"unknown preset {args.preset!r}",
                              f"use one of {', '.join(module.PRESETS)}")
        config = parse_set(args.set, module.PRESETS[args.preset])
        if args.seeds is not None:
            if args.seeds < 1:
                raise ConfigError("--seeds", f"got {args.seeds}", "use a number of seeds >= 1")
            config["seeds"] = args.seeds
        summary = run(module, config, args.out or f"runs/{module.NAME}",
                      progress=False if args.no_progress else None, x64=args.x64)
    except ConfigError as e:
        p.exit(2, f"error: {e}\n")
    _print(summary)
    return summary
