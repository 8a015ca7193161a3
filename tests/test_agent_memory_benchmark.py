import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from memkit.agents.memory_api import record_nbytes
from memkit.testing import load_script

ROOT = Path(__file__).resolve().parents[1]
bench = load_script(ROOT / "benchmarks" / "agent_memory.py", "agent_memory_benchmark")
TINY = replace(bench.QUICK, sizes=(40, 120), queries=6, where_queries=3,
               bursts=((1, 3), (5, 2), (20, 1)), grow_batch=25, minilm=False,
               ef_searches=(1, 16))


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return bench.run(TINY, tmp_path_factory.mktemp("memories"))


def test_the_vectors_are_seeded_unit_vectors():
    a, b = bench.unit_vectors(50, 0, "records"), bench.unit_vectors(50, 0, "records")
    assert a.shape == (50, bench.DIM) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, bench.unit_vectors(50, 1, "records"))
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_recall_at_k_by_hand():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert bench.recall_at_k([[4, 3, 2, 1], [5, 9, 10, 11]], exact) == (1.0 + 0.25) / 2


def test_every_size_holds_its_records_and_charges_their_exact_bytes(result):
    for ix in result["indexes"]:
        assert [s["n"] for s in ix["sizes"]] == list(TINY.sizes)
        for s in ix["sizes"]:
            assert s["records"] == s["n"]
            expected = sum(record_nbytes(bench.item(i), bench.meta(i), bench.DIM)
                           for i in range(s["n"]))
            assert s["charged"] == s["budget_used"] == s["record_nbytes_sum"] == expected
            assert s["disk_total"] >= s["disk_database"] + s["disk_index"] > 0
            assert s["disk_index"] > 4 * bench.DIM * s["n"]  # the index holds every vector
            assert all(s[f"open_{c}_s"] > 0 for c in ("reload", "deleted", "corrupt"))


def test_latency_rows_cover_roles_filters_and_depths_and_flat_is_exact(result):
    for ix in result["indexes"]:
        depths = TINY.ef_searches if ix["index"].startswith("HNSW") else (None,)
        cases = [("None", ef) for ef in depths] + [("where", None)]
        keys = sorted((r["n"], r["role"], str(r["filter"]), r["ef_search"] or 0)
                      for r in ix["latency"])
        assert keys == sorted((n, role, f, ef or 0) for n in TINY.sizes
                              for role in ("writer", "reader") for f, ef in cases)
        for r in ix["latency"]:
            assert r["p95_ms"] >= r["p50_ms"] > 0 and r["bare_p95_ms"] >= r["bare_p50_ms"] > 0
            assert r["ratio_p50"] == pytest.approx(r["p50_ms"] / r["bare_p50_ms"])
            assert r["queries"] == (TINY.queries if r["filter"] is None else TINY.where_queries)
            if ix["index"] == "Flat" or r["filter"] == "where":  # exact searches
                assert r["recall_at_10"] == 1.0
            assert r["recall_at_10"] == r["bare_recall_at_10"]  # the same search, same depth
            assert 0.0 <= r["recall_at_10"] <= 1.0


def test_writes_count_their_records_and_growth_fills_each_size(result):
    for ix in result["indexes"]:
        assert [(g["from"], g["to"]) for g in ix["growth"]] == [(0, 40), (40 + 33, 120)]
        starts = [(w["n"], w["held_before"], w["batch"], w["records"]) for w in ix["writes"]]
        assert starts == [(n, n + before, b, b * c) for n in TINY.sizes
                          for before, (b, c) in zip((0, 3, 13), TINY.bursts, strict=True)]
        for w in ix["writes"]:
            assert w["records_per_s"] == pytest.approx(w["records"] / w["seconds"])
            assert 0 <= w["publishes"] <= w["calls"]
        single = [w["publishes"] for w in ix["writes"] if w["batch"] == 1]  # 3 writes at 40, 120
        assert single == ([0, 0] if ix["index"] == "Flat" else [3, 1])  # > 10% / 1% of n


def test_sizes_too_close_for_the_timed_writes_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"each at least 33 .* got \(40, 60\)"):
        bench.run(replace(TINY, sizes=(40, 60)), tmp_path)
    with pytest.raises(ValueError, match="sizes of at least 10"):
        bench.run(replace(TINY, sizes=(5, 100)), tmp_path)


def test_markdown_has_one_row_per_size_and_index(result):
    text = bench.markdown(result)
    for n in TINY.sizes:
        assert text.count(f"| {n:,} | Flat |") == 4  # latency, where, writes, open
        assert text.count(f"| {n:,} | HNSW32 |") == 3  # where, writes, open
        for ef in TINY.ef_searches:
            assert text.count(f"| {n:,} | HNSW32, ef {ef} |") == 1
    assert "MiniLM: not timed" in text


def test_main_writes_json_and_markdown(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "QUICK", replace(TINY, indexes=("Flat",), sizes=(20, 60)))
    out = tmp_path / "am"
    bench.main(["--quick", "--no-minilm", "--out", str(out), "--dir", str(tmp_path)])
    saved = json.loads(out.with_suffix(".json").read_text())
    assert [ix["index"] for ix in saved["indexes"]] == ["Flat"]
    assert len(saved["meta"]["loadavg_start"]) == len(saved["meta"]["loadavg_end"]) == 3
    assert saved["meta"]["setting"]["sizes"] == [20, 60]
    text = out.with_suffix(".md").read_text()
    assert capsys.readouterr().out.endswith(text + "\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["am.json", "am.md"]  # memories removed


def test_interleaved_rotates_the_order_and_keeps_results_per_function():
    calls = []
    fns = {name: (lambda x, name=name: calls.append(name) or f"{name}{x}") for name in "abc"}
    results, seconds = bench.interleaved(fns, [0, 1, 2, 3])
    assert calls == list("abc" "bca" "cab" "abc")
    assert results == {n: [f"{n}{x}" for x in range(4)] for n in "abc"}
    assert all(len(s) == 4 and min(s) >= 0 for s in seconds.values())
