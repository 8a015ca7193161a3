import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from memkit.agents.cmt import (
    CMT,
    Aggregator,
    memory_aware_loss,
    qa_loss,
    self_matching_loss,
    train_cmt,
)
from memkit.budget import Budget, BudgetExceeded, module_nbytes
from memkit.buffers.cmt import EVICTIONS, CMTBank, cmt_bank_nbytes
from memkit.kernels.topk import topk_search_reference
from memkit.registry import create

torch.set_num_threads(1)
V, D, T, P = 50, 32, 4, 4


def gpt2(seed=0):
    """A tiny random GPT-2; initializer_range 0.2 (not 0.02) so its logits can move."""
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=D, n_head=4, vocab_size=V,
                                      n_positions=64, bos_token_id=0, eos_token_id=0,
                                      initializer_range=0.2))


def llama(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=D,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        intermediate_size=64, vocab_size=V,
                                        max_position_embeddings=64, bos_token_id=0,
                                        eos_token_id=0, pad_token_id=0,
                                        initializer_range=0.2))


def agent_for(model, seed=0, budget="2MB", **kwargs):
    kwargs = {"tokens": T, "key_dim": 16, "prefix_tokens": P, **kwargs}
    return CMT(model, budget=Budget(budget), seed=seed, **kwargs)


def ids(*tokens):
    return torch.tensor(tokens, dtype=torch.int64)


def toy_examples():
    """4 (document, question, answer) triples: document i uses tokens 10i..10i+9; its
    question repeats three of them after a shared token, its answer is another."""
    g = torch.Generator().manual_seed(7)
    examples = []
    for i in range(4):
        doc = 10 + (10 * i + torch.randperm(10, generator=g)[:8]) % 40
        examples.append((doc, torch.cat([ids(1), doc[[1, 3, 5]]]), doc[[6, 7]]))
    return examples


def bank(capacity=5, eviction="fifo", dtype=torch.float32, tokens=2, dim=4, key_dim=3):
    per = cmt_bank_nbytes(tokens, dim, key_dim, 1, dtype=dtype, eviction=eviction)
    budget = Budget(per * capacity + per // 2)
    return CMTBank(tokens, dim, key_dim, budget, dtype=dtype, eviction=eviction)


def random_entries(n, seed, tokens=2, dim=4, key_dim=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 1000, (n,), generator=g), torch.randn(n, tokens, dim, generator=g),
            torch.randn(n, key_dim, generator=g))


# -- the bank --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("eviction", EVICTIONS)
def test_bank_bytes_are_exact_and_capacity_is_the_most_that_fits(dtype, eviction):
    budget = Budget(10_000)
    b = CMTBank(3, 8, 5, budget, nbytes=4_000, dtype=dtype, eviction=eviction)
    entry = (3 * 8 + 5) * dtype.itemsize + 24 + 8 * (eviction == "least_used")
    assert b.capacity == 4_000 // entry
    tensor_bytes = sum(t.numel() * t.element_size() for t in b.tensors().values())
    assert b.nbytes == tensor_bytes == b.capacity * entry == budget.charged("cmt.bank")
    assert cmt_bank_nbytes(3, 8, 5, b.capacity + 1, dtype=dtype, eviction=eviction) > 4_000
    assert create("store", "cmt_bank", tokens=3, dim=8, key_dim=5, budget=Budget(4_000),
                  dtype=dtype, eviction=eviction).capacity == b.capacity


@settings(max_examples=40, deadline=None)
@given(eviction=st.sampled_from(EVICTIONS), dtype=st.sampled_from([torch.float16, torch.float32]),
       ops=st.lists(st.tuples(st.sampled_from(["write", "search"]), st.integers(1, 7),
                              st.integers(0, 10_000)), min_size=1, max_size=14))
