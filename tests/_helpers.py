"""Plain helper functions shared by several test files.

Import them as ``from _helpers import ...``: pytest puts ``tests/`` on ``sys.path`` (the
test files are not a package). Shared fixtures live in ``conftest.py``.
"""

from __future__ import annotations

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
