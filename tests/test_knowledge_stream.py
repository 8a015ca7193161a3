"""memkit.data.knowledge, memkit.qa_metrics and memkit.data.qa_formats: the generated stream is
seeded, answers are the newest stated value at the question's time, distractors answer nothing,
the tokenizer covers every word; EM/F1 match hand-computed values; each reader reads a fixture
in its dataset's real layout and names the file, record and field of a malformed one."""

from __future__ import annotations

import base64
import gzip
import hashlib
import itertools
import json
from datetime import datetime, timezone

import pytest

from memkit.data.knowledge import (
    ATTRIBUTES,
    MAX_FACTS,
    SEP,
    KnowledgeDocument,
    KnowledgeStep,
    KnowledgeSteps,
    Question,
    attribute_values,
    knowledge_stream,
    knowledge_tokenizer,
    vocabulary,
)
from memkit.data.qa_formats import read_archivalqa, read_squad, read_streamingqa, time_step
from memkit.qa_metrics import exact_match, f1, normalize_answer, qa_scores

VALUES = {v for a in ATTRIBUTES for v in attribute_values(a.name)}


@pytest.fixture(scope="module")
def stream():
    return knowledge_stream(8, seed=5, entities=6, new_entities=1, docs_per_step=4,
                            update_rate=0.2, distractors=3, questions_per_step=10)


def _sentences(text: str) -> list[list[str]]:
    return [s.split() for s in text.split(" . ") if s.strip()]


def _stated(stream, t: int) -> dict[tuple[str, str], list[tuple[int, str, str]]]:
    """(entity, attribute) -> [(time, doc_id, value)] over documents up to step t, in order."""
    stated = {}
    for doc in stream.documents_up_to(t):
        for e, a, v in doc.facts:
            stated.setdefault((e, a), []).append((doc.time, doc.doc_id, v))
    return stated


# ----------------------------------------------------------------------------- generated stream

def test_same_seed_same_stream_other_seed_other_stream(stream):
    again = knowledge_stream(8, seed=5, entities=6, new_entities=1, docs_per_step=4,
                             update_rate=0.2, distractors=3, questions_per_step=10)
    assert list(again) == list(stream)
    other = knowledge_stream(8, seed=6, entities=6, new_entities=1, docs_per_step=4,
                             update_rate=0.2, distractors=3, questions_per_step=10)
    assert [d.text for d in other.documents_up_to(7)] != [d.text for d in
                                                          stream.documents_up_to(7)]


def test_answers_are_the_newest_value_stated_up_to_the_question_time(stream):
    checked = 0
    people = {q.entity for q in stream.questions_up_to(len(stream) - 1)}
    for step in stream:
        stated = _stated(stream, step.time)
        for (e, a), history in stated.items():  # no two documents of one step disagree
            if e not in people:
                continue
            for t in {h[0] for h in history}:
                assert len({v for time, _, v in history if time == t}) == 1, (e, a, t)
        for q in step.questions:
            history = stated[q.entity, q.attribute]
            assert q.answers == (history[-1][2],)
            assert q.answers[0] in attribute_values(q.attribute)
            evidence = [h for h in history if h[1] == q.doc_id]
            assert evidence == [history[-1]] and q.inserted_at == history[-1][0] <= q.time
            assert q.text.startswith(f"as of step {q.time} , ") and q.entity in q.text.split()
            checked += 1
    assert checked == sum(len(s.questions) for s in stream) == 80


def test_documents_state_their_facts_in_two_to_five_sentences(stream):
    for doc in stream.documents_up_to(len(stream) - 1):
        sentences = _sentences(doc.text)
        assert 2 <= len(sentences) <= MAX_FACTS + 1
        for e, _, v in doc.facts:
            assert any(e in s and v in s for s in sentences), (doc.text, e, v)
        for s in sentences:  # the text states nothing beyond its facts
            for w in set(s) & VALUES:
                assert any(e in s and v == w for e, _, v in doc.facts), (doc.text, w)
    step0 = stream[0]
    assert len({e for d in step0.documents for e, _, _ in d.facts if not d.distractor}) == 6
    assert step0.meta == {"updates": 0, "new_entities": step0.meta["new_entities"]}
    assert len(step0.meta["new_entities"]) == 6


