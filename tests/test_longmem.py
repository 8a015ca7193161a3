import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from memkit.agents.causal_lm import CausalLM, decoder_layers
from memkit.agents.longmem import LongMem, train_side_network
from memkit.budget import Budget, BudgetExceeded, module_nbytes
from memkit.buffers.longmem import LongMemBank, longmem_bank_nbytes
from memkit.kernels.memory_attention import joint_attention, joint_attention_reference
from memkit.registry import create
from memkit.testing import check_store

torch.set_num_threads(1)
V = 50


def gpt2(layers=4, seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=layers, n_embd=32, n_head=4, vocab_size=V,
                                      n_positions=64, bos_token_id=0, eos_token_id=0))


def llama(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=4, hidden_size=32,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        intermediate_size=64, vocab_size=V,
                                        max_position_embeddings=64, bos_token_id=0,
                                        eos_token_id=0, pad_token_id=0))


BACKBONES = {"gpt2": gpt2, "llama": llama}


def attention_inputs(batch, heads, length, memory, dim, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, length, dim, generator=g) for _ in range(3))
    mem_k, mem_v = (torch.randn(batch, heads, length, memory, dim, generator=g)
                    for _ in range(2))
    mask = torch.rand(batch, heads, length, memory, generator=g) < 0.6
    mask[0, 0, 0] = False  # a query with no memory at all
    gate = torch.rand(heads, generator=g)
    return q, k, v, mem_k, mem_v, mask, gate


# -- joint attention -------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 4), (2, 3, 7, 5, 8), (1, 4, 12, 16, 6)])
def test_joint_attention_equals_the_reference(shape):
    inputs = attention_inputs(*shape, seed=sum(shape))
    fast, reference = joint_attention(*inputs), joint_attention_reference(*inputs)
    assert torch.allclose(fast, reference, atol=1e-5)
    q, k, v = inputs[:3]
    local = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(fast[0, 0, 0], local[0, 0, 0], atol=1e-6)  # no memory: local only


def test_joint_attention_with_gate_zero_is_local_attention_exactly():
    q, k, v, mem_k, mem_v, mask, _ = attention_inputs(2, 3, 9, 4, 8, seed=1)
    out = joint_attention(q, k, v, mem_k, mem_v, mask, torch.zeros(3))
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_joint_attention_with_gate_one_is_memory_attention():
    q, k, v, mem_k, mem_v, mask, _ = attention_inputs(1, 2, 3, 4, 8, seed=2)
    mask[:] = True
    out = joint_attention(q, k, v, mem_k, mem_v, mask, torch.ones(2))
    scores = torch.einsum("bhtd,bhtmd->bhtm", q, mem_k) / math.sqrt(8)
    expected = torch.einsum("bhtm,bhtmd->bhtd", scores.softmax(-1), mem_v)
    assert torch.allclose(out, expected, atol=1e-6)


def test_joint_attention_rejects_bad_shapes():
    q, k, v, mem_k, mem_v, mask, gate = attention_inputs(1, 2, 3, 4, 8, seed=3)
    with pytest.raises(ValueError, match=r"mem_k of shape \(1, 2, 3, 4, 8\)"):
        joint_attention(q, k, v, mem_k[..., :4], mem_v, mask, gate)
    with pytest.raises(ValueError, match="gate of shape"):
        joint_attention(q, k, v, mem_k, mem_v, mask, gate[:1])
    with pytest.raises(ValueError, match="bool mem_mask"):
        joint_attention(q, k, v, mem_k, mem_v, mask.float(), gate)
    with pytest.raises(TypeError, match="q as a tensor"):
        joint_attention(None, k, v, mem_k, mem_v, mask, gate)


# -- the bank --------------------------------------------------------------------------------

def test_bank_bytes_are_exact_and_fill_the_allotment():
    budget = Budget("100KB")
    bank = LongMemBank(3, 8, budget, nbytes=50_000, key_dtype="float16")
    row = 3 * 8 * 2
    assert bank.nbytes == sum(t.numel() * t.element_size() for t in bank.tensors().values())
    assert bank.nbytes == budget.charged("longmem.bank") == bank.nbytes_for(bank.capacity)
    assert bank.nbytes == bank.capacity * 9 * row + 2 * 3 * row  # 4 keys + 4 values + mean
    assert bank.nbytes <= 50_000 < bank.nbytes_for(bank.capacity + 1)
    assert bank.capacity_tokens == 4 * bank.capacity
    wide = LongMemBank(3, 8, Budget("100KB"), nbytes=50_000, key_dtype=torch.float32)
    assert wide.capacity == bank.capacity // 2
    assert longmem_bank_nbytes(3, 8, 10, chunk=2) == 10 * 5 * row + 2 * row
    check_store(bank)
    assert isinstance(create("store", "longmem_bank", heads=2, head_dim=4, budget="2KB"),
                      LongMemBank)


