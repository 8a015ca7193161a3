import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from memkit.agents.mlp_memory import MLPMemoryLM, train_mlp_memory
from memkit.budget import Budget, BudgetExceeded, module_nbytes
from memkit.buffers.datastore import Datastore
from memkit.buffers.mlp_memory import MAX_BLOCKS, MLPMemory, mlp_memory_nbytes
from memkit.kernels.knn_targets import (
    knn_targets,
    knn_targets_reference,
    mlp_memory_loss,
    mlp_memory_loss_reference,
)
from memkit.registry import get

DIM, VOCAB = 32, 97


def gpt2(seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=DIM, n_layer=2, n_head=4,
                                      n_positions=64, bos_token_id=0, eos_token_id=0))


def llama(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=DIM, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, max_position_embeddings=64,
                                        bos_token_id=0, eos_token_id=0))


def clustered_datastore(n=1500, tokens=40, seed=0):
    """Keys near one centre per token; 30% of the stored next tokens are random (label noise)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(tokens, DIM, generator=g)
    true = torch.randint(0, tokens, (n,), generator=g)
    noisy = torch.where(torch.rand(n, generator=g) < 0.3,
                        torch.randint(0, tokens, (n,), generator=g), true)
    datastore = Datastore(DIM, Budget("1MB"), key_dtype=torch.float32)
    datastore.write(centres[true] + 0.6 * torch.randn(n, DIM, generator=g), noisy)
    return datastore, true


# -- kernels -----------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), k=st.integers(1, 9), vocab=st.integers(2, 30),
       alpha=st.sampled_from([0.0, 0.3, 0.5, 1.0]), seed=st.integers(0, 2**16))
def test_loss_and_its_gradient_equal_the_dense_kl_div_reference(n, k, vocab, alpha, seed):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(n, vocab, generator=g)).requires_grad_()
    values = torch.randint(0, vocab, (n, k), generator=g)  # tokens repeat within a row
    weights = torch.softmax(2 * torch.randn(n, k, generator=g), dim=1)
    targets = torch.randint(0, vocab, (n,), generator=g)
    fast = mlp_memory_loss(logits, values, weights, targets, alpha)
    reference = mlp_memory_loss_reference(logits, values, weights, targets, alpha)
    assert fast.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-5)
    (grad_fast,) = torch.autograd.grad(fast, logits)
    (grad_ref,) = torch.autograd.grad(mlp_memory_loss_reference(
        logits.double(), values, weights, targets, alpha), logits)
    torch.testing.assert_close(grad_fast, grad_ref.float(), rtol=1e-4, atol=1e-6)


def test_kl_term_is_zero_when_the_mlp_outputs_p_knn():
    g = torch.Generator().manual_seed(1)
    values = torch.tensor([[3, 1, 3, 0], [2, 2, 2, 2], [0, 1, 2, 3]])
    weights = torch.softmax(torch.randn(3, 4, generator=g), dim=1)
    p = torch.zeros(3, 5).scatter_add_(1, values, weights)  # token 4 never a neighbour
    logits = p.log() + 7.0  # any shift: softmax(logits) == p_kNN
    targets = torch.tensor([1, 2, 3])
    assert mlp_memory_loss(logits, values, weights, targets, alpha=1.0).item() == \
        pytest.approx(0.0, abs=1e-6)
    other = torch.zeros(3, 5)
    assert mlp_memory_loss(other, values, weights, targets, alpha=1.0).item() > 0.1
    ce = -p[torch.arange(3), targets].log().mean()
    assert mlp_memory_loss(logits, values, weights, targets, alpha=0.5).item() == \
        pytest.approx(0.5 * ce.item(), rel=1e-5)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_knn_targets_equal_the_dense_reference(metric, monkeypatch):
    # several query blocks (the module, which the kernels package shadows with its function)
    monkeypatch.setattr(sys.modules["memkit.kernels.knn_targets"], "QUERY_BLOCK", 7)
    g = torch.Generator().manual_seed(2)
    keys = torch.randn(40, 6, generator=g)
    values = torch.randint(0, 9, (40,), generator=g)
    ids = torch.randperm(1000, generator=g)[:40]
    queries = [3, 0, 39, 17, 17, 5, 8, 21, 30, 2, 11]
    args = (keys[queries], ids[queries], keys, values, ids)
    fast = knn_targets(*args, k=12, temperature=4.0, metric=metric)
    reference = knn_targets_reference(*args, k=12, temperature=4.0, metric=metric)
    assert torch.equal(fast[0], reference[0])
    torch.testing.assert_close(fast[1], reference[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast[1].sum(1), torch.ones(len(queries)))


def test_the_own_entry_is_dropped_and_a_duplicate_key_is_kept():
    keys = torch.tensor([[0.0], [10.0], [10.0], [13.0], [30.0]])
    values = torch.tensor([0, 1, 2, 3, 4])
    ids = torch.tensor([100, 101, 102, 103, 104])
    got_values, got_weights = knn_targets(keys, ids, keys, values, ids, k=2, temperature=1.0)
    # each key's nearest is itself (distance 0); entries 1 and 2 share a key: each keeps the other
    assert got_values.tolist() == [[1, 2], [2, 3], [1, 3], [1, 2], [3, 1]]
    expected = torch.softmax(torch.tensor([-100.0, -100.0]), 0)
    torch.testing.assert_close(got_weights[0], expected)
    torch.testing.assert_close(got_weights[1], torch.softmax(torch.tensor([0.0, -9.0]), 0))
    # a query whose own entry is not among its k + 1 nearest: the k nearest are kept
    far = knn_targets(torch.tensor([[10.0]]), torch.tensor([104]), keys, values, ids, k=2)
    assert far[0].tolist() == [[1, 2]]


def test_knn_targets_match_a_datastore_search_without_the_own_entry():
    datastore, _ = clustered_datastore(n=300)
    n = len(datastore)
    keys, ids = datastore.keys[:n], datastore.ids[:n]
    values, _ = knn_targets(keys, ids, keys, datastore.values[:n], ids, k=5)
    hits = datastore.search(keys, 6)
    assert (hits.ids[:, 0] == ids).all()  # each key's nearest is itself: it is dropped
    assert torch.equal(values, hits.values[:, 1:].long())


def test_kernel_errors_name_what_was_expected():
    keys, values = torch.randn(5, 3), torch.arange(5)
    with pytest.raises(ValueError, match=r"expected k in \[1, 4\]"):
        knn_targets(keys, values, keys, values, k=5)
    with pytest.raises(ValueError, match="datastore_keys"):
        knn_targets(keys, values, torch.randn(5, 4), values, k=2)
    with pytest.raises(ValueError, match="temperature > 0"):
        knn_targets(keys, values, keys, values, k=2, temperature=0.0)
    logits, targets = torch.randn(5, 7), torch.arange(5)
    with pytest.raises(ValueError, match=r"alpha: expected a weight in \[0, 1\], got 1.5"):
        mlp_memory_loss(logits, values[:, None], torch.ones(5, 1), targets, alpha=1.5)
    with pytest.raises(ValueError, match="one shape"):
        mlp_memory_loss(logits, values[:, None], torch.ones(5, 2), targets)


# -- the store ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bytes_are_the_exact_parameter_bytes_and_blocks_come_from_the_budget(dtype):
    three = mlp_memory_nbytes(DIM, VOCAB, 3, dtype=dtype)
    budget = Budget(three + 100)
    memory = MLPMemory(DIM, VOCAB, budget, dtype=dtype)
    assert memory.blocks == 3
    assert memory.nbytes == module_nbytes(memory.net) == budget.charged("mlp_memory") == three
    assert three == 3 * (2 * DIM + 8 * DIM * DIM + 5 * DIM) * dtype.itemsize + \
        (2 * DIM + DIM * VOCAB + VOCAB) * dtype.itemsize
    assert MLPMemory(DIM, VOCAB, Budget("100MB")).blocks == MAX_BLOCKS
    explicit = MLPMemory(DIM, VOCAB, Budget("1MB"), blocks=2, ratio=2, dtype=dtype)
    assert explicit.nbytes == module_nbytes(explicit.net)
    with pytest.raises(BudgetExceeded, match="'mlp_memory' asked for"):
        MLPMemory(DIM, VOCAB, Budget(mlp_memory_nbytes(DIM, VOCAB, 1, dtype=dtype) - 1),
                  dtype=dtype)
    with pytest.raises(BudgetExceeded):
        MLPMemory(DIM, VOCAB, Budget(three), blocks=4, dtype=dtype)


def test_forward_is_seeded_and_leaves_the_global_generator_alone():
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    a = MLPMemory(DIM, VOCAB, Budget("1MB"), blocks=2, seed=3)
    assert torch.rand(1) == before
    b = MLPMemory(DIM, VOCAB, Budget("1MB"), blocks=2, seed=3)
    keys = torch.randn(4, DIM)
    assert torch.equal(a.forward(keys), b.forward(keys))
    log_p = a.log_probs(keys)
    assert log_p.shape == (4, VOCAB)
    torch.testing.assert_close(log_p.exp().sum(1), torch.ones(4))
    with pytest.raises(ValueError, match=rf"expected float keys of shape \(n, {DIM}\)"):
        a.forward(torch.randn(4, DIM + 1))


def test_save_load_round_trip(tmp_path):
    assert get("store", "mlp_memory") is MLPMemory
    trained = MLPMemory(DIM, VOCAB, Budget("1MB"), blocks=1)
    train_mlp_memory(trained, clustered_datastore(n=200)[0], steps=3, k=4, batch=32)
    trained.save(tmp_path / "mlp.safetensors")
    fresh = MLPMemory(DIM, VOCAB, Budget("1MB"), blocks=1)
    keys = torch.randn(5, DIM)
    assert not torch.equal(fresh.forward(keys), trained.forward(keys))
    assert fresh.filled_nbytes == 0
    fresh.load(tmp_path / "mlp.safetensors")
    assert torch.equal(fresh.forward(keys), trained.forward(keys))
    assert fresh.steps == 3 and fresh.filled_nbytes == fresh.nbytes
    other = MLPMemory(DIM, VOCAB, Budget("1MB"), blocks=2)
    with pytest.raises(ValueError, match="different configuration"):
        other.load(tmp_path / "mlp.safetensors")


# -- the language model ------------------------------------------------------------------------

@pytest.mark.parametrize("build", [gpt2, llama])
def test_mixture_equals_the_hand_computed_one(build):
    model = build()
    memory = MLPMemory(DIM, VOCAB, Budget("1MB"), blocks=2, seed=1)
    ids = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(0))
    lm = MLPMemoryLM(model, memory=memory, window=16, stride=8)
    out = lm.forward(ids)
    positions = torch.tensor([0, 4, 19])
    mixed = lm.next_log_probs(out, positions)
    p_lm = torch.softmax(out.logits[:, positions], -1)
    p_mlp = torch.softmax(memory.forward(out.keys[0, positions]), -1)[None]
    torch.testing.assert_close(mixed, (0.75 * p_lm + 0.25 * p_mlp).log())
    assert mixed.shape == (1, 3, VOCAB) and torch.isfinite(mixed).all()
    plain = MLPMemoryLM(model, memory=memory, lam=0.0, window=16, stride=8)
    torch.testing.assert_close(plain.next_log_probs(out), torch.log_softmax(out.logits, -1))
    scores = lm.token_log_probs(ids[0])  # two sliding windows over 20 tokens
    assert scores.shape == (19,) and torch.isfinite(scores).all()
    assert not torch.allclose(scores, plain.token_log_probs(ids[0]))


def test_lm_errors_name_what_was_expected():
    model = gpt2()
    with pytest.raises(ValueError, match=rf"expected dim {DIM} and vocab_size {VOCAB}.*dim 16"):
        MLPMemoryLM(model, memory=MLPMemory(16, VOCAB, Budget("1MB"), blocks=1))
    with pytest.raises(ValueError, match="got dim 32 and vocab_size 50"):
        MLPMemoryLM(model, memory=MLPMemory(DIM, 50, Budget("1MB"), blocks=1))
    with pytest.raises(TypeError, match="expected an MLPMemory"):
        MLPMemoryLM(model, memory=None)
    memory = MLPMemory(DIM, VOCAB, Budget("1MB"), blocks=1)
    with pytest.raises(ValueError, match="lam"):
        MLPMemoryLM(model, memory=memory, lam=1.5)


# -- training ----------------------------------------------------------------------------------

def test_training_lowers_the_loss_and_the_kl_objective_fits_p_knn_better():
    datastore, true = clustered_datastore()
    n = len(datastore)
    keys, labels = datastore.keys[:n], datastore.values[:n].long()
    values, weights = knn_targets(keys, datastore.ids[:n], keys, labels, k=16)
    kl = {}
    for objective in ("kl+ce", "ce"):
        memory = MLPMemory(DIM, VOCAB, Budget("1MB"), blocks=1)
        losses = train_mlp_memory(memory, datastore, steps=60, k=16, batch=64, lr=1e-2,
                                  objective=objective, log_every=10)
        assert len(losses) == 6 and memory.steps == 60
        assert losses[-1] < 0.5 * losses[0]
        logits = memory.forward(keys)
        assert (logits.argmax(1) == true).float().mean() > 0.9  # it sees through the label noise
        kl[objective] = mlp_memory_loss(logits, values, weights, labels, alpha=1.0).item()
    assert kl["kl+ce"] < 0.9 * kl["ce"]


def test_the_same_seed_gives_the_same_weights():
    datastore, _ = clustered_datastore(n=400)
    memories = [MLPMemory(DIM, VOCAB, Budget("1MB"), blocks=1) for _ in range(3)]
    runs = [train_mlp_memory(m, datastore, steps=9, k=8, batch=64, seed=s, log_every=4)
            for m, s in zip(memories, [7, 7, 8], strict=True)]
    assert runs[0] == runs[1] and runs[0] != runs[2] and len(runs[0]) == 3
    weights = [m.tensors() for m in memories]
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])
    assert not all(torch.equal(weights[0][n], weights[2][n]) for n in weights[0])


def test_training_errors_name_what_was_expected():
    memory = MLPMemory(DIM, VOCAB, Budget("1MB"), blocks=1)
    datastore, _ = clustered_datastore(n=50)
    with pytest.raises(ValueError, match=r"objective: expected one of \('kl\+ce', 'ce'\)"):
        train_mlp_memory(memory, datastore, steps=1, objective="mse")
    with pytest.raises(ValueError, match=r"alpha in \[0, 1\].*alpha=-0.1"):
        train_mlp_memory(memory, datastore, steps=1, alpha=-0.1)
    with pytest.raises(ValueError, match="at least 65 entries"):
        train_mlp_memory(memory, datastore, steps=1, k=64)
    with pytest.raises(ValueError, match=f"Datastore of dim {DIM}, got a Datastore of dim 8"):
        train_mlp_memory(memory, Datastore(8, Budget("10KB")), steps=1)
    with pytest.raises(ValueError, match=r"values \(next tokens\) in \[0, 20\)"):
        train_mlp_memory(MLPMemory(DIM, 20, Budget("1MB"), blocks=1), datastore, steps=1, k=4)
    with pytest.raises(ValueError, match="steps: expected an int >= 1"):
        train_mlp_memory(memory, datastore, steps=0, k=4)


def test_training_on_a_sample_searches_targets_over_the_whole_datastore(monkeypatch):
    store = Datastore(6, Budget("1MB"), nbytes="64KB", key_dtype=torch.float32)
    g = torch.Generator().manual_seed(4)
    store.write(torch.randn(300, 6, generator=g), torch.randint(0, 10, (300,), generator=g))
    seen = {}
    module = sys.modules["memkit.agents.mlp_memory"]
    real = module.knn_targets

    def spy(keys, ids, datastore_keys, *args, **kwargs):
        seen.update(queries=len(keys), searched=len(datastore_keys), ids=ids.clone())
        return real(keys, ids, datastore_keys, *args, **kwargs)

    monkeypatch.setattr(module, "knn_targets", spy)
    memory = MLPMemory(6, 10, Budget("1MB"), blocks=1)
    train_mlp_memory(memory, store, steps=2, k=4, entries=50, seed=1)
    assert seen["queries"] == 50 and seen["searched"] == 300
    assert len(set(seen["ids"].tolist())) == 50
    with pytest.raises(ValueError, match="entries: expected an int >= 1 or None"):
        train_mlp_memory(memory, store, steps=1, entries=0)