def test_updates_change_values_and_the_newest_wins(stream):
    pairs = 6 * len(ATTRIBUTES)
    for step in stream[1:]:
        assert step.meta["updates"] == round(0.2 * pairs) and len(step.meta["new_entities"]) == 1
        pairs += len(ATTRIBUTES)
    updated = [q for s in stream for q in s.questions if q.updated]
    assert updated and len(updated) < 80
    for q in (q for s in stream for q in s.questions):
        values = [v for _, _, v in _stated(stream, q.time)[q.entity, q.attribute]]
        changes = sum(a != b for a, b in itertools.pairwise(values))
        assert (changes > 0) == q.updated
    # an old question keeps the answer of its time although the value changed since
    final = _stated(stream, len(stream) - 1)
    stale = [q for q in stream.questions_up_to(len(stream) - 1)
             if final[q.entity, q.attribute][-1][2] != q.answers[0]]
    assert stale


def test_distractors_state_nothing_about_asked_pairs(stream):
    asked = {(q.entity, q.attribute) for q in stream.questions_up_to(len(stream) - 1)}
    people = {q.entity for q in stream.questions_up_to(len(stream) - 1)}
    distractors = [d for d in stream.documents_up_to(len(stream) - 1) if d.distractor]
    assert len(distractors) == 3 * len(stream)
    assert any(d.facts for d in distractors) and any(not d.facts for d in distractors)
    for doc in distractors:
        assert not {e for e, _, _ in doc.facts} & people  # look-alike names only
        for sentence in _sentences(doc.text):
            for e, a in asked:
                assert not (e in sentence and set(attribute_values(a)) & set(sentence)), doc.text


def test_questions_up_to_collects_every_earlier_question(stream):
    assert stream.questions_up_to(0) == list(stream[0].questions)
    up_to_3 = stream.questions_up_to(3)
    assert up_to_3 == [q for s in stream[:4] for q in s.questions]
    assert {q.time for q in up_to_3} == {0, 1, 2, 3}
    assert len({q.qid for q in stream.questions_up_to(7)}) == 80
    with pytest.raises(ValueError, match=r"t: expected a step index in \[0, 7\], got 8"):
        stream.questions_up_to(8)


