"""Step-by-step simulators for the ROS simulator node: one sample per `advance()`.

Every stream yields `StreamSample(t, state, control, dt, step)` following the
`Trajectory` convention (control and dt act from this sample to the next) and
supports `set_param(name, scale)`: the parameter becomes `scale` × its nominal value.

- quadrotor: waypoint flight under MPC (`FlightSimulator`), continuous across changes; or, as a
  plant (`advance_under`), under an external controller's thrusts or its own failsafe hover.
- spring_mesh: the family's θ-scheme (`SpringMesh.substep`) advanced frame by frame
  (continuous; a change applies from the next frame; values must stay in the family's ranges).
- quantum: the heterodyne record simulated in chunks of `chunk` steps (a fresh
  coherent state per chunk, the next chunk prepared in the background); a change
  starts a new chunk with the new parameters.
"""

from __future__ import annotations

import abc
import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from metasym_core.errors import MetaSymError
from metasym_core.online.plan import ControlPlan
from metasym_core.online.scheduling import background_scheduling
from metasym_core.systems import SPECS


@dataclass(frozen=True)
class StreamSample:
    """One streamed sample."""

    t: float
    state: np.ndarray
    control: np.ndarray
    dt: float
    step: int


class SystemStream(abc.ABC):
    """A simulator that produces samples one at a time (see module doc)."""

    system: str
    state_names: list[str]
    #: (low, high) actuator limits of a stream another controller may fly (`advance_under`); None: it cannot
    control_limits: tuple[np.ndarray, np.ndarray] | None = None

    def __init__(self, nominal: dict[str, float]):
        self.nominal = dict(nominal)
        self.scales = {k: 1.0 for k in nominal}
        self._step = 0

    @property
    def param_names(self) -> list[str]:
        return list(self.nominal)

    @property
    def param_values(self) -> list[float]:
        """Current absolute parameter values, in `param_names` order."""
        return [self.nominal[k] * self.scales[k] for k in self.nominal]

    def set_param(self, name: str, scale: float) -> float:
        """Set parameter `name` to `scale` × nominal; returns the new value (MetaSymError if invalid)."""
        if name not in self.nominal:
            raise MetaSymError(f"unknown {self.system} parameter {name!r}; expected one of "
                               f"{', '.join(self.nominal)}")
        scale = float(scale)
        if not (math.isfinite(scale) and scale > 0):
            raise MetaSymError(f"scale must be positive and finite, got {scale!r}")
        self._apply(name, scale)
        self.scales[name] = scale
        return self.nominal[name] * scale

    @property
    def step(self) -> int:
        """The step counter of the next sample."""
        return self._step

    def advance(self) -> StreamSample:
        """The next sample."""
        return self._sample(*self._advance())

    def advance_under(self, control: np.ndarray | None) -> StreamSample:
        """The next sample with `control` applied from it (an external controller's, clipped to
        `control_limits`), or with None, with the stream's failsafe controller applied (the quadrotor's:
        hover where the failsafe began). MetaSymError for a stream without controls."""
        if self.control_limits is None:
            raise MetaSymError(f"the {self.system} stream takes no external control")
        if control is not None:
            control = np.clip(np.asarray(control, dtype=np.float64), *self.control_limits)
        return self._sample(*self._advance_under(control))

    def breach(self) -> str | None:
        """Why the system must not be flown on by an external controller now (a geofence), or None."""
        return None

    def _sample(self, t: float, x: np.ndarray, u: np.ndarray, dt: float) -> StreamSample:
        sample = StreamSample(t, x, u, dt, self._step)
        self._step += 1
        return sample

    def _advance_under(self, control: np.ndarray | None) -> tuple[float, np.ndarray, np.ndarray, float]:
        """`_advance` under `control`, or the failsafe for None (streams with `control_limits`)."""
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional hook, most streams hold nothing
        """Release background resources."""

    def plan(self) -> ControlPlan | None:
        """The controller's current plan (`metasym_core.online.plan`), for streams flown by one; its stamp
        is simulated time. None: no controller (the default)."""
        return None

    @abc.abstractmethod
    def _apply(self, name: str, scale: float) -> None:
        """Apply a validated change (raise MetaSymError to refuse it)."""

    @abc.abstractmethod
    def _advance(self) -> tuple[float, np.ndarray, np.ndarray, float]:
        """(t, state, control, dt) of the next sample."""


class QuadrotorStream(SystemStream):
    """Waypoint flight of the hector quadrotor; parameters mass, inertia, arm, torque (scales of 1)."""

    system = "quadrotor"

    def __init__(self, dt: float = 0.02, seed: int = 0, noise_std: float = 0.0):
        from metasym_core.systems import quadrotor as quad
        from metasym_core.systems.quadrotor.flight import FlightSimulator

        super().__init__({"mass": 1.0, "inertia": 1.0, "arm": 1.0, "torque": 1.0})
        self.state_names = list(quad.STATE_NAMES)
        self.control_limits = (np.zeros(4), np.full(4, quad.MAX_THRUST))
        self._sim = FlightSimulator({k: 1.0 for k in quad.PARAM_NAMES}, dt=dt, seed=seed, noise_std=noise_std)

    def _apply(self, name: str, scale: float) -> None:
        self._sim.set_param(name, scale)

    def _advance(self):
        t, x, u = self._sim.advance()
        return t, x, u, self._sim.dt

    def _advance_under(self, control):
        if control is None and not self._sim.holding:
            self._sim.hold()  # the failsafe begins: hover here
        t, x, u = self._sim.advance(control)
        return t, x, u, self._sim.dt

    def breach(self) -> str | None:
        """The flight's geofence (`FlightSimulator.breach`)."""
        return self._sim.breach()

    def plan(self) -> ControlPlan:
        """The MPC's plan (thrusts at its 0.05 s nodes), from the state it was last solved from."""
        step, dt, controls = self._sim.plan
        return ControlPlan(step=step, stamp=step * self._sim.dt, dt=dt, controls=controls, system=self.system)


