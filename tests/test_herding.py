import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.functional import normalize

from memkit import Batch, Budget
from memkit.buffers.herding import Herding
from memkit.kernels.herding import herding_select, herding_select_reference
from memkit.testing import check_store

SPEC = {"x": ((5,), torch.float32), "y": ((), torch.int64)}
ITEM = 5 * 4 + 8 + 4  # x, y and the hidden int32 herding rank


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 40), d=st.integers(1, 12), data=st.data(), seed=st.integers(0, 2**31),
       copies=st.integers(0, 5), zeros=st.integers(0, 2))
def test_vectorised_herding_equals_the_candidate_by_candidate_loop(n, d, data, seed, copies,
                                                                   zeros):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.rand(d, generator=g) + torch.randn(d, generator=g)
    x = torch.cat([x, x[torch.randint(0, n, (copies,), generator=g)], torch.zeros(zeros, d)])
    m = data.draw(st.integers(0, len(x)))
    fast, slow = herding_select(x, m), herding_select_reference(x, m)
    assert torch.equal(fast, slow)
    assert len(set(fast.tolist())) == m, "chosen without replacement"


def test_ties_go_to_the_lowest_index():
    assert herding_select(torch.tensor([[1.0, 2.0], [2.0, 1.0]]), 2).tolist() == [0, 1]
    row = torch.tensor([[0.3, -1.0, 2.0]])
    assert herding_select(row.repeat(4, 1), 4).tolist() == [0, 1, 2, 3]


def test_herding_order_is_prefix_stable():
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    full = herding_select(x, 30)
    for m in (0, 1, 7, 29):
        assert torch.equal(herding_select(x, m), full[:m])


def _mean_error(f, mu, rows):
    return float((f[rows].mean(dim=0) - mu).norm())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_herding_approximates_the_class_mean_faster_than_random_subsets(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, 12, generator=g) * torch.rand(12, generator=g) * 3
    x = x + torch.randn(12, generator=g)
    f = normalize(x.double(), dim=1)
    mu = f.mean(dim=0)
    order = herding_select(x, 60)
    for m in range(1, 61):
        herded = _mean_error(f, mu, order[:m])
        random = sum(_mean_error(f, mu, torch.randperm(200, generator=g)[:m])
                     for _ in range(50)) / 50
        assert herded < random, f"m={m}: herding {herded:.4f} vs random {random:.4f}"
        assert herded <= 2 / m, f"m={m}: herding's error {herded:.4f} should fall like 1/m"


@pytest.mark.parametrize(("features", "m", "match"), [
    (torch.zeros(4), 1, r"shape \(n >= 1, d\)"), (torch.zeros(0, 3), 0, r"shape \(n >= 1, d\)"),
    (torch.zeros(3, 2), 4, "m in 0..3"), (torch.zeros(3, 2), -1, "m in 0..3"),
    (torch.tensor([[float("nan"), 1.0]]), 1, "finite")])
def test_herding_rejects_bad_input(features, m, match):
    for select in (herding_select, herding_select_reference):
        with pytest.raises(ValueError, match=match):
            select(features, m)


def blob(c, n, seed=0):
    g = torch.Generator().manual_seed(seed * 1000 + c)
    return Batch(x=torch.randn(n, 5, generator=g) + 3 * c, y=torch.full((n,), c))


def exemplars(store, c):
    """Rows of class ``c`` held, in herding-rank order."""
    t = store.tensors()
    y, rank = t["y"][: len(store)], t["rank"][: len(store)]
    slots = torch.nonzero(y == c).squeeze(1)
    return t["x"][slots[torch.argsort(rank[slots])]]


def test_herding_memory_passes_the_conformance_check():
    check_store(Herding(SPEC, 40 * ITEM))
    check_store(Herding({"x": ((2, 2), torch.uint8), "y": ((), torch.int64)}, "1KB"))
    assert Herding(SPEC, 10 * ITEM).item_nbytes == ITEM


def test_new_classes_store_their_herding_selection_and_old_ones_keep_its_prefix():
    store = Herding(SPEC, Budget(12 * ITEM))
    a, b, c = blob(0, 30), blob(1, 20), blob(2, 9)
    assert len(store.add(a)) == 0
    assert torch.equal(exemplars(store, 0), a.x[herding_select(a.x, 12)])
    evicted = store.add(Batch.cat([b, c]))  # two new classes: 12 // 3 = 4 each
    assert store.per_class == 4 and store.classes == [0, 1, 2]
    assert torch.equal(exemplars(store, 0), a.x[herding_select(a.x, 4)])
    assert torch.equal(exemplars(store, 1), b.x[herding_select(b.x, 4)])
    assert torch.equal(exemplars(store, 2), c.x[herding_select(c.x, 4)])
    assert torch.equal(evicted.x, a.x[herding_select(a.x, 12)[4:]])  # ranks 4..11 of class 0


