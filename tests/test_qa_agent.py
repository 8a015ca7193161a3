"""QA agents over the knowledge stream, and the knowledge-stream benchmark's scoring."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from memkit.agents.cmt import CMT
from memkit.agents.embedders import HashingEmbedder
from memkit.agents.memory_api import AgentMemory
from memkit.agents.qa import (
    ClosedBook,
    CompressedMemory,
    OnlineFinetune,
    OracleDocument,
    RetrieveDocuments,
    answer_triples,
    qa_prompt,
)
from memkit.budget import Budget
from memkit.data.knowledge import (
    SEP,
    KnowledgeDocument,
    KnowledgeStep,
    Question,
    knowledge_stream,
    knowledge_tokenizer,
)
from memkit.qa_metrics import qa_scores
from memkit.testing import load_script

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tokenizer():
    return knowledge_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=96, n_embd=32,
                                      n_layer=2, n_head=4, bos_token_id=2, eos_token_id=3,
                                      pad_token_id=0)).eval()


@pytest.fixture(scope="module")
def stream():
    return knowledge_stream(3, seed=5, entities=3, docs_per_step=2, distractors=1,
                            questions_per_step=3)


@pytest.fixture(scope="module")
def bench():
    return load_script(ROOT / "benchmarks" / "knowledge_stream.py")


def memory(tmp_path, budget="64KB"):
    return AgentMemory(tmp_path / "mem", embed=HashingEmbedder(32, seed=1), budget=budget)


def run(agent, stream):
    for step in stream:
        agent.observe(step)
        predictions = agent.answer(stream.questions_up_to(step.time))
        assert set(predictions) == {q.qid for q in stream.questions_up_to(step.time)}
        assert all(isinstance(a, str) for a in predictions.values())
    return predictions


def test_readers_answer_every_question(model, tokenizer, stream, tmp_path):
    with memory(tmp_path, "2KB") as mem:
        agents = [ClosedBook(model, tokenizer), OracleDocument(model, tokenizer),
                  RetrieveDocuments(model, tokenizer, mem, k=2),
                  OnlineFinetune(model, tokenizer, lr=1e-3)]
        for agent in agents:
            run(agent, stream)
        assert 0 < mem.nbytes <= mem.budget.capacity
        assert 0 < len(mem) < len(stream.documents_up_to(2))  # the budget made it evict
        assert agents[2].nbytes == mem.nbytes and agents[2].stores == {"memory": mem}
        texts = [d.text for d in stream.documents_up_to(2)]
        assert agents[1].nbytes == sum(len(t.encode()) for t in texts)
        assert agents[0].nbytes == 0


def test_oracle_prompt_holds_exactly_the_evidence(model, tokenizer, stream):
    agent = OracleDocument(model, tokenizer)
    for step in stream:
        agent.observe(step)
    texts = {d.doc_id: d.text for d in stream.documents_up_to(2)}
    for q in stream.questions_up_to(2):
        assert agent.prompt(q) == f"{texts[q.doc_id]} {SEP} {q.text} {SEP}"
    assert ClosedBook(model, tokenizer).prompt(q) == f"{q.text} {SEP}" == qa_prompt(q.text)
    with pytest.raises(ValueError, match="not observed"):
        OracleDocument(model, tokenizer).prompt(q)


def test_retrieval_recalls_the_evidence_newest_last(model, tokenizer, tmp_path):
    docs = (KnowledgeDocument("d0-0", 0, "zorvak works for brantex ."),
            KnowledgeDocument("d0-1", 0, "a photo of mirel was printed ."),
            KnowledgeDocument("d0-2", 0, "the partner of sovan is jarel ."))
    later = (KnowledgeDocument("d1-0", 1, "zorvak now works for plaware ."),)
    q = Question("q1-0", 1, "as of step 1 , where does zorvak work ?", ("plaware",),
                 doc_id="d1-0", inserted_at=1, updated=True)
    with memory(tmp_path) as mem:
        agent = RetrieveDocuments(model, tokenizer, mem, k=2)
        agent.observe(KnowledgeStep(0, docs, ()))
        agent.observe(KnowledgeStep(1, later, (q,)))
        recalled = agent.recall(q)
        assert [r.meta["doc_id"] for r in recalled] == ["d0-0", "d1-0"]
        assert agent.prompt(q) == qa_prompt(q.text, [docs[0].text, later[0].text])


def test_online_finetune_changes_weights_closed_book_does_not(model, tokenizer, stream):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = OnlineFinetune(model, tokenizer, lr=1e-3, epochs=2)
    closed = ClosedBook(model, tokenizer)
    tuned.observe(stream[0])
    closed.observe(stream[0])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(v, tuned.model.state_dict()[k]) for k, v in before.items())
    assert tuned.nbytes == sum(p.numel() * 4 for p in model.parameters())


@pytest.mark.parametrize("k", [2, None])
def test_compressed_memory_answers_within_budget(model, tokenizer, stream, k):
    budget = Budget("2MB")
    cmt = CMT(model, tokenizer, budget=budget, tokens=2, key_dim=8, bank_nbytes=4000)
    agent = CompressedMemory(cmt, k=k)
    assert agent.answer(stream[0].questions).keys() == {q.qid for q in stream[0].questions}
    run(agent, stream)
    assert 0 < agent.nbytes <= cmt.bank.nbytes <= 4000
    assert budget.used <= budget.capacity
    assert len(agent.doc_index) == len(stream.documents_up_to(2))


def test_top_k_sweep_reads_the_bank_it_is_given_with_each_k(bench, model, tokenizer, stream,
                                                           monkeypatch):
    cmt = CMT(model, tokenizer, budget=Budget("4MB"), tokens=2, key_dim=8, prefix_tokens=2)
    CompressedMemory(cmt, k=1).observe(stream[0])
    questions = stream.questions_up_to(0)
    held, used = len(cmt.bank), []

    class Recording(CompressedMemory):
        def answer(self, questions):
            assert self.cmt is cmt and len(cmt.bank) == held
            used.append(self.k)
            answers = super().answer(questions)
            return {qid: "x" if self.k == 1 else a for qid, a in answers.items()}

    monkeypatch.setattr(bench, "CompressedMemory", Recording)
    swept = bench.top_k_sweep(cmt, [replace(q, answers=("x",)) for q in questions])
    assert used == [k for k in bench.TOP_K_SWEEP if k is None or k <= held] and held < 10
    assert list(swept) == [str(k) for k in used] and swept["1"] == 1.0
    assert swept["None"] == qa_scores(CompressedMemory(cmt, k=None).answer(questions),
                                      [replace(q, answers=("x",)) for q in questions])["em"]


def test_answer_triples_pair_each_question_with_its_evidence(tokenizer, stream):
    triples = answer_triples(stream, tokenizer)
    questions = stream.questions_up_to(len(stream) - 1)
    texts = {d.doc_id: d.text for d in stream.documents_up_to(len(stream) - 1)}
    assert len(triples) == len(questions)
    for (document, prompt, answer), q in zip(triples, questions, strict=True):
        assert document.tolist() == tokenizer.encode(texts[q.doc_id])
        assert q.answers[0] in tokenizer.decode(document.tolist()).split()
        assert prompt.tolist() == tokenizer.encode(qa_prompt(q.text))
        assert answer[-1] == tokenizer.eos_token_id and tokenizer.bos_token_id not in answer
        assert tokenizer.decode(answer[:-1].tolist()) == q.answers[0]

    class NoBOS:  # a tokenizer that adds no beginning-of-sequence token keeps every answer token
        bos_token_id, eos_token = None, tokenizer.eos_token

        def encode(self, text):
            return tokenizer.encode(text)[1:]

    first = answer_triples(stream, NoBOS())[0]
    assert first[2].tolist() == triples[0][2].tolist()
    assert first[0].tolist() == triples[0][0].tolist()[1:]
    with pytest.raises(TypeError, match="expected KnowledgeSteps, got list"):
        answer_triples(list(stream), tokenizer)


def test_clear_errors(model, tokenizer, tmp_path):
    with pytest.raises(TypeError, match="KnowledgeStep"):
        ClosedBook(model, tokenizer).observe(["a document"])
    with pytest.raises(TypeError, match="sequence of Question"):
        ClosedBook(model, tokenizer).answer(["where ?"])
    with pytest.raises(ValueError, match="lr"):
        OnlineFinetune(model, tokenizer, lr=0)
    with pytest.raises(TypeError, match="AgentMemory"):
        RetrieveDocuments(model, tokenizer, {}, k=2)
    with memory(tmp_path) as mem, pytest.raises(ValueError, match="k: expected"):
        RetrieveDocuments(model, tokenizer, mem, k=0)
    with pytest.raises(TypeError, match="CMT"):
        CompressedMemory(model)
    with pytest.raises(TypeError, match="causal LM"):
        ClosedBook("gpt2", tokenizer)


# ----------------------------------------------------------------------------- benchmark scoring

def question(qid, inserted_at, answer, updated=False, time=3, entity="zorvak"):
    return Question(qid, time, f"as of step {time} , where does {entity} work ?", (answer,),
                    entity=entity, attribute="employer", updated=updated,
                    inserted_at=inserted_at)


def test_retention_split_and_updated_accuracy(bench):
    qs = [question("a", 0, "brantex"), question("b", 1, "plaware"),
          question("c", 5, "quotex", updated=True, time=5),
          question("d", 2, "cratex", updated=True), question("e", 5, "bretex", time=5)]
    preds = {"a": "brantex", "b": "nope", "c": "quotex", "d": "brantex", "e": "no"}
    scores = bench.step_scores(preds, qs, step=5, history={})
    assert scores["em"] == pytest.approx(2 / 5)
    assert scores["early_em"] == pytest.approx(1 / 2)  # inserted at steps 0-1
    assert scores["late_em"] == pytest.approx(1 / 3)  # inserted at steps 2-5
    assert (scores["n_early"], scores["n_late"]) == (2, 3)
    assert scores["updated_em"] == pytest.approx(1 / 2) and scores["n_updated"] == 2
    history = {("zorvak", "employer"): [(0, "brantex"), (1, "plaware"), (2, "cratex"),
                                        (3, "quotex")]}
    scores = bench.step_scores(preds, qs, step=5, history=history)
    assert scores["stale_rate"] == pytest.approx(1 / 2)  # "d" answered with an older value


def test_scores_of_empty_groups_are_none(bench):
    scores = bench.step_scores({"a": "x"}, [question("a", 0, "x", time=0)], step=0, history={})
    assert scores["early_em"] == 1.0 and scores["updated_em"] is None
    assert scores["late_em"] == 1.0  # step 0: both splits are step 0
    with pytest.raises(ValueError, match="no prediction"):
        bench.step_scores({}, [question("a", 0, "x")], step=3, history={})


def test_training_context_holds_the_evidence_in_time_order(stream):
    train = load_script(ROOT / "benchmarks" / "train_qa_lm.py")
    texts = {d.doc_id: d for d in stream.documents_up_to(2)}
    order = list(texts)
    g = torch.Generator().manual_seed(0)
    for q in stream.questions_up_to(2):
        context = train.reading_context(stream, q, g)
        ids = [next(i for i, d in texts.items() if d.text == t) for t in context]
        assert q.doc_id in ids and 1 <= len(ids) <= 3
        assert ids == sorted(ids, key=order.index)
        assert all(texts[i].time <= q.time for i in ids)
    with pytest.raises(ValueError, match="eval_seeds"):
        train.train_qa_lm(ROOT / "runs" / "never", eval_seeds=(1000,))


def test_second_stage_continues_from_the_first_and_scores_reading_in_context(tmp_path):
    train = load_script(ROOT / "benchmarks" / "train_qa_lm.py")
    tiny = {"n_layer": 1, "d": 16, "heads": 2, "train_seeds": 2, "steps": 2, "batch": 2,
            "warmup": 1, "eval_seeds": (0,)}
    first = train.train_qa_lm(tmp_path / "first", **tiny)
    second = train.train_qa_lm(tmp_path / "second", init=first, max_others=2, **tiny)
    info = json.loads((second / "train_info.json").read_text())
    assert info["settings"]["init"] == {
        "dir": str(first),
        "settings": json.loads((first / "train_info.json").read_text())["settings"]}
    assert set(info["held_out"]) == {"oracle_em", "closed_book_em", "context_em", "questions"}
    before, after = (train.load_qa_lm(d)[0].state_dict() for d in (first, second))
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # trained further
    with pytest.raises(ValueError, match="init: expected a directory written by train_qa_lm"):
        train.train_qa_lm(tmp_path / "third", init=tmp_path / "nothing", **tiny)
