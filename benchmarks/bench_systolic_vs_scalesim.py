"""jaxrob's systolic-array cost model side by side with SCALE-Sim 3.0.0 (compute cycles, utilization, speed).

SCALE-Sim is not a jaxrob dependency.  Install it in its own environment (3.0.0 crashes
under numpy 2) and point ``--scalesim-python`` at it:

    python3 -m venv /work/scalesim-venv
    /work/scalesim-venv/bin/pip install scalesim==3.0.0 'numpy<2'
    .venv/bin/python benchmarks/bench_systolic_vs_scalesim.py            # full set
    .venv/bin/python benchmarks/bench_systolic_vs_scalesim.py --quick    # 3 layers
    # every layer of both networks; needs many cores: 1,639 SCALE-Sim process-seconds for these two
    # shapes on the H100 machine's CPU (3,433 for 32x32,32x128), 140 s of wall time on 13 processes
    python benchmarks/bench_systolic_vs_scalesim.py --layers all --shapes 64x64,128x128 --jobs 13

For every array shape and dataflow the script writes a SCALE-Sim config file, a topology
CSV (conv format: name, IFMAP H, IFMAP W, filter H, filter W, channels, filters, stride)
and a layout file, runs SCALE-Sim in a subprocess (Python API, traces off), and reads
``COMPUTE_REPORT.csv`` and ``DETAILED_ACCESS_REPORT.csv``.  The same layers are costed with
:func:`jaxrob.hw._systolic.systolic_cost`.  Checks (exit status 1 if one fails):

* cycles: ``jaxrob cycles - 1 == SCALE-Sim "Total Cycles"`` exactly (SCALE-Sim reports the
  index of the last busy cycle; its stall cycles are 0 with ``InterfaceBandwidth: CALC``);
* utilization: SCALE-Sim's "Overall Util %" is ``macs / (R C TotalCycles)``; ours is
  ``macs / (R C cycles)``, so they differ by the factor ``cycles / (cycles - 1)``: the check is
  ``|ours - theirs| <= theirs / (cycles - 1) + 1e-4`` (the report prints 4 decimals);
* SRAM ifmap and filter reads equal, ofmap writes equal in WS/IS and ``R + C`` more per fold in
  SCALE-Sim's OS (it counts the padded fold's shape once more; DETAILED_ACCESS_REPORT).

Layers (batch 1, 224 x 224 inputs) are a few of ResNet-50's and MobileNetV2's (default) or
all of them (``--layers all``: the 54 + 53 rows, of which 24 + 30 are distinct and simulated,
each in its own SCALE-Sim process; the network totals are then compared too), from
``jaxrob.hw._workload.resnet50`` / ``mobilenet_v2``, written by ``to_scalesim_topology``
(one row per layer = one of its ``groups`` GEMMs, IFMAP sizes cut so that SCALE-Sim's
``ceil((H - kh + s) / s)`` gives our output size).  A depthwise layer is ``C``
independent one-channel GEMMs (SCALE-Sim's ``DP`` names expand into ``C`` identical
layers), so we compare per GEMM; jaxrob's layer cost is ``groups`` times that.

Speed: SCALE-Sim's wall time per (shape, dataflow) run against jaxrob's jitted time for
the same layers, and jaxrob's vmapped throughput over many array shapes.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import default_out, environment, markdown_table, median_times, write_json  # noqa: E402
from jaxrob.hw._systolic import systolic_cost  # noqa: E402
from jaxrob.hw._workload import bert_base_layer, mobilenet_v2, resnet50, to_scalesim_topology  # noqa: E402

# Layers costed on both sides, by network and layer name (jaxrob.hw._workload.resnet50 / mobilenet_v2,
# batch 1, 224 x 224): ResNet-50 layer1.0.conv1 (1x1, 56x56, 64->64); MobileNetV2's stem (3x3/2,
# 3->32), block0.dw (depthwise 3x3 on 112x112, 32 channels), block12.expand (1x1, 14x14, 96->576),
# block12.dw (depthwise 3x3, 14x14, 576 channels), conv_last (1x1, 7x7, 320->1280).  SCALE-Sim steps
# through every cycle in Python (~1,000-2,000 cycles/s per process on the shared 2-core machine), so
# the set is kept to ~1.1 M simulated cycles over the 9 configurations; a larger ResNet-50 layer such as
# layer4.2.conv3 (1x1, 7x7, 512->2048) alone adds 0.6 M.
LAYERS = (("resnet50", "layer1.0.conv1"), ("mobilenet_v2", "conv_stem"),
          ("mobilenet_v2", "block0.dw"), ("mobilenet_v2", "block12.expand"), ("mobilenet_v2", "block12.dw"),
          ("mobilenet_v2", "conv_last"))
QUICK = (("resnet50", "layer1.0.conv1"), ("mobilenet_v2", "block0.dw"), ("mobilenet_v2", "block12.expand"))
SHAPES = ((32, 32), (16, 64), (128, 128))
DATAFLOWS = ("os", "ws", "is")

LAYOUT_HEADER = (
    "Layer name, IFMAP Height Intraline Factor, IFMAP Width Intraline Factor, Filter Height Intraline Factor, "
    "Filter Width Intraline Factor, Channel Intraline Factor, Num Filter Intraline Factor, "
    "IFMAP Height Intraline Order, IFMAP Width Intraline Order, Channel Intraline Order, "
    "IFMAP Height Interline Order, IFMAP Width Interline Order, Channel Interline Order, "
    "Num Filter Intraline Order, Channel Intraline Order, Filter Height Intraline Order, "
    "Filter Width Intraline Order, Num Filter Interline Order, Channel Interline Order, "
    "Filter Height Interline Order, Filter Width Interline Order,")

DRIVER = r"""
import json, sys, time
from scalesim.scale_sim import scalesim
cfg, topo, layout, out = sys.argv[1:5]
t0 = time.perf_counter()
s = scalesim(save_disk_space=True, verbose=False, config=cfg, topology=topo, layout=layout,
             input_type_gemm=False)
