"""The meta-training loop: encoder MAML (phase 1), then the decoder bi-level loop (phase 2).

One counter `step` runs over both phases (`encoder_steps` then `outer_steps`
outer steps). Everything a step depends on — weights, both Adam states, the
window sampler's generator and torch's global RNG (DropConnect) — is in the
checkpoint, so `resume` continues exactly where an uninterrupted run would be.
Run folder: `last.pt` (every `checkpoint_interval` steps, at the end, and on
Ctrl-C), `best.pt` (best validation loss of phase 2), `final.pt` (the best
weights, written when training ends), `metrics.csv` and `metrics.json`.

A decoder without meta-attention (`model.decoder.meta_attention: false`, ablation
D.3) never reads the encoder latents and has no local parameters: phase 1 is
skipped (`encoder_steps` 0, it would train nothing the model uses; kept with
`residual: encoder`, whose flow step still predicts) and phase 2's inner loop is a
no-op, so the outer loop trains θ on the query windows.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from metasym_core.checkpoint import load_checkpoint, save_checkpoint
from metasym_core.config import build_model
from metasym_core.device import resolve_device
from metasym_core.errors import MetaSymError
from metasym_core.io import atomic_write_text, progress_interval
from metasym_core.meta.decoder_bilevel import adapted_query_loss, bilevel_loss
from metasym_core.meta.encoder_maml import direct_loss, maml_loss
from metasym_core.models.metasym import MetaSym
from metasym_core.systems.dataset import SystemDataset
from metasym_core.train import distributed
from metasym_core.train.config import TrainingConfig
from metasym_core.train.data import TrainData

_CSV_FIELDS = ("step", "phase", "loss", "val_loss", "seconds")


class Trainer:
    """Meta-train a MetaSym of config `cfg` on `train` (validation on `val`, e.g. OOD systems).

    Args:
        cfg: a loaded system config (with an optional `training:` section).
        train, val: datasets of the config's system. out_dir: run folder (created).
        seed: seeds the initial weights, the window sampler and DropConnect.
        max_steps: stop after this many outer steps in all (default: both phases in full).
        device: `cpu` (default), `cuda[:N]` or `auto` (CUDA when present); the model and the
            datasets live there. The default is the CPU because the configs' models are small
            enough that CUDA kernel launches dominate (an H200 took 1.2-1.5x longer per decoder
            step than the CPU; docs/benchmarks.md, "GPU"). Checkpoints are device-free.
    """

    def __init__(self, cfg: dict, train: SystemDataset, val: SystemDataset, out_dir: str | Path,
                 seed: int = 0, max_steps: int | None = None, progress: bool = True,
                 device: str | torch.device = "cpu") -> None:
        self.cfg = {k: v for k, v in cfg.items() if k != "_path"}
        self.tc = TrainingConfig.from_config(cfg)
        self.seed, self.progress = int(seed), progress
        self.device = resolve_device(str(device))
        if self.device.type != "cpu" and distributed.world()[1] > 1:
            raise MetaSymError("several training processes run on the CPU only (gloo); pass device cpu")
        torch.manual_seed(self.seed)
        self.model: MetaSym = build_model(cfg).to(self.device)
        if not self.model.decoder.meta_attention and not self.model.encoder_residual:
            self.tc = replace(self.tc, encoder_steps=0)  # ablation D.3: the encoder's output is never read (with
            # the encoder residual its flow step still carries the prediction, so phase 1 still trains it)
        clean = self.tc.noise_free_targets
        self.train_data = TrainData(train, self.model, self.tc.support_fraction, self.tc.window, "training", clean)
        self.val_data = TrainData(val, self.model, self.tc.support_fraction, self.tc.window, "validation", clean)
        self.total = self.tc.encoder_steps + self.tc.outer_steps
        if max_steps is not None:
            if max_steps < 1:
                raise MetaSymError(f"max_steps must be >= 1, got {max_steps}")
            self.total = min(self.total, int(max_steps))
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.gen = torch.Generator().manual_seed(self.seed)
        self.enc_opt = torch.optim.Adam(self.model.encoder.parameters(), lr=self.tc.encoder_lr)
        self.dec_opt = torch.optim.Adam(self.model.decoder.parameters(), lr=self.tc.outer_lr)
        self.step, self.best_val, self.bad_evals, self.stopped_early = 0, math.inf, 0, False
        self.history: list[dict] = []
        self.model.set_normalization(self.train_data.states, self.train_data.controls, self.train_data.h)
        self.rank, self.world = distributed.world()
        if self.tc.batch_systems < self.world:
            raise MetaSymError(f"training.batch_systems ({self.tc.batch_systems}) must be >= the number of "
                               f"processes ({self.world})")
        distributed.broadcast_params(self.model)

    # -- checkpoints ------------------------------------------------------------------------------
    def _extra(self) -> dict:
        return {"step": self.step, "seed": self.seed, "system": self.cfg.get("system", ""),
                "training": self.tc.as_dict(), "best_val": self.best_val, "bad_evals": self.bad_evals,
                "stopped_early": self.stopped_early, "history": self.history,
                "enc_opt": self.enc_opt.state_dict(), "dec_opt": self.dec_opt.state_dict(),
                "rng_torch": torch.get_rng_state(), "rng_sampler": self.gen.get_state()}

    def save(self, name: str = "last.pt") -> Path:
        """Write the full training state atomically (rank 0 only)."""
        if self.rank != 0:
            return self.out / name
        path = save_checkpoint(self.out / name, self.model, self._extra())
        self._write_metrics()
        return path

    def resume(self, path: str | Path | None = None) -> None:
        """Restore the state of `last.pt` (or `path`) into this trainer."""
        path = Path(path) if path is not None else self.out / "last.pt"
        model, extra = load_checkpoint(path)
        if model.config() != self.model.config():
            raise MetaSymError(f"checkpoint {path} was made with a different model config")
        self.model.load_state_dict(model.state_dict())
        self.enc_opt.load_state_dict(extra["enc_opt"])
        self.dec_opt.load_state_dict(extra["dec_opt"])
        self.step, self.best_val = int(extra["step"]), float(extra["best_val"])
        self.bad_evals, self.stopped_early = int(extra["bad_evals"]), bool(extra["stopped_early"])
        self.history = list(extra["history"])
        torch.set_rng_state(extra["rng_torch"])
        self.gen.set_state(extra["rng_sampler"])

    def _write_metrics(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=_CSV_FIELDS)
        writer.writeheader()
        for row in self.history:
            writer.writerow({k: row.get(k, "") for k in _CSV_FIELDS})
        atomic_write_text(self.out / "metrics.csv", buf.getvalue())

    # -- one outer step ---------------------------------------------------------------------------
    def _phase(self) -> str:
        return "encoder" if self.step < self.tc.encoder_steps else "decoder"

    def _encoder_step(self) -> float:
        tc, data, model = self.tc, self.train_data, self.model
        model.encoder.train()
        for p in model.encoder.parameters():
            p.requires_grad_(True)
        systems, s0, q0 = self._share(*data.sample_offsets(tc.batch_systems, self.gen))
        support, query = data.transitions(systems, s0), data.transitions(systems, q0)
        if tc.meta:
            loss = maml_loss(model.encoder, support, query, model.delta_std, tc.encoder_inner_steps,
                             tc.encoder_inner_lr)
        else:
            loss = 0.5 * (maml_loss(model.encoder, support, support, model.delta_std, 0)
                          + maml_loss(model.encoder, query, query, model.delta_std, 0))
        for group in self.enc_opt.param_groups:
            group["lr"] = tc.encoder_rate(self.step)
        return self._apply(loss * (len(systems) / tc.batch_systems), self.enc_opt, model.encoder.parameters())

    def _decoder_step(self) -> float:
        tc, data, model = self.tc, self.train_data, self.model
        model.encoder.eval()
        for p in model.encoder.parameters():
            p.requires_grad_(False)
        model.decoder.train()
        lead = model.context - 1
        systems, s0, q0 = self._share(*data.sample_offsets(tc.batch_systems, self.gen))
        noise = {"noise": tc.input_noise, "gen": self.gen}
        support = data.decoder_window(model, systems, s0, **noise)
        query = data.decoder_window(model, systems, q0, lead, **noise)
        if tc.meta:
            loss = bilevel_loss(model, support, query, tc.inner_steps, tc.inner_lr, lead, tc.first_order,
                                tc.learn_init, tc.rollout_horizon)
        else:
            loss = 0.5 * (bilevel_loss(model, support, support, 0, tc.inner_lr, horizon=tc.rollout_horizon)
                          + bilevel_loss(model, query, query, 0, tc.inner_lr, lead, horizon=tc.rollout_horizon))
        return self._apply(loss * (len(systems) / tc.batch_systems), self.dec_opt, model.decoder.parameters())

    def _share(self, systems: torch.Tensor, s0: torch.Tensor, q0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This rank's items of the (identical on every rank) batch."""
        return systems[self.rank::self.world], s0[self.rank::self.world], q0[self.rank::self.world]

    def _apply(self, loss: torch.Tensor, opt: torch.optim.Optimizer, params) -> float:
        """Backward, all-reduce (several processes), clip, Adam step; `loss` is this rank's share."""
        value = distributed.all_reduce_sum(float(loss.detach()))
        if not math.isfinite(value):
            last = self.out / "last.pt"
            kept = f"the last good checkpoint is kept in {last}" if last.is_file() else "no checkpoint written yet"
            raise MetaSymError(f"training loss is {value} at step {self.step} ({self._phase()} phase); "
                               f"stopped, {kept}")
        params = list(params)
        opt.zero_grad()
        loss.backward()
        distributed.all_reduce_grads(params)
        torch.nn.utils.clip_grad_norm_(params, self.tc.grad_clip)
        opt.step()
        return value

    def validate(self) -> float:
        """Validation loss of the current phase (normalised next-step MSE; phase 2 after K-shot adaptation)."""
        model, data = self.model, self.val_data
        was = model.training
        model.eval()
        try:
            systems, s0, q0 = data.fixed_offsets()
            if self._phase() == "encoder":
                return direct_loss(model.encoder, data.transitions(systems, q0), model.delta_std)
            lead = model.context - 1
            return adapted_query_loss(model, data.decoder_window(model, systems, s0),
                                      data.decoder_window(model, systems, q0, lead),
                                      self.tc.inner_steps, self.tc.inner_lr, lead, self.tc.rollout_horizon)
        finally:
            model.train(was)

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, should_stop: Callable[[], bool] | None = None) -> dict:
        """Train until `max_steps`, the end of both phases or early stopping; returns the summary.

        `should_stop` (optional) is called before every outer step; when it returns true, `run`
        saves `last.pt` (resumable) and returns `{"steps", "stopped": True, "checkpoint"}` at once,
        without `final.pt` (a cooperative Ctrl-C for callers on another thread, e.g. a ROS node).
        """
        bar = tqdm(total=self.total, initial=self.step, desc=str(self.cfg.get("system", "train")),
                   unit="step", disable=not self.progress or self.rank != 0, mininterval=progress_interval())
        val = math.nan
        stop = False
        try:
            while self.step < self.total and not self.stopped_early:
                if should_stop is not None and should_stop():
                    stop = True
                    break
                phase = self._phase()
                if phase == "decoder" and self.step == self.tc.encoder_steps:
                    self.train_data._tokens = None  # encoder frozen from here: encode once
                t0 = time.perf_counter()
                loss = self._encoder_step() if phase == "encoder" else self._decoder_step()
                seconds = time.perf_counter() - t0
                self.step += 1
                row = {"step": self.step, "phase": phase, "loss": loss, "val_loss": "", "seconds": seconds}
                if self.step % self.tc.eval_interval == 0 or self.step == self.total:
                    val = self.validate() if self.step != self.tc.encoder_steps else self._encoder_val()
                    row["val_loss"] = val
                    self._track(phase, val)
                self.history.append(row)
                bar.update()
                bar.set_postfix(phase=phase, loss=f"{loss:.4g}", val=f"{val:.4g}", refresh=False)
                if self.step % self.tc.checkpoint_interval == 0:
                    self.save()
        except KeyboardInterrupt:
            path = self.save()
            bar.close()
            if self.rank == 0:
                print(f"interrupted at step {self.step}: saved {path}; continue with --resume", file=sys.stderr)
            raise
        bar.close()
        path = self.save()
        if stop:
            return {"steps": self.step, "stopped": True, "checkpoint": str(path)}
        return self._finish()

    def _encoder_val(self) -> float:
        """Validation at the last encoder step (the phase switch happens after it)."""
        model, data = self.model, self.val_data
        was = model.training
        model.eval()
        systems, _, q0 = data.fixed_offsets()
        value = direct_loss(model.encoder, data.transitions(systems, q0), model.delta_std)
        model.train(was)
        return value

    def _track(self, phase: str, val: float) -> None:
        if phase != "decoder":
            return
        if val < self.best_val:
            self.best_val, self.bad_evals = val, 0
            if self.rank == 0:
                save_checkpoint(self.out / "best.pt", self.model,
                                {"step": self.step, "training": self.tc.as_dict(), "val_loss": val})
        else:
            self.bad_evals += 1
            self.stopped_early = self.bad_evals >= self.tc.patience

    def _finish(self) -> dict:
        best = self.out / "best.pt"
        if self.rank == 0:
            model = load_checkpoint(best)[0] if best.is_file() else self.model
            save_checkpoint(self.out / "final.pt", model, {"step": self.step, "training": self.tc.as_dict(),
                                                           "best_val": self.best_val})
        summary = {"steps": self.step, "best_val_loss": self.best_val if math.isfinite(self.best_val) else None,
                   "stopped_early": self.stopped_early, "seed": self.seed, "training": self.tc.as_dict(),
                   "final_loss": self.history[-1]["loss"] if self.history else None,
                   "seconds_per_step": {ph: _mean([r["seconds"] for r in self.history if r["phase"] == ph])
                                        for ph in ("encoder", "decoder")}}
        if self.rank == 0:
            atomic_write_text(self.out / "metrics.json", json.dumps(summary, indent=2))
        return summary


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
