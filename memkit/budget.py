"""The byte budget: one ledger that every store and every model is charged to.

MEMO ("A Model or 603 Exemplars", Zhou et al., ICLR 2023) compares continual
learners at equal *total* memory: a model's parameters are bytes too, drawn
from the same budget as the exemplars. ``Budget`` is that ledger.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d+))?\s*([a-zA-Z]*)\s*$")


def parse_size(size: int | str) -> int:
    """Return ``size`` in bytes.

    Accepts a non-negative int, or a string such as ``"512KB"``, ``"2MiB"``,
    ``"1.5GB"``: SI units (KB, MB, GB, TB) are powers of 1000, IEC units
    (KiB, MiB, GiB, TiB) powers of 1024. The result must be a whole number of
    bytes.
    """
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise TypeError(f"size: expected an int or a string like '2MiB', got {size!r}")
    if isinstance(size, int):
        if size < 0:
            raise ValueError(f"size: expected a non-negative number of bytes, got {size}")
        return size
    match = _SIZE.match(size)
    unit = match.group(3).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"size: expected a number with an optional unit among B, KB, MB, GB, TB, "
            f"KiB, MiB, GiB, TiB (e.g. '512KB', '2MiB'), got {size!r}"
        )
    mantissa, exponent = match.group(1), int(match.group(2) or 0)
    value = float(mantissa) * 10.0**exponent * _UNITS[unit]
    if value != int(value):
        raise ValueError(f"size: {size!r} is not a whole number of bytes ({value})")
    return int(value)


def format_size(nbytes: int) -> str:
    """Return ``nbytes`` in the largest IEC unit that keeps it >= 1, e.g. '1.50 MiB'."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class BudgetExceeded(RuntimeError):
    """Raised when a charge would take a budget past its capacity."""

    def __init__(self, owner: str, requested: int, free: int, capacity: int):
        self.owner, self.requested, self.free, self.capacity = owner, requested, free, capacity
        super().__init__(
            f"budget exceeded: {owner!r} asked for {requested} bytes "
            f"({format_size(requested)}) but only {free} bytes ({format_size(free)}) "
            f"of {capacity} remain"
        )


def module_nbytes(model: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers, each counted once, by its real dtype."""
    tensors = {id(t): t for t in model.parameters()}
    tensors.update({id(t): t for t in model.buffers()})
    return sum(t.numel() * t.element_size() for t in tensors.values())


class Budget:
    """A byte ledger shared by models and stores.

    >>> budget = Budget("2MB")
    >>> budget.charge("replay", 500_000)
    >>> budget.free
    1500000
    """

    def __init__(self, capacity: int | str):
        self.capacity = parse_size(capacity)
        self._ledger: dict[str, int] = {}

    @property
    def used(self) -> int:
        return sum(self._ledger.values())

    @property
    def free(self) -> int:
        return self.capacity - self.used

    @property
    def owners(self) -> Mapping[str, int]:
        """A read-only copy of the ledger: owner -> bytes charged."""
        return dict(self._ledger)

    def charged(self, owner: str) -> int:
        return self._ledger.get(owner, 0)

    def charge(self, owner: str, nbytes: int) -> None:
        """Charge ``nbytes`` to ``owner``; raise ``BudgetExceeded`` if they do not fit."""
        nbytes = _check_amount(owner, nbytes)
        if nbytes > self.free:
            raise BudgetExceeded(owner, nbytes, self.free, self.capacity)
        self._ledger[owner] = self._ledger.get(owner, 0) + nbytes

    def adjust(self, owner: str, delta: int) -> None:
        """Charge ``delta`` bytes to ``owner`` if positive, release ``-delta`` if negative."""
        if delta > 0:
            self.charge(owner, delta)
        elif delta < 0:
            self.release(owner, -delta)

    def release(self, owner: str, nbytes: int | None = None) -> None:
        """Give back ``nbytes`` of ``owner``'s charge (all of it when ``nbytes`` is None)."""
        held = self._ledger.get(owner)
        if held is None:
            raise KeyError(f"release: {owner!r} holds nothing in this budget")
        nbytes = held if nbytes is None else _check_amount(owner, nbytes)
        if nbytes > held:
            raise ValueError(f"release: {owner!r} holds {held} bytes, cannot release {nbytes}")
        if nbytes == held:
            del self._ledger[owner]
        else:
            self._ledger[owner] = held - nbytes

    def charge_model(self, model: torch.nn.Module, owner: str = "model") -> int:
        """Set ``owner``'s charge to the model's current bytes and return them.

        Parameters and buffers are counted by their real dtype, shared tensors once.
        Calling it again after the model grew charges only the growth, so a
        learner that adds blocks keeps its line in the ledger exact.
        """
        nbytes = module_nbytes(model)
        held = self.charged(owner)
        if nbytes > held:
            self.charge(owner, nbytes - held)
        elif nbytes < held:
            self.release(owner, held - nbytes)
        return nbytes

    def report(self) -> str:
        """A Markdown table of owners, their bytes and share, then used and free."""
        lines = ["| owner | bytes | size | share |", "|---|---:|---:|---:|"]
        for owner, nbytes in self._ledger.items():
            share = nbytes / self.capacity if self.capacity else 0.0
            lines.append(f"| {owner} | {nbytes} | {format_size(nbytes)} | {share:.1%} |")
        for name, nbytes in (("used", self.used), ("free", self.free)):
            share = nbytes / self.capacity if self.capacity else 0.0
            lines.append(f"| *{name}* | {nbytes} | {format_size(nbytes)} | {share:.1%} |")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Budget(capacity={self.capacity}, used={self.used}, owners={len(self._ledger)})"


def _check_amount(owner: str, nbytes: int) -> int:
    if not isinstance(owner, str) or not owner:
        raise TypeError(f"owner: expected a non-empty string, got {owner!r}")
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"{owner!r}: expected a non-negative int number of bytes, got {nbytes!r}")
    return nbytes