s.run_scale(top_path=out)
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def select_layers(names):
    """``(workload, infos)`` of the named layers, taken from jaxrob's architecture workloads."""
    nets = {"resnet50": resnet50(), "mobilenet_v2": mobilenet_v2()}
    parts, infos = [], []
    for net, layer in names:
        w, inf = nets[net]
        i = [x.name for x in inf].index(layer)
        parts.append(jax.tree.map(lambda a: a[i:i + 1], w))
        infos.append(inf[i]._replace(name=f"{net}.{layer}"))
    return jax.tree.map(lambda *a: jnp.concatenate(a), *parts), tuple(infos)


NETWORKS = {"resnet50": resnet50, "mobilenet_v2": mobilenet_v2, "bert_base": bert_base_layer}


def all_layers(networks=("resnet50", "mobilenet_v2")):
    """Every layer of the named networks: ``(workload, infos, rows, unique)``.

    ``rows[i]`` is the topology-CSV row of layer ``i`` (name field excluded); ``unique`` lists the
    indices of the first layer of each distinct row.  Repeated blocks (e.g. ResNet-50's
    ``layer3.1`` .. ``layer3.5``) are simulated once.
    """
    parts, infos = [], []
    for net in networks:
        w, inf = NETWORKS[net]()
        parts.append(w)
        infos += [x._replace(name=f"{net}.{x.name}") for x in inf]
    workload = jax.tree.map(lambda *a: jnp.concatenate(a), *parts)
    topo = to_scalesim_topology(workload, infos).strip().splitlines()[1:]
    rows = [tuple(x.strip() for x in r.split(",")[1:8]) for r in topo]
    first: dict = {}
    for i, r in enumerate(rows):
        first.setdefault(r, i)
    return workload, tuple(infos), rows, sorted(first.values())


def topology_subset(topology_csv: str, idx) -> str:
    """The header and the rows ``idx`` of a topology CSV."""
    lines = topology_csv.strip().splitlines()
    return "\n".join([lines[0]] + [lines[1 + i] for i in idx]) + "\n"


