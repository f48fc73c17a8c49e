"""`metasym train` and `metasym evaluate`.

    metasym train --system quadrotor --config config/quadrotor.yaml --data data/quadrotor_train.npz \\
        --val data/quadrotor_ood_val.npz --out runs/quadrotor [--resume] [--seed 0] [--max-steps N]
    metasym evaluate --checkpoint runs/quadrotor/final.pt --data data/quadrotor_ood.npz --shots 100 [--horizon 50]

Ctrl-C during training writes `last.pt` first; `--resume` continues from it.
Data-parallel on N processes (gloo, CPU): `torchrun --nproc_per_node=N -m metasym_core.cli train ...`.
`evaluate` prints one JSON object: per-system rollout MSE before/after K-shot
adaptation, and their mean and std.
"""

from __future__ import annotations

import argparse
import json

from metasym_core.errors import MetaSymError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `train` and `evaluate`."""
    p = subparsers.add_parser("train", help="meta-train MetaSym on a system family",
                              description="Meta-train MetaSym (encoder MAML, then the decoder bi-level loop).")
    p.add_argument("--system", required=True, help="system name; must match the config's")
    p.add_argument("--config", help="config YAML (default config/<system>.yaml)")
    p.add_argument("--data", required=True, help="training dataset .npz")
    p.add_argument("--val", required=True, help="validation dataset .npz (e.g. held-out OOD systems)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, sampling and DropConnect (default 0)")
    p.add_argument("--max-steps", type=int, help="stop after this many outer steps in all")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--device", default="cpu",
                   help="cpu (default: faster for the configs' small models), cuda[:N] or auto (CUDA when present)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 suits small models)")
    p.set_defaults(func=_train)

    p = subparsers.add_parser("evaluate", help="rollout MSE before/after K-shot adaptation",
                              description="Rollout MSE per system before/after K-shot adaptation (JSON).")
    p.add_argument("--checkpoint", required=True, help="a checkpoint from `metasym train`")
    p.add_argument("--data", required=True, help="dataset .npz (e.g. OOD systems)")
    p.add_argument("--shots", type=int, required=True, help="observed frames per system used to adapt")
    p.add_argument("--horizon", type=int, help="rollout steps (default: the rest of each trajectory)")
    p.add_argument("--inner-steps", type=int, help="adaptation SGD steps (default: the run's training value)")
    p.add_argument("--lr", type=float, help="adaptation SGD rate (default: the run's training value)")
    p.add_argument("--out", help="also write the JSON to this file")
    p.set_defaults(func=_evaluate)


def _train(args: argparse.Namespace) -> int:
    import torch

    from metasym_core.config import load_config
    from metasym_core.systems.dataset import load_dataset
    from metasym_core.train import distributed
    from metasym_core.train.runs import open_trainer

    cfg = load_config(args.config or args.system)
    if cfg["system"] != args.system:
        raise MetaSymError(f"--system {args.system} but the config {cfg['_path']} is for {cfg['system']}")
    train, val = load_dataset(args.data), load_dataset(args.val)
    for name, ds in (("--data", train), ("--val", val)):
        if ds.family != args.system:
            raise MetaSymError(f"{name} holds {ds.family} systems, not {args.system}")
    if args.threads is not None:
        if args.threads < 1:
            raise MetaSymError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    parallel = distributed.init_from_env()  # under torchrun: one process per rank, systems sharded
    try:
        trainer = open_trainer(cfg, train, val, args.out, "always" if args.resume else "never", seed=args.seed,
                               max_steps=args.max_steps, progress=not args.quiet, device=args.device)
        summary = trainer.run()
    finally:
        if parallel:
            distributed.dist.destroy_process_group()
    if trainer.rank == 0:
        print(json.dumps(summary))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from metasym_core.checkpoint import load_checkpoint
    from metasym_core.io import atomic_write_text
    from metasym_core.systems.dataset import load_dataset
    from metasym_core.train.evaluate import evaluate

    model, extra = load_checkpoint(args.checkpoint)
    training = extra.get("training", {}) if isinstance(extra, dict) else {}
    inner = args.inner_steps if args.inner_steps is not None else int(training.get("inner_steps", 10))
    lr = args.lr if args.lr is not None else float(training.get("inner_lr", 0.1))
    if inner < 1 or not lr > 0:
        raise MetaSymError(f"--inner-steps must be >= 1 and --lr > 0, got {inner}, {lr}")
    result = evaluate(model, load_dataset(args.data), args.shots, args.horizon, inner, lr,
                      adapt_horizon=int(training.get("rollout_horizon", 0)))
    text = json.dumps(result)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    print(text)
    return 0
