"""Non-negative sparse coding: a target vector as a sparse non-negative mix of dictionary atoms.

RMSCL (Nazemi, Shafiee, Gharaee & Fieguth, "Memory-Efficient Continual Learning
Object Segmentation for Long Video", IEEE Access 2024, arXiv 2309.15274) writes
the current frame's descriptor as a sparse non-negative combination of the
descriptors held in memory and trains on the entries the code selects. The code
solves the non-negative lasso

    min_a  0.5 * ||x - D a||^2 + lam * sum(a) + 0.5 * ridge * ||a||^2   subject to  a >= 0

for a dictionary ``D`` of shape ``(d, n)`` (one atom per column). On ``a >= 0`` the
l1 norm is ``sum(a)``, so the problem is a quadratic program in the Gram matrix
``G = D^T D + ridge * I`` and ``q = D^T x - lam``: minimise ``0.5 a^T G a - q^T a``.

``nonneg_lasso`` solves it with the active-set method of Lawson & Hanson
("Solving Least Squares Problems", 1974, ch. 23) written on the Gram matrix (as
Bro & De Jong's "fast NNLS", J. Chemometrics 1997), for a batch of targets at
once: each step adds to every unfinished problem's passive set the atom with the
largest positive negative-gradient, solves all the equality-constrained
subproblems with one batched ``torch.linalg.solve`` on masked Gram matrices, and
steps back along the segment when a coefficient would turn negative. It is
exact up to rounding. ``nonneg_lasso_reference`` rewrites the same problem as a
least-squares NNLS through the Cholesky factor ``G = L L^T`` (``||L^-1 q - L^T a||^2``
equals ``a^T G a - 2 q^T a`` up to a constant) and calls ``scipy.optimize.nnls``;
it needs ``G`` positive definite (``ridge > 0`` or independent columns).

``leave_one_out_residuals`` measures how well each atom is rebuilt from the
others, ``||d_j - D a_j||`` with ``a_j`` the code of ``d_j`` restricted to the other
atoms: the smallest residual marks the most redundant atom (RMSCL's eviction).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import cholesky, solve_triangular
from scipy.optimize import nnls

TOL = 1e-12
"""Relative tolerance: a negative gradient above ``TOL * scale`` still improves the objective."""


def nonneg_lasso(D: torch.Tensor, X: torch.Tensor, lam: float = 0.0, *, ridge: float = 0.0,
                 allowed: torch.Tensor | None = None, max_iter: int | None = None
                 ) -> torch.Tensor:
    """Non-negative lasso codes of ``X`` (``(d,)`` or ``(b, d)``) over ``D`` (``(d, n)``).

    Returns float64 codes ``(n,)`` or ``(b, n)``. ``allowed`` (bool ``(n,)`` or
    ``(b, n)``) restricts which atoms each target may use. ``max_iter`` (default
    ``3 n``) bounds the atoms added per problem (``RuntimeError`` when reached).
    With ``ridge == 0`` the atoms a code selects must be linearly independent
    (true whenever ``D`` has full column rank).
    """
    d64, x64, allowed = _check(D, X, lam, ridge, allowed)
    single = x64.dim() == 1
    x64 = x64.reshape(-1, d64.shape[0])
    n = d64.shape[1]
    gram = d64.T @ d64 + ridge * torch.eye(n, dtype=torch.float64)
    q = x64 @ d64 - lam
    codes = _active_set(gram, q, allowed.expand(len(x64), n), max_iter or 3 * n)
    return codes[0] if single else codes


def _active_set(gram: torch.Tensor, q: torch.Tensor, allowed: torch.Tensor,
                max_iter: int) -> torch.Tensor:
    """Lawson-Hanson on ``min 0.5 a^T G a - q^T a, a >= 0`` for every row of ``q`` at once.

    A row is done when no allowed atom outside its passive set has a positive
    negative-gradient (the KKT conditions); finished rows drop out of the batch.
    """
    tol = TOL * max(1.0, float(gram.abs().max()), float(q.abs().max()))
    codes = torch.zeros_like(q)
    passive = torch.zeros(q.shape, dtype=torch.bool)
    rows = torch.arange(len(q))
    for step in range(max_iter + 1):
        gradient = q[rows] - codes[rows] @ gram  # the negative gradient
        candidates = allowed[rows] & ~passive[rows] & (gradient > tol)
        grow = candidates.any(dim=1)
        rows, candidates, gradient = rows[grow], candidates[grow], gradient[grow]
        if len(rows) == 0:
            return codes
        if step == max_iter:
            raise RuntimeError(f"nonneg_lasso: {len(rows)} problem(s) not solved after "
                               f"max_iter={max_iter} atoms added")
        best = torch.where(candidates, gradient, -torch.inf).argmax(dim=1)
        passive[rows, best] = True
        codes[rows], passive[rows] = _feasible_solution(gram, q[rows], passive[rows],
                                                        codes[rows], tol)
    raise AssertionError("unreachable")


def _feasible_solution(gram: torch.Tensor, q: torch.Tensor, passive: torch.Tensor,
                       codes: torch.Tensor, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve on the passive sets, stepping back and shrinking them while a coefficient is <= 0.

    ``codes`` is feasible on entry (zero on the atom just added); each step back
    drops at least one atom, so at most ``n`` rounds run.
    """
    for _ in range(q.shape[1] + 1):
        solution = _solve_on(gram, q, passive)
        bad = passive & (solution <= 0)
        stuck = bad.any(dim=1)
        if not stuck.any():
            break
        gap = codes - solution
        ratio = torch.where(bad & (gap > 0), codes / gap.clamp(min=1e-300), 0.0)
        step = torch.where(bad, ratio, torch.inf).amin(dim=1).clamp(0.0, 1.0)
        moved = codes + step[:, None] * (solution - codes)
        codes = torch.where(stuck[:, None], moved, codes)
        passive = passive & ~(stuck[:, None] & (codes <= tol))
        codes = codes * passive
    return solution, passive