@settings(max_examples=30, deadline=None)
@given(capacity=st.integers(1, 5), sizes=st.lists(st.integers(0, 13), max_size=8),
       chunk=st.integers(1, 4))
def test_bank_is_fifo_by_chunk_with_pending_tokens(capacity, sizes, chunk):
    heads, dim = 2, 3
    bank = LongMemBank(heads, dim, Budget(10_000), chunk=chunk, key_dtype=torch.float32,
                       nbytes=longmem_bank_nbytes(heads, dim, capacity, chunk=chunk,
                                                  key_dtype=torch.float32))
    assert bank.capacity == capacity
    written, evicted = torch.empty(0, heads, dim), []
    for step, size in enumerate(sizes):
        keys = torch.randn(size, heads, dim, generator=torch.Generator().manual_seed(step))
        held_before = bank.chunk_ids()
        evicted.append(bank.write(keys, -keys))
        written = torch.cat([written, keys])
        complete = len(written) // chunk
        newest = torch.arange(max(complete - capacity, 0), complete)
        assert sorted(bank.chunk_ids().tolist()) == newest.tolist()
        gone = sorted(set(held_before.tolist()) - set(newest.tolist()))
        assert evicted[-1].tolist() == gone
        assert bank.pending == len(written) - complete * chunk
        assert torch.equal(bank.pending_keys[:bank.pending], written[complete * chunk:])
        for slot, chunk_id in enumerate(bank.chunk_ids().tolist()):
            tokens = written[chunk_id * chunk:(chunk_id + 1) * chunk]
            assert slot == chunk_id % capacity
            assert torch.equal(bank.keys[slot], tokens)
            assert torch.equal(bank.values[slot], -tokens)
            assert torch.allclose(bank.mean_keys[slot], tokens.mean(0))
    bank.clear()
    assert len(bank) == bank.pending == 0


def test_retrieval_returns_each_heads_top_chunks_by_mean_key():
    bank = LongMemBank(3, 8, Budget("1MB"), nbytes=longmem_bank_nbytes(3, 8, 20))
    g = torch.Generator().manual_seed(0)
    bank.write(torch.randn(50 * 4 + 2, 3, 8, generator=g), torch.randn(50 * 4 + 2, 3, 8))
    queries = torch.randn(6, 3, 8, generator=g)
    keys, values, mask = bank.retrieve(queries, 5)
    assert keys.shape == values.shape == (6, 3, 20, 8) and mask.all()
    means = bank.mean_keys.double()
    for head in range(3):
        scores = queries[:, head].double() @ means[:, head].T  # (6, chunks)
        best = scores.topk(5, dim=1).indices
        expected_keys = bank.keys[best, :, head].reshape(6, 20, 8).float()
        assert torch.equal(keys[:, head], expected_keys)
        assert torch.equal(values[:, head], bank.values[best, :, head].reshape(6, 20, 8).float())
    few = LongMemBank(3, 8, Budget("1MB"), nbytes=longmem_bank_nbytes(3, 8, 20))
    few.write(torch.randn(9, 3, 8), torch.randn(9, 3, 8))  # 2 chunks and 1 pending token
    _, _, mask = few.retrieve(queries, 5)
    assert mask[..., :8].all() and not mask[..., 8:].any()


def test_bank_rejects_bad_input_and_small_budgets():
    bank = LongMemBank(2, 4, Budget("10KB"))
    with pytest.raises(ValueError, match=r"keys of shape \(T, 2, 4\)"):
        bank.write(torch.zeros(3, 2, 5), torch.zeros(3, 2, 5))
    with pytest.raises(ValueError, match="differ in shape"):
        bank.write(torch.zeros(3, 2, 4), torch.zeros(4, 2, 4))
    with pytest.raises(ValueError, match="NaN"):
        bank.write(torch.full((3, 2, 4), float("nan")), torch.zeros(3, 2, 4))
    with pytest.raises(ValueError, match="k_chunks"):
        bank.retrieve(torch.zeros(1, 2, 4), 0)
    with pytest.raises(ValueError, match=r"queries of shape \(n, 2, 4\)"):
        bank.retrieve(torch.zeros(1, 4), 1)
    with pytest.raises(ValueError, match="key_dtype"):
        LongMemBank(2, 4, Budget("10KB"), key_dtype="int8")
    with pytest.raises(BudgetExceeded):
        LongMemBank(2, 4, Budget(100))