def test_bank_evicts_like_a_plain_model(eviction, dtype, ops):
    b, capacity = bank(5, eviction, dtype), 5
    held, next_id = {}, 0  # entry id -> [doc, uses, memory, key, time]
    for kind, n, seed in ops:
        if kind == "search":
            queries = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed))
            if not held:
                with pytest.raises(ValueError, match="k as an int"):
                    b.search(queries, 1)
                continue
            _, slots = b.search(queries, min(n, len(held)))
            for entry in b.ids[slots].reshape(-1).tolist():
                held[entry][1] += 1
            continue
        docs, memories, keys = random_entries(n, seed)
        evicted = b.write(docs, memories, keys, seed)
        rows = range(max(n - capacity, 0), n)
        need = max(len(rows) - (capacity - len(held)), 0)
        rank = (lambda e: e) if eviction == "fifo" else (lambda e: (held[e][1], e))
        victims = sorted(held, key=rank)[:need]
        assert evicted.tolist() == [held[e][0] for e in victims]
        for e in victims:
            del held[e]
        for r in rows:
            held[next_id + r] = [int(docs[r]), 0, memories[r].to(dtype).float(),
                                 keys[r].to(dtype).float(), seed]
        next_id += n
        entries = b.entries()
        order = torch.argsort(entries.ids)
        assert entries.ids[order].tolist() == sorted(held)
        expected = [held[e] for e in sorted(held)]
        assert entries.doc_ids[order].tolist() == [e[0] for e in expected]
        assert entries.times[order].tolist() == [e[4] for e in expected]
        assert torch.equal(entries.memories[order], torch.stack([e[2] for e in expected]))
        assert torch.equal(entries.keys[order], torch.stack([e[3] for e in expected]))
        if eviction == "least_used":
            assert b.usage[:len(b)][order].tolist() == [e[1] for e in expected]
    assert b.nbytes == b.budget.charged("cmt.bank") == b.nbytes_for(capacity)


def test_search_equals_brute_force_inner_product_top_k():
    b = bank(40, dtype=torch.float16, key_dim=6)
    docs, memories, keys = random_entries(33, 1, key_dim=6)
    b.write(docs, memories, keys, 0)
    queries = torch.randn(7, 6, generator=torch.Generator().manual_seed(2))
    scores, slots = b.search(queries, 5)
    expected_scores, expected_slots = topk_search_reference(queries, b.keys[:33].float(), 5,
                                                            metric="ip")
    assert torch.equal(slots, expected_slots)
    assert torch.allclose(scores, expected_scores, atol=1e-5)
    brute = queries.double() @ keys.half().double().T  # by hand from the stored float16 keys
    assert torch.allclose(scores.double(), brute.topk(5, dim=1).values, atol=1e-5)
    gathered, mask = b.gather(torch.cat([slots[:, :2], torch.full((7, 1), -1)], dim=1))
    assert mask.tolist() == [[True, True, False]] * 7
    assert torch.equal(gathered[:, :2], memories.half().float()[slots[:, :2]])
    assert torch.equal(gathered[:, 2], torch.zeros(7, 2, 4))


def test_self_matching_keys_retrieve_their_own_document():
    b = bank(8, key_dim=8)
    keys = torch.eye(8)[torch.randperm(8, generator=torch.Generator().manual_seed(0))]
    docs = torch.arange(100, 108)
    b.write(docs, torch.randn(8, 2, 4), keys, 3)
    questions = keys + 0.05 * torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    _, slots = b.search(questions, 1)
    assert torch.equal(b.doc_ids[slots[:, 0]], docs)


def test_bank_save_load_round_trips_and_continues_identically(tmp_path):
    a = bank(5, "least_used", torch.float16)
    a.write(*random_entries(7, 0), 1)
    a.search(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), 2)
    a.save(tmp_path / "bank.safetensors")
    b = bank(5, "least_used", torch.float16)
    b.load(tmp_path / "bank.safetensors")
    for name, t in a.tensors().items():
        assert torch.equal(t, b.tensors()[name])
    more = random_entries(3, 9)
    assert torch.equal(a.write(*more, 2), b.write(*more, 2))
    assert torch.equal(a.entries().ids, b.entries().ids)
    with pytest.raises(ValueError, match="different configuration"):
        bank(5, "fifo", torch.float16).load(tmp_path / "bank.safetensors")


