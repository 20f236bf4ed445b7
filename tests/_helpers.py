"""Plain helper functions shared by several test files.

Import them as ``from _helpers import ...``: pytest puts ``tests/`` on ``sys.path`` (the
test files are not a package). Shared fixtures live in ``conftest.py``.
"""

from __future__ import annotations

import math

import torch

from larsvae.distributions import AcceptanceMLP


def strong_acceptance(dim: int, seed: int = 0) -> AcceptanceMLP:
    """A fixed, float64 acceptance whose a(z) ranges over several orders of magnitude."""
    g = torch.Generator().manual_seed(seed)
    acc = AcceptanceMLP(dim, hidden=(16,)).double()
    with torch.no_grad():
        acc.net[0].weight.copy_(2.0 * torch.randn(16, dim, generator=g, dtype=torch.float64))
        acc.net[0].bias.copy_(torch.randn(16, generator=g, dtype=torch.float64))
        acc.net[2].weight.copy_(1.5 * torch.randn(1, 16, generator=g, dtype=torch.float64))
        acc.net[2].bias.fill_(-2.0)
    return acc


class GaussianAcceptance(torch.nn.Module):
    """a(z) = c exp(-|z|^2 / (2 s^2)); returns the logit log a - log(1 - a). Closed-form
    moments under N(0, I_d) make Z estimators checkable against the exact answer."""

    def __init__(self, c: float, s: float):
        super().__init__()
        self.log_c, self.s = math.log(c), s

    def forward(self, z):
        log_a = self.log_c - z.pow(2).sum(-1) / (2 * self.s**2)
        return log_a - torch.log1p(-torch.exp(log_a))

    def closed_form(self, d: int) -> tuple[float, float]:
        """Z = E[a] and Var[a] under N(0, I_d)."""
        c, s2 = math.exp(self.log_c), self.s**2
        z = c * (s2 / (1 + s2)) ** (d / 2)
        return z, c * c * (s2 / (2 + s2)) ** (d / 2) - z * z


def rank_one_acceptance(
    dim: int, hidden: tuple[int, ...], seed: int = 0, *, uniform_biases: bool
) -> tuple[AcceptanceMLP, torch.Tensor]:
    """A float32 AcceptanceMLP that depends on z through t = v.z only (|v| = 1), so that any
    E[f(a(z))] under N(0, I) is a 1-D quadrature over t ~ N(0, 1). Glorot-uniform weights;
    biases uniform in [-1, 1] (``uniform_biases``) or only the first layer's, N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    acc = AcceptanceMLP(dim, hidden)
    v = torch.randn(dim, generator=g)
    v /= v.norm()
    with torch.no_grad():
        for m in acc.net:
            if isinstance(m, torch.nn.Linear):
                bound = math.sqrt(6.0 / (m.in_features + m.out_features))
                m.weight.uniform_(-bound, bound, generator=g)
                if uniform_biases:
                    m.bias.uniform_(-1.0, 1.0, generator=g)
        first = acc.net[0]
        first.weight.copy_(torch.outer(2.0 * torch.randn(first.out_features, generator=g), v))
        if not uniform_biases:
            first.bias.copy_(torch.randn(first.out_features, generator=g))
    return acc, v
