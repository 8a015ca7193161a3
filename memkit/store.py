"""Store: the base of everything that remembers, charged in bytes to a ``Budget``.

Three families share it: sample memories (``add`` / ``sample``), parameter
memories (``consolidate`` / ``penalty``) and key/value banks (``write`` /
``search``). This module holds the base and the sample-memory family; a
store's ``nbytes`` is the exact size of the tensors it holds (dtype x numel),
never an estimate.
"""

from __future__ import annotations

import abc
import math
import os
from collections.abc import Iterator, Mapping

import torch

from memkit.batch import Batch, Spec
from memkit.budget import Budget, BudgetExceeded, parse_size
from memkit.codecs import Codec, get_codec
from memkit.io import load_tensors, read_manifest, save_tensors
from memkit.kernels.sampling import sample_distinct
from memkit.seeding import derive_generator


class Store(abc.ABC):
    """Something that remembers. Subclasses hold tensors and say how to rebuild themselves.

    A subclass implements ``tensors()`` (every tensor it holds, by name),
    ``config()`` (the JSON-able keyword arguments that rebuild an empty store
    of the same shape) and, when it keeps counters, ``extra_state()`` /
    ``load_extra_state()``.
    """

    registry_name: str = ""
    """The name this class is registered under (``memkit list`` shows it)."""

    resizable: tuple[str, ...] = ()
    """Config keys in which a saved state may differ from this store's config."""

    def __init__(self, budget: Budget | int | str, owner: str):
        self.budget = budget if isinstance(budget, Budget) else Budget(budget)
        self.owner = owner

    @abc.abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor the store holds, by name."""

    @abc.abstractmethod
    def config(self) -> dict:
        """JSON-able keyword arguments that rebuild an empty store of this shape."""

    def extra_state(self) -> dict:
        """JSON-able counters beside the tensors (items seen, updates made ...)."""
        return {}

    def load_extra_state(self, extra: Mapping) -> None:  # noqa: B027 - optional hook
        """Restore what ``extra_state`` returned; raise before assigning anything."""

    @property
    def nbytes(self) -> int:
        """Exact bytes of the tensors held: dtype size x number of elements, summed."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    @property
    def filled_nbytes(self) -> int:
        """Bytes holding remembered content (all of ``nbytes`` unless the store says less)."""
        return self.nbytes

    def state_dict(self) -> dict:
        return {"tensors": dict(self.tensors()), "extra": self.extra_state()}

    def load_state_dict(self, state: Mapping) -> None:
        """Copy ``state`` in; on any mismatch raise before anything is modified."""
        if set(state) != {"tensors", "extra"}:
            raise ValueError(f"{type(self).__name__}.load_state_dict: expected keys "
                             f"['extra', 'tensors'], got {sorted(state)}")
        mine, theirs = self.tensors(), state["tensors"]
        if set(mine) != set(theirs):
            raise ValueError(f"{type(self).__name__}.load_state_dict: expected tensors "
                             f"{sorted(mine)}, got {sorted(theirs)}")
        for name, t in mine.items():
            other = theirs[name]
            if self._expected_shape(name, t, other) != other.shape or other.dtype != t.dtype:
                raise ValueError(f"{type(self).__name__}.load_state_dict: tensor {name!r} "
                                 f"expected {tuple(t.shape)} {t.dtype}, "
                                 f"got {tuple(other.shape)} {other.dtype}")
        self._check_adoptable(theirs, state["extra"])
        self.load_extra_state(state["extra"])  # validates before it assigns
        self._adopt(theirs)

    def _expected_shape(self, name: str, mine: torch.Tensor, theirs: torch.Tensor) -> torch.Size:
        """The shape a saved tensor must have (a resizable store accepts another length)."""
        return mine.shape

    def _check_adoptable(self, tensors: Mapping[str, torch.Tensor],  # noqa: B027 - a hook
                         extra: Mapping) -> None:
        """Raise if ``tensors`` cannot be taken over (e.g. not enough budget); change nothing."""

    def _adopt(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Take over validated tensors."""
        for name, t in self.tensors().items():
            t.copy_(tensors[name])

    def save(self, path: str | os.PathLike) -> None:
        """Write the store atomically to one ``.safetensors`` file with its manifest."""
        manifest = {"kind": "store", "store": self.registry_name,
                    "class": f"{type(self).__module__}.{type(self).__qualname__}",
                    "config": self.config(), "nbytes": self.nbytes,
                    "extra": self.extra_state()}
        save_tensors(path, self.tensors(), manifest)

    def load(self, path: str | os.PathLike) -> None:
        """Load a file written by ``save`` of a store of this class and config.

        A truncated, tampered or other-class file raises ``StoreFormatError`` or
        ``ValueError`` and leaves this store unchanged.
        """
        manifest = read_manifest(path)
        expected = f"{type(self).__module__}.{type(self).__qualname__}"
        if manifest.get("class") != expected:
            raise ValueError(f"{path}: holds a {manifest.get('class')!r}, expected {expected!r}")
        config, saved = self.config(), manifest.get("config", {})
        diff = sorted(k for k in {**config, **saved}
                      if config.get(k) != saved.get(k) and k not in self.resizable)
        if diff:
            raise ValueError(f"{path}: saved with a different configuration (keys {diff}); "
                             f"expected {config}, got {manifest.get('config')}")
        tensors, manifest = load_tensors(path)
        self.load_state_dict({"tensors": tensors, "extra": manifest.get("extra", {})})

    def release(self) -> None:
        """Give this store's bytes back to its budget (the store must not be used after)."""
        self.budget.release(self.owner)


class SampleMemory(Store):
    """A store of items (rows of a ``Batch``) in preallocated slots.

    Capacity in items is derived from bytes: the allotment (``nbytes``, or all
    that is free in the budget) minus the codec's fixed state, divided by the
    bytes one item costs (its spec fields under the codec, plus any hidden
    per-item ``aux`` fields a method keeps, such as an insertion time or a
    herding rank), rounded down. The whole capacity is allocated and charged
    up front; ``resize`` changes it, evicting what the method chooses.
    """

    resizable = ("nbytes",)
    """Config keys a saved state may differ in: ``load`` resizes to the saved capacity."""

    def __init__(self, spec: Spec, budget: Budget | int | str, *, owner: str = "memory",
                 nbytes: int | str | None = None, codec: str = "raw", aux: Spec | None = None,
                 seed: int = 0):
        super().__init__(budget, owner)
        self.seed = seed
        self._updates = 0
        self.spec = normalize_spec(spec)
        self.codec = _payload_codec(codec, self.spec)
        aux = normalize_spec(aux) if aux else {}
        clash = sorted(set(aux) & set(self.spec))
        if clash:
            raise ValueError(f"spec: field(s) {clash} are reserved by {type(self).__name__}")
        stored = {**self.spec, "x": (self.spec["x"][0], self.codec.dtype or self.spec["x"][1]),
                  **aux}
        self.item_nbytes = sum(math.prod(shape) * dtype.itemsize
                               for shape, dtype in stored.values())
        self._codec_state = self.codec.state(self.spec["x"][0])
        allotment = self.budget.free if nbytes is None else parse_size(nbytes)
        self.capacity = self._capacity_for(allotment)
        self.budget.charge(owner, self.nbytes_for(self.capacity))
        self._slots = {name: torch.zeros((self.capacity, *shape), dtype=dtype)
                       for name, (shape, dtype) in stored.items()}
        self._size = 0
        self._fitted = False

    def _fixed_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._codec_state.values())

    def nbytes_for(self, capacity: int) -> int:
        """Bytes this memory needs to hold ``capacity`` items (with its fixed codec state)."""
        return capacity * self.item_nbytes + self._fixed_nbytes()

    def _capacity_for(self, allotment: int) -> int:
        capacity = max(allotment - self._fixed_nbytes(), 0) // self.item_nbytes
        if capacity < 1:
            raise BudgetExceeded(self.owner, self.nbytes_for(1), allotment,
                                 self.budget.capacity)
        return capacity

    def resize(self, nbytes: int | str) -> Batch:
        """Change the allotment to ``nbytes``; return the items a shrink evicted.

        When fewer items fit than are held, ``_keep`` (the method's rule) picks
        the survivors. Growing charges the budget first and raises
        ``BudgetExceeded`` before anything changes.
        """
        capacity = self._capacity_for(parse_size(nbytes))
        grow = self.nbytes_for(capacity) - self.nbytes
        if grow > 0:
            self.budget.charge(self.owner, grow)
        keep = self._keep(capacity) if capacity < self._size else torch.arange(self._size)
        gone = torch.ones(self._size, dtype=torch.bool)
        gone[keep] = False
        evicted = self._read(torch.nonzero(gone).squeeze(1))
        self._reallocate(capacity, keep)
        if grow < 0:
            self.budget.release(self.owner, -grow)
        self._updates += 1  # later draws must not repeat the ones the shrink used
        return evicted

    def _generator(self, purpose: str) -> torch.Generator:
        """The draws of the current update: ``derive_generator(seed, purpose, updates so far)``.

        A method calls it once per update and counts the update in ``_updates``,
        so a reloaded memory continues with the draws the original would make.
        """
        return derive_generator(self.seed, purpose, self._updates)

    def _remove(self, slots: torch.Tensor) -> Batch:
        """Evict the items in ``slots`` (distinct) and return them, keeping the held slots a prefix.

        The items held past the new size move into the holes below it: O(evicted)
        row copies, not a compaction of the whole buffer.
        """
        evicted = self._read(slots)
        if len(slots) == 0:  # the common case: no O(size) mask
            return evicted
        self._layout_changed()
        gone = torch.zeros(self._size, dtype=torch.bool)
        gone[slots] = True
        size = self._size - len(slots)
        holes = torch.nonzero(gone[:size]).squeeze(1)
        movers = size + torch.nonzero(~gone[size:]).squeeze(1)
        for t in self._slots.values():
            t[holes] = t[movers]
        self._size = size
        return evicted

    def _keep(self, capacity: int) -> torch.Tensor:
        """Slots that survive a shrink to ``capacity`` items, in their new order."""
        raise NotImplementedError(f"{type(self).__name__} cannot shrink")

    def _reallocate(self, capacity: int, keep: torch.Tensor) -> None:
        slots = {}
        for name, t in self._slots.items():
            slots[name] = torch.zeros((capacity, *t.shape[1:]), dtype=t.dtype)
            slots[name][: len(keep)] = t[keep]
        self._slots, self.capacity, self._size = slots, capacity, len(keep)
        self._layout_changed()

    def _layout_changed(self) -> None:
        """Items moved between slots (resize, load, compaction): a method that keeps an
        index derived from the slots (class -> slots, counts) drops it here and rebuilds it
        when next needed."""

    def _expected_shape(self, name, mine, theirs):
        if name in self._slots:  # slots may come from a store of another capacity
            return torch.Size((len(theirs), *mine.shape[1:]))
        return mine.shape

    def _check_adoptable(self, tensors, extra):
        capacity = saved_capacity(self, tensors, extra, min_length=1)
        grow = self.nbytes_for(capacity) - self.nbytes
        if grow > self.budget.free:
            raise BudgetExceeded(self.owner, grow, self.budget.free, self.budget.capacity)

    def _adopt(self, tensors):
        self._layout_changed()
        capacity = len(tensors["x"])
        if capacity == self.capacity:
            return super()._adopt(tensors)
        grow = self.nbytes_for(capacity) - self.nbytes
        self.budget.adjust(self.owner, grow)
        self._slots = {name: tensors[name].clone() for name in self._slots}
        for name, t in self._codec_state.items():
            t.copy_(tensors[f"codec.{name}"])
        self.capacity = capacity

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**self._slots, **{f"codec.{k}": v for k, v in self._codec_state.items()}}

    def config(self) -> dict:
        return {"spec": spec_to_json(self.spec), "owner": self.owner, "nbytes": self.nbytes,
                "codec": self.codec.name}

    def extra_state(self) -> dict:
        return {"fitted": self._fitted, "size": self._size, "updates": self._updates}

    def load_extra_state(self, extra: Mapping) -> None:
        fitted, size, updates = bool(extra["fitted"]), int(extra["size"]), int(extra["updates"])
        if size < 0 or updates < 0:
            raise ValueError(f"{type(self).__name__}: saved size and update count must be >= 0, "
                             f"got {size} and {updates}")
        self._fitted, self._size, self._updates = fitted, size, updates

    def __len__(self) -> int:
        return self._size

    @property
    def filled_nbytes(self) -> int:
        return self._size * self.item_nbytes

    @abc.abstractmethod
    def add(self, batch: Batch) -> Batch:
        """Offer ``batch`` to the memory; return the stored items it evicted."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> Batch:
        """``min(n, len)`` stored items drawn uniformly without replacement."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"sample: expected a non-negative int, got {n!r}")
        if self._size == 0:
            raise ValueError(f"sample: the {type(self).__name__} is empty")
        return self._read(sample_distinct(self._size, n, generator))

    def contents(self) -> Batch:
        """Every stored item, decoded, in slot order."""
        return self._read(slice(0, self._size))

    def batches(self, size: int) -> Iterator[Batch]:
        """The stored items, in slot order, in minibatches of at most ``size``."""
        for start in range(0, self._size, size):
            yield self._read(slice(start, min(start + size, self._size)))

    def _read(self, index) -> Batch:
        """The spec fields of the items in ``index`` (slots), decoded."""
        fields = {name: self._slots[name][index] for name in self.spec}
        fields["x"] = self.codec.decode(fields["x"], self._codec_state)
        return Batch(**fields)

    def _write(self, slots: torch.Tensor, rows: Batch, **aux: torch.Tensor) -> None:
        """Encode ``rows`` into ``slots``; hidden per-item fields come as keyword tensors."""
        if not self._fitted and len(rows):
            self.codec.fit(rows.x, self._codec_state)
            self._fitted = True
        for name in self.spec:
            value = rows[name]
            self._slots[name][slots] = (self.codec.encode(value, self._codec_state)
                                        if name == "x" else value.to(self._slots[name].dtype))
        for name, value in aux.items():
            self._slots[name][slots] = value

    def _check(self, batch: Batch) -> None:
        if not isinstance(batch, Batch):
            raise TypeError(f"{type(self).__name__}.add: expected a Batch, "
                            f"got {type(batch).__name__}")
        batch.check(self.spec, where=f"{type(self).__name__}.add")


