"""engine.export: a sweep written as TensorBoard runs and read back from the event files."""
import struct

import numpy as np
import pytest

from engine import export, probes, sweep
from engine.errors import ConfigError

pytest.importorskip("tensorboardX")
from tensorboardX.proto import event_pb2, plugin_hparams_pb2  # noqa: E402


def read_events(folder):
    """Every Event of the event files in `folder` (TFRecord framing: length, its crc,
    the record, its crc)."""
    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        raw = path.read_bytes()
        at = 0
        while at < len(raw):
            (n,) = struct.unpack("<Q", raw[at:at + 8])
            events.append(event_pb2.Event.FromString(raw[at + 12:at + 12 + n]))
            at += 12 + n + 4
    return events


def scalars(events) -> dict:
    """{tag: {step: value}}"""
    out = {}
    for e in events:
        for v in e.summary.value:
            if v.WhichOneof("value") == "simple_value":
                out.setdefault(v.tag, {})[e.step] = v.simple_value
    return out


def hparams_of(events) -> dict:
    for e in events:
        for v in e.summary.value:
            if v.tag == "_hparams_/session_start_info":
                data = plugin_hparams_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                return {k: (h.number_value if h.HasField("number_value") else h.string_value)
                        for k, h in data.session_start_info.hparams.items()}
    return {}


def test_a_tensorboard_log_holds_one_run_per_member_with_every_recorded_step(tiny_sim, tmp_path):
    # the parameter norm at its own cadence: NaN at every other record, left out of the log
    sim = tiny_sim(steps=80, every=20, probes=("loss", "relative_change_layer", probes.every(40, "param_norm")))
    ds = sweep.sweep(sim, grid={"lr": [0.05, 0.1]}, seeds=2, progress=False, name="tiny")
    out = export.tensorboard(ds, tmp_path)
    assert out["skipped"] == []
    folders = sorted(p.name for p in (tmp_path / "tiny").iterdir())
    assert folders == ["seed=0,lr=0.05", "seed=0,lr=0.1", "seed=1,lr=0.05", "seed=1,lr=0.1"]
    for member in export.members(ds):
        events = read_events(tmp_path / "tiny" / export.member_name(member))
        got = scalars(events)
        row = ds.sel(member)
        assert got["loss"] == {s: pytest.approx(float(v), rel=1e-7) for s, v in
                               zip(row.step.values.tolist(), row.loss.values.astype(np.float32))}
        assert sorted(got["param_norm"]) == [0, 40, 80]
        assert got["param_norm"][40] == pytest.approx(float(row.param_norm.sel(step=40)), rel=1e-6)
        for layer in row.layer.values.tolist():
            series = got[f"relative_change_layer/layer_{layer}"]
            assert series[80] == pytest.approx(float(row.relative_change_layer.sel(step=80, layer=layer)), rel=1e-6)
        assert got["final/diverged"] == {80: 0.0}
        hp = hparams_of(events)
        assert hp["lr"] == pytest.approx(member["lr"]) and hp["seed"] == member["seed"]
        assert hp["steps"] == 80 and hp["optimizer"] == "gd"


def test_export_refuses_what_is_not_a_sweep(tmp_path):
    import xarray as xr
    with pytest.raises(ConfigError, match="ds:"):
        export.tensorboard(xr.Dataset({"x": ("step", [1.0])}), tmp_path)


def test_an_offline_wandb_export_writes_one_run_per_member(tiny_sim, tmp_path, monkeypatch):
    """Only where wandb is installed (the `track` extra; CI installs `test` only). The
    offline .wandb file is binary; its tags and the group must be in it."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sim = tiny_sim(steps=40, every=20, probes=("loss",))
    ds = sweep.sweep(sim, grid={"lr": [0.05, 0.1]}, seeds=1, progress=False, name="tiny")
    out = export.wandb(ds, tmp_path, project="test")
    files = sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(out["runs"]) == len(files) == 2
    for f in files:
        raw = f.read_bytes()
        assert b"tiny" in raw and b"loss" in raw and b"final" not in raw
