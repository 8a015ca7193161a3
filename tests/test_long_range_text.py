"""memkit.data.long_range_text and benchmarks/train_tiny_lm.py: documents are seeded, facts are
used beyond the gap with the stated value, held-out entities stay out of training, the tokenizer
covers every word, and the tiny LM is written atomically, reused, and refused on new settings."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from memkit.data.long_range_text import (
    ATTRIBUTES,
    N_VALUES,
    attribute_values,
    corpus_tokenizer,
    entity_names,
    long_range_corpus,
    vocabulary,
)
from memkit.testing import load_script

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
TINY = dict(n_layer=2, d=16, heads=2, window=32, n_docs=12, n_test_docs=2, steps=3, batch=4,
            warmup=2, threads=1)


@pytest.fixture(scope="module")
def bench():
    return load_script(ROOT / "benchmarks" / "train_tiny_lm.py")


@pytest.fixture(scope="module")
def docs():
    return long_range_corpus(30, seed=3) + long_range_corpus(30, seed=3, split="test")


# ----------------------------------------------------------------------------- the corpus

def test_same_seed_same_documents_other_seed_other_text():
    a, b = long_range_corpus(4, seed=7), long_range_corpus(4, seed=7)
    assert a == b
    assert long_range_corpus(2, seed=7) == a[:2]  # document i depends on i, not on n_docs
    other = long_range_corpus(4, seed=8)
    assert all(x.text != y.text for x, y in zip(a, other, strict=True))
    assert long_range_corpus(4, seed=7, split="test")[0].text != a[0].text


def test_held_out_entities_never_appear_in_train_documents():
    train, test = set(entity_names("train")), set(entity_names("test"))
    assert train and test and not train & test
    assert len(test) * 4 == len(train)
    train_words = {w for d in long_range_corpus(60, seed=0) for w in d.text.split()}
    test_docs = long_range_corpus(20, seed=0, split="test")
    test_entities = {f.entity for d in test_docs for f in d.facts}
    assert test_entities <= test and not test_entities & train_words
    assert {f.entity for d in long_range_corpus(20, seed=0) for f in d.facts} <= train


def test_every_use_repeats_the_stated_value_with_its_evidence_recomputed_from_text(docs):
    for doc in docs:
        words = doc.text.split()
        stated = {(f.entity, f.attribute): f for f in doc.facts}
        values = [f.value for f in doc.facts]
        assert len(set(values)) == len(values)  # no value shared by two facts of a document
        for f in doc.facts:
            assert f.value in attribute_values(f.attribute)
            assert words.index(f.value) == f.word
            assert _segment(doc, f.word)[0] == "statement"
            assert f.entity in _segment_words(doc, words, f.word)
        for use in doc.uses:
            fact = stated[use.entity, use.attribute]
            assert use.value == fact.value == words[use.word]
            assert doc.text[use.span[0]:use.span[1]] == use.value
            assert use.statement == fact.word
            earlier = [i for i in range(use.word) if words[i] == use.value]
            assert use.evidence == earlier[-1] and use.distance == use.word - earlier[-1]
            assert _segment(doc, use.word)[0] == "use"
            assert use.entity in _segment_words(doc, words, use.word)
            assert ("?" in _segment_words(doc, words, use.word)) == use.qa


def test_every_fact_is_used_once_per_round_and_echoes_repeat_the_previous_use(docs):
    for doc in docs:
        for f in doc.facts:
            uses = [u for u in doc.uses if (u.entity, u.attribute) == (f.entity, f.attribute)]
            assert sum(not u.echo for u in uses) == 2
            for prev, use in itertools.pairwise(uses):
                assert use.evidence == prev.word
    assert any(u.echo for d in docs for u in d.uses)


def test_uses_lie_beyond_the_gap_and_echoes_within_a_window():
    docs = long_range_corpus(15, seed=1, gap=(200, 260), rounds=3, echo=0.0)
    assert all(u.distance > 200 and not u.echo for d in docs for u in d.uses)
    assert all(len(d.uses) == 3 * len(d.facts) for d in docs)
    echoed = [u for d in long_range_corpus(15, seed=1, echo=1.0) for u in d.uses]
    assert all(u.distance > 150 for u in echoed if not u.echo)
    assert all(u.distance < 64 for u in echoed if u.echo) and any(u.echo for u in echoed)


def test_values_do_not_follow_the_entity():
    seen: dict[tuple[str, str], set[str]] = {}
    for doc in long_range_corpus(200, seed=2, entities=(4, 4), attributes=(6, 6)):
        for f in doc.facts:
            seen.setdefault((f.entity, f.attribute), set()).add(f.value)
    repeated = [v for v in seen.values() if len(v) > 1]
    assert len(repeated) > 50  # an entity seen twice almost always gets a new value
    counts = torch.zeros(N_VALUES)
    for (_, attribute), values in seen.items():
        if attribute == "pet":
            for v in values:
                counts[attribute_values("pet").index(v)] += 1
    assert counts.min() > 0  # every pet value is drawn


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(n_docs=-1), "n_docs: expected an int >= 0, got -1"),
    (dict(n_docs=2.0), "n_docs: expected an int"),
    (dict(split="dev"), r"split: expected one of \('train', 'test'\), got 'dev'"),
    (dict(gap=(300, 200)), r"gap: expected a pair \(lo, hi\) of ints with 1 <= lo <= hi"),
    (dict(gap=150), "gap: expected a pair"),
    (dict(attributes=(1, 9)), f"attributes: .* <= {len(ATTRIBUTES)}, got \\(1, 9\\)"),
    (dict(entities=(0, 2)), "entities: expected a pair"),
    (dict(rounds=0), "rounds: expected an int >= 1, got 0"),
    (dict(qa=1.5), r"qa: expected a probability in \[0, 1\], got 1.5"),
    (dict(echo=-0.1), "echo: expected a probability"),
])
def test_bad_corpus_arguments_raise(kwargs, match):
    args = {"n_docs": 2, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        long_range_corpus(args.pop("n_docs"), **args)


def test_unknown_names_raise():
    with pytest.raises(ValueError, match=r"attribute: expected one of \['boats', .*got 'shoe'"):
        attribute_values("shoe")
    with pytest.raises(ValueError, match="split: expected one of"):
        entity_names("valid")


# ----------------------------------------------------------------------------- the tokenizer

def test_tokenizer_round_trip_without_unknown_words(docs, tmp_path):
    tok = corpus_tokenizer()
    assert len(tok) == len(vocabulary()) == len(set(vocabulary())) <= 2000
    for doc in docs:
        ids = tok.encode(doc.text)
        assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == " ".join(doc.text.split())
        for use in doc.uses:  # token i + 1 is word i
            assert tok.convert_ids_to_tokens(ids[use.word + 1]) == use.value
    assert tok.encode("zzzq the")[1:] == [tok.unk_token_id, tok.convert_tokens_to_ids("the")]
    tok.save_pretrained(tmp_path)
    loaded = PreTrainedTokenizerFast.from_pretrained(tmp_path, local_files_only=True)
    assert loaded.encode(docs[0].text) == tok.encode(docs[0].text)
    assert loaded.decode(loaded.encode("q : what ? a : 7 ."), skip_special_tokens=True) == \
        "q : what ? a : 7 ."


# ----------------------------------------------------------------------------- the tiny LM

def test_train_writes_a_loadable_model_then_reuses_it(bench, tmp_path, monkeypatch):
    out = tmp_path / "lm"
    assert bench.train_tiny_lm(out, **TINY) == out
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "tokenizer.json", "config.json", "train_info.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    assert [p.name for p in tmp_path.iterdir()] == ["lm"]  # no temporary folder left
    model, tok, info = bench.load_tiny_lm(out)
    assert info["steps"] == 3 and info["settings"]["window"] == 32
    assert set(info["test"]) == set(bench.KINDS) and info["test"]["all"]["tokens"] > 0
    assert model.config.n_layer == 2 and not model.training
    assert model(torch.tensor([tok.encode("the pet of")])).logits.shape == (1, 4, len(tok))
    written = (out / "train_info.json").read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(bench, "_train", no_training)
    assert bench.train_tiny_lm(out, **{**TINY, "threads": 2}) == out
    assert (out / "train_info.json").read_text() == written
    with pytest.raises(ValueError, match=r"other settings \(steps: 3 -> 4\); pass overwrite"):
        bench.train_tiny_lm(out, **{**TINY, "steps": 4})
    monkeypatch.undo()
    bench.train_tiny_lm(out, **{**TINY, "steps": 4}, overwrite=True)
    assert bench.load_tiny_lm(out)[2]["steps"] == 4


def test_llama_trains_and_loads_with_corpus_options(bench, tmp_path):
    out = bench.train_tiny_lm(tmp_path / "llama", arch="llama", corpus={"echo": 1.0}, **TINY)
    model, _, info = bench.load_tiny_lm(out)
    assert type(model).__name__ == "LlamaForCausalLM" and info["settings"]["arch"] == "llama"
    assert info["settings"]["corpus"]["echo"] == 1.0 and info["settings"]["corpus"]["rounds"] == 2
    assert info["test"]["value_near"]["tokens"] > 0
    assert model.config.max_position_embeddings == 32


def test_a_failed_write_leaves_nothing(bench, tmp_path, monkeypatch):
    def fail(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        bench.train_tiny_lm(tmp_path / "lm", **TINY)
    assert list(tmp_path.iterdir()) == []


def test_windowed_scores_match_a_hand_computed_window(bench):
    torch.manual_seed(0)
    tok = corpus_tokenizer()
    model = bench.build_model("gpt2", len(tok), n_layer=1, d=16, heads=2, window=16,
                              special_ids={"bos": 2, "eos": 3, "pad": 0}).eval()
    ids = torch.tensor(tok.encode(long_range_corpus(1, seed=0)[0].text))[:40]
    with torch.no_grad():
        rows = bench._window_log_probs(model, ids, 16)
        first = model(ids[None, :16]).logits[0].log_softmax(-1)
        later = model(ids[None, 8:24]).logits[0].log_softmax(-1)  # the window scoring 16..23
        last = model(ids[None, 24:40]).logits[0].log_softmax(-1)
    assert rows.shape == (39, len(tok))
    torch.testing.assert_close(rows[:15], first[:15])  # targets 1..15 from the first window
    torch.testing.assert_close(rows[20 - 1], later[20 - 1 - 8])  # target 20: 12 tokens of context
    torch.testing.assert_close(rows[39 - 1], last[39 - 1 - 24])


def test_token_kinds_mark_each_value_once(bench, docs):
    doc = docs[0]
    masks = bench.token_kinds(doc, len(doc.text.split()) + 1, 128)
    assert int(masks["statement_value"].sum()) == len(doc.facts)
    far = sum(u.distance >= 128 for u in doc.uses)
    assert int(masks["value_far"].sum()) == far and far == sum(not u.echo for u in doc.uses)
    assert int(masks["value_near"].sum()) == len(doc.uses) - far
    assert not (masks["filler"] & (masks["value_far"] | masks["statement_value"])).any()
    filler = sum(e - s for k, s, e in doc.segments if k == "filler")
    assert int(masks["filler"].sum()) == filler and not masks["all"][0]


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(arch="rnn"), r"arch: expected one of \('gpt2', 'llama'\), got 'rnn'"),
    (dict(d=15), "d: expected a multiple of heads=2, got 15"),
    (dict(minutes=0), "minutes: expected a positive number, got 0"),
    (dict(threads=0), "threads: expected a positive int, got 0"),
    (dict(steps=-1), "steps: expected a positive int, got -1"),
    (dict(window=1), "window: expected at least 2 tokens, got 1"),
    (dict(corpus={"colour": 1}), r"corpus: expected a dict with keys among \['attributes'"),
    (dict(corpus={"echo": 2.0}), r"echo: expected a probability in \[0, 1\], got 2.0"),
])
def test_bad_training_arguments_raise(bench, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        bench.train_tiny_lm(tmp_path / "lm", **{**TINY, **kwargs})
    assert not (tmp_path / "lm").exists()


def test_load_of_a_folder_without_train_info_raises(bench, tmp_path):
    with pytest.raises(FileNotFoundError, match="expected a directory written by train_tiny_lm"):
        bench.load_tiny_lm(tmp_path)


def _segment(doc, word: int) -> tuple[str, int, int]:
    return next(s for s in doc.segments if s[1] <= word < s[2])


def _segment_words(doc, words: list[str], word: int) -> list[str]:
    _, start, end = _segment(doc, word)
    return words[start:end]
