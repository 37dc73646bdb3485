"""The benchmark record, the verdicts on its goal, and the README's tables.

A `Record` is one comparison of the engine with a baseline on one workload. It carries
what was measured and what it was measured on as fields (workload, requested and picked
strategy, width or layers or network, probe), and the goal of the performance issue its
workload attached to it, if any (`Goal`). `judge` and `explain` fill in the verdicts;
`to_json` / `from_json` flatten it to and from the JSON a results file holds; nothing
here parses a name back apart. No JAX: a saved results file is read on any machine.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple


class Goal(NamedTuple):
    """A target of the performance issue: `field op target`, e.g. speedup >= 10.0."""
    field: str
    op: str  # ">=" or "<="
    target: float

    def __str__(self) -> str:
        return f"{self.field} {self.op} {self.target}"

    def met(self, value: float) -> bool:
        return bool(value >= self.target if self.op == ">=" else value <= self.target)


COMPILE_GOAL = Goal("compile_s", "<=", 30.0)  # every record


@dataclass(frozen=True)
class Record:
    """One result: the engine's run-steps/s against `baseline`'s on one workload.

    workload: "phase_sweep", "digits_mlp", "batching", "hvp", "tiny_eos", "digits_eos",
    "adam_curvature" or "scaling"; requested: the strategy asked for ("auto", "vmap",
    "map"; for "hvp" the HVP mode timed), None for the sweep's default; picked: what the
    sweep ran ("vmap", "map(batch=b)"), None where no sweep ran; width: of a two-layer
    ReLU; layers: "64-200-200-10"; network: the network's name shared by the workloads
    that train it ("mlp_64-200-200-10_tanh_digits"); probe and every: the probe measured
    and its interval in steps; devices: the devices the run was spread over; extra:
    workload-specific measurements ({"grad_us": ..., "xla_flops_ratio": ...}).
    peak_memory_mb: the sweep's compiled footprint where known, otherwise the process's
    (`process_peak_rss_mb`). The last five fields are verdicts, set by `judge`/`explain`.
    """
    workload: str
    runs: int
    steps: int
    engine_run_steps_per_s: float
    baseline: str
    baseline_run_steps_per_s: float
    speedup: float
    gflops: float
    gemm_peak_gflops: float
    peak_fraction: float
    compile_s: float
    peak_memory_mb: float
    process_peak_rss_mb: float
    device: str
    devices: int
    requested: str | None = None
    picked: str | None = None
    width: int | None = None
    layers: str | None = None
    network: str | None = None
    probe: str | None = None
    every: int | None = None
    hvps_per_warm_probe: float | None = None
    probe_cost: float | None = None
    hvp_over_grad: float | None = None
    extra: dict = field(default_factory=dict)
    goal: Goal | None = None
    compile_goal_met: bool | None = None
    goal_met: bool | None = None
    goal_ratio: float | None = None
    predicted_probe_cost: float | None = None
    limit: str | None = None

    @property
    def name(self) -> str:
        """workload, then w<width>, the layers or the network, then the probe and its
        interval: phase_sweep_w4000, hvp_mlp_1-100-1_tanh_chebyshev,
        tiny_eos_1-100-1_sharpness_every_10."""
        subject = f"w{self.width}" if self.width is not None else self.layers or self.network
        probe = [self.probe, f"every_{self.every}"] if self.probe else []
        return "_".join([self.workload, subject, *probe])

    @property
    def strategy(self) -> str:
        """Readable: "auto->map(batch=1)", or the one of the two that is set."""
        return "->".join(s for s in (self.requested, self.picked) if s)


_GOAL_KEYS = ("goal_field", "goal_op", "goal_target")
_FIELDS = tuple(f.name for f in dataclasses.fields(Record) if f.name not in ("extra", "goal"))


def to_json(r: Record) -> dict:
    """A flat object: `name`, `strategy`, then the fields that are set in their order,
    `extra`'s keys in its place and the goal in its, both readable (`goal`:
    "speedup >= 10.0") and as `goal_field`, `goal_op`, `goal_target`."""
    out = {"name": r.name, "strategy": r.strategy}
    for f in dataclasses.fields(r):
        value = getattr(r, f.name)
        if f.name == "extra":
            out.update(value)
        elif f.name == "goal" and value is not None:
            out.update(goal=str(value), **dict(zip(_GOAL_KEYS, value)))
        else:
            out[f.name] = value
    return {k: v for k, v in out.items() if v is not None}


def from_json(obj: dict) -> Record:
    """The inverse of `to_json`; keys that are not fields go back into `extra`."""
    goal = Goal(*(obj[k] for k in _GOAL_KEYS)) if _GOAL_KEYS[0] in obj else None
    derived = {"name", "strategy", "goal", *_GOAL_KEYS}
    return Record(**{k: v for k, v in obj.items() if k in _FIELDS}, goal=goal,
                  extra={k: v for k, v in obj.items() if k not in {*_FIELDS, *derived}})


def judge(records: list[Record]) -> list[Record]:
    """Each record's verdict on its own goal (`goal_met`, `goal_ratio`: measured / target,
    rounded to 3) and on the compile-time goal (<= 30 s) that every record carries."""
    def verdict(r: Record) -> Record:
        r = dataclasses.replace(r, compile_goal_met=COMPILE_GOAL.met(r.compile_s))
        if r.goal is None:
            return r
        value = getattr(r, r.goal.field)
        return dataclasses.replace(r, goal_met=r.goal.met(value), goal_ratio=round(value / r.goal.target, 3))
    return [verdict(r) for r in records]


IN_SOLVE = "forward_over_reverse_fixed_params"  # the HVP records timed as inside one Lanczos solve


def explain(records: list[Record]) -> list[Record]:
    """`limit` for each missed goal, from numbers measured in this same run: a probe's
    cost is predicted from its products per measurement and the HVP's cost inside a
    solve on that network; a lone HVP's from XLA's own counts for the two programs."""
    in_solve = {r.network: r.hvp_over_grad for r in records if r.workload == "hvp" and r.requested == IN_SOLVE}
    return [dataclasses.replace(r, **_limit(r, in_solve)) if r.goal_met is False else r for r in records]


def _limit(r: Record, in_solve: dict) -> dict:
    if r.goal.field == "probe_cost" and r.hvps_per_warm_probe and r.network in in_solve:
        c = in_solve[r.network]
        pred = 1 + r.hvps_per_warm_probe * c / r.every
        return dict(predicted_probe_cost=round(pred, 2),
                    limit=f"{r.hvps_per_warm_probe} HVPs per probe every {r.every} steps at {c} gradients "
                          f"each (measured inside a solve) predict {pred:.2f}x the bare sweep; measured "
                          f"{r.probe_cost}x. 1.5x needs <= {0.5 * r.every / c:.1f} HVPs per probe.")
    if r.goal.field == "speedup":
        per_core = r.devices / r.engine_run_steps_per_s * 1e6
        return dict(limit=f"the engine runs {r.gflops} GFLOP/s ({100 * r.peak_fraction:.1f}% of the GEMM "
                          f"peak), {per_core:.1f} us per run-step on each of {r.devices} cores; "
                          f"the baseline {1e6 / r.baseline_run_steps_per_s:.1f} us per step. The ratio is "
                          f"bounded by how much of the baseline's step is dispatch, not work.")
    if "xla_flops_ratio" in r.extra:
        x = r.extra
        return dict(limit=f"XLA counts {x['xla_flops_ratio']}x the gradient's flops, {x['xla_bytes_ratio']}x "
                          f"its bytes and {x['hlo_ops_ratio']}x its HLO instructions for the timed HVP loop; "
                          f"measured {r.hvp_over_grad}x. One gradient takes {x['grad_us']} us = "
                          f"{x['grad_gflops']} GFLOP/s ({100 * x['grad_gflops'] / r.gemm_peak_gflops:.1f}% "
                          f"of the GEMM peak): per-op overhead, not arithmetic, sets the time, and the HVP "
                          f"loop also moves theta and renormalizes v each step.")
    return {}


COLUMNS = ("name", "runs", "steps", "strategy", "engine_run_steps_per_s", "baseline",
           "baseline_run_steps_per_s", "speedup", "peak_fraction", "compile_s")
NOTES = ("hvp_over_grad", "probe_cost", "hvps_per_warm_probe", "peak_memory_mb")


def _notes(r: Record) -> str:
    goal = [f"goal {r.goal}: {'met' if r.goal_met else 'MISSED'}"] if r.goal else []
    return ", ".join([f"{k} {getattr(r, k)}" for k in NOTES if getattr(r, k) is not None] + goal)


def markdown_table(records: list[Record]) -> str:
    """The README's tables of a results file: every record but the batching ones, then
    the batching records pivoted (thousands of run-steps/s per width and strategy)."""
    rows = ["| " + " | ".join(COLUMNS) + " |  |", "|" + "---|" * (len(COLUMNS) + 1)]
    rows += ["| " + " | ".join(str(getattr(r, c)) for c in COLUMNS) + f" | {_notes(r)} |" for r in records
             if r.workload != "batching"]
    batching = [r for r in records if r.workload == "batching"]
    if batching:
        widths = sorted({r.width for r in batching})
        label = lambda r: "auto (picked)" if r.requested == "auto" else r.picked
        strategies = ["vmap"] + [label(r) for r in batching if r.width == widths[0]]
        rows += ["", "Batching tiny runs (two-layer ReLU, 3 points, 256 runs; thousands of run-steps/s):", "",
                 "| width | " + " | ".join(strategies) + " |", "|" + "---|" * (len(strategies) + 1)]
        cell = lambda r: f"{r.engine_run_steps_per_s / 1e3:.0f}" + (f" ({r.picked})" if r.requested == "auto" else "")
        for w in widths:
            rs = [r for r in batching if r.width == w]
            cells = [f"{rs[0].baseline_run_steps_per_s / 1e3:.0f}"] + [cell(r) for r in rs]
            rows.append(f"| {w} | " + " | ".join(cells) + " |")
    missed = [f"- `{r.name}` ({r.strategy}): {r.limit}" for r in records if r.limit]
    if missed:
        rows += ["", "What limits the missed goals (computed from the same run):", ""] + missed
    return "\n".join(rows) + f"\n\nDevice: {records[0].device}; float32 GEMM peak " \
        f"{records[0].gemm_peak_gflops} GFLOP/s measured in the same process."