def write_layout(path: Path, topology_csv: str) -> None:
    """SCALE-Sim v3 layout CSV for the rows of a topology CSV (row-major ifmap lines, all filters per line).

    SCALE-Sim reads it but uses it only when ``IfmapCustomLayout``/``FilterCustomLayout`` are
    on; they are off here (the memory layout does not change the compute cycles).  The order
    columns follow the repository's ``layouts/conv_nets/resnet18.csv``.
    """
    lines = [LAYOUT_HEADER]
    for row in topology_csv.strip().splitlines()[1:]:
        name, h, w, kh, kw, cin, cout, s = [x.strip() for x in row.split(",")[:8]]
        lines.append(f"{name},1,{w},1,1,1,{cout},1,2,0,4,5,3,3,0,1,2,7,4,5,6,")
    path.write_text("\n".join(lines) + "\n")


def write_config(path: Path, run_name: str, rows: int, cols: int, dataflow: str, sram_kb: int) -> None:
    path.write_text(f"""[general]
run_name = {run_name}

[architecture_presets]
ArrayHeight: {rows}
ArrayWidth: {cols}
IfmapSramSzkB: {sram_kb}
FilterSramSzkB: {sram_kb}
OfmapSramSzkB: {sram_kb}
IfmapOffset: 0
FilterOffset: 10000000
OfmapOffset: 20000000
Bandwidth: 10
Dataflow: {dataflow}
MemoryBanks: 1
ReadRequestBuffer: 32
WriteRequestBuffer: 32

[layout]
IfmapCustomLayout: False
IfmapSRAMBankBandwidth: 10
IfmapSRAMBankNum: 10
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: 10
FilterSRAMBankNum: 10
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport: false
SparseRep: ellpack_block
OptimizedMapping: false
BlockSize: 8
RandomNumberGeneratorSeed: 40

[run_presets]
InterfaceBandwidth: CALC
UseRamulatorTrace: False
""")


def read_report(path: Path) -> list[list[str]]:
    with open(path) as f:
        rows = [[x.strip() for x in r] for r in csv.reader(f)]
    return [r for r in rows[1:] if r and r[0]]


