"""`metasym generate`: simulate a family's dataset (or a shard of it), or merge shards.

    metasym generate spring_mesh --split train --out data/spring_mesh_train.npz
    metasym generate quantum --split ood --shard 0/4 --out part0.npz   (one per k)
    metasym generate --merge data/quantum_ood.npz part0.npz part1.npz part2.npz part3.npz

Every bad input is a one-line MetaSymError; nothing is written unless the whole
run succeeds.
"""

from __future__ import annotations

import argparse
import time

from metasym_core.errors import MetaSymError
from metasym_core.systems import SYSTEM_NAMES, make_family
from metasym_core.systems.base import SPLITS
from metasym_core.systems.dataset import (
    check_output_path,
    generate,
    load_dataset,
    merge,
    parse_shard,
    save_dataset,
)

# Train and OOD of one default seed must not share random streams.
DEFAULT_SEEDS = {"train": 0, "ood": 1}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `generate` subcommand."""
    p = subparsers.add_parser("generate", help="simulate a system family's dataset (or merge shards)",
                              description=__doc__.splitlines()[0])
    p.add_argument("system", nargs="?", help=f"one of {', '.join(SYSTEM_NAMES)}")
    p.add_argument("--split", default="train", help="train (default) or ood")
    p.add_argument("--systems", help="number of systems (default: the family's, e.g. 25 train / 10 ood)")
    p.add_argument("--steps", help="stored frames per system (default: the family's)")
    p.add_argument("--seed", help="run seed; system i uses SeedSequence([seed, i]) (default 0 train, 1 ood)")
    p.add_argument("--out", help="output .npz file")
    p.add_argument("--shard", help="k/n: only the systems i with i %% n == k")
    p.add_argument("--workers", help="processes (default: all cores)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="family option, e.g. --set grid=4 --set damped=false --set fixed=[mass] (repeatable)")
    p.add_argument("--merge", nargs="+", metavar=("OUT", "PART"), help="merge shard files PART... into OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _int(name: str, text: str | None, default: int, minimum: int) -> int:
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise MetaSymError(f"--{name} must be an integer, got {text!r}") from None
    if value < minimum:
        raise MetaSymError(f"--{name} must be >= {minimum}, got {value}")
    return value


def _value(text: str) -> object:
    """A --set value: true/false, int, float, a list `[a, b]` of such values, else the string."""
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [_value(part.strip()) for part in inner.split(",")] if inner else []
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_options(items: list[str]) -> dict[str, object]:
    """["grid=4", "damped=false", "fixed=[mass]"] -> {"grid": 4, "damped": False, "fixed": ["mass"]}."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MetaSymError(f"--set expects KEY=VALUE, got {item!r}")
        options[key.strip()] = _value(value.strip())
    return options


def run(args: argparse.Namespace) -> int:
    """Generate (or merge) and report one line per file written."""
    if args.merge:
        return _run_merge(args)
    if not args.system:
        raise MetaSymError(f"name a system ({', '.join(SYSTEM_NAMES)}) or use --merge OUT PART...")
    if args.split not in SPLITS:
        raise MetaSymError(f"unknown split {args.split!r}; expected one of {', '.join(SPLITS)}")
    if not args.out:
        raise MetaSymError("--out PATH is required")
    family = make_family(args.system, **parse_options(args.set))
    systems = _int("systems", args.systems, family.default_systems[args.split], 1)
    steps = _int("steps", args.steps, family.default_steps, 1)
    seed = _int("seed", args.seed, DEFAULT_SEEDS[args.split], 0)
    workers = _int("workers", args.workers, 0, 1) or None
    shard = parse_shard(args.shard) if args.shard else None
    out = check_output_path(args.out)
    start = time.perf_counter()
    arrays = generate(family, args.split, systems, steps, seed, shard=shard, workers=workers,
                      progress=not args.quiet)
    save_dataset(arrays, out)
    n, t, d = arrays["states"].shape
    part = f" (shard {shard[0]}/{shard[1]})" if shard else ""
    print(f"wrote {out}: {family.name} {args.split}{part}, {n} systems x {t} steps, {d}-D states, "
          f"{out.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s")
    return 0


def _run_merge(args: argparse.Namespace) -> int:
    given = [f"--{k}" for k in ("systems", "steps", "seed", "shard", "workers", "out") if getattr(args, k)]
    given += ["--set"] if args.set else []
    if args.system or given:
        raise MetaSymError(f"--merge takes only OUT and PART files, not {args.system or ' '.join(given)}")
    if len(args.merge) < 2:
        raise MetaSymError("--merge needs OUT and at least one PART file")
    out = check_output_path(args.merge[0])
    arrays = merge([load_dataset(path) for path in args.merge[1:]])
    save_dataset(arrays, out)
    n, t, _ = arrays["states"].shape
    print(f"wrote {out}: merged {len(args.merge) - 1} parts, {n} systems x {t} steps")
    return 0
