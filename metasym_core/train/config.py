"""The `training:` section of a system config, with defaults and one-line errors."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from metasym_core.errors import MetaSymError

#: float settings for which 0 means "off"
_MAY_BE_ZERO = ("input_noise",)


@dataclass
class TrainingConfig:
    """Meta-training hyper-parameters (see config/<system>.yaml for the chosen values)."""

    encoder_steps: int = 100  # outer steps of encoder MAML (phase 1)
    encoder_inner_steps: int = 3  # METHOD §4
    encoder_inner_lr: float = 1e-3  # inner SGD rate (normalised loss)
    encoder_lr: float = 1e-2  # outer Adam rate
    encoder_cosine: bool = False  # decay the encoder's outer rate to 0 over its phase (cosine; `encoder_rate`)
    outer_steps: int = 300  # decoder outer steps (phase 2)
    inner_steps: int = 10  # decoder inner SGD steps K (paper: 10-15)
    inner_lr: float = 0.1  # decoder inner SGD rate; also the default of online adaptation
    outer_lr: float = 3e-3  # decoder outer Adam rate (θ and φ₀)
    batch_systems: int = 8  # systems per outer step
    window: int = 40  # transitions per support / query window of one outer step
    support_fraction: float = 0.5  # first part of each trajectory = adaptation (support) data
    checkpoint_interval: int = 50  # outer steps between checkpoints
    eval_interval: int = 25  # outer steps between validation runs
    patience: int = 8  # validation runs without improvement before early stopping (decoder phase)
    first_order: bool = False  # drop second-order terms of the decoder inner loop
    learn_init: bool = True  # meta-learn φ₀ with θ (MAML-style)
    meta: bool = True  # False: the pooled, non-meta baseline (plain next-step training)
    grad_clip: float = 1.0  # max gradient norm of each outer step
    rollout_horizon: int = 0  # 0: next-step adaptation loss (paper); n: n-step rollout loss (meta.losses)
    # noise injection: Gaussian noise on the decoder's input states while meta-training, in units of each
    # coordinate's per-step increment spread (delta_std); targets stay the clean next states, so the model learns
    # to correct an input that is off, as its own rollouts are (0: off)
    input_noise: float = 0.0
    # the decoder's targets: the noise-free expectation of each next frame given the frames before it
    # (`SystemFamily.noise_free_states`: a simulator knows it) instead of the observed, noisy frame; the inputs stay
    # the observed frames. The best prediction is the same (a frame's noise is independent of the past), the
    # gradient far less noisy where the record's noise dwarfs its signal (the quantum record). The encoder's flow
    # step is still fitted to the observed transitions
    noise_free_targets: bool = False

    @classmethod
    def from_config(cls, cfg: dict) -> TrainingConfig:
        """Read `cfg["training"]` (missing keys take the defaults)."""
        section = cfg.get("training") or {}
        where = cfg.get("_path", "config")
        if not isinstance(section, dict):
            raise MetaSymError(f"{where}: training must be a mapping")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise MetaSymError(f"{where}: unknown training keys {unknown}; valid: {sorted(known)}")
        values = {}
        for name, value in section.items():
            kind = type(getattr(cls, name))
            if kind is bool:
                ok = isinstance(value, bool)
            elif kind is int:
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            else:
                ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                      and (value >= 0 if name in _MAY_BE_ZERO else value > 0))
                value = float(value)
            if not ok:
                want = ("boolean" if kind is bool else "non-negative integer" if kind is int
                        else "non-negative number" if name in _MAY_BE_ZERO else "positive number")
                raise MetaSymError(f"{where}: training.{name} = {value!r} must be a {want}")
            values[name] = value
        out = cls(**values)
        for name in ("batch_systems", "window", "checkpoint_interval", "eval_interval", "patience"):
            if getattr(out, name) < 1:
                raise MetaSymError(f"{where}: training.{name} must be >= 1")
        if not 0.0 < out.support_fraction < 1.0:
            raise MetaSymError(f"{where}: training.support_fraction must be in (0, 1)")
        return out

    def as_dict(self) -> dict:
        return asdict(self)

    def encoder_rate(self, step: int) -> float:
        """The encoder's outer Adam rate at outer step `step` (0-based): `encoder_lr`, or with
        `encoder_cosine` `encoder_lr · (1 + cos(π·step/encoder_steps)) / 2`. Why: the linear shears
        must travel far from their N(0, 0.01²) start (on the spring mesh to entries of order k·8), which
        a small constant rate takes thousands of steps for and a large one ends in noise; a function of
        the step alone, so a resumed run continues the same schedule."""
        if not self.encoder_cosine or self.encoder_steps == 0:
            return self.encoder_lr
        return self.encoder_lr * 0.5 * (1.0 + math.cos(math.pi * min(step, self.encoder_steps) / self.encoder_steps))
