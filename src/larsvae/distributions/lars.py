"""Learned Accept/Reject Sampling (LARS) priors.

Reference: M. Bauer and A. Mnih, "Resampled Priors for Variational Autoencoders",
AISTATS 2019 (arXiv:1810.11428). Equation numbers below refer to that paper:

- Eq. 2 / A.3: Z = E_pi[a(z)], the probability that one proposal is accepted.
- Eq. A.7:  p(z) = pi(z) a(z) / Z                      (resampling ad infinitum, T = None)
- Eq. A.14: p(z) = pi(z) [a(z) (1 - (1-Z)^(T-1)) / Z + (1-Z)^(T-1)]   (truncation at T)
- Algorithm 1 (Appendix A.4): the smoothed, per-example Z used during training.

All Z arithmetic is in log space and float64, so a Z as small as exp(-1000) or as close to 1
as 1 - 1e-12 gives finite, accurate log densities.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..objectives import mlp_forward
from ..utils import module_device
from .base import Prior

_LN2 = math.log(2.0)
# Z is capped at about 1 - 1e-12 inside the truncated density (Eq. A.14): at Z = 1 exactly the
# log-space formula has 0 * inf in its gradient. The cap changes log p by at most ~1e-12.
LOG_Z_MAX = -1e-12
# Below this, series expansions replace log(-log1p(-Z)) etc. (error O(exp(2 * threshold))).
_SERIES = -20.0


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate everywhere (Maechler 2012). Gradient-safe."""
    hi = x.clamp(min=-_LN2)
    lo = x.clamp(max=-_LN2)
    return torch.where(x > -_LN2, torch.log(-torch.expm1(hi)), torch.log1p(-torch.exp(lo)))


def _log_neg_log1m(log_z: Tensor) -> Tensor:
    """log(-log(1 - Z)) with Z = exp(log_z) in (0, 1), also when Z underflows to 0."""
    small = log_z.clamp(max=_SERIES)
    big = log_z.clamp(min=_SERIES)
    # -log(1-Z) = Z (1 + Z/2 + O(Z^2))  =>  log(-log(1-Z)) = log Z + Z/2 + O(Z^2)
    return torch.where(log_z < _SERIES, small + 0.5 * torch.exp(small), torch.log(-_log1mexp(big)))


def _log1m_exp_neg_exp(m: Tensor) -> Tensor:
    """log(1 - exp(-exp(m))), also when exp(m) underflows to 0."""
    small = m.clamp(max=_SERIES)
    big = m.clamp(min=_SERIES)
    # 1 - exp(-y) = y (1 - y/2 + O(y^2))  =>  log(.) = log y - y/2 + O(y^2)
    return torch.where(
        m < _SERIES, small - 0.5 * torch.exp(small), torch.log(-torch.expm1(-torch.exp(big)))
    )


def lars_log_density(
    log_pi: Tensor, log_a: Tensor, log_z: Tensor, truncation: int | None
) -> Tensor:
    """Log density of LARS, Eq. A.14 (finite T) or Eq. A.7 (T = None), in log space.

    log_pi, log_a: (B,) log proposal density and log acceptance probability of z.
    log_z: scalar or (B,) (per-example Z, as in Algorithm 1). Returns (B,) in log_pi's dtype.

    Finite T:  log pi + logaddexp(log a + log(1 - (1-Z)^(T-1)) - log Z,  (T-1) log(1-Z)).
    T = 1 returns log_pi itself.
    """
    if truncation == 1:
        return log_pi
    out_dtype = log_pi.dtype
    log_pi64, log_a64 = log_pi.double(), log_a.double()
    log_z = torch.as_tensor(log_z, dtype=torch.float64, device=log_pi.device)
    if truncation is None:
        return (log_pi64 + log_a64 - log_z).to(out_dtype)
    # Cap Z below 1 in the forward value only; the gradient passes through unchanged.
    log_z = log_z - (log_z - log_z.clamp(max=LOG_Z_MAX)).detach()
    m = math.log(truncation - 1) + _log_neg_log1m(log_z)  # log(-(T-1) log(1-Z))
    log_tail = -torch.exp(m)  # log (1-Z)^(T-1)
    log_head = _log1m_exp_neg_exp(m)  # log(1 - (1-Z)^(T-1))
    return (log_pi64 + torch.logaddexp(log_a64 + log_head - log_z, log_tail)).to(out_dtype)


def _capturing(t: Tensor) -> bool:
    """Inside a CUDA graph capture, where reading a value back to the host is illegal."""
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