def test_bank_errors_are_clear():
    with pytest.raises(ValueError, match="dtype float16 or float32, got 'int8'"):
        CMTBank(2, 4, 3, Budget(10_000), dtype="int8")
    with pytest.raises(ValueError, match="dtype"):
        CMTBank(2, 4, 3, Budget(10_000), dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="eviction"):
        CMTBank(2, 4, 3, Budget(10_000), eviction="lru")
    with pytest.raises(BudgetExceeded):
        CMTBank(2, 4, 3, Budget(10))
    b = bank(5)
    docs, memories, keys = random_entries(2, 0)
    with pytest.raises(ValueError, match=r"memories of shape \(n, 2, 4\)"):
        b.write(docs, torch.randn(2, 3, 4), keys, 0)
    with pytest.raises(ValueError, match=r"keys of shape \(n, 3\)"):
        b.write(docs, memories, torch.randn(2, 5), 0)
    with pytest.raises(ValueError, match="doc_ids as an integer tensor"):
        b.write(docs.float(), memories, keys, 0)
    with pytest.raises(ValueError, match="one key per memory"):
        b.write(docs, memories, keys[:1], 0)
    b.write(docs, memories, keys, 0)
    with pytest.raises(ValueError, match=r"k as an int in \[1, 2\].*got 3"):
        b.search(torch.randn(1, 3), 3)
    with pytest.raises(ValueError, match=r"query keys of shape \(q, 3\)"):
        b.search(torch.randn(1, 4), 1)
    with pytest.raises(ValueError, match=r"slots in \[-1, 1\]"):
        b.gather(torch.tensor([[2]]))


# -- the agent -------------------------------------------------------------------------------

def test_modules_and_bank_are_charged_to_one_budget():
    agent = agent_for(gpt2(), budget="500KB")
    budget = agent.budget
    assert budget.charged("cmt.compressor") == module_nbytes(agent.compressor) > 0
    assert budget.charged("cmt.aggregator") == module_nbytes(agent.aggregator) > 0
    assert budget.charged("cmt.bank") == agent.bank.nbytes
    assert budget.free < agent.bank.nbytes_for(1) and budget.used <= budget.capacity
    assert agent.bank.memories.shape == (agent.bank.capacity, T, D)


def test_qa_loss_and_answer_log_prob_equal_a_hand_nll():
    agent = agent_for(gpt2())
    model, embed = agent.model, agent.model.get_input_embeddings()
    questions = [ids(3, 4, 5), ids(6, 7, 8, 9, 10), ids(11)]
    answers = [ids(12, 13), ids(14), ids(15, 16, 17, 18)]
    prefix = 0.1 * torch.randn(3, P, D, generator=torch.Generator().manual_seed(0))
    total, count, per_question = 0.0, 0, []
    with torch.no_grad():
        for p, q, a in zip(prefix, questions, answers, strict=True):
            x = torch.cat([p, embed(torch.cat([q, a]))])[None]
            log_p = torch.log_softmax(model(inputs_embeds=x).logits[0].double(), dim=-1)
            nll = -sum(float(log_p[P + len(q) + j - 1, tok]) for j, tok in enumerate(a))
            total, count = total + nll, count + len(a)
            per_question.append(-nll)
        loss = qa_loss(model, prefix, questions, answers)
    assert math.isclose(float(loss), total / count, rel_tol=1e-5)
    agent.memorize([0, 1], [ids(20, 21, 22), ids(23, 24)], time=0)
    own = agent.answer_log_prob(questions, answers, k=1)
    with torch.no_grad():
        expected = -qa_loss(model, agent.prefix(questions[:1], k=1), questions[:1], answers[:1])
    assert math.isclose(float(own[0]), float(expected) * 2, rel_tol=1e-5)
    assert own.shape == (3,) and bool((own < 0).all())


