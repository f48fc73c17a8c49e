"""`metasym launch`: registered in the metasym CLI; imports nothing of ROS until run."""

from __future__ import annotations

import argparse

import yaml

from metasym_core.errors import MetaSymError

SYSTEMS = ("quadrotor", "spring_mesh", "quantum")


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value) if value else ""


def register(subparsers) -> None:
    """Add the `launch` subcommand."""
    p = subparsers.add_parser("launch", help="start the ROS 2 node graph of a system (simulator, predictor)",
                              description="Start the MetaSym ROS 2 nodes of SYSTEM as subprocesses with the "
                                          "parameters of config/SYSTEM.yaml (ros: section); Ctrl-C stops them.")
    p.add_argument("system", choices=SYSTEMS)
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", type=_override, action="append", default=[],
                   help="override a node parameter: node.param=value (e.g. predictor.horizon=20) or a "
                        "launch argument (checkpoint, horizon, device, rate_hz, change_param, change_scale, "
                        "change_time)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from metasym_ros.launcher import launch

    if args.duration is not None and not args.duration > 0:
        raise MetaSymError(f"--duration must be positive, got {args.duration}")
    return launch(args.system, dict(args.overrides), args.duration)
