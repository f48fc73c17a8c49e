"""`metasym bench <what>`: every benchmark prints a table, rewrites its section of
docs/benchmarks.md and, with --json, prints one JSON object of figures whose keys
carry their unit, each beside its baseline measured in the same run."""

from __future__ import annotations

import argparse

from metasym_core.bench.report import DEFAULT_DOC, print_json
from metasym_core.plugins import BENCHES, load
from metasym_core.systems import SYSTEM_NAMES


def _rollout(args: argparse.Namespace) -> int:
    from metasym_core.bench.rollout import run_rollout_bench

    figures = run_rollout_bench(args.config, horizon=args.horizon, repeats=args.repeats, big_batch=args.batch,
                                doc=args.doc, device=args.device, isa=args.isa)
    if args.json:
        print_json(figures)
    return 0


def _generate(args: argparse.Namespace) -> int:
    from metasym_core.bench.generate import run_generate_bench

    systems = list(SYSTEM_NAMES) if args.system == "all" else [args.system]
    figures = run_generate_bench(systems, quick=args.quick, doc=args.doc)
    if args.json:
        print_json(figures)
    return 0


def _train(args: argparse.Namespace) -> int:
    from metasym_core.bench.train import run_train_bench

    figures = run_train_bench(None if args.system == "all" else [args.system], doc=args.doc)
    if args.json:
        print_json(figures)
    return 0


def _table1(args: argparse.Namespace) -> int:
    from metasym_core.bench.table1 import run_table1_bench

    systems = list(SYSTEM_NAMES) if args.system == "all" else [args.system]
    doc = args.doc if args.doc is not None else (DEFAULT_DOC if args.update_docs else None)
    figures = run_table1_bench(systems, quick=args.quick, out_json=args.out_json, doc=doc, out_dir=args.out,
                               conservative=args.conservative, ablate_meta=args.ablate_meta,
                               ablate_attention=args.ablate_attention, device=args.device, seeds=args.seeds)
    if args.json:
        print_json(figures)
    return 0


def _learner(args: argparse.Namespace) -> int:
    from metasym_core.bench.learner import run_learner_bench

    figures = run_learner_bench(args.seeds, args.steady, args.after, args.checkpoint, doc=args.doc)
    if args.json:
        print_json(figures)
    return 0