def test_bank_save_load_round_trip(tmp_path):
    bank = LongMemBank(2, 4, Budget("10KB"), nbytes=longmem_bank_nbytes(2, 4, 6))
    bank.write(torch.randn(31, 2, 4), torch.randn(31, 2, 4))
    bank.save(tmp_path / "bank.safetensors")
    other = LongMemBank(2, 4, Budget("10KB"), nbytes=longmem_bank_nbytes(2, 4, 6))
    other.load(tmp_path / "bank.safetensors")
    assert torch.equal(other.chunk_ids(), bank.chunk_ids()) and other.pending == 3
    for name, t in bank.tensors().items():
        assert torch.equal(other.tensors()[name], t)
    query = torch.randn(4, 2, 4)
    assert all(torch.equal(a, b) for a, b in zip(bank.retrieve(query, 3),
                                                 other.retrieve(query, 3), strict=True))
    wrong = LongMemBank(2, 4, Budget("10KB"), nbytes=longmem_bank_nbytes(2, 4, 5))
    with pytest.raises(ValueError, match="different configuration"):
        wrong.load(tmp_path / "bank.safetensors")


# -- the side network and LongMem ------------------------------------------------------------

def test_side_network_from_all_gpt2_layers_without_residuals_reproduces_the_backbone():
    model = gpt2()
    lm = LongMem(model, budget="1MB", window=32, side_depth=4, cross_residual=False,
                 memory="off")
    ids = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(0))
    out = lm.forward(ids)
    backbone = CausalLM(model, window=32)
    expected = backbone.next_log_probs(backbone.forward(ids))
    assert torch.allclose(lm.next_log_probs(out), expected, atol=1e-5)
    with torch.no_grad():
        lm.side.blocks[2].attn.v.weight.add_(0.1 * torch.randn(32, 32))
    assert not torch.allclose(lm.next_log_probs(out), expected, atol=1e-3)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_layers_are_copied_every_other_layer_and_last_hidden_state_is_raw(name):
    model = BACKBONES[name]()
    lm = LongMem(model, budget="1MB", window=32)
    c = lm.side.config
    assert c.source == name and c.boundaries == (0, 2, 4) and lm.memory_layer == 2
    assert c.memory_layer == 1  # the side layer copied from the memory layer
    first = lm.side.blocks[1]
    layer = decoder_layers(model)[2]
    if name == "gpt2":
        assert torch.equal(first.attn.q.weight, layer.attn.c_attn.weight[:, :32].T)
        assert torch.equal(first.mlp.down.weight, layer.mlp.c_proj.weight.T)
    else:
        assert torch.equal(first.attn.k.weight, layer.self_attn.k_proj.weight)
        assert torch.equal(first.mlp.gate.weight, layer.mlp.gate_proj.weight)
    seen = []
    hook = decoder_layers(model)[-1].register_forward_hook(
        lambda _, args, output: seen.append(output[0] if isinstance(output, tuple) else output))
    out = lm.forward(torch.arange(10)[None])
    hook.remove()
    assert len(out.hidden_states) == 5 and torch.equal(out.hidden_states[-1], seen[0])


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_memory_changes_predictions_only_once_something_was_written(name):
    lm = LongMem(BACKBONES[name](), budget="1MB", window=16, stride=8, k_chunks=4,
                 gate_init=0.0)
    doc = torch.randint(0, V, (60,), generator=torch.Generator().manual_seed(1))
    on = lm.token_log_probs(doc)
    assert on.shape == (59,) and torch.isfinite(on).all()
    assert 4 * len(lm.bank) + lm.bank.pending == 59  # every scored position written once
    lm.memory = "off"
    off = lm.token_log_probs(doc)
    assert torch.equal(on[:15], off[:15])  # the first window reads an empty bank
    assert (on[15:] - off[15:]).abs().max() > 1e-4
    lm.memory = "on"
    lm.begin_document()
    assert len(lm.bank) == 0
    assert torch.equal(lm.token_log_probs(doc, write=False), off)  # nothing was ever written


