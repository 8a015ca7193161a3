import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from memkit import Budget, BudgetExceeded, module_nbytes, parse_size


@pytest.mark.parametrize(("text", "expected"), [
    ("512KB", 512_000), ("2MiB", 2 * 1024**2), ("1.5GB", 1_500_000_000), ("10", 10),
    (" 3 kib ", 3072), ("1e3B", 1000), ("0.5KiB", 512), (".5MB", 500_000), ("1TiB", 1024**4),
    (0, 0), (7, 7), ("0", 0),
])
def test_parse_size_accepts_si_iec_and_ints(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "12XB", "MB", "-1KB", "1.5B", "0.3KiB", "1 2MB", "2 M B"])
def test_parse_size_rejects_with_the_value_in_the_message(text):
    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("value", [-1, 1.5, True, None, [1]])
def test_parse_size_rejects_other_types_and_negatives(value):
    with pytest.raises((TypeError, ValueError)):
        parse_size(value)


def test_budget_exceeded_names_owner_request_and_remainder():
    budget = Budget("1KB")
    budget.charge("model", 900)
    with pytest.raises(BudgetExceeded) as info:
        budget.charge("memory", 200)
    err = info.value
    assert (err.owner, err.requested, err.free, err.capacity) == ("memory", 200, 100, 1000)
    assert "'memory'" in str(err) and "200" in str(err) and "100" in str(err)
    assert budget.owners == {"model": 900}, "a refused charge must not change the ledger"


def test_release_errors_and_full_release():
    budget = Budget(100)
    budget.charge("a", 60)
    with pytest.raises(ValueError, match="holds 60"):
        budget.release("a", 61)
    with pytest.raises(KeyError, match="'b'"):
        budget.release("b")
    budget.release("a", 10)
    assert budget.charged("a") == 50
    budget.release("a")
    assert budget.owners == {} and budget.free == 100


@pytest.mark.parametrize("amount", [-1, 1.0, True, "5"])
def test_charge_rejects_non_integer_amounts(amount):
    with pytest.raises(ValueError, match="non-negative int"):
        Budget(100).charge("x", amount)


operations = st.lists(st.tuples(st.sampled_from(["charge", "release"]),
                                st.sampled_from(["model", "memory", "bank"]),
                                st.integers(0, 400)), max_size=60)


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(0, 1000), ops=operations)
def test_ledger_invariants_under_random_operations(capacity, ops):
    budget, model = Budget(capacity), {}
    for op, owner, amount in ops:
        if op == "charge":
            if amount > capacity - sum(model.values()):
                with pytest.raises(BudgetExceeded):
                    budget.charge(owner, amount)
            else:
                budget.charge(owner, amount)
                model[owner] = model.get(owner, 0) + amount
        elif owner in model and amount <= model[owner]:
            budget.release(owner, amount)
            model[owner] -= amount
            if model[owner] == 0:
                del model[owner]
        else:
            with pytest.raises((KeyError, ValueError)):
                budget.release(owner, amount)
        assert budget.owners == model
        assert budget.used == sum(model.values()) <= capacity
        assert budget.free == capacity - budget.used
    report = budget.report()
    assert all(f"| {owner} | {n} |" in report for owner, n in model.items())


def test_charge_model_counts_real_dtypes_shared_tensors_once_and_tracks_growth():
    model = nn.Sequential(nn.Linear(10, 4), nn.BatchNorm1d(4)).to(torch.float64)
    model[0].half()
    expected = (10 * 4 + 4) * 2 + (4 + 4 + 4 + 4) * 8 + 8  # fp16 linear, fp64 BN + int64 count
    assert module_nbytes(model) == expected
    budget = Budget("10KB")
    assert budget.charge_model(model) == expected == budget.charged("model")
    shared = nn.ModuleList([model, model])
    assert budget.charge_model(shared) == expected, "a module held twice is counted once"
    grown = nn.ModuleList([model, nn.Linear(4, 3)])
    assert budget.charge_model(grown) == expected + (12 + 3) * 4 == budget.used
    assert budget.charge_model(model) == expected == budget.used, "shrinking releases"


def test_adjust_charges_a_positive_delta_and_releases_a_negative_one():
    budget = Budget(100)
    budget.adjust("m", 60)
    budget.adjust("m", -25)
    budget.adjust("m", 0)
    assert budget.charged("m") == 35 and budget.free == 65
    with pytest.raises(BudgetExceeded):
        budget.adjust("m", 70)
    with pytest.raises(ValueError, match="holds 35 bytes, cannot release 40"):
        budget.adjust("m", -40)