class AcceptanceMLP(nn.Module):
    """The acceptance function a(z) = sigmoid(MLP(z)) (Appendix C.2: MLP[d-100-100-1], tanh).

    ``forward`` returns the logit, (B, D) -> (B,); use ``F.logsigmoid`` for log a(z).
    Weights are Glorot-uniform initialised, biases zero.
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (100, 100)):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim: expected a positive integer, got {dim!r}")
        hidden = tuple(hidden)
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"hidden: expected positive integer widths, got {hidden!r}")
        self.dim = dim
        sizes = (dim, *hidden, 1)
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            lin = nn.Linear(fan_in, fan_out)
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
            layers.append(lin)
            if i < len(sizes) - 2:
                layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """Logit of a(z). z: (B, D) -> (B,)"""
        return mlp_forward(self.net, z).squeeze(-1)  # the CPU-fast tanh of objectives


def _check_hyperparameters(truncation: int | None, eps: float, num_z_samples: int) -> None:
    if truncation is not None and (
        isinstance(truncation, bool) or not isinstance(truncation, int) or truncation < 1
    ):
        raise ValueError(f"truncation: expected an integer >= 1 or None, got {truncation!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0.0 < float(eps) <= 1.0):
        raise ValueError(f"eps: expected a number in (0, 1], got {eps!r}")
    if isinstance(num_z_samples, bool) or not isinstance(num_z_samples, int) or num_z_samples < 1:
        raise ValueError(f"num_z_samples: expected an integer >= 1, got {num_z_samples!r}")


class ResampledPrior(Prior):
    """LARS prior: proposal pi(z) resampled by a learned acceptance a(z) (Section 3).

    Args:
        proposal: any prior with ``log_prob`` and ``sample(n, generator=None)`` (and ``dim``).
        acceptance: module mapping z (B, D) to the acceptance logit (B,).
        truncation: T, the proposal index that is accepted unconditionally; None = no
            truncation (resampling ad infinitum, Eq. A.7).
        eps: smoothing of the running Z estimate in Algorithm 1, in (0, 1].
        num_z_samples: S, proposal samples per training step for the Z estimate.

    State: buffer ``log_z`` (float64 scalar, the running <Z> of Algorithm 1 or an installed
    high-precision estimate) and buffer ``log_z_initialised`` (bool), both in the state dict.
    ``log_z`` stays float64 under ``.to(dtype)`` / ``.float()`` / ``.half()``.
    """

    def __init__(
        self,
        proposal: nn.Module,
        acceptance: nn.Module,
        truncation: int | None = 100,
        eps: float = 0.1,
        num_z_samples: int = 1024,
    ):
        _check_hyperparameters(truncation, eps, num_z_samples)
        super().__init__(proposal.dim)
        self.proposal = proposal
        self.acceptance = acceptance
        self.truncation = truncation
        self.eps = float(eps)
        self.num_z_samples = num_z_samples
        self.register_buffer("log_z", torch.zeros((), dtype=torch.float64))
        self.register_buffer("log_z_initialised", torch.zeros((), dtype=torch.bool))
        # Diagnostics of the last train_log_prob call (detached; not part of the state).
        self.last_log_z_s: Tensor | None = None
        self.last_log_z_smooth: Tensor | None = None

    # -- state ---------------------------------------------------------------------------

    def _apply(self, fn, *args, **kwargs):
        # Module.float()/.half()/.to(dtype) would round the float64 Z estimate (which may come
        # from 1e10 samples); keep its precision and only follow the device.
        log_z = self.log_z
        out = super()._apply(fn, *args, **kwargs)
        self.log_z = log_z.to(device=self.log_z.device, dtype=torch.float64)
        return out

    def set_log_z(self, value: float | Tensor) -> None:
        """Install a Z estimate, e.g. the high-precision one of :mod:`larsvae.zestimate`."""
        v = float(value)
        if not math.isfinite(v) or v > 0.0:
            raise ValueError(f"log_z: expected a finite number <= 0 (Z <= 1), got {v!r}")
        with torch.no_grad():
            self.log_z.fill_(v)
            self.log_z_initialised.fill_(True)

    @property
    def z(self) -> float:
        """Current Z (float); Z = E_pi[a(z)], Eq. 2."""
        return math.exp(float(self.log_z))

    @property
    def acceptance_rate(self) -> float:
        """Probability that a single proposal is accepted, i.e. Z (Eq. A.3)."""
        return self.z

    def expected_num_proposals(self) -> float:
        """E[number of proposals per sample] = (1 - (1-Z)^T) / Z, or 1/Z for T = None."""
        z = self.z
        T = self.truncation
        if z == 0.0:
            return math.inf if T is None else float(T)
        if T is None:
            return 1.0 / z
        if z >= 1.0:
            return 1.0
        return -math.expm1(T * math.log1p(-z)) / z

    # -- densities -----------------------------------------------------------------------

    def _draw_proposal(self, n: int, generator: torch.Generator | None) -> Tensor:
        trainable = any(p.requires_grad for p in self.proposal.parameters())
        if trainable and hasattr(self.proposal, "rsample"):
            return self.proposal.rsample(n, generator=generator)
        with torch.no_grad():
            return self.proposal.sample(n, generator=generator)

    @torch.no_grad()
    def monte_carlo_log_z(self, num_samples: int | None = None, generator=None) -> Tensor:
        """A fresh Monte Carlo estimate of log Z (Eq. 2) from ``num_samples`` proposals."""
        n = self.num_z_samples if num_samples is None else num_samples
        zs = self.proposal.sample(n, generator=generator)
        log_a = F.logsigmoid(self.acceptance(zs)).double()
        return torch.logsumexp(log_a, 0) - math.log(n)

    def _eval_log_z(self) -> Tensor:
        if bool(self.log_z_initialised):
            return self.log_z
        # No estimate yet (untrained, nothing installed): use a transient one, store nothing.
        return self.monte_carlo_log_z()

    def log_prob(self, z: Tensor) -> Tensor:
        """Log density with the stored Z: Eq. A.14 (finite T) / Eq. A.7 (T = None).

        z: (B, D) -> (B,). Never changes the stored Z. If no Z has been stored yet (neither
        trained nor installed), a transient estimate from ``num_z_samples`` proposals is used.
        """
        log_pi = self.proposal.log_prob(z)
        if self.truncation == 1:
            return log_pi
        log_a = F.logsigmoid(self.acceptance(z))
        return lars_log_density(log_pi, log_a, self._eval_log_z(), self.truncation)

    def train_log_prob(
        self,
        z: Tensor,
        log_q: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Log density for training with the per-example Z_r of Algorithm 1 (Appendix A.4).

        z: (B, D) samples of the posterior, log_q: (B,) their log q(z|x) (or None when
        fitting the prior to data directly, Eq. 5: then Z_r,curr = Z_S). Per step:

            Z_S        = mean_s a(z_s),  z_s ~ pi, s = 1..S
            w_r        = stop_grad(pi(z_r) / q(z_r))
            Z_r,curr   = (S Z_S + w_r a(z_r)) / (S + 1)
            Z_r,smooth = (1 - eps) <Z> + eps Z_r,curr
            Z_r        = Z_r,curr + stop_grad(Z_r,smooth - Z_r,curr)
            <Z>       <- mean_r Z_r,smooth

        The forward value uses Z_r,smooth, the gradient that of Z_r,curr. Gradients of the
        Z estimate reach the acceptance network (and a trainable proposal through
        ``rsample``), not z_r: Z does not depend on the encoder. Everything Z-related is in
        float64 log space, so huge weights w_r are exact (nothing is clamped). On the first
        call <Z> is initialised to Z_S. In eval mode, or for T = 1, this is :meth:`log_prob`.
        """
        if not self.training or self.truncation == 1:
            return self.log_prob(z)
        S = self.num_z_samples
        log_pi = self.proposal.log_prob(z)  # (B,)
        log_a = F.logsigmoid(self.acceptance(z))  # (B,)

        zs = self._draw_proposal(S, generator)  # (S, D)
        if log_q is not None and log_q.shape != log_pi.shape:
            raise ValueError(
                f"log_q: expected shape {tuple(log_pi.shape)}, got {tuple(log_q.shape)}"
            )
        # a(z_r) for Z_r,curr (gradient to a's parameters, not to z_r) and a(z_s) in one call
        n_r = z.shape[0] if log_q is not None else 0
        log_a_rs = F.logsigmoid(self.acceptance(torch.cat([z.detach()[:n_r], zs]))).double()
        log_a_r, log_a_s = log_a_rs[:n_r], log_a_rs[n_r:]  # (B,), (S,)
        log_z_s = torch.logsumexp(log_a_s, 0) - math.log(S)  # scalar, log Z_S
        if log_q is None:
            log_z_curr = log_z_s.expand(log_pi.shape)
        else:
            log_w = log_pi.detach().double() - log_q.detach().double()
            log_z_curr = torch.logaddexp(math.log(S) + log_z_s, log_w + log_a_r) - math.log(S + 1)

        log_z_smooth, log_z_r = _smoothed_log_z(self, log_z_s, log_z_curr)
        self.last_log_z_s = log_z_s.detach()
        self.last_log_z_smooth = log_z_smooth
        return lars_log_density(log_pi, log_a, log_z_r, self.truncation)

    # -- sampling ------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        return_num_proposals: bool = False,
        max_block: int | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Exact (truncated) rejection sampling (Section 3), vectorised over one stream.

        Sequential rejection sampling gives each row proposals z_1, z_2, ... i.i.d. from pi,
        accepts z_t with probability a(z_t) and stops at the first acceptance; with
        truncation T the T-th proposal is accepted unconditionally. Here one i.i.d. stream
        of proposals, each with its own uniform variate, is cut into rows at exactly these
        stopping times: a row takes the stream up to its first acceptance (or its T-th
        proposal) and the next row starts right after it. The pieces between stopping times
        are i.i.d. (strong Markov property), so the first ``n`` rows are ``n`` independent
        draws of sequential rejection sampling, and no proposal is drawn in vain except
        after the last row. Proposals are drawn in blocks of about (rows missing) x
        E[proposals per row], at most ``max_block`` (default: 2^16 on a CPU, 2^22 on other
        devices); the acceptance network runs in cache-sized chunks with reused buffers.

        The uniform variates are float64, so acceptance probabilities below ~1e-16 per
        proposal are resolved only to that precision. With T = None the loop runs until
        every row has accepted (it does not terminate if a(z) = 0 almost everywhere).

        Returns (n, D) samples, and with ``return_num_proposals`` also the number of
        proposals each sample took, a LongTensor (n,).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n: expected a non-negative integer, got {n!r}")
        if max_block is not None and (
            isinstance(max_block, bool) or not isinstance(max_block, int) or max_block < 1
        ):
            raise ValueError(f"max_block: expected a positive integer, got {max_block!r}")
        T = self.truncation
        if T == 1 or n == 0:
            out = self.proposal.sample(n, generator=generator)
            counts = torch.ones(n, dtype=torch.long, device=out.device)
            return (out, counts) if return_num_proposals else out

        if max_block is None:
            max_block = default_max_block(module_device(self.proposal))
        logits = _acceptance_logits(self.acceptance)
        # E[proposals per row] (Eq. A.3), then the rate seen in this call's own stream
        per_row = self.expected_num_proposals() if bool(self.log_z_initialised) else 2.0
        if not math.isfinite(per_row):  # T = inf with an underflowing Z: 1/Z overflows
            per_row = float(max_block)
        out, counts = _sample_blocks(self.proposal, logits, n, T, per_row, max_block, generator)
        return (out, counts) if return_num_proposals else out

    def extra_repr(self) -> str:
        return f"truncation={self.truncation}, eps={self.eps}, num_z_samples={self.num_z_samples}"