def _solve_on(gram: torch.Tensor, q: torch.Tensor, passive: torch.Tensor) -> torch.Tensor:
    """``G_PP a_P = q_P`` for every row's passive set ``P``; zeros outside ``P``.

    Rows and columns outside ``P`` are replaced by the identity (with a zero right
    side), so one batched solve handles sets of every size.
    """
    mask = passive.to(torch.float64)
    system = gram * (mask[:, :, None] * mask[:, None, :]) + torch.diag_embed(1.0 - mask)
    rhs = torch.where(passive, q, 0.0)  # exact zeros (never -0.0) off the passive set
    return torch.linalg.solve(system, rhs.unsqueeze(-1)).squeeze(-1)


def nonneg_lasso_reference(D, x, lam: float = 0.0, *, ridge: float = 0.0,
                           allowed=None) -> np.ndarray:
    """The code of one target ``x`` (``(d,)``) by ``scipy.optimize.nnls`` after a Cholesky rewrite.

    Raises ``ValueError`` when the Gram matrix of the allowed atoms is not
    positive definite (dependent atoms with ``ridge == 0``).
    """
    d64, x64, allowed = _check(torch.as_tensor(D), torch.as_tensor(x), lam, ridge,
                               None if allowed is None else torch.as_tensor(allowed))
    if x64.dim() != 1 or allowed.shape[0] != 1:
        raise ValueError(f"nonneg_lasso_reference: expected one target of shape (d,), "
                         f"got {tuple(x64.shape)}")
    cols = np.flatnonzero(allowed[0].numpy())
    code = np.zeros(d64.shape[1])
    if len(cols) == 0:
        return code
    atoms = d64.numpy()[:, cols]
    gram = atoms.T @ atoms + ridge * np.eye(len(cols))
    q = atoms.T @ x64.numpy() - lam
    try:
        lower = cholesky(gram, lower=True)
    except np.linalg.LinAlgError:
        raise ValueError("nonneg_lasso_reference: the allowed atoms' Gram matrix is not "
                         "positive definite; use ridge > 0 or independent atoms") from None
    code[cols] = nnls(lower.T, solve_triangular(lower, q, lower=True), maxiter=50 * len(cols))[0]
    return code


