"""Runners: where the runs of a sweep execute — this process, local processes, or Ray.

A runner maps a function over argument tuples and yields the results as
they finish (in any order). Three are built in:

- ``serial``: one after the other in this process; the simplest to debug.
- ``joblib``: ``n_jobs`` local worker processes (joblib's loky backend).
- ``ray``: tasks on Ray (Moritz et al., "Ray: A Distributed Framework for
  Emerging AI Applications", OSDI 2018), one CPU each. With no address a local
  Ray is started for the sweep and stopped after it; with an address
  (``"auto"``, or ``"ray://head:10001"``) the runs go to an existing cluster,
  whose nodes must have memkit installed (the same version as the driver).

Every run sets one torch thread for itself, so the same config gives the
same numbers on every runner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from joblib import Parallel, delayed

RUNNERS = ("serial", "joblib", "ray")


def run_unordered(fn: Callable, args: Iterable[Sequence], *, runner: str = "joblib",
                  n_jobs: int = 2, address: str | None = None) -> Iterator:
    """Yield ``fn(*a)`` for each ``a`` in ``args`` as each finishes, on ``runner``."""
    if runner not in RUNNERS:
        raise ValueError(f"runner: expected one of {list(RUNNERS)}, got {runner!r}")
    if n_jobs < 1:
        raise ValueError(f"n_jobs: expected a positive number of parallel runs, got {n_jobs}")
    if address is not None and runner != "ray":
        raise ValueError(f"address {address!r} is for the ray runner, not {runner!r}")
    if runner == "serial":
        return (fn(*a) for a in args)
    if runner == "joblib":
        return Parallel(n_jobs=n_jobs, return_as="generator_unordered")(
            delayed(fn)(*a) for a in args)
    return _on_ray(fn, list(args), n_jobs, address)


def _on_ray(fn: Callable, args: list[Sequence], n_jobs: int, address: str | None) -> Iterator:
    """Submit every call as a one-CPU Ray task; yield results in the order they finish."""
    try:
        import ray
    except ImportError:
        raise ImportError("the ray runner needs Ray: pip install 'memkit[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        local = {"num_cpus": n_jobs, "include_dashboard": False} if address is None else {}
        ray.init(address=address, log_to_driver=False, logging_level="ERROR",
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}},
                 **local)
    try:
        task = ray.remote(num_cpus=1)(fn)
        waiting = [task.remote(*a) for a in args]
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started_here:
            ray.shutdown()