class SpringMeshStream(SystemStream):
    """The damped spring mesh advanced one (jittered) frame at a time; parameters k, m, gamma."""

    system = "spring_mesh"

    def __init__(self, seed: int = 0, grid: int = 10, radius: float = 0.2, **options):
        from metasym_core.systems.spring_mesh import SpringMesh

        self._family = SpringMesh(grid=grid, damped=True, **options)
        mid = {k: 0.5 * (lo + hi) for k, (lo, hi) in self._family.param_ranges("train").items()}
        super().__init__({"k": mid["k"], "m": mid["m"], "gamma": mid["gamma"]})
        self.state_names = list(self._family.state_names)
        self._rng = np.random.default_rng(seed)
        self._radius = float(radius)
        x = self._family.initial_state({**mid, "radius": radius}, self._rng).ravel()
        self._x, self._v, self._t = x, np.zeros_like(x), 0.0
        self._h = self._next_h()

    def _next_h(self) -> float:
        fam = self._family
        return fam.dt * (1.0 + fam.jitter * self._rng.uniform(-1.0, 1.0))

    def _apply(self, name: str, scale: float) -> None:
        params = dict(zip(self.param_names, self.param_values, strict=True))
        params[name] = self.nominal[name] * scale
        self._family.check_params({**params, "radius": self._radius})  # refuse values outside every range

    def _advance(self):
        k, m, gamma = self.param_values
        half = self._x.size
        state = np.empty(2 * half)
        state[:half], state[half:] = self._x, m * self._v
        t, h = self._t, self._h
        sub = h / self._family.substeps
        for _ in range(self._family.substeps):
            self._family.substep(self._x, self._v, sub, k, m, gamma)
        if not (np.isfinite(self._x).all() and np.isfinite(self._v).all()):
            raise MetaSymError(f"spring mesh stream diverged at t={t:.3f}")
        self._t, self._h = t + h, self._next_h()
        return t, state, np.zeros(0), h


class QuantumStream(SystemStream):
    """Heterodyne record (I, Q) in chunks; parameters omega, kappa, epsilon, nbar, eta."""

    system = "quantum"

    def __init__(self, seed: int = 0, chunk: int = 200, **options):
        from metasym_core.systems.quantum import OpenQuantumSystem

        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 2:
            raise MetaSymError(f"quantum chunk must be an integer >= 2, got {chunk!r}")
        self._family = OpenQuantumSystem(**options)
        mid = {k: 0.5 * (lo + hi) for k, (lo, hi) in self._family.param_ranges("train").items()}
        super().__init__(mid)
        self.state_names = list(self._family.state_names)
        self._rng = np.random.default_rng(seed)
        self._chunk_len = chunk
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantum-chunk")
        self._next: Future | None = None
        self._states = np.zeros((0, 2))
        self._i, self._t = 0, 0.0

    def _params(self) -> dict[str, float]:
        return dict(zip(self.param_names, self.param_values, strict=True))

    def _simulate(self, params: dict[str, float], seed: int) -> np.ndarray:
        background_scheduling()
        traj = self._family.simulate(params, self._chunk_len, np.random.default_rng(seed))
        return traj.states

    def _prefetch(self) -> None:
        self._next = self._pool.submit(self._simulate, self._params(), int(self._rng.integers(2**63)))

    def _apply(self, name: str, scale: float) -> None:
        params = self._params()
        params[name] = self.nominal[name] * scale
        self._family.check_params(params)  # refuse values outside every range
        if self._next is not None:
            self._next.cancel()
        self._next = None
        self._states, self._i = np.zeros((0, 2)), 0  # restart with the new parameters
        self.scales[name] = scale
        self._prefetch()

    def _advance(self):
        if self._i >= len(self._states):
            if self._next is None:
                self._prefetch()
            self._states, self._i = self._next.result(), 0
            self._prefetch()
        x = self._states[self._i]
        self._i += 1
        t, dt = self._t, self._family.dt
        self._t += dt
        return t, x.copy(), np.zeros(0), dt

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


#: system -> its stream class, from the systems' registry (`systems.SPECS`)
STREAMS: dict[str, type[SystemStream]] = {name: globals()[spec.stream] for name, spec in SPECS.items() if spec.stream}


def make_stream(system: str, **options) -> SystemStream:
    """The stream of `system` with constructor `options` (MetaSymError on a bad name or option)."""
    if system not in STREAMS:
        raise MetaSymError(f"unknown system {system!r}; expected one of {', '.join(STREAMS)}")
    try:
        return STREAMS[system](**options)
    except TypeError as exc:
        raise MetaSymError(f"bad {system} stream option: {exc}") from None
