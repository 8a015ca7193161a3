"""Sweeps: grids of run configs, expanded from a file, run on a runner, each recorded once.

The MEMO paper (Zhou et al., ICLR 2023) compares continual learners across
memory scales, not at one size: a grid of methods x total byte budgets x
seeds (``memkit.sweep_report`` summarises it as mean ± std per cell and as
the area under the accuracy-versus-memory curve). Each run is one job with one
torch thread; the same config gives the same numbers serially, in local
processes and on Ray (``memkit.runners``).

A sweep file names such a grid::

    base: {...a full run config, as memkit.config reads...}
    axes:                        # dotted key paths -> lists; the cartesian product
      learner.name: [finetune, er, icarl]
      memory: [null, {name: reservoir}, {name: herding}]
      budget: [100KB, 200KB]
      seed: [0, 1]
    zip: [[learner.name, memory]]   # these axes advance together (equal lengths)

Top-level keys starting with ``x-`` are ignored: a place for YAML anchors
(``x-train: &train {epochs: 5}`` then ``{name: er, <<: *train}``).
Axes vary in file order, the last one fastest; a zip group sits where its first
key does. Setting a path missing from ``base`` creates the missing mappings;
a path through a value that is not a mapping (``memory.codec`` when the
memory is ``null``) is an error. ``memory: null`` in an axis removes the
memory (for learners without one, such as ``finetune``). Each run's id is the
first 12 hex digits of the SHA-256 of its config's canonical JSON (sorted
keys), so the same config has the same id in every sweep; ``run_sweep``
records finished runs in a ``memkit.results.ResultStore`` and skips them
when the sweep is run again.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import socket
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from memkit.budget import BudgetExceeded, parse_size
from memkit.config import BudgetTooSmall, ConfigError, build, check_top_level, read_yaml
from memkit.results import ResultStore
from memkit.run import RunResult, run
from memkit.runners import run_unordered

SWEEP_KEYS = ("base", "axes", "zip")
DONE = ("ok", "does not fit")


def run_config(config: Mapping) -> tuple[dict, RunResult | None]:
    """Build and run one config with one torch thread: its metrics row and ``RunResult``.

    A config whose parts do not fit its budget gets status ``"does not fit"``
    and the reason, not an exception: at small budgets a large model leaving
    no room for a memory is itself a result. Any other exception gives status
    ``"failed"`` with the traceback, so one broken run never stops a grid.
    The result is None unless the status is ``"ok"``.
    """
    torch.set_num_threads(1)
    started = time.perf_counter()
    try:
        row = {"budget": parse_size(config["budget"])}
        setup = build(config)
        result = run(setup.stream, setup.learner, budget=setup.budget, progress=False)
    except (BudgetExceeded, BudgetTooSmall) as exc:
        return {"status": "does not fit", "reason": str(exc)}, None
    except Exception:  # one failing run must not stop a grid; keep its traceback
        return {"status": "failed", "reason": traceback.format_exc()}, None
    stores = setup.learner.stores.values()
    return {**row, "status": "ok", "final_average": result.final_average,
            "forgetting": result.forgetting, "backward_transfer": result.backward_transfer,
            "model_nbytes": setup.budget.used - sum(s.nbytes for s in stores),
            "memory_nbytes": sum(s.nbytes for s in stores),
            "items": sum(len(s) for s in stores if hasattr(s, "__len__")),
            "wall_s": time.perf_counter() - started, "matrix": result.matrix}, result


@dataclass(frozen=True)
class SweepRun:
    """One concrete run of a sweep: its id, its config, and its value on every axis."""

    id: str
    config: dict
    axes: dict


def load_sweep(path: str | Path) -> dict:
    """Read a sweep file and check it (``expand_sweep`` raises on any problem)."""
    sweep = read_yaml(path, "sweep")
    expand_sweep(sweep)
    return sweep


def run_id(config: Mapping) -> str:
    """First 12 hex digits of the SHA-256 of the config's canonical JSON (sorted keys)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def expand_sweep(sweep) -> list[SweepRun]:
    """The concrete runs of a sweep, in a stable order (see the module docstring)."""
    base, axes, groups = _checked_sweep(sweep)
    runs, seen = [], {}
    for choice in itertools.product(*(_group_values(axes, g) for g in groups)):
        values = dict(itertools.chain.from_iterable(c.items() for c in choice))
        config = copy.deepcopy(base)
        for key in axes:
            _set(config, key, copy.deepcopy(values[key]))
        check_top_level(config, where=f"sweep run {values}")
        identity = run_id(config)
        if identity in seen:
            raise ConfigError(f"sweep.axes: runs {seen[identity]} and {values} have the same "
                              f"config (id {identity}); remove the repeated axis value")
        seen[identity] = values
        runs.append(SweepRun(identity, config, values))
    return runs


