"""python -m benchmarks [--quick] [--json FILE] [--only NAME ...] [--markdown FILE]
       python -m benchmarks --device-check [--dry-run] [--json FILE]

Prints one JSON list of records, each comparing the engine with a baseline run in the
same process on the same workload (ratios, because absolute times drift):

    name, runs, steps, strategy, engine_run_steps_per_s, baseline,
    baseline_run_steps_per_s, speedup, gflops, gemm_peak_gflops, peak_fraction,
    compile_s, peak_memory_mb, device

and the fields of `report.Record` they are flattened from (workload, requested, picked,
width, layers, network, ...). The workloads are in `workloads.py`, the baselines ("loop",
"scan", "eigsh_loop") in `baselines.py`, how a run becomes a record in `measure.py`, the
record, the verdicts on its goal and the README's tables in `report.py`. `--quick` shrinks runs and steps but runs the same code
paths; CI runs it so the suite cannot rot. `--markdown FILE` prints the README's tables
of a saved results file.
"""
from __future__ import annotations

import argparse
import json
import sys

from benchmarks.measure import gemm_peak_gflops
from benchmarks.report import Record, explain, from_json, judge, markdown_table, to_json
from benchmarks.workloads import WORKLOADS


def main(argv=None) -> list[Record]:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, same code paths (CI)")
    p.add_argument("--json", default=None, help="also write the records to this file")
    p.add_argument("--only", nargs="*", choices=sorted(WORKLOADS), help="run only these workloads")
    p.add_argument("--markdown", metavar="FILE", help="print the table of a saved results file and exit")
    p.add_argument("--device-check", action="store_true",
                   help="the accelerator check (benchmarks/device_check.py): writes results/<device>.json")
    p.add_argument("--dry-run", action="store_true", help="with --device-check: tiny sizes, for CI on a CPU")
    args = p.parse_args(argv)
    if args.device_check:
        from benchmarks import device_check
        device_check.main(args.dry_run, args.json)
        return []
    if args.markdown:
        with open(args.markdown) as f:
            print(markdown_table(explain(judge([from_json(r) for r in json.load(f)]))))
        return []
    peak = gemm_peak_gflops(1024 if args.quick else 2048)
    records = []
    for name in args.only or WORKLOADS:
        records.extend(WORKLOADS[name](args.quick, peak))
    records = explain(judge(records))
    text = json.dumps([to_json(r) for r in records], indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)
    return records


if __name__ == "__main__":
    main(sys.argv[1:])
