import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import Lasso

from memkit.kernels.sparse import (
    leave_one_out_residuals,
    leave_one_out_residuals_reference,
    nonneg_lasso,
    nonneg_lasso_reference,
)


def objective(D, x, a, lam, ridge):
    D, x, a = (np.asarray(t, dtype=np.float64) for t in (D, x, a))
    return 0.5 * np.sum((x - D @ a) ** 2) + lam * a.sum() + 0.5 * ridge * np.sum(a**2)


@settings(max_examples=150, deadline=None)
@given(d=st.integers(1, 12), n=st.integers(1, 12), b=st.integers(1, 4),
       seed=st.integers(0, 2**31), lam=st.sampled_from([0.0, 1e-3, 0.05, 0.5]),
       ridge=st.sampled_from([1e-3, 0.1]), correlated=st.booleans())
def test_batched_active_set_equals_scipy_nnls_on_random_dictionaries(d, n, b, seed, lam, ridge,
                                                                     correlated):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(d, n, generator=g, dtype=torch.float64)
    if correlated:  # near-duplicate atoms, as consecutive video frames give
        D = D[:, :1] + 0.05 * D
    X = torch.randn(b, d, generator=g, dtype=torch.float64)
    allowed = torch.rand(b, n, generator=g) > 0.3
    codes = nonneg_lasso(D, X, lam, ridge=ridge, allowed=allowed)
    assert codes.shape == (b, n) and bool((codes >= 0).all())
    assert not bool(codes[~allowed].any()), "a disallowed atom got a coefficient"
    for i in range(b):
        expected = nonneg_lasso_reference(D, X[i], lam, ridge=ridge, allowed=allowed[i])
        np.testing.assert_allclose(codes[i].numpy(), expected, atol=1e-7, rtol=1e-6)
        assert objective(D, X[i], codes[i], lam, ridge) <= \
            objective(D, X[i], expected, lam, ridge) + 1e-10


@pytest.mark.parametrize("seed", range(5))
def test_nonneg_lasso_agrees_with_sklearn_positive_lasso(seed):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(40, 15, generator=g, dtype=torch.float64)
    x = torch.randn(40, generator=g, dtype=torch.float64)
    lam = 0.8
    # sklearn minimises 1/(2 d) ||x - D a||^2 + alpha ||a||_1: alpha = lam / d
    fit = Lasso(alpha=lam / 40, positive=True, fit_intercept=False, tol=1e-12,
                max_iter=100_000).fit(D.numpy(), x.numpy())
    np.testing.assert_allclose(nonneg_lasso(D, x, lam).numpy(), fit.coef_, atol=1e-6)


def test_exact_recovery_of_a_sparse_nonnegative_code():
    g = torch.Generator().manual_seed(0)
    D = torch.randn(40, 25, generator=g, dtype=torch.float64)
    a = torch.zeros(25, dtype=torch.float64)
    a[[3, 7, 11]] = torch.tensor([0.5, 1.2, 2.0], dtype=torch.float64)
    torch.testing.assert_close(nonneg_lasso(D, D @ a), a, atol=1e-12, rtol=0)
    # overcomplete (more atoms than dimensions): the sparse code is still found
    wide = torch.randn(30, 60, generator=g, dtype=torch.float64)
    a = torch.zeros(60, dtype=torch.float64)
    a[[5, 40]] = torch.tensor([1.0, 0.7], dtype=torch.float64)
    torch.testing.assert_close(nonneg_lasso(wide, wide @ a, 1e-9, ridge=1e-12), a, atol=1e-6,
                               rtol=0)


def test_lasso_zeroes_weak_atoms_and_shrinks_the_rest():
    D = torch.eye(3, dtype=torch.float64)
    x = torch.tensor([2.0, 0.3, -1.0], dtype=torch.float64)
    # separable: a_i = max(x_i - lam, 0) / (1 + ridge)
    torch.testing.assert_close(nonneg_lasso(D, x, 0.5, ridge=1.0),
                               torch.tensor([0.75, 0.0, 0.0], dtype=torch.float64))


def test_leave_one_out_residuals_find_the_redundant_atom():
    e1, e2 = torch.eye(4, dtype=torch.float64)[:2]
    atoms = torch.stack([e1, e2, (e1 + e2) / 2**0.5, torch.eye(4, dtype=torch.float64)[3]], 1)
    residuals = leave_one_out_residuals(atoms)
    # atom 2 is a positive mix of atoms 0 and 1; atom 3 is orthogonal to all others
    torch.testing.assert_close(residuals, torch.tensor([2**-0.5, 2**-0.5, 0.0, 1.0],
                                                       dtype=torch.float64), atol=1e-12, rtol=0)
    assert int(torch.argmin(residuals)) == 2


@settings(max_examples=60, deadline=None)
@given(d=st.integers(2, 10), n=st.integers(1, 10), seed=st.integers(0, 2**31),
       lam=st.sampled_from([0.0, 0.02, 0.3]))
def test_leave_one_out_residuals_equal_the_reference(d, n, seed, lam):
    g = torch.Generator().manual_seed(seed)
    D = torch.nn.functional.normalize(torch.randn(d, n, generator=g, dtype=torch.float64), dim=0)
    np.testing.assert_allclose(leave_one_out_residuals(D, lam, ridge=1e-3).numpy(),
                               leave_one_out_residuals_reference(D, lam, ridge=1e-3), atol=1e-7)


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), [
    ((torch.zeros(3), torch.zeros(3)), {}, ValueError, r"dictionary D of shape \(d >= 1"),
    ((torch.zeros(3, 2), torch.zeros(4)), {}, ValueError, r"targets of shape \(3,\)"),
    ((torch.zeros(3, 2, dtype=torch.int64), torch.zeros(3)), {}, TypeError, "floating-point"),
    ((torch.full((3, 2), float("nan")), torch.zeros(3)), {}, ValueError, "finite"),
    ((torch.ones(3, 2), torch.zeros(3), -0.1), {}, ValueError, "lam >= 0"),
    ((torch.ones(3, 2), torch.zeros(3)), {"ridge": float("inf")}, ValueError, "ridge >= 0"),
    ((torch.ones(3, 2), torch.zeros(3)), {"allowed": torch.ones(3, dtype=torch.bool)},
     ValueError, r"allowed as a bool tensor of shape \(2,\)"),
])
def test_bad_input_is_rejected(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        nonneg_lasso(*args, **kwargs)


def test_the_reference_needs_a_positive_definite_gram():
    D = torch.ones(3, 2, dtype=torch.float64)  # two identical atoms
    with pytest.raises(ValueError, match="not positive definite"):
        nonneg_lasso_reference(D, torch.ones(3, dtype=torch.float64))
    assert nonneg_lasso_reference(D, torch.ones(3), ridge=0.1).sum() > 0


def test_max_iter_bounds_the_work_and_says_so():
    D = torch.eye(5, dtype=torch.float64)
    x = torch.ones(5, dtype=torch.float64)
    torch.testing.assert_close(nonneg_lasso(D, x, max_iter=5), x)
    with pytest.raises(RuntimeError, match="max_iter=2"):
        nonneg_lasso(D, x, max_iter=2)
