"""Plain helper functions shared by several test files.

Import them as ``from _helpers import ...``: pytest puts ``tests/`` on ``sys.path`` (the
test files are not a package). Shared fixtures live in ``conftest.py``.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

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


def grid_1d(lim: float = 12.0, h: float = 1e-3):
    """Trapezoid nodes (N, 1) and weights (N,) on [-lim, lim] (float64)."""
    x = torch.arange(-lim, lim + h / 2, h, dtype=torch.float64)
    w = torch.full_like(x, h)
    w[0] = w[-1] = h / 2  # trapezoid weights
    return x[:, None], w


def grid_2d(lim: float = 9.0, h: float = 0.025):
    """Product trapezoid nodes (N, 2) and weights (N,) on [-lim, lim]^2 (float64)."""
    x, w = grid_1d(lim, h)
    xx, yy = torch.meshgrid(x[:, 0], x[:, 0], indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], 1), torch.outer(w, w).reshape(-1)


def clone_working_tree(repo: Path, dst: Path) -> Path:
    """``git clone`` of ``repo`` into ``dst`` plus its uncommitted changes (tracked-modified
    and untracked, not ignored, files and symlinks; deleted files removed), so a test runs
    what is on disk."""
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(repo), str(dst)], check=True)

    def listed(*flags: str) -> list[str]:
        out = subprocess.run(
            ["git", "ls-files", "-z", *flags], cwd=repo, capture_output=True, text=True, check=True
        ).stdout
        return [f for f in out.split("\0") if f]

    for f in listed("--modified", "--others", "--exclude-standard"):
        src, to = repo / f, dst / f
        to.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            to.unlink(missing_ok=True)
            to.symlink_to(os.readlink(src))
        elif src.is_file():
            shutil.copy2(src, to)
    for f in listed("--deleted"):
        (dst / f).unlink(missing_ok=True)
    return dst