def test_a_class_offered_again_is_reselected_from_the_new_data():
    store = Herding(SPEC, Budget(10 * ITEM))
    store.add(Batch.cat([blob(0, 20), blob(1, 20)]))
    again = blob(1, 15, seed=7)
    evicted = store.add(again)
    assert store.classes == [0, 1] and len(evicted) == 5 and (evicted.y == 1).all()
    assert torch.equal(exemplars(store, 1), again.x[herding_select(again.x, 5)])


def test_shrinking_reduces_every_exemplar_set_to_its_herding_prefix():
    budget = Budget(20 * ITEM)
    store = Herding(SPEC, budget)
    a, b = blob(0, 30), blob(1, 30)
    store.add(Batch.cat([a, b]))
    evicted = store.resize(7 * ITEM)  # 7 // 2 = 3 per class
    assert len(store) == 6 and len(evicted) == 14 and budget.used == 7 * ITEM
    assert torch.equal(exemplars(store, 0), a.x[herding_select(a.x, 3)])
    assert torch.equal(exemplars(store, 1), b.x[herding_select(b.x, 3)])


def test_features_come_from_the_argument_then_the_attribute_then_x():
    batch = blob(0, 40)
    store = Herding(SPEC, 6 * ITEM)
    store.add(batch)
    assert torch.equal(exemplars(store, 0), batch.x[herding_select(batch.x, 6)])
    store.features = torch.exp
    store.add(batch)
    by_attribute = batch.x[herding_select(batch.x.exp(), 6)]
    assert torch.equal(exemplars(store, 0), by_attribute)
    assert not torch.equal(by_attribute, batch.x[herding_select(batch.x, 6)])
    given = batch.x.pow(3)
    store.add(batch, features=given)
    assert torch.equal(exemplars(store, 0), batch.x[herding_select(given, 6)])


def test_class_means_are_renormalised_means_of_normalised_exemplar_features():
    store = Herding(SPEC, 10 * ITEM)
    store.add(Batch.cat([blob(3, 20), blob(1, 20)]))
    classes, means = store.class_means(lambda x: x[:, :3] * 2)
    assert classes.tolist() == [1, 3]
    for c, mean in zip(classes.tolist(), means, strict=True):
        f = normalize(exemplars(store, c)[:, :3] * 2, dim=1).mean(dim=0)
        assert torch.allclose(mean, f / f.norm(), atol=1e-6)
    assert torch.allclose(means.norm(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match="holds no exemplars"):
        Herding(SPEC, 10 * ITEM).class_means()


def test_bad_labels_or_features_are_refused_before_anything_changes():
    store = Herding(SPEC, 10 * ITEM)
    store.add(blob(0, 20))
    before = {k: v.clone() for k, v in store.tensors().items()}
    bad = Batch(x=torch.zeros(3, 5), y=torch.tensor([1, -2, 1]))
    with pytest.raises(ValueError, match="labels y >= 0, got -2"):
        store.add(bad)
    with pytest.raises(ValueError, match=r"features of shape \(20, d\)"):
        store.add(blob(1, 20), features=torch.zeros(19, 4))
    with pytest.raises(ValueError, match="finite"):
        store.add(blob(1, 20), features=torch.full((20, 4), float("nan")))
    assert store.classes == [0] and len(store) == 10
    assert all(torch.equal(before[k], v) for k, v in store.tensors().items())
    with pytest.raises(ValueError, match="field 'y' of integer class labels"):
        Herding({"x": ((5,), torch.float32)}, "1KB")


def test_save_and_load_restore_classes_and_continue(tmp_path):
    store = Herding(SPEC, Budget(12 * ITEM))
    store.add(Batch.cat([blob(0, 20), blob(1, 20)]))
    store.save(tmp_path / "h.safetensors")
    other = Herding(SPEC, Budget(12 * ITEM))
    other.load(tmp_path / "h.safetensors")
    assert other.classes == [0, 1] and len(other) == 12
    assert store.add(blob(2, 20)).equal(other.add(blob(2, 20)))
    assert all(torch.equal(v, other.tensors()[k]) for k, v in store.tensors().items())