def leave_one_out_residuals(D: torch.Tensor, lam: float = 0.0, *,
                            ridge: float = 0.0) -> torch.Tensor:
    """``||d_j - D a_j||`` per atom, ``a_j`` the non-negative lasso code of ``d_j`` without atom j.

    All ``n`` problems are solved in one batch; returns float64 ``(n,)``.
    """
    d64 = _check_dictionary(D, lam, ridge)
    n = d64.shape[1]
    codes = nonneg_lasso(d64, d64.T, lam, ridge=ridge,
                         allowed=~torch.eye(n, dtype=torch.bool))
    return (d64.T - codes @ d64.T).norm(dim=1)


def leave_one_out_residuals_reference(D, lam: float = 0.0, *, ridge: float = 0.0) -> np.ndarray:
    """The same residuals, one ``nonneg_lasso_reference`` call per atom."""
    atoms = _check_dictionary(torch.as_tensor(D), lam, ridge).numpy()
    n = atoms.shape[1]
    residuals = np.zeros(n)
    for j in range(n):
        others = np.arange(n) != j
        code = nonneg_lasso_reference(atoms, atoms[:, j], lam, ridge=ridge, allowed=others)
        residuals[j] = np.linalg.norm(atoms[:, j] - atoms @ code)
    return residuals


def _check(D, X, lam, ridge, allowed):
    """Validate and convert to float64; ``allowed`` comes back as bool ``(1 or b, n)``."""
    d64 = _check_dictionary(D, lam, ridge)
    d, n = d64.shape
    if not isinstance(X, torch.Tensor) or X.dim() not in (1, 2) or X.shape[-1] != d:
        shape = tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__
        raise ValueError(f"sparse coding: expected targets of shape ({d},) or (b, {d}) to match "
                         f"D's {d} rows, got {shape}")
    if not X.dtype.is_floating_point:
        raise TypeError(f"sparse coding: expected floating-point targets, got {X.dtype}")
    if not torch.isfinite(X).all():
        raise ValueError("sparse coding: the targets must be finite, got NaN or inf")
    rows = 1 if X.dim() == 1 else X.shape[0]
    if allowed is None:
        allowed = torch.ones(1, n, dtype=torch.bool)
    elif not isinstance(allowed, torch.Tensor) or allowed.dtype != torch.bool \
            or tuple(allowed.shape) not in ((n,), (rows, n)):
        shape = tuple(allowed.shape) if isinstance(allowed, torch.Tensor) else allowed
        raise ValueError(f"sparse coding: expected allowed as a bool tensor of shape ({n},) "
                         f"or ({rows}, {n}), got {shape}")
    return d64, X.detach().to(torch.float64), allowed.reshape(-1, n)


def _check_dictionary(D, lam, ridge) -> torch.Tensor:
    if not isinstance(D, torch.Tensor) or D.dim() != 2 or 0 in D.shape:
        shape = tuple(D.shape) if isinstance(D, torch.Tensor) else type(D).__name__
        raise ValueError(f"sparse coding: expected a dictionary D of shape (d >= 1, n >= 1), "
                         f"got {shape}")
    if not D.dtype.is_floating_point:
        raise TypeError(f"sparse coding: expected a floating-point dictionary, got {D.dtype}")
    if not torch.isfinite(D).all():
        raise ValueError("sparse coding: the dictionary must be finite, got NaN or inf")
    for name, value in (("lam", lam), ("ridge", ridge)):
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not np.isfinite(value) or value < 0:
            raise ValueError(f"sparse coding: expected {name} >= 0, got {value!r}")
    return D.detach().to(torch.float64)
