import json
import subprocess
import sys

FIELDS = {"name", "runs", "steps", "engine_run_steps_per_s", "baseline", "baseline_run_steps_per_s",
          "speedup", "gflops", "gemm_peak_gflops", "peak_fraction", "compile_s", "peak_memory_mb", "device"}


def test_quick_benchmark_prints_machine_readable_records(tmp_path):
    """CI runs the quick suite so it cannot rot; no time is asserted."""
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--json", str(tmp_path / "b.json")],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    records = json.loads(out.stdout)
    assert records == json.loads((tmp_path / "b.json").read_text())
    assert {r["name"] for r in records} >= {"phase_sweep_w1000", "digits_mlp_64-200-200-10"}
    for r in records:
        assert FIELDS <= set(r)
        assert r["engine_run_steps_per_s"] > 0 and r["baseline_run_steps_per_s"] > 0
    # goals are attached by the workloads that define them: phase_sweep's to its "auto" record only
    assert sorted(r.get("goal", "") for r in records if r["name"] == "phase_sweep_w1000") == \
        ["", "", "", "speedup >= 10.0"]


def test_goals_are_judged_both_ways():
    from benchmarks.report import Goal, Record, judge
    base = dict(workload="phase_sweep", runs=256, steps=400, engine_run_steps_per_s=1.0, baseline="loop",
                baseline_run_steps_per_s=1.0, speedup=1.0, gflops=0.0, gemm_peak_gflops=100.0, peak_fraction=0.0,
                compile_s=3.0, peak_memory_mb=1.0, process_peak_rss_mb=1.0, device="cpu:cpu x2", devices=2,
                requested="auto", picked="vmap")
    met, missed = judge([Record(**{**base, "speedup": 12.0}, width=1000, goal=Goal("speedup", ">=", 10.0)),
                         Record(**{**base, "workload": "tiny_eos", "baseline": "bare_sweep", "compile_s": 40.0},
                                probe_cost=3.0, goal=Goal("probe_cost", "<=", 1.5))])
    assert met.goal_met and met.goal_ratio == 1.2 and met.compile_goal_met
    assert not missed.goal_met and missed.goal_ratio == 2.0 and not missed.compile_goal_met


def test_records_round_trip_through_json():
    """A results file is read back into the same records; name and strategy come from fields."""
    from benchmarks.report import Goal, Record, from_json, judge, to_json
    r, = judge([Record("tiny_eos", 256, 2000, 1e5, "bare_sweep", 5e5, 0.2, 2.4, 175.0, 0.014, 9.6, 2.6, 1265.0,
                       "cpu:cpu x2", 2, picked="map(batch=2)", layers="1-100-1", probe="sharpness", every=10,
                       probe_cost=4.79, goal=Goal("probe_cost", "<=", 1.5), extra={"grad_us": 1.8})])
    obj = json.loads(json.dumps(to_json(r)))
    assert obj["name"] == "tiny_eos_1-100-1_sharpness_every_10" and obj["strategy"] == "map(batch=2)"
    assert obj["goal"] == "probe_cost <= 1.5" and obj["grad_us"] == 1.8 and not obj["goal_met"]
    assert from_json(obj) == r


def test_the_device_check_dry_run_writes_its_documented_schema(tmp_path):
    """`python -m benchmarks --device-check` on this CPU with tiny sizes: every field the
    module docstring documents is there; the numbers are not judged."""
    from benchmarks import device_check
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--device-check", "--dry-run", "--json",
                          str(tmp_path / "d.json")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "d.json").read_text())
    assert result == json.loads(out.stdout) and result["schema"] == "engine.device_check/1" and result["dry_run"]
    doc = device_check.__doc__
    for field in (*result["device"], *result["precision"], *result["peaks"], *result["hvp"][0],
                  *result["workloads"][0], *result["goals"][0]):
        assert field in doc, f"{field} is not documented in benchmarks/device_check.py"
    assert [w["name"] for w in result["workloads"]] == ["phase_sweep", "tiny_eos", "digits"]
    eos = result["workloads"][1]
    assert eos["hvps_per_step"] > 0 and eos["speedup"] > 0 and 0 < eos["roofline_fraction"]
    assert not result["precision"]["tf32_in_force"]  # a CPU computes float32 products in float32