# -- the sampler's helpers (also used by larsvae.zestimate) ----------------------------------


def _smoothed_log_z(
    prior: ResampledPrior, log_z_s: Tensor, log_z_curr: Tensor
) -> tuple[Tensor, Tensor]:
    """Algorithm 1's smoothing: (log Z_r,smooth, log Z_r) from log Z_S and log Z_r,curr (B,);
    the running <Z> <- mean_r Z_r,smooth is stored in ``prior.log_z``."""
    with torch.no_grad():
        # <Z> starts at Z_S; a select, not a branch, so no host sync (and CUDA graphs)
        log_running = torch.where(prior.log_z_initialised, prior.log_z, log_z_s)
        log_keep = math.log1p(-prior.eps) if prior.eps < 1.0 else -math.inf
        log_z_smooth = torch.logaddexp(
            log_keep + log_running, math.log(prior.eps) + log_z_curr.detach()
        )
    # Straight-through in Z space: value Z_smooth, d(log Z_r) = dZ_curr / Z_smooth.
    ratio = torch.exp(log_z_curr - log_z_smooth)
    log_z_r = log_z_smooth + (ratio - ratio.detach())

    if (
        prior.truncation is not None
        and not _capturing(log_z_smooth)
        and bool((log_z_smooth > 0).any())
    ):
        warnings.warn(
            # A constant message, so the default filter reports it once, not every step;
            # the values are in ``last_log_z_smooth``.
            "LARS Algorithm 1: some per-example Z estimates exceed 1 (large importance "
            "weights pi/q); Eq. A.14 is evaluated at Z = 1 for those examples",
            RuntimeWarning,
            stacklevel=3,  # the caller of train_log_prob
        )
    with torch.no_grad():
        n = log_z_smooth.numel()
        prior.log_z.copy_(torch.logsumexp(log_z_smooth.reshape(-1), 0) - math.log(n))
        prior.log_z_initialised.fill_(True)
    return log_z_smooth, log_z_r


