"""AgentMemory: remember / recall / forget over a persistent, byte-budgeted memory of records.

An agent's memory stream (Park, O'Brien, Cai, Morris, Liang & Bernstein,
"Generative Agents: Interactive Simulacra of Human Behavior", UIST 2023) keeps
every observation as a record with a creation time, a last-access time and an
importance, and retrieves records by the similarity of their embeddings to a
query; an episodic memory for reinforcement learning (Pritzel et al., "Neural
Episodic Control", ICML 2017) is the same bank of embeddings, bounded, dropping
the least recently used entries when full. ``AgentMemory`` is that bank on disk,
so it outlives the process that wrote it.

- **Records** live in SQLite (WAL mode): id, the item (a string or a JSON
  object), its meta (a flat JSON object of str/int/float), importance, the
  tick it was created and last recalled, how often it was recalled, its bytes,
  and its embedding as a float32 BLOB. Ticks come from a logical clock kept in
  the database: each remembered record and each recall advance it by one. Each
  meta entry is also a row (id, key, value) of the table ``meta_values``,
  indexed by key and value and kept in step with ``records`` by triggers, so
  that a ``where`` dict finds its records without reading the others. A folder
  written before that table existed gets it, filled from the records, when a
  writer opens it; readers scan the records until then.
- **The index** is a faiss index (``index`` is a faiss index string: ``"Flat"``
  is exact; ``"HNSW32"``, ``"IVF64,Flat"`` ... are approximate; an IVF index is
  exact Flat until it holds enough records to train) over the embeddings, keyed
  by record id. Every write is one SQLite transaction that also advances the
  ``epoch`` counter in the database and, through triggers on ``records``, logs
  each insert and delete (eviction and forget alike) as a row (epoch, id,
  ``'add'`` or ``'remove'``) of the table ``changes``. The writer updates its
  index in memory and publishes it, as ``index.faiss`` beside ``index.json``
  (its epoch, size and sha256; each replaced atomically, the JSON last), only
  when the changes logged since the last publish exceed ``publish_fraction``
  of the records indexed (default 0.1; 0.01 for HNSW, whose readers catch up
  by inserting into its graph, ~60 times the cost per vector of a publish in
  ``benchmarks/agent_memory.py``), when it had to rebuild the index (HNSW
  after any removal, IVF when it can first train), when it opens a folder whose
  index it cannot catch up, and on ``close()``; a write otherwise costs its
  records, not the index. After a publish the logged changes up to its epoch
  are deleted and that epoch becomes ``log_floor``. An index of epoch ``e`` is
  caught up to the database's epoch by replaying the changes after ``e``: the
  net removals through ``remove_ids``, the net additions with their embeddings
  read by id. A writer opening loads the published index and catches it up; if
  the file is missing, torn, stale past ``log_floor`` or of the wrong size, it
  rebuilds the index from the stored embeddings and publishes it. A folder
  written before the change log existed gets it when a writer opens it. How
  deep an approximate index searches is a setting of each opened memory,
  passed with every search of whichever index it holds (built, loaded or
  rebuilt) and never stored: ``ef_search`` (default 128), the
  candidates HNSW keeps while it walks its graph (faiss's efSearch, 16 unless
  set: in ``benchmarks/agent_memory.py`` HNSW32 over 100k records finds 0.74 of
  the true top 10 at 16, 0.91 at 64 and 0.96 at 128), and ``nprobe`` (default
  16), the lists IVF visits.
- **Filtered recall** is exact on every index. A ``where`` dict selects its
  records through ``meta_values`` (a predicate is called on every record's
  meta); they are then scored exhaustively among the vectors the index holds in
  memory (a Flat index's own, or HNSW's flat storage), which a faiss id
  selector restricts to the selected ones: one pass over the vectors, no
  embedding read from the database. A trained IVF index may hold lossy codes,
  so its filtered recalls read the selected embeddings from the database and
  score them there (time grows with the number selected).
- **Durability**: a remember or forget commits with ``synchronous=FULL`` and is
  durable once it returns; a crash (of the process or the machine) loses at
  most the write that had not committed. The usage update of a writer's recall
  (``last_used``, ``uses``, the clock) commits with ``synchronous=NORMAL``: it
  survives a crash of the process, but a crash of the operating system or a
  power loss may undo the usage updates of the recalls made since the last
  remember or forget (whose commit makes them durable too). Records are never
  lost that way, and the database stays consistent.
- **Bytes** of a record: its embedding (dim x 4), the UTF-8 JSON of its item
  and of its meta, and ``RECORD_OVERHEAD`` = 48 bytes (id, importance, created,
  last_used and uses as 8-byte numbers, and the index's 8-byte id). The sum is
  charged to a ``memkit.Budget`` under ``owner``; ``capacity`` (optional) caps
  what this memory may hold below what the budget has free (so several memories
  can share one budget in fixed parts). A remember that does not fit evicts by
  ``eviction``: ``"recency"`` the least recently used (oldest
  ``last_used``), ``"usage"`` the least recalled, ``"importance"`` the least
  important, the oldest first among equals (by ``created``, then id). An item
  larger than all the budget this memory could hold raises ``BudgetExceeded``.
  The faiss index's own copy of the vectors, the ``meta_values`` rows and the
  change log (after each write, at most ``publish_fraction`` times the records
  indexed in rows) are not charged.
- **Concurrency**: one writer process at a time (``writer.lock``, an exclusive
  ``flock``), any number of readers (``readonly=True``). A reader recalls inside
  one SQLite read transaction (a consistent snapshot) with an index of that
  snapshot's epoch: when its own lags, it loads the published index if that is
  newer than its own and not newer than the snapshot, else keeps its own, and
  catches it up through the changes the snapshot logs. When it cannot (the
  changes it needs were deleted, the file is torn or missing, an HNSW index
  would have to remove), it retries with a fresh snapshot for up to 0.1 s, then
  builds an index from the snapshot. A writer killed between its commit and a
  publish thus leaves a stale index that readers and the next writer catch up
  from the log. Only the writer's recalls update ``last_used`` and ``uses``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

from memkit.budget import Budget, BudgetExceeded, parse_size
from memkit.buffers.datastore import parse_index
from memkit.io import atomic_path, write_text_atomic
from memkit.kernels.topk import topk_search

FORMAT = "memkit.agent_memory/1"
RECORD_OVERHEAD = 48
"""Bytes charged per record besides its embedding, item and meta (see the module docstring)."""
EVICTIONS = {"recency": "last_used, id", "usage": "uses, created, id",
             "importance": "importance, created, id"}
METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
DATABASE, INDEX, INDEX_INFO, LOCK = "memory.sqlite", "index.faiss", "index.json", "writer.lock"
READ_RETRIES, RETRY_WAIT = 20, 0.005
"""A reader retries up to this many times, this many seconds apart, for an index it can catch up."""
SQL_CHUNK = 900
PUBLISH_FRACTIONS = {"HNSW": 0.01}
"""Default ``publish_fraction`` by index kind (0.1 for the others)."""
SCHEMA = (
    "CREATE TABLE settings (key TEXT PRIMARY KEY, value)",
    "CREATE TABLE records (id INTEGER PRIMARY KEY, item TEXT NOT NULL, meta TEXT NOT NULL, "
    "importance REAL NOT NULL, created INTEGER NOT NULL, last_used INTEGER NOT NULL, "
    "uses INTEGER NOT NULL, nbytes INTEGER NOT NULL, embedding BLOB NOT NULL)",
    *(f"CREATE INDEX by_{rule} ON records ({order})" for rule, order in EVICTIONS.items()),
)
META_SCHEMA = (
    "CREATE TABLE meta_values (id INTEGER NOT NULL, key TEXT NOT NULL, value NOT NULL, "
    "PRIMARY KEY (id, key)) WITHOUT ROWID",
    "CREATE INDEX meta_by_value ON meta_values (key, value)",
    "CREATE TRIGGER meta_remembered AFTER INSERT ON records BEGIN INSERT INTO meta_values "
    "SELECT NEW.id, key, value FROM json_each(NEW.meta); END",
    "CREATE TRIGGER meta_forgotten AFTER DELETE ON records BEGIN "
    "DELETE FROM meta_values WHERE id = OLD.id; END",
    "INSERT INTO meta_values SELECT records.id, entry.key, entry.value "
    "FROM records, json_each(records.meta) AS entry",
)
"""The meta index of a ``where`` dict: created (and filled) by a writer that finds it missing."""
CHANGE_SCHEMA = (
    "CREATE TABLE changes (epoch INTEGER NOT NULL, id INTEGER NOT NULL, op TEXT NOT NULL)",
    "CREATE INDEX changes_by_epoch ON changes (epoch)",
    "CREATE TRIGGER change_remembered AFTER INSERT ON records BEGIN INSERT INTO changes "
    "SELECT value + 1, NEW.id, 'add' FROM settings WHERE key = 'epoch'; END",
    "CREATE TRIGGER change_forgotten AFTER DELETE ON records BEGIN INSERT INTO changes "
    "SELECT value + 1, OLD.id, 'remove' FROM settings WHERE key = 'epoch'; END",
    "INSERT OR REPLACE INTO settings SELECT 'log_floor', value FROM settings WHERE key = 'epoch'",
)
"""The change log: created by a writer that finds it missing, empty up to the epoch it starts at
(``log_floor``: the changes of that epoch and earlier are gone)."""
MATCH_INDEXED = "SELECT id FROM meta_values WHERE key = ? AND value = ?"
MATCH_SCAN = ("SELECT id FROM records WHERE EXISTS (SELECT 1 FROM json_each(records.meta) "
              "WHERE key = ? AND value = ?)")

Item = str | Mapping
Where = Mapping[str, str | int | float] | Callable[[dict], bool]


@dataclass(frozen=True)
class Recalled:
    """One recalled record: inner product (higher is closer) or squared L2 distance as score."""

    id: int
    item: str | dict
    meta: dict
    score: float


def record_nbytes(item: Item, meta: Mapping, dim: int) -> int:
    """Bytes charged for one record of ``item`` and ``meta`` with a ``dim``-dim embedding."""
    return len(_json(item, "item").encode()) + len(_json(meta, "meta").encode()) + 4 * dim \
        + RECORD_OVERHEAD


class AgentMemory:
    """A persistent memory of records, searched by embedding, charged in bytes to a budget."""

    def __init__(self, path: str | os.PathLike, *, budget: Budget | int | str,
                 dim: int | None = None, embed: Callable[[list[str]], torch.Tensor] | None = None,
                 eviction: str = "recency", index: str | None = None, metric: str | None = None,
                 readonly: bool = False, nprobe: int = 16, owner: str = "agent memory",
                 ef_search: int = 128, publish_fraction: float | None = None,
                 capacity: int | str | None = None):
        if eviction not in EVICTIONS:
            raise ValueError(f"eviction: expected one of {list(EVICTIONS)}, got {eviction!r}")
        if metric is not None and metric not in METRICS:
            raise ValueError(f"metric: expected one of {list(METRICS)}, got {metric!r}")
        self.nprobe, self.ef_search = nprobe, ef_search
        self._publish_fraction = None if publish_fraction is None else \
            _check_fraction(publish_fraction)
        self.path, self.embed, self.eviction, self.readonly = Path(path), embed, eviction, readonly
        self.budget = budget if isinstance(budget, Budget) else Budget(budget)
        self.capacity = None if capacity is None else parse_size(capacity)
        self.owner = owner
        self._lock = self._db = self._index = None
        self._epoch, self._charged, self._synchronous = -1, 0, None
        self._published, self._pending = -1, 0
        try:
            self._open(dim if dim is not None else getattr(embed, "dim", None), index, metric)
        except BaseException:
            self.close()
            raise

    @property
    def nprobe(self) -> int:
        """Lists an IVF index visits per search (at most its nlist); settable between recalls."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._nprobe = _check_depth("nprobe", value)

    @property
    def publish_fraction(self) -> float:
        """The writer publishes its index once the changes logged since its last publish
        exceed this fraction of the records indexed (see the module docstring)."""
        return self._publish_fraction

    @property
    def ef_search(self) -> int:
        """Candidates an HNSW index keeps per search: faiss's efSearch, raised to ``k`` when
        smaller; settable between recalls."""
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._ef_search = _check_depth("ef_search", value)

    # -- opening -------------------------------------------------------------------------------

    def _open(self, dim: int | None, index: str | None, metric: str | None) -> None:
        _check_location(self.path, self.readonly)
        if not (self.path / DATABASE).exists():
            _check_dim(dim)  # before anything is created
        if not self.readonly:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = _writer_lock(self.path / LOCK)
        self._db = sqlite3.connect(self.path / DATABASE, isolation_level=None, timeout=30)
        if self.readonly:
            self._db.execute("PRAGMA query_only = 1")
        settings = self._settings(dim, index, metric)
        self.dim, self.index_string, self.metric = (int(settings["dim"]), settings["index"],
                                                    settings["metric"])
        self._spec = parse_index(self.index_string, self.dim)
        if self._publish_fraction is None:
            self._publish_fraction = PUBLISH_FRACTIONS.get(self._spec.kind, 0.1)
        if not self.readonly:
            self._open_writer()

    def _settings(self, dim: int | None, index: str | None, metric: str | None) -> dict:
        try:
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
            settings = dict(self._db.execute("SELECT key, value FROM settings")) \
                if "settings" in tables else {}
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.path / DATABASE}: not a memkit agent memory ({exc})") from None
        if tables and settings.get("format") != FORMAT:
            raise ValueError(f"{self.path / DATABASE}: an SQLite database that is not a memkit "
                             f"agent memory (tables {sorted(tables)})")
        if not tables:
            if self.readonly:
                raise FileNotFoundError(f"{self.path}: no agent memory to read")
            return self._create(dim, index or "Flat", metric or "ip")
        for name, given in (("dim", dim), ("index", index), ("metric", metric)):
            if given is not None and given != settings[name]:
                raise ValueError(f"{name}: this memory was created with {settings[name]!r}, "
                                 f"got {given!r}")
        return settings

    def _create(self, dim: int | None, index: str, metric: str) -> dict:
        parse_index(index, _check_dim(dim))
        settings = {"format": FORMAT, "dim": dim, "index": index, "metric": metric, "epoch": 0,
                    "clock": 0, "next_id": 0}
        self._db.execute("PRAGMA journal_mode=WAL")
        with self._transaction():
            for statement in SCHEMA:
                self._db.execute(statement)
            self._db.executemany("INSERT INTO settings VALUES (?, ?)", settings.items())
        return settings

    def _open_writer(self) -> None:
        for table, schema in (("meta_values", META_SCHEMA), ("changes", CHANGE_SCHEMA)):
            if not self._has_table(table):  # a folder from before the table: add it now
                with self._transaction():
                    for statement in schema:
                        self._db.execute(statement)
        used = self.nbytes
        if used > self._room():  # reopened under a smaller budget: evict to fit
            with self._transaction():
                _, used = self._evict_until(0, self._room(), used)
                self._bump_epoch()
        self._charge(used)
        epoch = self._setting("epoch")
        found = self._caught_up(epoch)
        if found is None:
            self._index, self._epoch = self._build_index(), epoch
            self._publish_index()
        else:
            (self._index, self._published), self._epoch = found, epoch
            self._pending = self._db.execute("SELECT COUNT(*) FROM changes WHERE epoch > ?",
                                             (self._published,)).fetchone()[0]

    # -- public API ----------------------------------------------------------------------------

    def remember(self, item: Item, embedding: torch.Tensor | np.ndarray | None = None,
                 meta: Mapping[str, str | int | float] | None = None,
                 importance: float = 1.0) -> int:
        """Store ``item`` (embedded by ``embed`` unless ``embedding`` is given); return its id."""
        embeddings = None if embedding is None else _as_matrix(embedding, self.dim, "remember")
        return self.remember_many([item], embeddings, None if meta is None else [meta],
                                  [importance])[0]

    def remember_many(self, items: Sequence[Item],
                      embeddings: torch.Tensor | np.ndarray | None = None,
                      meta: Sequence[Mapping] | None = None,
                      importance: Sequence[float] | None = None) -> list[int]:
        """Store ``items`` in one transaction, evicting as needed; return their ids.

        Items may evict items remembered earlier in the same call, as if remembered
        one at a time. Raise ``BudgetExceeded`` (before anything changes) if one item
        is larger than all the room this memory could make.
        """
        self._check_writer("remember")
        items = list(items)
        metas = [{}] * len(items) if meta is None else [_check_meta(m) for m in meta]
        weights = [1.0] * len(items) if importance is None else list(importance)
        if not len(items) == len(metas) == len(weights):
            raise ValueError(f"remember_many: expected as many meta and importance entries as "
                             f"items ({len(items)}), got {len(metas)} and {len(weights)}")
        if not items:
            return []
        vectors = self._embeddings(items, embeddings)
        rows = [self._row(i, m, w) for i, m, w in zip(items, metas, weights, strict=True)]
        room = self._room()
        for row in rows:
            if row[-1] > room:
                raise BudgetExceeded(self.owner, row[-1], room, self.budget.capacity)
        with self._transaction():
            ids, evicted, used = self._insert(rows, vectors, room)
            self._bump_epoch()
        added = [i for i in ids if i not in evicted]
        self._apply(used, added, vectors[[i - ids[0] for i in added]], evicted,
                    logged=len(ids) + len(evicted))
        return ids

    def recall(self, query: str | torch.Tensor | np.ndarray, k: int,
               where: Where | None = None) -> list[Recalled]:
        """The ``k`` records closest to ``query`` (among those ``where`` admits), best first.

        ``where`` is a dict (meta equality on every key) or a predicate on a record's
        meta; filtered recalls are exact and return ``min(k, matching)`` records.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise ValueError(f"recall: expected k as an int >= 1, got {k!r}")
        if where is not None and not (isinstance(where, Mapping) or callable(where)):
            raise TypeError(f"recall: expected where as a dict or a predicate on meta, "
                            f"got {type(where).__name__}")
        q = self._query(query)
        with self._snapshot():
            ids, scores = self._search(q, k) if where is None else self._search_where(q, k, where)
            found = self._fetch(ids)
        if not self.readonly and ids:
            self._touch(ids)
        return [Recalled(i, *found[i], float(s)) for i, s in zip(ids, scores, strict=True)]

    def forget(self, ids: Sequence[int] | Where) -> int:
        """Forget the records ``ids``, or those a ``where`` admits; return how many.

        ``where`` is, as in ``recall``, a dict (meta equality on every key; ``{}``
        admits every record) or a predicate on a record's meta. Unknown ids raise
        ``KeyError`` naming them, before anything is forgotten.
        """
        self._check_writer("forget")
        if isinstance(ids, Mapping) or callable(ids):
            chosen = self._matching(ids)
        else:
            chosen = sorted({_check_id(i) for i in ids})
            missing = sorted(set(chosen) - set(self._existing(chosen)))
            if missing:
                raise KeyError(f"forget: unknown ids {missing}")
        if not chosen:
            return 0
        with self._transaction():
            for part in _chunks(chosen):
                self._db.execute(f"DELETE FROM records WHERE id IN ({_marks(part)})", part)
            self._bump_epoch()
        self._apply(self.nbytes, [], None, set(chosen), logged=len(chosen))
        return len(chosen)

    def ids(self) -> list[int]:
        """Ids of the records held, ascending."""
        return [r[0] for r in self._db.execute("SELECT id FROM records ORDER BY id")]

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0]

    @property
    def nbytes(self) -> int:
        """Bytes of the records held (see the module docstring), as charged to the budget."""
        return self._db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM records").fetchone()[0]

    def close(self) -> None:
        """Publish the writer's index if changes are pending, close the database, release the
        writer lock and the budget charge."""
        try:
            if self._lock is not None and self._index is not None \
                    and self._epoch > self._published:
                self._publish_index()
        finally:
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._lock is not None:
                self._lock.close()
                self._lock = None
            self._charge(0)

    def __enter__(self) -> AgentMemory:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self, synchronous: str = "FULL") -> Iterator[None]:
        """A write transaction, committed with ``synchronous`` (see the module docstring)."""
        if synchronous != self._synchronous:
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._synchronous = synchronous
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _row(self, item: Item, meta: dict, importance: float) -> tuple:
        if not isinstance(item, (str, Mapping)):
            raise TypeError(f"remember: expected an item as a str or a dict, "
                            f"got {type(item).__name__}")
        if isinstance(importance, bool) or not isinstance(importance, (int, float)) \
                or not math.isfinite(importance):
            raise ValueError(f"remember: expected a finite importance, got {importance!r}")
        return (_json(item, "item"), _json(meta, "meta"), float(importance),
                record_nbytes(item, meta, self.dim))

    def _insert(self, rows: list[tuple], vectors: np.ndarray, room: int
                ) -> tuple[list[int], set[int], int]:
        clock, next_id, used = self._setting("clock"), self._setting("next_id"), self._charged
        ids, evicted = [], set()
        for (item, meta, importance, nbytes), vector in zip(rows, vectors, strict=True):
            gone, used = self._evict_until(nbytes, room, used)
            evicted |= gone
            clock += 1
            self._db.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)",
                             (next_id, item, meta, importance, clock, clock, nbytes,
                              vector.tobytes()))
            ids.append(next_id)
            next_id, used = next_id + 1, used + nbytes
        self._set(clock=clock, next_id=next_id)
        return ids, evicted, used

    def _evict_until(self, need: int, room: int, used: int) -> tuple[set[int], int]:
        """Delete records by the rule until ``need`` more bytes fit in ``room``; ``used`` held."""
        gone = set()
        order = EVICTIONS[self.eviction]
        while used + need > room:
            victim, nbytes = self._db.execute(
                f"SELECT id, nbytes FROM records ORDER BY {order} LIMIT 1").fetchone()
            self._db.execute("DELETE FROM records WHERE id = ?", (victim,))
            gone.add(victim)
            used -= nbytes
        return gone, used

    def _bump_epoch(self) -> None:
        """Advance the epoch: the last statement of every write transaction."""
        self._set(epoch=self._setting("epoch") + 1)

    def _apply(self, used: int, added: list[int], vectors: np.ndarray | None,
               removed: set[int], logged: int) -> None:
        """After a commit that logged ``logged`` changes: charge ``used`` bytes, update the
        index in memory; publish it if rebuilt or if the changes since the last publish
        exceed ``publish_fraction`` of its size."""
        self._charge(used)
        self._epoch, self._pending = self._setting("epoch"), self._pending + logged
        rebuilt = bool(removed) and self._spec.kind == "HNSW"  # faiss's HNSW cannot remove
        if rebuilt:
            self._index = self._build_index()
        else:
            if removed:
                self._index.remove_ids(np.fromiter(removed, dtype=np.int64))
            if added:
                self._index.add_with_ids(vectors, np.asarray(added, dtype=np.int64))
        if self._index.ntotal >= self._spec.min_train and not self._built_as_specified(self._index):
            self._index, rebuilt = self._build_index(), True  # an IVF index can be trained now
        if rebuilt or self._pending > self.publish_fraction * self._index.ntotal:
            self._publish_index()

    def _room(self) -> int:
        """The most this memory may hold: what the budget leaves it, at most ``capacity``."""
        room = self.budget.free + self._charged
        return room if self.capacity is None else min(room, self.capacity)

    def _charge(self, nbytes: int) -> None:
        """Set this memory's charge in the budget to ``nbytes``."""
        self.budget.adjust(self.owner, nbytes - self._charged)
        self._charged = nbytes

    def _touch(self, ids: list[int]) -> None:
        with self._transaction("NORMAL"):
            clock = self._setting("clock") + 1
            for part in _chunks(ids):
                self._db.execute(f"UPDATE records SET last_used = ?, uses = uses + 1 "
                                 f"WHERE id IN ({_marks(part)})", [clock, *part])
            self._set(clock=clock)

    # -- the index -----------------------------------------------------------------------------

    def _build_index(self) -> faiss.Index:
        """An index over every stored embedding (Flat until an IVF index can be trained)."""
        ids, vectors = self._unpack(self._db.execute(
            "SELECT id, embedding FROM records ORDER BY id").fetchall())
        ivf = self._spec.kind == "IVF" and len(ids) >= self._spec.min_train
        index = faiss.index_factory(self.dim, self.index_string if ivf else
                                    "Flat" if self._spec.kind == "IVF" else self.index_string,
                                    METRICS[self.metric])
        if not ivf:  # IVF keeps ids itself; an id map over it would not survive removals
            index = faiss.IndexIDMap2(index)
        if not index.is_trained:
            index.train(vectors)
        index.add_with_ids(vectors, ids)
        return index

    def _built_as_specified(self, index: faiss.Index) -> bool:
        """False for the Flat index (in an id map) an IVF memory holds until it can train."""
        return self._spec.kind != "IVF" or not isinstance(index, faiss.IndexIDMap2)

    def _publish_index(self) -> None:
        """Replace ``index.faiss`` then ``index.json`` (epoch, size, sha256), each atomically;
        then drop the logged changes the published index holds."""
        data = faiss.serialize_index(self._index)
        with atomic_path(self.path / INDEX, ".faiss") as tmp:
            tmp.write_bytes(data.tobytes())
        info = {"epoch": self._epoch, "ntotal": self._index.ntotal,
                "sha256": hashlib.sha256(data).hexdigest()}
        write_text_atomic(self.path / INDEX_INFO, json.dumps(info))
        with self._transaction():
            self._db.execute("DELETE FROM changes WHERE epoch <= ?", (self._epoch,))
            self._set(log_floor=self._epoch)
        self._published, self._pending = self._epoch, 0

    def _published_index(self, newer_than: int, upto: int) -> tuple[faiss.Index, int] | None:
        """The published index and its epoch if that is in (``newer_than``, ``upto``] and the
        file is whole; None otherwise (missing, damaged, or of another epoch)."""
        try:
            info = json.loads((self.path / INDEX_INFO).read_text())
            if not newer_than < info["epoch"] <= upto:
                return None
            data = (self.path / INDEX).read_bytes()
            if hashlib.sha256(data).hexdigest() != info["sha256"]:
                return None
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError):
            return None  # missing or damaged: the caller rebuilds it from the database
        return index, info["epoch"]

    def _caught_up(self, epoch: int) -> tuple[faiss.Index, int] | None:
        """An index of ``epoch`` (the database's, as this connection sees it) and the epoch it
        was caught up from: the published index if newer than this memory's own, else its own,
        brought to ``epoch`` through the change log. None when neither can be."""
        published = self._published_index(self._epoch, epoch)
        if published is not None and self._replay(*published, epoch):
            return published
        if self._index is None:
            return None
        start = self._epoch
        if not self._replay(self._index, start, epoch):
            self._index, self._epoch = None, -1  # possibly changed in part: never reused
            return None
        return self._index, start

    def _replay(self, index: faiss.Index, start: int, end: int) -> bool:
        """Apply to ``index`` (of epoch ``start``) the logged changes up to epoch ``end``;
        False, leaving it unchanged, when they are gone, would remove from an HNSW index, or
        would grow an untrained IVF index past training size."""
        if start > end or (start < end and not self._log_reaches(start)):
            return False
        changes = self._db.execute("SELECT id, op FROM changes WHERE epoch > ? AND epoch <= ?",
                                   (start, end)).fetchall() if start < end else []
        adds = {i for i, op in changes if op == "add"}
        removes = {i for i, op in changes if op == "remove"}
        gone, new = sorted(removes - adds), sorted(adds - removes)
        size = index.ntotal - len(gone) + len(new)
        if (gone and self._spec.kind == "HNSW") or size != len(self) or \
                (size >= self._spec.min_train and not self._built_as_specified(index)):
            return False
        ids, vectors = self._embeddings_of(new)
        if gone:
            index.remove_ids(np.asarray(gone, dtype=np.int64))
        if new:
            index.add_with_ids(vectors, ids)
        return index.ntotal == size

    def _log_reaches(self, start: int) -> bool:
        """Whether the change log still holds every change after epoch ``start``."""
        return self._has_table("changes") and start >= self._setting("log_floor")

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[None]:
        """For a reader, a read transaction with an index of its epoch; for the writer, nothing."""
        if not self.readonly:
            yield
            return
        for attempt in range(READ_RETRIES + 1):
            self._db.execute("BEGIN")
            try:
                if self._catch_up(last=attempt == READ_RETRIES):
                    break
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("ROLLBACK")
            time.sleep(RETRY_WAIT)
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    def _catch_up(self, last: bool) -> bool:
        """In a read transaction: hold an index of its epoch (caught up through the change log,
        or when ``last``, built from the snapshot); False while none can be caught up."""
        epoch = self._setting("epoch")
        if epoch == self._epoch:
            return True
        found = self._caught_up(epoch)
        if found is None and not last:
            return False
        self._charge(self.nbytes)
        self._index, self._epoch = found[0] if found else self._build_index(), epoch
        return True

    # -- searching -----------------------------------------------------------------------------

    def _search(self, q: np.ndarray, k: int) -> tuple[list[int], list[float]]:
        k = min(k, self._index.ntotal)
        if k == 0:
            return [], []
        scores, ids = self._index.search(q, k, params=self._depth(k))
        keep = ids[0] >= 0
        return ids[0][keep].tolist(), scores[0][keep].tolist()

    def _depth(self, k: int) -> faiss.SearchParameters | None:
        """This memory's search depth for the index it holds (none for a Flat index)."""
        if self._spec.kind == "HNSW":
            return faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k))
        if self._spec.kind == "IVF" and self._built_as_specified(self._index):
            return faiss.SearchParametersIVF(nprobe=min(self.nprobe, self._spec.nlist))
        return None

    def _search_where(self, q: np.ndarray, k: int, where: Where
                      ) -> tuple[list[int], list[float]]:
        """Exact: the chosen records scored among the index's flat vectors, or for a trained
        IVF index (whose codes may be lossy) among their stored embeddings."""
        chosen = self._matching(where)
        k = min(k, len(chosen))
        if k == 0:
            return [], []
        if not isinstance(self._index, faiss.IndexIDMap2):  # a trained IVF index
            ids, vectors = self._embeddings_of(chosen)
            scores, rows = topk_search(torch.from_numpy(q), torch.from_numpy(vectors), k,
                                       metric=self.metric)
            return ids[rows[0].numpy()].tolist(), scores[0].tolist()
        inner = faiss.downcast_index(self._index.index)
        flat = inner.storage if self._spec.kind == "HNSW" else inner
        batch = faiss.IDSelectorBatch(np.asarray(chosen, dtype=np.int64))
        rows_chosen = faiss.IDSelectorTranslated(self._index.id_map, batch)  # row -> id -> batch
        scores, rows = flat.search(q, k, params=faiss.SearchParameters(sel=rows_chosen))
        id_map = self._index.id_map
        return [id_map.at(int(r)) for r in rows[0]], scores[0].tolist()

    def _matching(self, where: Where) -> list[int]:
        """Ids of the records ``where`` admits: a dict through ``meta_values`` (or, in a folder
        a writer has not indexed yet, a scan), a predicate called on every record's meta."""
        if not isinstance(where, Mapping):
            return [i for i, m in self._db.execute("SELECT id, meta FROM records")
                    if where(json.loads(m))]
        where = _check_meta(where)
        match = MATCH_INDEXED if self._has_table("meta_values") else MATCH_SCAN
        query = " INTERSECT ".join([match] * len(where)) or "SELECT id FROM records"
        return [r[0] for r in self._db.execute(query, [v for kv in where.items() for v in kv])]

    def _has_table(self, name: str) -> bool:
        return self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                                "name = ?", (name,)).fetchone() is not None

    def _embeddings_of(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        rows = []
        for part in _chunks(ids):
            rows += self._db.execute(f"SELECT id, embedding FROM records "
                                     f"WHERE id IN ({_marks(part)}) ORDER BY id", part).fetchall()
        return self._unpack(rows)

    def _unpack(self, rows: list) -> tuple[np.ndarray, np.ndarray]:
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
        return ids, vectors.reshape(len(rows), self.dim).copy()

    def _fetch(self, ids: list[int]) -> dict[int, tuple]:
        found = {}
        for part in _chunks(ids):
            for i, item, meta in self._db.execute(
                    f"SELECT id, item, meta FROM records WHERE id IN ({_marks(part)})", part):
                found[i] = (json.loads(item), json.loads(meta))
        missing = sorted(set(ids) - set(found))
        if missing:
            raise RuntimeError(f"{self.path}: the index returned ids {missing} that the "
                               f"database does not hold")
        return found

    def _existing(self, ids: list[int]) -> list[int]:
        return [r[0] for part in _chunks(ids) for r in self._db.execute(
            f"SELECT id FROM records WHERE id IN ({_marks(part)})", part)]

    # -- validation and small helpers ----------------------------------------------------------

    def _embeddings(self, items: list, embeddings) -> np.ndarray:
        if embeddings is not None:
            vectors = _as_matrix(embeddings, self.dim, "remember")
        else:
            if self.embed is None:
                raise ValueError("remember: pass embedding= or create the memory with embed=")
            vectors = _as_matrix(self.embed([_text(i) for i in items]), self.dim, "embed")
        if len(vectors) != len(items):
            raise ValueError(f"remember: expected {len(items)} embeddings, got {len(vectors)}")
        return vectors

    def _query(self, query) -> np.ndarray:
        if isinstance(query, str):
            if self.embed is None:
                raise ValueError("recall: a text query needs a memory created with embed=")
            return _as_matrix(self.embed([query]), self.dim, "embed")
        vectors = _as_matrix(query, self.dim, "recall")
        if len(vectors) != 1:
            raise ValueError(f"recall: expected one query of shape ({self.dim},), "
                             f"got {len(vectors)}")
        return vectors

    def _check_writer(self, verb: str) -> None:
        if self.readonly:
            raise RuntimeError(f"{verb}: this AgentMemory was opened with readonly=True")

    def _setting(self, key: str):
        return self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()[0]

    def _set(self, **values) -> None:
        self._db.executemany("UPDATE settings SET value = ? WHERE key = ?",
                             [(v, k) for k, v in values.items()])


def _check_location(path: Path, readonly: bool) -> None:
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: expected a directory for an agent memory, found a file")
    if readonly and not (path / DATABASE).exists():
        raise FileNotFoundError(f"{path}: no agent memory to read ({DATABASE} missing)")
    if path.is_dir() and not (path / DATABASE).exists():
        others = sorted(p.name for p in path.iterdir() if p.name != LOCK)
        if others:
            raise ValueError(f"{path}: holds other files ({others[:5]}), not an agent memory")


def _check_dim(dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim: expected a positive int (pass dim= or an embed with a .dim "
                         f"attribute), got {dim!r}")
    return dim


def _check_depth(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    return value


def _check_fraction(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 <= value < math.inf:
        raise ValueError(f"publish_fraction: expected a finite number >= 0, got {value!r}")
    return float(value)


def _writer_lock(path: Path):
    handle = open(path, "a+")  # noqa: SIM115 - held open for the memory's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(f"{path.parent}: another AgentMemory holds the writer lock; "
                           f"open this one with readonly=True") from None
    return handle


def _as_matrix(x, dim: int, where: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    if not isinstance(x, np.ndarray) or x.ndim not in (1, 2) or x.shape[-1] != dim \
            or not np.issubdtype(x.dtype, np.floating):
        got = f"shape {tuple(x.shape)} {x.dtype}" if isinstance(x, np.ndarray) else \
            type(x).__name__
        raise ValueError(f"{where}: expected float embeddings of dimension {dim} "
                         f"(shape ({dim},) or (n, {dim})), got {got}")
    if not np.isfinite(x).all():
        raise ValueError(f"{where}: embeddings hold NaN or inf")
    return np.ascontiguousarray(x.reshape(-1, dim), dtype=np.float32)


def _check_meta(meta) -> dict:
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta: expected a dict of str -> str/int/float, "
                        f"got {type(meta).__name__}")
    for key, value in meta.items():
        if not isinstance(key, str) or isinstance(value, bool) \
                or not isinstance(value, (str, int, float)) \
                or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"meta: expected str keys and str/int/finite float values, "
                             f"got {key!r}: {value!r}")
    return dict(meta)


def _check_id(i) -> int:
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise TypeError(f"forget: expected int ids or a predicate, got {i!r}")
    return int(i)


def _text(item: Item) -> str:
    text = item if isinstance(item, str) else item.get("text") if isinstance(item, Mapping) \
        else None
    if not isinstance(text, str):
        raise ValueError(f"remember: embedding an item needs a str or a dict with a str 'text', "
                         f"got {item!r}")
    return text


def _json(value, name: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected JSON-serialisable data, got {value!r} ({exc})") \
            from None


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), SQL_CHUNK):
        yield [int(i) for i in ids[start:start + SQL_CHUNK]]


def _marks(part: list) -> str:
    return ", ".join("?" * len(part))