def test_tokenizer_round_trip_without_unknown_words(stream):
    tok = stream.tokenizer()
    vocab = stream.vocabulary()
    assert vocab == vocabulary() and len(tok) == len(vocab) == len(set(vocab))
    texts = [d.text for d in stream.documents_up_to(7)]
    texts += [f"{q.text} {SEP} {q.answers[0]} [EOS]" for q in stream.questions_up_to(7)]
    for text in texts:
        ids = tok.encode(text)
        assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
        assert len(ids) == len(text.split()) + 1
        assert tok.decode(ids, skip_special_tokens=True) == text.replace(f" {SEP}", "") \
            .replace(" [EOS]", "")
    qa = tok.encode(texts[-1])
    assert qa[-1] == tok.eos_token_id and tok.sep_token_id in qa
    assert tok.encode("zzzq as")[1:] == [tok.unk_token_id, tok.convert_tokens_to_ids("as")]
    assert knowledge_tokenizer().get_vocab() == tok.get_vocab()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"n_steps": 0}, r"n_steps: expected an int in \[1, 200\], got 0"),
    ({"update_rate": 1.5}, r"update_rate: expected a fraction in \[0, 1\], got 1.5"),
    ({"entities": True}, r"entities: expected an int in \[1, 160\], got True"),
    ({"n_steps": 100, "new_entities": 2}, r"= 210: expected at most the 160 invented names"),
    ({"docs_per_step": 0}, r"docs_per_step: expected an int >= 1, got 0"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    args = {"n_steps": 3, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        knowledge_stream(args.pop("n_steps"), **args)
    with pytest.raises(ValueError, match="attribute: expected one of"):
        attribute_values("age")


def test_steps_group_items_by_time_and_check_them():
    docs = [KnowledgeDocument("a", 2, "x"), KnowledgeDocument("b", 0, "y")]
    qs = [Question("q", 1, "?", ("x",))]
    steps = KnowledgeSteps.from_items(docs, qs)
    assert [len(s.documents) for s in steps] == [1, 0, 1] and steps[1].questions == tuple(qs)
    with pytest.raises(ValueError, match=r"position 0 holds times \[0, 1\]"):
        KnowledgeSteps([KnowledgeStep(0, (), tuple(qs))])
    with pytest.raises(ValueError, match="expected times as ints >= 0, got -1"):
        KnowledgeSteps.from_items([KnowledgeDocument("a", -1, "x")], [])


# ----------------------------------------------------------------------------- EM / F1

def test_exact_match_and_f1_hand_cases():
    assert normalize_answer("  The Cat!  sat, an apple ") == "cat sat apple"
    assert exact_match("The Cat!", ["cat"]) == 1.0 and exact_match("cats", ["cat"]) == 0.0
    assert exact_match("dog", ["cat", "a dog."]) == 1.0
    assert f1("new york city", ["york"]) == pytest.approx(0.5)  # p = 1/3, r = 1
    assert f1("x x y", ["x y y"]) == pytest.approx(2 / 3)  # 2 shared tokens of 3 and 3
    assert f1("b c", ["a b", "z"]) == pytest.approx(2 / 3)  # "a" is an article: p = 1/2, r = 1
    assert f1("", [""]) == 1.0 and f1("the", ["a"]) == 1.0  # both normalise to no tokens
    assert f1("x", [""]) == 0.0 and f1("", ["x"]) == 0.0 and exact_match("", [""]) == 1.0
    assert f1("p q", ["r s"]) == 0.0


def test_qa_scores_average_over_questions_and_reject_bad_input():
    qs = [Question("1", 0, "?", ("cat",)), Question("2", 0, "?", ("new york",)),
          Question("3", 0, "?", ("", ))]
    scores = qa_scores({"1": "The cat", "2": "york", "3": "", "extra": "x"}, qs)
    assert scores == {"em": pytest.approx(2 / 3), "f1": pytest.approx((1 + 2 / 3 + 1) / 3),
                      "n": 3}
    with pytest.raises(ValueError, match=r"no prediction for 1 of 3 questions, e.g. \['2'\]"):
        qa_scores({"1": "cat", "3": ""}, qs)
    with pytest.raises(TypeError, match="sequence of strings"):
        exact_match("cat", "cat")
    with pytest.raises(ValueError, match="at least one reference answer"):
        f1("cat", [])
    with pytest.raises(ValueError, match="at least one question"):
        qa_scores({}, [])


# ----------------------------------------------------------------------------- readers

def _ts(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=timezone.utc).timestamp())


def test_time_steps_by_calendar_and_seconds():
    origin = _ts("2019-12-31")
    assert time_step(_ts("2021-01-01"), origin, "year") == 2
    assert time_step(_ts("2020-02-29"), origin, "month") == 2
    assert time_step(_ts("2020-01-02"), origin, "day") == 2
    assert time_step(origin + 7199, origin, 3600) == 1
    with pytest.raises(ValueError, match="period: expected one of"):
        time_step(origin, origin, "week")
    with pytest.raises(ValueError, match="before the origin"):
        time_step(origin - 1, origin, "day")


SQUAD = {"version": "v2.0", "data": [
    {"title": "Zürich", "paragraphs": [
        {"context": "Zürich lies on the Limmat — a café city.",
         "qas": [{"id": "q1", "question": "On which river is Zürich?",
                  "answers": [{"text": "Limmat", "answer_start": 19},
                              {"text": "Limmat", "answer_start": 19},
                              {"text": "the Limmat", "answer_start": 15}],
                  "is_impossible": False},
                 {"id": "q2", "question": "Who founded the café?", "answers": [],
                  "plausible_answers": [{"text": "Limmat", "answer_start": 19}],
                  "is_impossible": True}]},
        {"context": "Second paragraph.", "qas": []}]},
    {"title": "B", "paragraphs": [
        {"context": "Third.", "qas": [{"id": "q3", "question": "Which?",
                                       "answers": [{"text": "Third", "answer_start": 0}]}]}]},
]}


def test_read_squad_groups_contexts_into_steps(tmp_path):
    path = tmp_path / "dev-v2.0.json"
    path.write_text(json.dumps(SQUAD, ensure_ascii=False), encoding="utf-8")
    steps = read_squad(path, contexts_per_step=2)
    assert len(steps) == 2 and [len(s.documents) for s in steps] == [2, 1]
    doc = steps[0].documents[0]
    assert doc.text == "Zürich lies on the Limmat — a café city." and doc.meta["title"] == "Zürich"
    q1, q3 = steps.questions_up_to(1)
    assert (q1.qid, q1.answers, q1.doc_id, q1.time) == ("q1", ("Limmat", "the Limmat"), "0-0", 0)
    assert (q3.qid, q3.time, q3.inserted_at, q3.doc_id) == ("q3", 1, 1, "1-0")
    with_impossible = read_squad(path, contexts_per_step=2, include_impossible=True)
    q2 = with_impossible[0].questions[1]
    assert q2.answers == ("",) and q2.meta["is_impossible"] and q2.text == "Who founded the café?"
    with pytest.raises(ValueError, match="contexts_per_step: expected an int >= 1"):
        read_squad(path, contexts_per_step=0)


def test_read_squad_names_the_malformed_record(tmp_path):
    bad = json.loads(json.dumps(SQUAD))
    del bad["data"][1]["paragraphs"][0]["qas"][0]["question"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.json: data\[1\]\.paragraphs\[0\]\.qas\[0\]: "
                                         r"missing field 'question'"):
        read_squad(path)
    bad["data"][1]["paragraphs"][0]["context"] = 3
    path.write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(ValueError, match=r"paragraphs\[0\]: field 'context': expected str, "
                                         r"got int"):
        read_squad(path)
    path.write_text('{"data": [', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        read_squad(path)


def _wmt_line(day: str, sentences: list[str]) -> tuple[bytes, str]:
    """A WMT News Crawl document-split line and its StreamingQA sorting key."""
    split = base64.b64encode("\n".join(sentences).encode())
    unsplit = base64.b64encode(" ".join(sentences).encode())
    key = f"{day}000000000000\x00\x01{hashlib.sha256(unsplit).hexdigest()}\x00\x01"
    return day.encode() + b"\t" + split + b"\t" + unsplit + b"\n", key


def _streamingqa_fixture(tmp_path):
    line_a, key_a = _wmt_line("20200115", ["Ana Ñúñez joined Acme.", "She is happy."])
    line_b, key_b = _wmt_line("20200301", ["Acme moved to Oslo."])
    line_c, key_c = _wmt_line("20191231", ["Unrelated news."])
    with gzip.open(tmp_path / "news-docs.2020.en.filtered.gz", "wb") as fh:
        fh.write(line_c + line_a + line_b)
    extra = {"recent_or_past": "recent", "written_or_generated": "written",
             "answers_additional": "", "toxicity_insult": 0.01}
    rows = [{"qa_id": "eval-0", "question": "Whom did Ana Ñúñez join?",
             "answers": ["Acme", "acme", "Acme Corp"], "question_ts": _ts("2020-03-02"),
             "evidence_ts": _ts("2020-01-15"), "evidence_id": key_a, **extra},
            {"qa_id": "eval-1", "question": "Where did Acme move?", "answers": ["Oslo"],
             "question_ts": _ts("2020-03-05"), "evidence_ts": _ts("2020-03-01"),
             "evidence_id": key_b, **extra, "recent_or_past": "past"}]
    with gzip.open(tmp_path / "streaminqa_eval.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows, (key_a, key_b, key_c)


def test_read_streamingqa_with_wmt_articles(tmp_path):
    _, (key_a, key_b, key_c) = _streamingqa_fixture(tmp_path)
    archive = tmp_path / "news-docs.2020.en.filtered.gz"
    steps = read_streamingqa(tmp_path / "streaminqa_eval.jsonl.gz", [archive], period="month")
    assert len(steps) == 3  # January .. March 2020
    assert [d.doc_id for d in steps[0].documents] == [key_a]
    assert steps[0].documents[0].text == "Ana Ñúñez joined Acme. She is happy."
    assert [d.doc_id for d in steps[2].documents] == [key_b]
    q0, q1 = steps[2].questions
    assert (q0.qid, q0.answers, q0.doc_id, q0.inserted_at) == ("eval-0", ("Acme", "acme",
                                                                           "Acme Corp"), key_a, 0)
    assert q0.text == "Whom did Ana Ñúñez join?" and q0.meta["recent_or_past"] == "recent"
    assert q1.inserted_at == 2 and q1.meta["toxicity_insult"] == 0.01
    every = read_streamingqa(tmp_path / "streaminqa_eval.jsonl.gz", [archive], period="day",
                             evidence_only=False)
    assert every[0].documents[0].doc_id == key_c and len(every) == 66  # 2019-12-31 .. 03-05
    keys = tmp_path / "wmt_sorting_key_ids.txt.gz"
    with gzip.open(keys, "wt", encoding="utf-8") as fh:
        fh.write(key_b + "\n")
    only_b = read_streamingqa(tmp_path / "streaminqa_eval.jsonl.gz", [archive],
                              sorting_keys=keys)
    assert [d.doc_id for d in only_b.documents_up_to(len(only_b) - 1)] == [key_b]


def test_read_streamingqa_names_the_malformed_line(tmp_path):
    rows, _ = _streamingqa_fixture(tmp_path)
    path = tmp_path / "qa.jsonl"
    broken = dict(rows[1])
    del broken["question_ts"]
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(broken) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"qa\.jsonl: line 3: missing field 'question_ts'"):
        read_streamingqa(path)
    path.write_text(json.dumps({**rows[0], "answers": []}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1: field 'answers': expected a non-empty list"):
        read_streamingqa(path)
    path.write_text(json.dumps(rows[0]) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"qa\.jsonl: line 2: not valid JSON"):
        read_streamingqa(path)
    path.write_text(json.dumps(rows[0]) + "\n", encoding="utf-8")
    archive = tmp_path / "news.txt"
    archive.write_bytes(b"20200101\tAAAA\n")
    with pytest.raises(ValueError, match=r"news\.txt: line 1: expected 3 tab-separated fields"):
        read_streamingqa(path, [archive])
    with pytest.raises(ValueError, match=r"origin: .* is after the earliest timestamp"):
        read_streamingqa(path, origin=_ts("2021-01-01"))
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl: no such file"):
        read_streamingqa(tmp_path / "missing.jsonl")


ARCHIVAL_HEADER = "id,question,answer,org_answer,answer_start,para_id,trans_que,trans_ans,source\n"


def test_read_archivalqa_with_a_paragraphs_file_and_inline(tmp_path):
    questions = tmp_path / "ArchivalQA_test.csv"
    questions.write_text(
        ARCHIVAL_HEADER
        + 'test_0,"When did Tenneco sell, finally?","May 26, 1988",today,3,148748_0,0,1,rand\n'
        + "test_1,Who won in Málaga?,Haarhuis,Haarhuis,0,1043631_15,1,0,wiki\n",
        encoding="utf-8")
    paragraphs = tmp_path / "paragraphs.csv"
    paragraphs.write_text('para_id,para,date\n148748_0,"It sold, today.",1988-05-26\n'
                          "1043631_15,Haarhuis won in Málaga.,1990\n", encoding="utf-8")
    steps = read_archivalqa(questions, paragraphs, period="year")
    assert len(steps) == 3 and [d.doc_id for d in steps[0].documents] == ["148748_0"]
    q0, q1 = steps.questions_up_to(2)
    assert (q0.answers, q0.time, q0.doc_id, q0.text) == (("May 26, 1988",), 0, "148748_0",
                                                         "When did Tenneco sell, finally?")
    assert q0.meta == {"org_answer": "today", "answer_start": "3", "trans_que": "0",
                       "trans_ans": "1", "source": "rand"}
    assert (q1.time, q1.inserted_at) == (2, 2)
    assert steps[2].documents[0].text == "Haarhuis won in Málaga."
    inline = tmp_path / "inline.csv"
    inline.write_text("id,question,answer,para_id,para,date\n"
                      "a,Q?,A,p1,Text é.,2001-02-03\nb,R?,B,p2,Other.,2001-04-01\n",
                      encoding="utf-8")
    monthly = read_archivalqa(inline, period="month")
    assert [len(s.documents) for s in monthly] == [1, 0, 1]
    assert monthly[0].documents[0].text == "Text é." and monthly[2].questions[0].qid == "b"


def test_read_archivalqa_names_the_malformed_row(tmp_path):
    questions = tmp_path / "q.csv"
    paragraphs = tmp_path / "p.csv"
    paragraphs.write_text("para_id,para,date\np1,Text.,2001-02-03\n", encoding="utf-8")
    questions.write_text("id,question,answer\na,Q?,A\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"q.csv: missing column\(s\) \['para_id'\]"):
        read_archivalqa(questions, paragraphs)
    questions.write_text("id,question,answer,para_id\na,Q?,A,p1\nb,R?,,p1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"q.csv: line 3: missing field\(s\) \['answer'\]"):
        read_archivalqa(questions, paragraphs)
    questions.write_text("id,question,answer,para_id\na,Q?,A,p9\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"q\.csv: line 2: para_id 'p9' is not in"):
        read_archivalqa(questions, paragraphs)
    questions.write_text("id,question,answer,para_id\na,Q?,A,p1,extra\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: more fields than the 4 columns"):
        read_archivalqa(questions, paragraphs)
    questions.write_text("id,question,answer,para_id\na,Q?,A,p1\n", encoding="utf-8")
    paragraphs.write_text("para_id,para,date\np1,Text.,03/02/2001\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"p.csv: line 2: field 'date': expected YYYY-MM-DD"):
        read_archivalqa(questions, paragraphs)
    with pytest.raises(ValueError, match="period: expected one of"):
        read_archivalqa(questions, paragraphs, period=0)