def test_memory_aware_loss_equals_a_hand_nll_from_the_entry_alone():
    agent = agent_for(gpt2())
    documents = [ids(20, 21, 22, 23), ids(30, 31)]
    with torch.no_grad():
        memories, _ = agent.compress(documents)
        loss = memory_aware_loss(agent, documents, memories)
        total, count = 0.0, 0
        embed = agent.model.get_input_embeddings()
        for memory, doc in zip(memories, documents, strict=True):
            prefix = agent.aggregator(torch.zeros(1, 0, D), torch.zeros(1, 0, dtype=torch.bool),
                                      memory[None, None], torch.ones(1, 1, dtype=torch.bool))
            x = torch.cat([prefix[0], embed(doc)])[None]
            log_p = torch.log_softmax(agent.model(inputs_embeds=x).logits[0].double(), dim=-1)
            total -= sum(float(log_p[P - 1 + j, tok]) for j, tok in enumerate(doc))
            count += len(doc)
    assert math.isclose(float(loss), total / count, rel_tol=1e-5)


def test_self_matching_loss_is_cross_entropy_on_the_similarity_matrix():
    g = torch.Generator().manual_seed(0)
    q, e = F.normalize(torch.randn(6, 8, generator=g), dim=1), torch.randn(6, 8, generator=g)
    expected = F.cross_entropy(q @ e.T / 0.07, torch.arange(6))
    assert torch.allclose(self_matching_loss(q, e, 0.07), expected, atol=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        self_matching_loss(q, e[:5], 0.1)


def test_top_k_aggregation_equals_aggregation_over_a_bank_of_only_those_entries():
    model = gpt2()
    agent = agent_for(model)
    documents = [ids(*range(10 + 5 * i, 15 + 5 * i)) for i in range(6)]
    agent.memorize(torch.arange(6), documents, time=0)
    question = ids(1, 12, 27)
    with torch.no_grad():
        states, mask = agent.states([question])
        _, slots = agent.bank.search(agent.aggregator.query_key(states, mask), 3)
        top = agent.prefix(question, k=3)
        small = agent_for(model, budget="2MB", bank_nbytes=agent.bank.nbytes_for(3))
        held = agent.bank.entries()
        small.bank.write(held.doc_ids[slots[0]], held.memories[slots[0]], held.keys[slots[0]], 0)
        assert len(small.bank) == small.bank.capacity == 3
        scored = small.prefix(question, k=3)  # the same three entries, the same scores
        unweighted = small.prefix(question, k=None)
        everything = agent.prefix(question, k=None)
    assert torch.allclose(top, scored, atol=1e-5)
    assert not torch.allclose(top, unweighted, atol=1e-3)
    assert not torch.allclose(top, everything, atol=1e-3)
    with pytest.raises(ValueError, match=r"k as an int in \[1, 6\].*got 7"):
        agent.prefix(question, k=7)


def test_a_dominant_matching_score_aggregates_that_entry_alone():
    aggregator = Aggregator(D, P, 16, seed=3)
    g = torch.Generator().manual_seed(0)
    states, mask = torch.randn(2, 5, D, generator=g), torch.ones(2, 5, dtype=torch.bool)
    memories, memory_mask = torch.randn(2, 3, T, D, generator=g), torch.ones(2, 3, dtype=torch.bool)
    scores = torch.tensor([[0.0, 200.0, 0.0], [200.0, 0.0, 0.0]])
    with torch.no_grad():
        weighted = aggregator(states, mask, memories, memory_mask, scores)
        alone = aggregator(states, mask, memories[torch.arange(2), torch.tensor([1, 0])][:, None],
                           memory_mask[:, :1])
        plain = aggregator(states, mask, memories, memory_mask)
    torch.testing.assert_close(weighted, alone)
    assert not torch.allclose(weighted, plain, atol=1e-3)
    with pytest.raises(ValueError, match=r"scores of shape \(2, 3\)"):
        aggregator(states, mask, memories, memory_mask, scores[:, :2])


def self_matching_accuracy(agent, examples):
    agent.bank.clear()
    agent.memorize(torch.arange(len(examples)), [e[0] for e in examples], time=0)
    with torch.no_grad():
        keys = agent.aggregator.query_key(*agent.states([e[1] for e in examples]))
    _, slots = agent.bank.search(keys, 1)
    return float((agent.bank.doc_ids[slots[:, 0]] == torch.arange(len(examples))).float().mean())


def test_training_lowers_the_loss_raises_matching_and_leaves_the_lm_untouched():
    model = gpt2()
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    agent, examples = agent_for(model), toy_examples()
    before = self_matching_accuracy(agent, examples)
    losses = train_cmt(agent, examples, steps=40, k=2, lr=1e-2, seed=0)
    after = self_matching_accuracy(agent, examples)
    assert set(losses) == {"qa", "memory", "matching", "total"}
    assert all(len(v) == 40 for v in losses.values())
    for name in ("qa", "memory", "matching", "total"):
        assert losses[name][-1] < 0.7 * losses[name][0], name
    assert before < after == 1.0
    assert all(torch.equal(v, frozen[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    assert all(p.grad is not None for p in agent.parameters())


def test_own_steps_answer_from_the_question_s_own_entry_then_from_the_top_k():
    examples = toy_examples()
    documents, questions, answers = (list(part) for part in zip(*examples, strict=True))

    def hand_loss(agent, own):
        memories, entry_keys = agent.compressor(*agent.states(documents))
        q_states, q_mask = agent.states(questions)
        scores = None
        if own:
            chosen = torch.arange(4)[:, None]
        else:
            logits = agent.aggregator.query_key(q_states, q_mask) @ entry_keys.T
            scores, chosen = (logits / agent.temperature).topk(2)
        prefix = agent.aggregator(q_states, q_mask, memories[chosen],
                                  torch.ones(chosen.shape, dtype=torch.bool), scores)
        return float(qa_loss(agent.model, prefix, questions, answers).detach())

    for own_steps, own in ((1, True), (0, False)):
        trained = train_cmt(agent_for(gpt2()), examples, steps=1, objectives=("qa",), k=2,
                            lr=1e-2, own_steps=own_steps)["qa"][0]
        assert trained == pytest.approx(hand_loss(agent_for(gpt2()), own), rel=1e-5)
    assert hand_loss(agent_for(gpt2()), True) != pytest.approx(hand_loss(agent_for(gpt2()), False))
    with pytest.raises(ValueError, match="own_steps: expected an int >= 0, got -1"):
        train_cmt(agent_for(gpt2()), examples, steps=1, own_steps=-1)


def test_training_is_deterministic_for_a_seed():
    examples = toy_examples()
    runs = [train_cmt(agent_for(gpt2()), examples, steps=3, lr=1e-2, seed=5, batch_size=3)
            for _ in range(2)]
    assert runs[0] == runs[1]


def test_runs_on_tiny_llama():
    model = llama()
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    agent, examples = agent_for(model, eviction="least_used"), toy_examples()
    losses = train_cmt(agent, examples, steps=3, objectives=("qa", "matching"), lr=1e-2, seed=0)
    assert all(math.isfinite(v) for v in losses["total"])
    agent.memorize([0, 1, 2, 3], [e[0] for e in examples], time=1)
    prefix = agent.prefix([e[1] for e in examples], k=2)
    assert prefix.shape == (4, P, D) and torch.isfinite(prefix).all()
    log_p = agent.answer_log_prob([e[1] for e in examples], [e[2] for e in examples], k=1)
    assert torch.isfinite(log_p).all() and bool((log_p < 0).all())
    new = agent.generate(examples[0][1], 3, k=1)
    assert new.shape == (3,) and new.dtype == torch.int64
    assert int(agent.bank.usage.sum()) == 4 * 2 + 4 + 1  # every search counted its returns
    assert all(torch.equal(v, frozen[k]) for k, v in model.state_dict().items())


def test_save_load_round_trips_the_trained_modules(tmp_path):
    model, examples = gpt2(), toy_examples()
    agent = agent_for(model)
    train_cmt(agent, examples, steps=2, lr=1e-2, seed=0)
    agent.save(tmp_path / "cmt.safetensors")
    other = agent_for(model, seed=1)
    question = examples[0][1]
    with torch.no_grad():
        assert not torch.allclose(agent.prefix(question), other.prefix(question))
        other.load(tmp_path / "cmt.safetensors")
        assert torch.equal(agent.prefix(question), other.prefix(question))
    agent.memorize([0, 1, 2], [e[0] for e in examples[:3]], time=0)
    agent.bank.save(tmp_path / "bank.safetensors")
    other.bank.load(tmp_path / "bank.safetensors")
    with torch.no_grad():
        assert torch.equal(agent.prefix(question, k=2), other.prefix(question, k=2))
    with pytest.raises(ValueError, match=r"cmt\.modules file with config"):
        agent_for(model, tokens=3).load(tmp_path / "cmt.safetensors")


@pytest.mark.parametrize("layer", [0, 1, -1])
def test_modules_read_the_lm_states_at_the_chosen_layer(layer):
    model = gpt2()
    agent = agent_for(model, layer=layer)
    sequences = [ids(1, 2, 3), ids(4, 5)]
    states, mask = agent.states(sequences)
    assert mask.tolist() == [[True] * 3, [True, True, False]]
    with torch.no_grad():
        for row, sequence in enumerate(sequences):
            hidden = model(sequence[None], output_hidden_states=True).hidden_states[layer][0]
            torch.testing.assert_close(states[row, :len(sequence)], hidden)
        if layer == 0:  # token and position embeddings: each position holds its own token
            positions = torch.arange(3)
            embedded = model.transformer.wte(sequences[0]) + model.transformer.wpe(positions)
            torch.testing.assert_close(states[0], embedded)
    assert float(states[1, 2].abs().sum()) == 0.0


def test_agent_errors_are_clear():
    agent = agent_for(gpt2())
    aggregator = Aggregator(D, P, 16)
    states, mask = torch.zeros(1, 2, D), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=rf"memories of shape \(1, M, T, {D}\)"):
        aggregator(states, mask, torch.zeros(1, 2, T, D + 1), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=rf"LM states of shape \(B, L, {D}\)"):
        agent.compressor(torch.zeros(1, 2, D - 1), mask)
    with pytest.raises(ValueError, match="bool memory mask"):
        aggregator(states, mask, torch.zeros(1, 2, T, D), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"k as an int in \[1, 0\]"):
        agent.prefix(ids(1, 2), k=1)
    with pytest.raises(ValueError, match="one document id per document"):
        agent.memorize([0], [ids(1, 2), ids(3)], time=0)
    with pytest.raises(ValueError, match="token ids"):
        agent.prefix(ids(1, V))
    with pytest.raises(ValueError, match="positions"):
        agent.answer_log_prob(ids(*[1] * 40), ids(*[2] * 30))
    with pytest.raises(ValueError, match="objectives"):
        train_cmt(agent, toy_examples(), steps=1, objectives=("qa", "recall"))
    with pytest.raises(ValueError, match=r"k: expected None or an int in \[1, 4\]"):
        train_cmt(agent, toy_examples(), steps=1, k=5)
    with pytest.raises(ValueError, match="heads"):
        agent_for(gpt2(), heads=5)
    with pytest.raises(ValueError, match="dtype"):
        agent_for(gpt2(), dtype="int8")
    with pytest.raises(ValueError, match=r"layer: expected an int in \[-3, 2\].*got 3"):
        agent_for(gpt2(), layer=3)