def run_scalesim(python: str, work: Path, topology_csv: str, names, rows: int, cols: int, dataflow: str,
                 sram_kb: int, tag: str = "") -> dict:
    name = f"jaxrob_{dataflow}_{rows}x{cols}{tag}"
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    cfg, topo, layout = d / "config.cfg", d / "topology.csv", d / "layout.csv"
    write_config(cfg, name, rows, cols, dataflow, sram_kb)
    topo.write_text(topology_csv)
    write_layout(layout, topology_csv)
    t0 = time.perf_counter()
    proc = subprocess.run([python, "-c", DRIVER, str(cfg), str(topo), str(layout), str(d / "out")],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"SCALE-Sim failed ({name}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    inner = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
    comp = read_report(d / "out" / name / "COMPUTE_REPORT.csv")
    det = read_report(d / "out" / name / "DETAILED_ACCESS_REPORT.csv")
    per_layer = []
    assert len(comp) == len(names), (len(comp), names)
    for name, c, a in zip(names, comp, det):
        per_layer.append({
            "layer": name, "total_cycles_incl_prefetch": int(float(c[1])), "total_cycles": int(float(c[2])),
            "stall_cycles": int(float(c[3])), "overall_util_pct": float(c[4]),
            "mapping_eff_pct": float(c[5]), "compute_util_pct": float(c[6]),
            "sram_ifmap_reads": int(float(a[3])), "sram_filter_reads": int(float(a[6])),
            "sram_ofmap_writes": int(float(a[9])),
        })
    return {"rows": rows, "cols": cols, "dataflow": dataflow, "wall_s": wall, "sim_s": inner,
            "layers": per_layer}


def parse_shapes(text: str):
    """``"32x32,16x64"`` -> ``((32, 32), (16, 64))``."""
    try:
        shapes = tuple(tuple(int(v) for v in part.lower().split("x")) for part in text.split(","))
    except ValueError:
        shapes = ()
    if not shapes or any(len(t) != 2 or min(t) < 1 for t in shapes):
        raise argparse.ArgumentTypeError(f"shapes must look like 32x32,16x64 (positive ints), got {text!r}")
    return shapes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scalesim-python", default="/work/scalesim-venv/bin/python")
    p.add_argument("--quick", action="store_true", help="only " + ", ".join(f"{a}.{b}" for a, b in QUICK))
    p.add_argument("--layers", choices=("few", "all"), default="few",
                   help="few: the LAYERS below (one SCALE-Sim run per array shape and dataflow); all: every "
                        "layer of ResNet-50 and MobileNetV2, one SCALE-Sim run per distinct layer")
    p.add_argument("--networks", default="resnet50,mobilenet_v2",
                   help="with --layers all: comma-separated subset of " + ",".join(NETWORKS))
    p.add_argument("--shapes", type=parse_shapes, default=SHAPES, help="array shapes, e.g. 32x32,16x64,128x128")
    p.add_argument("--jobs", type=int, default=2, help="SCALE-Sim runs in parallel")
    p.add_argument("--sram-kb", type=int, default=64)
    p.add_argument("--designs", type=int, default=65536, help="array shapes in jaxrob's vmapped sweep")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    networks = tuple(n.strip() for n in args.networks.split(",") if n.strip())
    if not networks or any(n not in NETWORKS for n in networks):
        p.error(f"--networks must be a comma-separated subset of {','.join(NETWORKS)}, got {args.networks!r}")
    if args.layers == "all":
        workload, infos, _, sim_idx = all_layers(networks)
    else:
        workload, infos = select_layers(QUICK if args.quick else LAYERS)
        sim_idx = list(range(len(infos)))
    names = [i.name for i in infos]
    topology_csv = to_scalesim_topology(workload, infos)  # one row per layer = one of its `groups` GEMMs
    # Compare per GEMM: SCALE-Sim simulates one group of a grouped (depthwise) layer.
    per_gemm = workload._replace(groups=jnp.ones_like(workload.groups))
    shapes = args.shapes

    version = subprocess.run([args.scalesim_python, "-c", "import importlib.metadata as m, numpy; "
                              "print(m.version('scalesim'), numpy.__version__)"],
                             capture_output=True, text=True, check=True).stdout.split()
    # Jobs: (shape, dataflow, layer indices).  "few": one job per (shape, dataflow) as before;
    # "all": one job per distinct layer, longest first (jaxrob's own cycle count as the estimate).
    jobs = []
    for (r, c) in shapes:
        for df in DATAFLOWS:
            if args.layers == "all":
                est = systolic_cost(per_gemm, r, c, dataflow=df).cycles
                jobs += [(float(est[i]), r, c, df, [i]) for i in sim_idx]
            else:
                jobs.append((0.0, r, c, df, sim_idx))
    jobs.sort(key=lambda j: -j[0])
    print(f"{len(jobs)} SCALE-Sim runs, {sum(j[0] for j in jobs):.3g} cycles estimated, {args.jobs} in parallel",
          flush=True)

    def one(job):
        _, r, c, df, idx = job
        tag = f"_l{idx[0]}" if args.layers == "all" else ""
        run = run_scalesim(args.scalesim_python, Path(tmp), topology_subset(topology_csv, idx),
                           [names[i] for i in idx], r, c, df, args.sram_kb, tag)
        run["index"] = idx
        return run

    with tempfile.TemporaryDirectory(prefix="scalesim-") as tmp, ThreadPoolExecutor(args.jobs) as pool:
        t0 = time.perf_counter()
        runs = list(pool.map(one, jobs))
        scalesim_elapsed = time.perf_counter() - t0

    table, failures = [], []
    max_util_rel = 0.0
    ref_cycles = {}  # (r, c, df, layer index) -> SCALE-Sim cycles (+1: its count is the last cycle's index)
    ours_by = {(r, c, df): systolic_cost(per_gemm, r, c, dataflow=df) for (r, c) in shapes for df in DATAFLOWS}
    for run in runs:
        r, c, df = run["rows"], run["cols"], run["dataflow"]
        ours = ours_by[(r, c, df)]
        for i, ref in zip(run["index"], run["layers"]):
            mkn = tuple(int(getattr(workload, f)[i]) for f in "mkn")
            cyc = float(ours.cycles[i])
            util = 100.0 * float(ours.utilization[i])
            ref_cycles[(r, c, df, i)] = ref["total_cycles"] + 1
            ok_cycles = cyc - 1 == ref["total_cycles"] and ref["stall_cycles"] == 0
            util_rel = abs(util - ref["overall_util_pct"]) / ref["overall_util_pct"]
            max_util_rel = max(max_util_rel, util_rel)
            ok_util = abs(util - ref["overall_util_pct"]) <= ref["overall_util_pct"] / (cyc - 1) + 1e-4
            # SCALE-Sim's OS ofmap write count adds R + C per fold (module docstring of _systolic).
            folds = -(-mkn[0] // r) * -(-mkn[2] // c)
            extra_writes = folds * (r + c) if df == "os" else 0
            ok_sram = (float(ours.ifmap_sram_reads[i]) == ref["sram_ifmap_reads"]
                       and float(ours.filter_sram_reads[i]) == ref["sram_filter_reads"]
                       and float(ours.ofmap_sram_writes[i]) + extra_writes == ref["sram_ofmap_writes"])
            ref.update(jaxrob_cycles=cyc, jaxrob_util_pct=util, jaxrob_ifmap_sram_reads=float(ours.ifmap_sram_reads[i]),
                       jaxrob_filter_sram_reads=float(ours.filter_sram_reads[i]),
                       jaxrob_ofmap_sram_writes=float(ours.ofmap_sram_writes[i]), gemm_mkn=mkn,
                       groups=int(workload.groups[i]))
            if not (ok_cycles and ok_util and ok_sram):
                failures.append((ref["layer"], r, c, df, ok_cycles, ok_util, ok_sram))
            table.append([ref["layer"], f"{r}x{c}", df, "x".join(map(str, mkn)), ref["total_cycles"],
                          int(cyc), ref["stall_cycles"], f"{ref['overall_util_pct']:.4f}", f"{util:.4f}",
                          "ok" if ok_cycles and ok_util and ok_sram else "MISMATCH"])

    totals = []
    if args.layers == "all":
        # Whole networks: every layer (repeats included) from the simulated row equal to it, times its
        # groups x count GEMMs; against jaxrob's whole-network cycles.
        _, _, rows, _ = all_layers(networks)
        first = {}
        for i, row in enumerate(rows):
            first.setdefault(row, i)
        reps = workload.groups * workload.count
        for net in networks:
            idx = [i for i, n in enumerate(names) if n.startswith(net + ".")]
            for (r, c) in shapes:
                for df in DATAFLOWS:
                    theirs = sum(ref_cycles[(r, c, df, first[rows[i]])] * float(reps[i]) for i in idx)
                    ours = float(jnp.sum(systolic_cost(workload, r, c, dataflow=df).cycles[jnp.asarray(idx)]))
                    totals.append({"network": net, "layers": len(idx), "rows": r, "cols": c, "dataflow": df,
                                     "scalesim_cycles": theirs, "jaxrob_cycles": ours})

    # Speed: the same (layers x shapes x dataflows) with jaxrob, jitted, one call per dataflow.
    rows_arr = jnp.asarray([s[0] for s in shapes], jnp.float32)
    cols_arr = jnp.asarray([s[1] for s in shapes], jnp.float32)
    w = jax.tree.map(lambda a: a[jnp.asarray(sim_idx)], per_gemm)
    fns = {df: jax.jit(jax.vmap(lambda r, c, df=df: systolic_cost(w, r, c, dataflow=df).cycles)) for df in DATAFLOWS}

    def same_set():
        return [fns[df](rows_arr, cols_arr).block_until_ready() for df in DATAFLOWS]

    t0 = time.perf_counter()
    same_set()
    first_call = time.perf_counter() - t0
    (same_s, _), = median_times([same_set], repeats=20)
    # Throughput: many array shapes at once (all three dataflows), energy included.
    key = jax.random.key(0)
    kr, kc = jax.random.split(key)
    rr = jax.random.randint(kr, (args.designs,), 1, 257).astype(jnp.float32)
    cc = jax.random.randint(kc, (args.designs,), 1, 257).astype(jnp.float32)
    sweep = {df: jax.jit(jax.vmap(lambda r, c, df=df: systolic_cost(w, r, c, dataflow=df).total_energy))
             for df in DATAFLOWS}

    def sweep_all():
        return [sweep[df](rr, cc).block_until_ready() for df in DATAFLOWS]

    (sweep_s, _), = median_times([sweep_all], repeats=5)
    n_layer_evals = len(sim_idx) * len(shapes) * len(DATAFLOWS)
    sim_total = sum(run["sim_s"] for run in runs)
    speed = {
        "layer_evaluations": n_layer_evals,
        "scalesim_sim_seconds_sum": sim_total,
        "scalesim_wall_seconds_elapsed": scalesim_elapsed,
        "scalesim_parallel_jobs": args.jobs,
        "scalesim_layer_evals_per_s": n_layer_evals / sim_total,
        "jaxrob_same_set_seconds": same_s,
        "jaxrob_same_set_first_call_seconds_incl_compile": first_call,
        "jaxrob_same_set_layer_evals_per_s": n_layer_evals / same_s,
        "jaxrob_sweep_designs": args.designs * len(DATAFLOWS),
        "jaxrob_sweep_layers": len(sim_idx),
        "jaxrob_sweep_seconds": sweep_s,
        "jaxrob_sweep_layer_evals_per_s": args.designs * len(DATAFLOWS) * len(sim_idx) / sweep_s,
        "jaxrob_sweep_designs_per_s": args.designs * len(DATAFLOWS) / sweep_s,
    }
    print(markdown_table(["layer", "array", "df", "MxKxN", "SCALE-Sim cycles", "jaxrob cycles", "stalls",
                          "SCALE-Sim util %", "jaxrob util %", "check"], table))
    print()
    if totals:
        print(markdown_table(["network", "layers", "array", "df", "SCALE-Sim cycles (+1 per GEMM)", "jaxrob cycles",
                              "relative difference"],
                             [[n["network"], n["layers"], f"{n['rows']}x{n['cols']}", n["dataflow"],
                               int(n["scalesim_cycles"]), int(n["jaxrob_cycles"]),
                               f"{abs(n['jaxrob_cycles'] - n['scalesim_cycles']) / n['scalesim_cycles']:.2e}"]
                              for n in totals]))
        print()
    else:
        print(markdown_table(["array", "df", "SCALE-Sim s (in-process)", "SCALE-Sim s (subprocess wall)"],
                             [[f"{r['rows']}x{r['cols']}", r["dataflow"], r["sim_s"], r["wall_s"]] for r in runs]))
        print()
    print(json.dumps(speed, indent=1))
    print(f"max relative utilization difference: {max_util_rel:.3g}; {len(table)} layer cases, "
          f"{len(failures)} failures")
    env = environment()
    env["scalesim"], env["scalesim_numpy"] = version
    suffix = "-quick" if args.quick else ("-all" if args.layers == "all" else "")
    out = Path(args.out) if args.out else default_out("systolic_vs_scalesim" + suffix)
    write_json({"env": env, "args": {k: v for k, v in vars(args).items()}, "runs": runs, "networks": totals,
                "speed": speed, "max_util_rel_diff": max_util_rel, "failures": failures}, out)
    print(f"wrote {out}")
    if failures:
        print(f"FAILED: {failures}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
