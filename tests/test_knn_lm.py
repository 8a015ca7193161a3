"""kNN-LM over a Hugging Face causal LM: windows, keys, interpolation, datastore and cache."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")

from memkit.agents.causal_lm import CausalLM, decoder_layers  # noqa: E402
from memkit.agents.knn_lm import KNNLM, build_datastore  # noqa: E402
from memkit.budget import Budget  # noqa: E402
from memkit.buffers.datastore import Datastore  # noqa: E402
from memkit.kernels.interpolation import (  # noqa: E402
    interpolate,
    knn_log_probs,
    knn_log_probs_reference,
)

VOCAB = 60


def tiny_gpt2(seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2,
                                     n_head=4, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=64,
                                      bos_token_id=0, eos_token_id=0)
    return transformers.LlamaForCausalLM(config).eval()


MODELS = [tiny_gpt2, tiny_llama]


def ids_of(n, seed=1):
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


# -- interpolation kernel -------------------------------------------------------------------------


def test_knn_log_probs_by_hand():
    distances = torch.tensor([[1.0, 2.0, 1.0, 0.0]])
    values = torch.tensor([[3, 5, 3, -1]])
    got = knn_log_probs(distances, values, 8, temperature=2.0)[0].exp()
    z = 2 * math.exp(-0.5) + math.exp(-1.0)
    assert got[3] == pytest.approx(2 * math.exp(-0.5) / z)
    assert got[5] == pytest.approx(math.exp(-1.0) / z)
    assert float(got.sum()) == pytest.approx(1.0)
    inner = knn_log_probs(distances, values, 8, metric="ip")[0].exp()
    assert inner[5] == pytest.approx(math.exp(2) / (2 * math.e + math.exp(2)))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 9), st.integers(0, 10_000))
def test_knn_log_probs_equals_reference(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    distances = torch.rand(n, k, generator=g) * 10
    values = torch.randint(-1, 12, (n, k), generator=g)
    fast = knn_log_probs(distances, values, 12, temperature=3.0)
    ref = knn_log_probs_reference(distances, values, 12, temperature=3.0)
    assert torch.equal(fast.isnan(), ref.isnan())
    assert torch.allclose(fast.exp().nan_to_num(), ref.exp().float().nan_to_num(), atol=1e-6)


def test_interpolate_by_hand_and_missing_rows():
    log_lm = torch.log(torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]))
    log_mem = torch.tensor([[0.0, float("-inf"), float("-inf")], [float("nan")] * 3])
    mixed = interpolate(log_lm, log_mem, 0.25).exp()
    assert torch.allclose(mixed[0], torch.tensor([0.625, 0.375, 0.0]))
    assert torch.allclose(mixed[1], log_lm[1].exp())
    with pytest.raises(ValueError, match="lam: expected a weight in"):
        interpolate(log_lm, log_mem, 1.5)


# -- the wrapper ----------------------------------------------------------------------------------


@pytest.mark.parametrize("make", MODELS)
def test_token_log_probs_equal_a_full_forward_within_the_window(make):
    model = make()
    ids = ids_of(40)
    full = torch.log_softmax(model(ids[None]).logits[0], -1)[:-1]
    expected = full.gather(1, ids[1:, None])[:, 0]
    assert torch.allclose(CausalLM(model).token_log_probs(ids), expected, atol=1e-5)


@pytest.mark.parametrize("make", MODELS)
def test_sliding_windows_score_each_token_from_its_own_window(make):
    model = make()
    lm = CausalLM(model, window=12, stride=5)
    ids = ids_of(37)
    got = lm.token_log_probs(ids)
    for start, end, first in lm.windows(len(ids)):
        for t in range(first, end):
            logits = model(ids[None, start:t]).logits[0, -1]
            want = torch.log_softmax(logits, -1)[ids[t]]
            assert got[t - 1] == pytest.approx(float(want), abs=1e-5)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 200), st.integers(2, 40), st.data())
def test_windows_cover_every_target_once_with_enough_context(length, window, data):
    stride = data.draw(st.integers(1, window - 1))
    lm = CausalLM.__new__(CausalLM)
    lm.window, lm.stride = window, stride
    targets = []
    for start, end, first in lm.windows(length):
        assert end - start <= window and start < first <= end
        assert all(t - start >= min(t, window - stride) for t in range(first, end))
        targets.extend(range(first, end))
    assert targets == list(range(1, length))


def test_gpt2_keys_are_the_last_feed_forward_input():
    model = tiny_gpt2()
    ids = ids_of(20)[None]
    out = CausalLM(model).forward(ids)
    block = decoder_layers(model)[-1]
    h = out.hidden_states[-2]
    attended = h + block.attn(block.ln_1(h))[0]
    assert torch.allclose(out.keys, block.ln_2(attended), atol=1e-5)


@pytest.mark.parametrize("make", MODELS)
def test_generate_greedy_follows_argmax(make):
    model = make()
    lm = CausalLM(model, window=16)
    prompt = ids_of(10)
    new = lm.generate(prompt, 4)
    context = prompt
    for token in new:
        assert int(token) == int(model(context[None, -16:]).logits[0, -1].argmax())
        context = torch.cat([context, token[None]])
    sampled = lm.generate(prompt, 4, temperature=1.0, generator=torch.Generator().manual_seed(3))
    again = lm.generate(prompt, 4, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sampled, again)


# -- kNN-LM ---------------------------------------------------------------------------------------


def test_knn_lm_equals_a_hand_computed_mixture():
    model = tiny_gpt2()
    budget = Budget("1MB")
    store = Datastore(32, budget, nbytes="64KB", key_dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    keys, values = torch.randn(5, 32, generator=g), torch.tensor([7, 7, 9, 11, 2])
    store.write(keys, values)
    knn = KNNLM(model, datastore=store, k=3, lam=0.3, temperature=4.0)
    ids = ids_of(12)
    out = knn.forward(ids[None])
    got = knn.next_log_probs(out)[0].exp()
    query = out.keys[0]
    d = torch.cdist(query.double(), keys.double()) ** 2
    top = d.topk(3, largest=False)
    weights = torch.softmax(-top.values / 4.0, dim=1)
    p_knn = torch.zeros(len(query), VOCAB, dtype=torch.float64)
    p_knn.scatter_add_(1, values[top.indices], weights)
    p_lm = torch.softmax(out.logits[0].double(), -1)
    assert torch.allclose(got.double(), 0.3 * p_knn + 0.7 * p_lm, atol=1e-5)


@pytest.mark.parametrize("make", MODELS)
def test_build_datastore_writes_one_entry_per_scored_token(make):
    model = make()
    lm = CausalLM(model, window=16, stride=6)
    store = Datastore(32, Budget("1MB"), nbytes="256KB", key_dtype=torch.float32)
    docs = [ids_of(30, seed=1), ids_of(9, seed=2)]
    assert build_datastore(lm, docs, store) == 29 + 8 == len(store)
    assert torch.equal(store.values[:29].long(), docs[0][1:])
    first = lm.forward(docs[0][None, :16]).keys[0, :15]
    assert torch.allclose(store.keys[:15], first)


@pytest.mark.parametrize("make", MODELS)
def test_cache_is_read_only_after_it_was_scored_and_cleared_per_document(make):
    model = make()
    cache = Datastore(32, Budget("1MB"), nbytes="128KB")
    knn = KNNLM(model, cache=cache, k=4, lam=0.5, window=8, stride=4)
    plain = CausalLM(model, window=8, stride=4)
    pattern = ids_of(8, seed=5)
    doc = pattern.repeat(5)
    lm_scores, knn_scores = plain.token_log_probs(doc), knn.token_log_probs(doc)
    assert torch.allclose(knn_scores[:7], lm_scores[:7], atol=1e-6)  # first window: cache empty
    assert len(cache) == len(doc) - 1
    assert knn_scores[16:].mean() > lm_scores[16:].mean() + 0.3  # repeats are remembered
    frozen = knn.token_log_probs(doc, write=False)
    assert len(cache) == 0 and torch.allclose(frozen, lm_scores, atol=1e-6)
    knn.token_log_probs(doc)
    other = knn.token_log_probs(ids_of(20, seed=9), reset=False, write=False)
    assert len(cache) == len(doc) - 1 and torch.isfinite(other).all()


def test_perplexity_is_exp_of_the_mean_loss():
    model = tiny_gpt2()
    lm = CausalLM(model, window=10)
    docs = [ids_of(15, seed=1), ids_of(25, seed=2)]
    scores = torch.cat([lm.token_log_probs(d) for d in docs])
    assert lm.perplexity(docs) == pytest.approx(math.exp(-float(scores.mean())), rel=1e-5)
    assert lm.log_prob(docs[0]) == pytest.approx(float(lm.token_log_probs(docs[0]).sum()))


def test_bad_input_is_refused_clearly():
    model = tiny_gpt2()
    with pytest.raises(ValueError, match="window: expected at most the model's 64"):
        CausalLM(model, window=65)
    with pytest.raises(ValueError, match="stride: expected less than window=8"):
        CausalLM(model, window=8, stride=8)
    with pytest.raises(ValueError, match="decoder layers"):
        CausalLM(torch.nn.Linear(2, 2))
    lm = CausalLM(model)
    with pytest.raises(ValueError, match=r"token ids in \[0, 60\)"):
        lm.token_log_probs(torch.tensor([1, 60]))
    with pytest.raises(ValueError, match="int64 token ids of 1 dimension"):
        lm.token_log_probs(torch.zeros(3))
    with pytest.raises(ValueError, match="no tokenizer"):
        lm.log_prob("hello")
    with pytest.raises(ValueError, match="Datastore of dim 32"):
        KNNLM(model, datastore=Datastore(16, Budget("1MB"), nbytes="16KB"))
    with pytest.raises(ValueError, match="k: expected a positive int"):
        KNNLM(model, k=0)
    with pytest.raises(ValueError, match="expected dim 32"):
        build_datastore(lm, [ids_of(5)], Datastore(8, Budget("1MB"), nbytes="16KB"))


def test_text_in_text_out_through_a_tokenizer():
    from memkit.data.long_range_text import corpus_tokenizer

    tokenizer = corpus_tokenizer()
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=16,
                                     n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(config).eval()
    knn = KNNLM(model, tokenizer, cache=Datastore(16, Budget("1MB"), nbytes="64KB"), k=4)
    text = "the pet of zovak is a cat . " * 3
    ids = knn.encode(text)
    assert ids[0] == tokenizer.bos_token_id and len(ids) == len(text.split()) + 1
    assert knn.log_prob(text) == pytest.approx(float(knn.token_log_probs(ids).sum()))
    continuation = knn.generate("the pet of", 3)
    assert isinstance(continuation, str) and len(continuation.split()) == 3
    with pytest.raises(TypeError, match="expected a str"):
        knn.encode(3)
