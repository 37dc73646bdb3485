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


def test_goals_are_judged_both_ways():
    from benchmarks.__main__ import judge
    base = {"compile_s": 3.0, "strategy": "auto->vmap", "baseline": "loop"}
    met, missed = judge([{**base, "name": "phase_sweep_w1000", "speedup": 12.0},
                         {**base, "name": "x", "baseline": "bare_sweep", "probe_cost": 3.0, "compile_s": 40.0}])
    assert met["goal_met"] and met["goal_ratio"] == 1.2 and met["compile_goal_met"]
    assert not missed["goal_met"] and missed["goal_ratio"] == 2.0 and not missed["compile_goal_met"]