def saved_capacity(store: Store, tensors: Mapping[str, torch.Tensor], extra: Mapping, *,
                   min_length: int = 0) -> int:
    """The slot count of a saved slotted store, after checking its slots and saved size agree."""
    where = f"{type(store).__name__}.load_state_dict"
    lengths = {len(tensors[name]) for name in store._slots}
    if len(lengths) != 1 or min(lengths) < min_length:
        least = "one positive length" if min_length else "one length"
        raise ValueError(f"{where}: slot tensors must share {least}, got {sorted(lengths)}")
    capacity = lengths.pop()
    if not 0 <= int(extra.get("size", -1)) <= capacity:
        raise ValueError(f"{where}: saved size {extra.get('size')!r} does not fit "
                         f"{capacity} slots")
    return capacity


def normalize_spec(spec) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Accept ``{field: (shape, dtype)}`` with torch dtypes or their names ('float32')."""
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError(f"spec: expected a non-empty mapping field -> (shape, dtype), "
                         f"got {spec!r}")
    out = {}
    for name, entry in spec.items():
        try:
            shape, dtype = entry
            shape = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise ValueError(f"spec[{name!r}]: expected (shape, dtype), got {entry!r}") from None
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, None)
        if not isinstance(dtype, torch.dtype) or any(d < 1 for d in shape):
            raise ValueError(f"spec[{name!r}]: expected positive dims and a torch dtype, "
                             f"got {entry!r}")
        out[name] = (shape, dtype)
    return out


def _payload_codec(name: str, spec: dict) -> Codec:
    if "x" not in spec:
        raise ValueError(f"spec: a sample memory needs the payload field 'x', got {list(spec)}")
    codec = get_codec(name)
    if codec.dtype is not None and not spec["x"][1].is_floating_point:
        raise ValueError(f"codec {name!r}: needs a floating-point field 'x', "
                         f"got {spec['x'][1]}")
    return codec


def spec_to_json(spec: Spec) -> dict[str, list]:
    return {name: [list(shape), str(dtype).removeprefix("torch.")]
            for name, (shape, dtype) in spec.items()}