def _checked_sweep(sweep) -> tuple[dict, dict, list[list[str]]]:
    """Base, axes, and the axis groups in product order (a lone axis is a group of one)."""
    if not isinstance(sweep, Mapping):
        raise ConfigError(f"sweep: expected a mapping with keys {list(SWEEP_KEYS)}, "
                          f"got {type(sweep).__name__}")
    unknown = sorted(k for k in set(sweep) - set(SWEEP_KEYS) if not str(k).startswith("x-"))
    if unknown:
        raise ConfigError(f"sweep: unknown key(s) {unknown}; expected among {list(SWEEP_KEYS)} "
                          f"(or x-... for YAML anchors)")
    base, axes, zips = sweep.get("base"), sweep.get("axes") or {}, sweep.get("zip") or []
    if not isinstance(base, Mapping):
        raise ConfigError(f"sweep.base: expected a run config (a mapping), got {base!r}")
    if not isinstance(axes, Mapping):
        raise ConfigError(f"sweep.axes: expected a mapping of key paths to lists, got {axes!r}")
    for key, values in axes.items():
        if not isinstance(key, str) or not all(key.split(".")):
            raise ConfigError(f"sweep.axes: expected dotted key paths like 'learner.name', "
                              f"got {key!r}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.axes.{key}: expected a non-empty list, got {values!r}")
    zipped = _checked_zips(zips, axes)
    groups, placed = [], set()
    for key in axes:
        group = next((g for g in zipped if key in g), [key])
        if group[0] not in placed:
            groups.append(group)
            placed.add(group[0])
    return dict(base), dict(axes), groups


def _checked_zips(zips, axes: Mapping) -> list[list[str]]:
    if not isinstance(zips, list):
        raise ConfigError(f"sweep.zip: expected a list of lists of axis keys, got {zips!r}")
    owner = {}
    for i, group in enumerate(zips):
        where = f"sweep.zip[{i}]"
        if not isinstance(group, list) or len(group) < 2:
            raise ConfigError(f"{where}: expected a list of at least two axis keys, got {group!r}")
        for key in group:
            if key not in axes:
                raise ConfigError(f"{where}: {key!r} is not an axis; expected keys among "
                                  f"{list(axes)}")
            if key in owner:
                raise ConfigError(f"{where}: {key!r} is already zipped in sweep.zip[{owner[key]}]")
            owner[key] = i
        lengths = {key: len(axes[key]) for key in group}
        if len(set(lengths.values())) > 1:
            raise ConfigError(f"{where}: zipped axes need lists of equal length, got "
                              + ", ".join(f"{k} ({n})" for k, n in lengths.items()))
    return [list(group) for group in zips]


def _group_values(axes: Mapping, group: list[str]) -> list[dict]:
    return [dict(zip(group, values, strict=True))
            for values in zip(*(axes[k] for k in group), strict=True)]


def _set(config: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    node = config
    for depth, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            inside = ".".join(parents[: depth + 1])
            raise ConfigError(f"sweep.axes.{path}: expected a mapping at base.{inside}, got "
                              f"{child!r}")
        node = child
    node[last] = value


def run_sweep(sweep, directory: str | Path, n_jobs: int = 2,
              on_result: Callable[[dict], None] | None = None,
              retry_failed: bool = False, runner: str = "joblib",
              address: str | None = None) -> list[dict]:
    """Run the sweep's runs not yet recorded in ``directory``; return every run's record.

    Runs whose status is ``ok`` or ``does not fit`` are skipped, and so are
    ``failed`` ones unless ``retry_failed``. The rest run on ``runner``
    (``memkit.runners``: serial, joblib with ``n_jobs`` processes, or Ray at
    ``address``); each is recorded (``ResultStore.record``) with its axis
    values and passed to ``on_result`` as soon as it finishes, in whatever
    order they finish. Records come back in the sweep's order.
    """
    return run_runs(expand_sweep(sweep), directory, n_jobs=n_jobs, on_result=on_result,
                    retry_failed=retry_failed, runner=runner, address=address)


def run_runs(runs: Sequence[SweepRun], directory: str | Path, *, n_jobs: int = 2,
             on_result: Callable[[dict], None] | None = None, retry_failed: bool = False,
             runner: str = "joblib", address: str | None = None) -> list[dict]:
    """``run_sweep`` for an explicit list of runs (a part of a sweep's expansion)."""
    axes = {r.id: r.axes for r in runs}
    with ResultStore(directory) as store:
        todo = pending(runs, store.statuses(), retry_failed)
        for record in run_unordered(execute, [(r.id, r.config) for r in todo], runner=runner,
                                    n_jobs=n_jobs, address=address):
            record = record | {"axes": axes[record["id"]]}
            store.record(record)
            if on_result is not None:
                on_result(record)
        return store.get(r.id for r in runs)


def pending(runs: Sequence[SweepRun], statuses: Mapping[str, str],
            retry_failed: bool = False) -> list[SweepRun]:
    """The runs still to do, given the statuses already recorded."""
    skip = DONE if retry_failed else (*DONE, "failed")
    return [r for r in runs if statuses.get(r.id) not in skip]


def execute(identity: str, config: Mapping) -> dict:
    """Run one config in this process and return its record for the results store."""
    started = time.time()
    row, result = run_config(config)
    metrics = {k: v for k, v in row.items() if k not in ("status", "reason")}
    return {"id": identity, "config": dict(config), "status": row["status"], "metrics": metrics,
            "memory": result.memory if result else [], "timings": result.timings if result
            else [], "host": socket.gethostname(), "started": started, "finished": time.time(),
            "error": row.get("reason")}