def _control(args: argparse.Namespace) -> int:
    from metasym_core.bench.control import run_control_bench

    options = "".join(f" --{name} {value}" for name, value in
                      (("samples", args.samples), ("horizon", args.horizon), ("threads", args.threads))
                      if value is not None)
    command = (f"metasym bench control --seeds {args.seeds} --seconds {args.seconds:g}{options} "
               f"--checkpoint {args.checkpoint}")
    figures = run_control_bench(args.seeds, args.seconds, args.change_at, args.scale, args.samples, args.horizon,
                                args.checkpoint, plot=args.plot or None, doc=args.doc, command=command,
                                threads=args.threads)
    if args.json:
        print_json(figures)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `bench` and its benchmarks."""
    bench = subparsers.add_parser("bench", help="run a benchmark", description=__doc__.splitlines()[0],
                                  epilog="`metasym bench --system S [--quick] ...` (options, no WHAT) runs table1.")
    sub = bench.add_subparsers(dest="what", required=True, metavar="WHAT")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="also print the figures as one JSON object")
        p.add_argument("--doc", default=str(DEFAULT_DOC), help="markdown file whose section is rewritten")

    p = sub.add_parser("rollout", help="rollout latency (B=1) and throughput (B=1024) vs a plain loop")
    p.add_argument("--config", default="quadrotor", help="system name or config YAML (default quadrotor)")
    p.add_argument("--horizon", type=int, default=30)
    p.add_argument("--repeats", type=int, default=200, help="timed B=1 calls (B=1024 uses 1/20 of it)")
    p.add_argument("--batch", type=int, default=1024, help="the large batch size")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA rows too when a GPU is present), cpu, or cuda[:N] (default auto)")
    p.add_argument("--isa", default=None,
                   help="the compiled kernel's ISA level: x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA), x86-64 "
                        "(SSE2) or best (default: best, or $METASYM_NATIVE_ISA)")
    common(p)
    p.set_defaults(func=_rollout)

    p = sub.add_parser("generate", help="wall time of each family's default training set")
    p.add_argument("system", nargs="?", default="all", help="a system name or all (default)")
    p.add_argument("--quick", action="store_true", help="time one round of the pool and extrapolate")
    common(p)
    p.set_defaults(func=_generate)

    p = sub.add_parser("train", help="time per outer step per system, and online adaptation latency")
    p.add_argument("system", nargs="?", default="all", help="a system name or all (default)")
    common(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("table1", help="paper Table 1: OOD rollout MSE of MetaSym and the baselines")
    p.add_argument("--system", default="all", choices=[*SYSTEM_NAMES, "all"])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test in minutes, not a reproduction")
    p.add_argument("--out", default="runs/table1", help="output folder (cached data, runs, plots, JSON)")
    p.add_argument("--out-json", default=None, help="JSON file of the results (default <out>/table1.json)")
    p.add_argument("--seeds", type=int, default=1,
                   help="training seeds 0..N-1 of every model on the same data: figures are means over seeds and "
                        "systems, with each seed's mean beside them (default 1)"),
    p.add_argument("--conservative", action="store_true",
                   help="ablation D.1: the undamped spring mesh (with --system spring_mesh)")
    p.add_argument("--ablate-meta", action="store_true",
                   help="add MetaSym trained without meta-learning, adapted and not (ablation D.3 a)")
    p.add_argument("--ablate-attention", action="store_true",
                   help="ablation D.3 b: add MetaSym without the meta-attention block (meta-trained the same way)")
    p.add_argument("--device", default="auto",
                   help="where the models train: auto (CUDA when present), cpu or cuda[:N]; scoring runs on the CPU")
    common(p)
    p.add_argument("--update-docs", action="store_true",
                   help=f"also rewrite its section of {DEFAULT_DOC} (default: the report goes to OUT/table1.md only)")
    p.set_defaults(doc=None)  # --doc FILE: rewrite that file's section instead
    p.set_defaults(func=_table1)

    p = sub.add_parser("learner", help="online learner: false alarms in steady flight, time to adapt to a change")
    p.add_argument("--seeds", type=int, default=5, help="flights per case (default 5)")
    p.add_argument("--steady", type=float, default=80.0, help="simulated seconds of steady flight (default 80)")
    p.add_argument("--after", type=float, default=10.0, help="simulated seconds after the change (default 10)")
    p.add_argument("--checkpoint", default="pretrained:nominal_mass",
                   help="quadrotor model (default: the bundled one trained at nominal mass, which cannot infer a "
                        "mass change and must adapt to it)")
    common(p)
    p.set_defaults(func=_learner)

    p = sub.add_parser("control", help="closed loop: MPPI on MetaSym vs the nominal and oracle MPC, mass change")
    p.add_argument("--seeds", type=int, default=5, help="flights per controller (default 5)")
    p.add_argument("--seconds", type=float, default=30.0, help="simulated seconds per flight (default 30)")
    p.add_argument("--change-at", type=float, default=10.0, help="time of the mass change [s] (default 10)")
    p.add_argument("--scale", type=float, default=1.3, help="mass factor of the change (default 1.3)")
    p.add_argument("--samples", type=int,
                   help="MPPI candidates K (default: the controller node's, config/quadrotor.yaml)")
    p.add_argument("--horizon", type=int, help="MPPI horizon H in control steps (default: the controller node's)")
    p.add_argument("--threads", type=int, help="CPU threads of an MPPI solve (default: the controller node's)")
    p.add_argument("--checkpoint", default="pretrained:mppi",
                   help="quadrotor model (default: the bundled one trained for MPPI)")
    p.add_argument("--plot", default="runs/bench_control.png", help="PNG of seed 0's flights ('' = none)")
    common(p)
    p.set_defaults(func=_control)

    # benchmarks of other packages (entry-point group `metasym.bench`, e.g. the ROS package's `ros` and
    # `flight`): each module's `register_bench(sub, common)`; one that cannot be imported is left out
    plugins, _ = load(BENCHES)
    for module in plugins:
        module.register_bench(sub, common)
