"""CUDA-graph replay of `MetaSym` rollouts: the same kernels, launched as one graph.

Why: a rollout of these small models is ~100 tiny kernels per step, so on a GPU the
launches, not the maths, set its time (B=1: 32 ms on an H200 against 1.9 ms on the
CPU; docs/benchmarks.md, "GPU"). A graph captured once per input layout replays every
kernel of the prefill and of all the steps with one launch.

How: the first call of a layout (batch, context length, horizon, dtype, device,
local-parameter names, the module's weight storages) runs the rollout twice on a side
stream (warm-up, as CUDA graphs require) and captures a third run into a graph whose
inputs are static buffers; later calls copy their inputs (and local parameters) into
those buffers, replay, and clone the output. The captured rollout is
`MetaSym._rollout_cached` with the max-shifted softmax (no data-dependent check, so no
host sync). Weights are read from the module's own storages on every replay, so
in-place updates (optimiser steps, `load_state_dict`) are seen; a module moved or
re-created gets a new layout. A capture that fails disables graphs for that layout and
the rollout runs eagerly. Thread-safe (the predictor node rolls out from its prediction
thread and its service callbacks): captures are serialised and thread-local (another
thread's kernels do not break them), and each graph's buffers are used under its lock.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict

import torch

MAX_GRAPHS = 8  # captured layouts kept per process (each holds its own buffers)


class _Graphed:
    """One captured rollout and its static inputs / output."""

    def __init__(self, model, states, controls, h, future, horizon, local) -> None:
        self.lock = threading.Lock()
        self.inputs = [t.clone() for t in (states, controls, h, future)]
        self.local = {k: v.detach().clone() for k, v in local.items()} if local else None
        self.horizon = horizon
        side = torch.cuda.Stream(device=states.device)
        side.wait_stream(torch.cuda.current_stream(states.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                model._rollout_cached(*self.inputs, horizon, self.local, shift=True)
        torch.cuda.current_stream(states.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.out = model._rollout_cached(*self.inputs, horizon, self.local, shift=True)

    def __call__(self, states, controls, h, future, local) -> torch.Tensor:
        with self.lock:
            for dst, src in zip(self.inputs, (states, controls, h, future), strict=True):
                dst.copy_(src)
            if self.local is not None:
                for name, value in local.items():
                    self.local[name].copy_(value)
            self.graph.replay()
            return self.out.clone()


_graphs: OrderedDict[tuple, _Graphed | None] = OrderedDict()
_lock = threading.Lock()  # guards `_graphs` and serialises captures


def layout_key(model, states, controls, h, future, horizon, local) -> tuple:
    """What a captured graph is valid for: shapes, dtype, device, local names and weight storages."""
    storages = tuple(t.data_ptr() for t in list(model.parameters()) + list(model.buffers()))
    return (id(model), tuple(states.shape), tuple(controls.shape), tuple(h.shape), tuple(future.shape),
            horizon, states.dtype, states.device, tuple(sorted(local)) if local else None, storages,
            torch.is_inference_mode_enabled())


def rollout(model, states, controls, h, future, horizon, local) -> torch.Tensor | None:
    """The rollout by graph replay, or None when graphs do not apply (the caller runs it eagerly):
    not CUDA, autograd on, or the module in training mode (dropout draws)."""
    if states.device.type != "cuda" or torch.is_grad_enabled() or model.training:
        return None
    key = layout_key(model, states, controls, h, future, horizon, local)
    with _lock:
        if key not in _graphs:
            try:
                _graphs[key] = _Graphed(model, states, controls, h, future, horizon, local)
            except RuntimeError as exc:  # e.g. an op that cannot be captured: stay eager for this layout
                warnings.warn(f"CUDA graph capture of the rollout failed, running it eagerly: {exc}", stacklevel=3)
                _graphs[key] = None
            while len(_graphs) > MAX_GRAPHS:
                _graphs.popitem(last=False)
        else:
            _graphs.move_to_end(key)
        graphed = _graphs[key]
    return None if graphed is None else graphed(states, controls, h, future, local)


def clear() -> None:
    """Drop every captured graph (frees their buffers)."""
    with _lock:
        _graphs.clear()