def _sample_blocks(
    proposal: nn.Module,
    logits: _AcceptanceLogits,
    n: int,
    truncation: int | None,
    per_row: float,
    max_block: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """The block loop of :meth:`ResampledPrior.sample`: (n, D) samples and their numbers of
    proposals (n,), from one stream of proposals cut into rows at the stopping times, about
    (rows missing) x ``per_row`` proposals per block, at most ``max_block``."""
    T = truncation
    out: Tensor | None = None
    counts: Tensor | None = None
    filled = 0
    carry = 0  # rejected proposals of the row in progress, drawn in earlier blocks
    drawn = rows_drawn = 0
    while filled < n:
        if rows_drawn:
            per_row = drawn / rows_drawn
        elif drawn:  # not one row finished yet: look further ahead
            per_row = max(4.0 * per_row, 2.0 * drawn)
        m = min(max_block, math.ceil((n - filled) * per_row * 1.02) + 16)
        cand = proposal.sample(m, generator=generator)  # (m, D)
        if out is None:
            out = cand.new_empty(n, cand.shape[1])
            counts = torch.empty(n, dtype=torch.long, device=cand.device)
        u = torch.rand(m, dtype=torch.float64, device=cand.device, generator=generator)
        acc = u < torch.sigmoid(logits.chunked(cand).double())  # (m,)
        ends, num, carry = _cut_rows(acc, carry, T)
        take = min(ends.numel(), n - filled)
        out[filled : filled + take] = cand[ends[:take]]
        counts[filled : filled + take] = num[:take]
        filled += take
        drawn += m
        rows_drawn += ends.numel()
    return out, counts


def _cut_rows(acc: Tensor, carry: int, truncation: int | None) -> tuple[Tensor, Tensor, int]:
    """Cut a block of the proposal stream into rows of (truncated) rejection sampling.

    acc: (m,) bool, whether each proposal of the block passed its accept test; carry: the
    proposals of the row in progress that earlier blocks drew (fewer than T). A row ends at
    an accepted proposal or at its T-th one; since forced rows split a run of rejections at
    multiples of T from its start, proposal i ends a row iff it is accepted or
    (proposals since the last acceptance before it) is a multiple of T. Returns the block
    positions where rows end (R,), increasing, each row's number of proposals (R,), and
    the carry into the next block. Branch-free, O(m), no host sync until ``nonzero``.
    """
    m = acc.numel()
    i = torch.arange(m, device=acc.device)
    last = torch.where(acc, i, -1 - carry).cummax(0).values  # last acceptance at or before i
    since = i - torch.cat([last.new_tensor([-1 - carry]), last[:-1]])  # >= 1
    if truncation is None:
        ends = acc.nonzero().squeeze(1)
        num = since[ends]
    else:
        row = (since - 1) % truncation + 1  # proposals of i's row up to i
        ends = (acc | (row == truncation)).nonzero().squeeze(1)
        num = row[ends]
    carry = m - 1 - int(ends[-1]) if ends.numel() else carry + m
    return ends, num, carry


#: Rows per evaluation of the acceptance network. CPU: the hidden activations of a chunk stay
#: in the L2 cache (2048 x 100 float32 = 800 kB) and no temporary reaches malloc's mmap
#: threshold (a page fault per 4 kB on every chunk); other devices: large, to fill the device.
_CHUNK_ROWS_CPU = 2048
_CHUNK_ROWS_DEVICE = 1 << 22


def default_max_block(device: torch.device) -> int:
    """Proposals :meth:`ResampledPrior.sample` draws at most per block by default."""
    return 1 << 16 if device.type == "cpu" else 1 << 22


def chunk_rows(device: torch.device) -> int:
    """Rows per evaluation of the acceptance network on ``device`` (a size
    :mod:`larsvae.memory` counts)."""
    return _CHUNK_ROWS_CPU if device.type == "cpu" else _CHUNK_ROWS_DEVICE


class _AcceptanceLogits:
    """No-grad logits of any acceptance module z (B, D) -> (B,), evaluated chunk by chunk."""

    def __init__(self, acceptance: nn.Module):
        self.acceptance = acceptance

    def __call__(self, z: Tensor) -> Tensor:
        """Logits of z. (B, D) -> (B,)"""
        return self.acceptance(z)

    def pm(self, z: Tensor) -> Tensor:
        """Logits of z, then of -z (antithetic pairs). (B, D) -> (2B,)"""
        return self(torch.cat([z, -z]))

    def chunked(self, z: Tensor) -> Tensor:
        """Logits of z in chunks of :func:`chunk_rows` rows. (B, D) -> (B,)"""
        c = chunk_rows(z.device)
        if z.shape[0] <= c:
            return self(z)
        return torch.cat([self(part) for part in z.split(c)])


class _FusedMLPLogits(_AcceptanceLogits):
    """Logits of an :class:`AcceptanceMLP` with tanh layers rewritten as sigmoid layers.

    tanh(x) = 2 sigmoid(2x) - 1: each tanh layer becomes sigmoid(2 W h + 2 b), and the affine
    map 2 s - 1 of its output is folded into the next layer (W -> 2 W, b -> b - W 1), once
    per instance, in float64, rounded to the module's dtype. The same function, evaluated
    with different rounding (logits agree to ~1e-6 in float32); the reason is speed: on a
    CPU float32 ``torch.sigmoid`` is about 5x faster than ``torch.tanh``, which took half
    of the time of a Z estimate. Activations live in buffers reused across calls.
    """

    def __init__(self, linears: Sequence[nn.Linear]):
        super().__init__(None)
        layers = []
        for k, lin in enumerate(linears):
            w, b = lin.weight.detach().double(), lin.bias.detach().double()
            if k > 0:  # input 2 s - 1 instead of tanh
                w, b = 2.0 * w, b - w.sum(1)
            if k < len(linears) - 1:  # tanh(x) = 2 sigmoid(2 x) - 1
                w, b = 2.0 * w, 2.0 * b
            dtype = lin.weight.dtype
            layers.append((w.t().contiguous().to(dtype), b.to(dtype)))  # (in, out), (out,)
        self.hidden = layers[:-1]
        w, b = layers[-1]
        self.w_out, self.b_out = w[:, 0].contiguous(), b  # (H,), (1,)
        self._buffers: dict[int, Tensor] = {}

    def _buffer(self, key: int, rows: int, cols: int, like: Tensor) -> Tensor:
        buf = self._buffers.get(key)
        if buf is None or buf.shape[0] < rows:
            buf = self._buffers[key] = like.new_empty(rows, cols)
        return buf[:rows]

    def _rest(self, h: Tensor, first: int) -> Tensor:
        for k in range(first, len(self.hidden)):
            w, b = self.hidden[k]
            h = torch.addmm(b, h, w, out=self._buffer(k, h.shape[0], w.shape[1], h)).sigmoid_()
        return torch.addmv(self.b_out, h, self.w_out)

    def __call__(self, z: Tensor) -> Tensor:
        return self._rest(z, 0)

    def pm(self, z: Tensor) -> Tensor:
        if not self.hidden:
            return super().pm(z)
        B = z.shape[0]
        w, b = self.hidden[0]
        wz = torch.mm(z, w, out=self._buffer(-1, B, w.shape[1], z))  # (B, H)
        h = self._buffer(0, 2 * B, w.shape[1], z)
        torch.add(b, wz, out=h[:B])
        torch.sub(b, wz, out=h[B:])  # the first layer of -z costs no product
        return self._rest(h.sigmoid_(), 1)


def _acceptance_logits(acceptance: nn.Module) -> _AcceptanceLogits:
    """The fused evaluator for a plain :class:`AcceptanceMLP` (tanh between linear layers),
    else the module's own forward."""
    if type(acceptance) is AcceptanceMLP:
        mods = list(acceptance.net)
        linears, acts = mods[0::2], mods[1::2]
        if (
            all(type(m) is nn.Linear and m.bias is not None for m in linears)
            and all(type(m) is nn.Tanh for m in acts)
            and len(linears) == len(acts) + 1
            and linears[-1].out_features == 1
        ):
            return _FusedMLPLogits(linears)
    return _AcceptanceLogits(acceptance)


__all__ = ["AcceptanceMLP", "ResampledPrior", "lars_log_density"]
