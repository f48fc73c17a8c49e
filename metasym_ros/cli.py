"""`metasym launch`: registered in the metasym CLI; imports nothing of ROS until run."""

from __future__ import annotations

import argparse
import sys

import yaml

from metasym_core.errors import MetaSymError
from metasym_ros.graph import LAUNCH_ARGUMENTS, SYSTEMS


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value) if value else ""


def register(subparsers) -> None:
    """Add the `launch` subcommand."""
    p = subparsers.add_parser("launch", help="start the ROS 2 node graph of a system (simulator, predictor, learner; "
                                               "controller with --set controller=mppi)",
                              description="Start the MetaSym ROS 2 nodes of SYSTEM as subprocesses with the "
                                          "parameters of config/SYSTEM.yaml (ros: section); Ctrl-C stops them.")
    p.add_argument("system", choices=SYSTEMS)
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", type=_override, action="append", default=[],
                   help="override a node parameter: node.param=value (e.g. predictor.horizon=20); "
                        "controller=mpc|mppi (mppi, quadrotor: add the controller node, MPPI on the MetaSym model, "
                        "and let it fly the simulator: its controller=external); or a launch argument: " + "; ".join(
                            f"{arg} ({', '.join(f'{node}.{param}' for node, param in targets)})"
                            for arg, targets in LAUNCH_ARGUMENTS.items()))
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.set_defaults(func=_run)
    _register_flight(subparsers)


def _register_flight(subparsers) -> None:
    p = subparsers.add_parser("flight", help="quadrotor flight over ROS 2: parameter change, online adaptation",
                              description="Fly the quadrotor node graph (simulator, predictor, learner) for "
                                          "DURATION simulated seconds, change a parameter mid-flight, report the "
                                          "realised prediction error before/after the change and after online "
                                          "adaptation; writes OUT/flight.png and OUT/flight.json.")
    p.add_argument("--checkpoint", default="pretrained",
                   help="model for predictor and learner: pretrained (the bundled demo model, default), a file "
                        "(e.g. runs/demo/run/final.pt), or '' (untrained)")
    p.add_argument("--duration", type=float, default=30.0, help="simulated seconds to fly (default 30)")
    p.add_argument("--change-time", type=float, default=10.0, help="simulated time of the change [s] (default 10)")
    p.add_argument("--change-param", default="mass", help="mass (default), inertia, arm or torque")
    p.add_argument("--change-scale", type=float, default=1.3, help="factor on the nominal value (default 1.3)")
    p.add_argument("--out", default="runs/flight", help="output folder (default runs/flight)")
    p.add_argument("--no-adapt", action="store_true", help="the same flight without the learner (baseline)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", type=_override, action="append", default=[],
                   help="override a node parameter (node.param=value), as in `metasym launch`")
    p.set_defaults(func=_run_flight)


def _run(args: argparse.Namespace) -> int:
    if args.duration is not None and not args.duration > 0:
        raise MetaSymError(f"--duration must be positive, got {args.duration}")
    try:
        from metasym_ros.tools.launcher import launch
    except KeyboardInterrupt:  # between the parser's quiet SIGINT and the launcher's own handlers
        print("metasym: interrupted during start-up; nothing was done", file=sys.stderr)
        return 0
    return launch(args.system, dict(args.overrides), args.duration)


def _run_flight(args: argparse.Namespace) -> int:
    from metasym_ros.tools.flight import FlightConfig, run_flight

    run_flight(FlightConfig(args.checkpoint, args.duration, args.change_time, args.change_param, args.change_scale,
                            args.out, not args.no_adapt, dict(args.overrides)))
    return 0