def test_grouped_query_heads_read_their_kv_heads_memory():
    lm = LongMem(llama(), budget="1MB", window=16, k_chunks=3)
    assert lm.bank.heads == 2 and lm.side.config.heads == 4
    lm.bank.write(torch.randn(40, 2, 8), torch.randn(40, 2, 8))
    q = torch.randn(1, 4, 5, 8)
    keys, values, mask = lm._retrieve(q)
    assert keys.shape == (1, 4, 5, 12, 8) and mask.shape == (1, 4, 5, 12) and mask.all()
    for head in range(4):
        bank_keys, bank_values, _ = lm.bank.retrieve(q[0, head][:, None].expand(5, 2, 8), 3)
        assert torch.equal(keys[0, head], bank_keys[:, head // 2])
        assert torch.equal(values[0, head], bank_values[:, head // 2])


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_training_lowers_the_loss_and_moves_only_the_side_network(name):
    model = BACKBONES[name]()
    budget = Budget("1MB")
    lm = LongMem(model, budget=budget, window=16, k_chunks=4)
    assert budget.charged("longmem.side") == module_nbytes(lm.side)
    assert budget.charged("longmem.bank") == lm.bank.nbytes
    backbone = {k: v.clone() for k, v in model.state_dict().items()}
    side = {k: v.clone() for k, v in lm.side.state_dict().items()}
    doc = torch.randint(0, V, (12,), generator=torch.Generator().manual_seed(2)).repeat(8)
    losses = train_side_network(lm, [doc, doc[:50]], steps=30, lr=3e-3, seed=0, segment=12)
    assert len(losses) == 30
    assert sum(losses[-5:]) < sum(losses[:5]) - 1.0
    assert all(torch.equal(backbone[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert not torch.equal(side["gate_logit"], lm.side.gate_logit)
    again = LongMem(BACKBONES[name](), budget="1MB", window=16, k_chunks=4)
    assert train_side_network(again, [doc, doc[:50]], steps=30, lr=3e-3, seed=0,
                              segment=12) == losses


def test_side_network_save_load_round_trip(tmp_path):
    model = gpt2()
    lm = LongMem(model, budget="1MB", window=16, k_chunks=4)
    doc = torch.randint(0, V, (40,), generator=torch.Generator().manual_seed(3))
    train_side_network(lm, [doc], steps=3, lr=1e-2, seed=0)
    lm.save(tmp_path / "side.safetensors")
    fresh = LongMem(model, budget="1MB", window=16, k_chunks=4)
    assert not torch.equal(fresh.token_log_probs(doc), lm.token_log_probs(doc))
    fresh.load(tmp_path / "side.safetensors")
    assert torch.equal(fresh.token_log_probs(doc), lm.token_log_probs(doc))
    other = LongMem(model, budget="1MB", window=16, side_depth=1)
    with pytest.raises(ValueError, match=r"longmem\.side file with config"):
        other.load(tmp_path / "side.safetensors")


def test_other_architectures_get_a_seeded_random_side_network():
    def build(seed):
        torch.manual_seed(0)
        model = GPTNeoXForCausalLM(GPTNeoXConfig(
            num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
            vocab_size=V, max_position_embeddings=64, bos_token_id=0, eos_token_id=0))
        return LongMem(model, budget="1MB", window=16, seed=seed)

    a, b, c = build(0), build(0), build(1)
    assert a.side.config.source == "random"
    assert all(torch.equal(x, y) for x, y in zip(a.side.state_dict().values(),
                                                 b.side.state_dict().values(), strict=True))
    assert not torch.equal(a.side.blocks[0].attn.q.weight, c.side.blocks[0].attn.q.weight)
    assert torch.isfinite(a.token_log_probs(torch.arange(40) % V)).all()


def test_clear_errors():
    model = gpt2()
    with pytest.raises(ValueError, match="memory: expected one of"):
        LongMem(model, budget="1MB", memory="maybe")
    with pytest.raises(ValueError, match=r"memory_layer: expected an int in \[0, 3\]"):
        LongMem(model, budget="1MB", memory_layer=4)
    with pytest.raises(ValueError, match="side_depth: expected at most the backbone's 4"):
        LongMem(model, budget="1MB", side_depth=5)
    with pytest.raises(ValueError, match="k_chunks"):
        LongMem(model, budget="1MB", k_chunks=0)
    with pytest.raises(BudgetExceeded, match=r"longmem\.side"):
        LongMem(model, budget="10KB")
    lm = LongMem(model, budget="1MB", window=16)
    with pytest.raises(ValueError, match=r"segment: expected an int in \[1, 16\]"):
        train_side_network(lm, [torch.arange(20)], steps=1, lr=1e-3, seed=0, segment=17)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        train_side_network(lm, [torch.arange(1)], steps=1, lr=1e-3, seed=0)
