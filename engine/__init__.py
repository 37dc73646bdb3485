"""A JAX engine for simulating how neural networks train (see README.md).

On a CPU, XLA runs the small operations of one device on one core, so a sweep of tiny
runs would leave the other cores idle. When this package is imported before JAX, it
asks XLA for one host device per available core (the run axis of a sweep is sharded
over them; measured ~1.9x on 2 cores for tiny runs, see README). This touches only the
host platform: accelerators are unaffected. Set ENGINE_CPU_DEVICES=N to choose N, or
ENGINE_CPU_DEVICES=0 to leave XLA_FLAGS alone; a flag already in XLA_FLAGS wins.
"""
import os as _os
import sys as _sys


def _cpu_devices() -> int:
    wanted = _os.environ.get("ENGINE_CPU_DEVICES", "auto")
    if wanted != "auto":
        return int(wanted)
    try:
        return len(_os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return _os.cpu_count() or 1


if "jax" not in _sys.modules and "xla_force_host_platform_device_count" not in _os.environ.get("XLA_FLAGS", ""):
    _n = _cpu_devices()
    if _n > 1:
        _os.environ["XLA_FLAGS"] = (_os.environ.get("XLA_FLAGS", "") +
                                    f" --xla_force_host_platform_device_count={_n}").strip()
