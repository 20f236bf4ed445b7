"""Energy-inspired priors: truncated rejection sampling (TRS) and self-normalised
importance sampling (SNIS).

Reference: D. Lawson, G. Tucker, B. Dai and R. Ranganath, "Energy-Inspired Models: Learning
with Sampler-Induced Distributions", NeurIPS 2019 (arXiv:1910.14265), Sec. 3. Both models
are the distribution of a sampler's output, trained by maximising a lower bound on its log
density. Notation: pi the proposal, S = ``num_z_samples``, T = truncation, K = proposals.

TRS (:class:`TRSPrior`) is the sampler of LARS (same proposal pi, acceptance a(z), truncation
T), so its density is Eq. A.14 of Bauer & Mnih with Z = E_pi[a]:

    q_T(z) = pi(z) [a(z) (1 - (1-Z)^(T-1)) / Z + (1-Z)^(T-1)].

It differs from LARS only in how it is trained: not with Algorithm 1's plug-in Z, but with
a lower bound that treats the index t of the accepted proposal as a latent variable.

SNIS (:class:`SNISPrior`) draws z_1..z_K ~ pi and returns z_i with probability
w(z_i) / sum_j w(z_j), w = exp(energy net); its density is an expectation with no closed
form (see the class).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Prior
from .lars import ResampledPrior, lars_log_density

#: proposals per block of :meth:`SNISPrior.sample` (rows x K), bounding its memory
_SNIS_BLOCK = 1 << 16


def trs_expected_rejections(log_a: Tensor, log_zt: Tensor, truncation: int | None) -> Tensor:
    """E_r[t - 1] under r(t | z) proportional to a(z)^[t<T] (1 - Zt)^(t-1), t = 1..T.

    log_a: (B,), log_zt: scalar log Zt. Closed form with rho = 1 - Zt, m = T - 1:
    S0 = sum_{k<m} rho^k = (1 - rho^m) / Zt, S1 = sum_{k<m} k rho^k = rho S0 / Zt - m rho^m / Zt,
    E = (a S1 + m rho^m) / (a S0 + rho^m); for T = None, E = rho / Zt. float64 (B,).
    """
    log_zt = log_zt.double()
    zt = torch.exp(log_zt)
    log_rho = torch.log1p(-zt)
    rho = torch.exp(log_rho)
    if truncation is None:
        return (rho / zt).expand(log_a.shape)
    m = truncation - 1
    rho_m = torch.exp(m * log_rho)
    s0 = -torch.expm1(m * log_rho) / zt
    s1 = (rho * s0 / zt - m * rho_m / zt).clamp(min=0.0)  # float64: cancels only for Zt ~ 1e-10
    a = torch.exp(log_a.double())
    return (a * s1 + m * rho_m) / (a * s0 + rho_m).clamp(min=1e-300)


def trs_log_bound(
    log_pi: Tensor, log_a: Tensor, log_zt: Tensor, log_1mz: Tensor, truncation: int | None
) -> Tensor:
    """E_r[log p(t, z)] + H[r] of :class:`TRSPrior` with log(1-Z) replaced by ``log_1mz``.

    = log pi + log N(z; Zt) + E_r[t-1] (log_1mz - log(1-Zt)). log_pi, log_a: (B,);
    log_zt, log_1mz: scalars. A lower bound on log q_T(z) whenever log_1mz <= log(1-Z);
    equal to it (Eq. A.14) at Zt = Z and log_1mz = log(1-Z). -> (B,) in log_pi's dtype.
    """
    base = lars_log_density(log_pi, log_a, log_zt, truncation)  # log pi + log N(z; Zt)
    if truncation == 1:
        return base
    log_1mzt = torch.log1p(-torch.exp(log_zt.double()))
    rej = trs_expected_rejections(log_a, log_zt, truncation)  # (B,) float64
    return base + (rej * (log_1mz - log_1mzt)).to(base.dtype)


class TRSPrior(ResampledPrior):
    """TRS prior (Lawson et al. 2019, Sec. 3): the LARS sampler, trained with a lower bound.

    **Density (evaluation).** :meth:`log_prob` is Eq. A.14 with the stored Z, exactly as for
    LARS: exact given Z; the pipeline installs the high-precision Monte Carlo estimate of
    Z = E_pi[a] (``estimate-z``), so the test NLL carries the same Z error as LARS's.
    Sampling is LARS's exact truncated rejection sampler (inherited). TRS therefore has a
    Z to estimate: it is one of ``config.LARS_PRIORS`` and ``config.has_z`` is True.

    **Training objective.** The ELBO with log p(z) replaced by a lower bound on log q_T(z).
    The sampler's joint density of the accepted index t and z is
    p(t, z) = pi(z) a(z)^[t<T] (1-Z)^(t-1); for any r(t) on 1..T,
    log q_T(z) >= E_r[log p(t, z)] + H[r]. With the variational posterior
    r(t | z) proportional to a(z)^[t<T] (1-Zt)^(t-1), where Zt = sigmoid(``logit_z_tilde``)
    is a learned scalar (Zt = Z makes r the exact posterior), this is

        log pi(z) + log N(z; Zt) + E_r[t-1] (log(1-Z) - log(1-Zt)),
        N(z; Zt) = a(z) (1 - (1-Zt)^(T-1)) / Zt + (1-Zt)^(T-1)       (Eq. A.14's bracket).

    log(1-Z) = log E_pi[1-a] is replaced by a lower bound estimated from S fresh proposals
    z_s ~ pi per step (E_r[t-1] >= 0, so the result stays a lower bound):

    * ``rejection_bound="eim"`` (default, the choice of Lawson et al.'s public code):
      mean_s log(1 - a(z_s)), unbiased for E_pi[log(1-a)] <= log(1-Z) (Jensen);
    * ``"multi"``: log mean_s (1 - a(z_s)), whose expectation is <= log(1-Z) and tends to it
      as S grows (an S-sample bound, tighter than "eim" for S > 1).

    The returned value is a lower bound on log q_T(z) in expectation over the z_s. Its gap
    is KL(r || p(t | z)) (zero at Zt = Z) plus E_r[t-1] times the rejection term's gap,
    log E_pi[1-a] - E_pi[log(1-a)] for "eim" (independent of S) and O(Var_pi[a] /
    (S (1-Z)^2)) for "multi". E_r[t-1] <= T - 1 (it is (1-Zt)/Zt for T = None, and near
    T - 1 where a(z) << (1-Zt)^(T-1)), so the bound loosens as T grows; T = 1 is exact
    (q_1 = pi). (That code also counts log a(z) for t = T, where the T-th proposal is
    accepted without a test: a looser bound; here it is weighted by r(t < T).) Gradients
    reach a(z), Zt and a trainable proposal (reparameterised z_s); z itself gets the
    gradient of the bound.

    In training mode the running <Z> (buffer ``log_z``) follows the proposals' mean
    acceptance with Algorithm 1's smoothing ``eps`` (the importance-weighted posterior term
    of Algorithm 1 is not used); it only serves :meth:`log_prob` in training (validation)
    until a high-precision Z is installed.
    """

    def __init__(
        self,
        proposal: nn.Module,
        acceptance: nn.Module,
        truncation: int | None = 100,
        eps: float = 0.1,
        num_z_samples: int = 1024,
        rejection_bound: str = "eim",
    ):
        super().__init__(proposal, acceptance, truncation, eps, num_z_samples)
        if rejection_bound not in ("eim", "multi"):
            raise ValueError(f"rejection_bound: expected 'eim' or 'multi', got {rejection_bound!r}")
        self.rejection_bound = rejection_bound
        # Zt = 1/2 at the start: the acceptance MLP's zero output bias gives a(z) ~ 1/2.
        self.logit_z_tilde = nn.Parameter(torch.zeros(()))

    def log_prob_bound(
        self, z: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """(lower bound on log q_T(z) (B,), log Z_S) from S fresh proposals (class doc)."""
        T = self.truncation
        log_pi = self.proposal.log_prob(z)  # (B,)
        zs = self._draw_proposal(self.num_z_samples, generator)  # (S, D)
        logits = self.acceptance(torch.cat([z, zs]))
        log_a, logit_s = F.logsigmoid(logits[: z.shape[0]]), logits[z.shape[0] :]
        log_reject = F.logsigmoid(-logit_s).double()  # log(1 - a(z_s)), (S,)
        S = logit_s.shape[0]
        if self.rejection_bound == "eim":
            log_1mz = log_reject.mean()
        else:
            log_1mz = torch.logsumexp(log_reject, 0) - math.log(S)
        log_zt = F.logsigmoid(self.logit_z_tilde).double()
        bound = trs_log_bound(log_pi, log_a, log_zt, log_1mz, T)
        log_z_s = torch.logsumexp(F.logsigmoid(logit_s.detach()).double(), 0) - math.log(S)
        return bound, log_z_s

    def train_log_prob(
        self,
        z: Tensor,
        log_q: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The TRS lower bound in training mode (class doc); :meth:`log_prob` otherwise.

        ``log_q`` is accepted for the common interface and not used.
        """
        if not self.training:
            return self.log_prob(z)
        bound, log_z_s = self.log_prob_bound(z, generator)
        with torch.no_grad():
            running = torch.where(self.log_z_initialised, self.log_z, log_z_s)
            keep = math.log1p(-self.eps) if self.eps < 1.0 else -math.inf
            self.log_z.copy_(torch.logaddexp(keep + running, math.log(self.eps) + log_z_s))
            self.log_z_initialised.fill_(True)
        self.last_log_z_s = log_z_s
        return bound

    @property
    def z_tilde(self) -> float:
        """The variational Zt of the bound (a learned scalar, not the model's Z)."""
        return float(torch.sigmoid(self.logit_z_tilde))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rejection_bound={self.rejection_bound!r}"


class SNISPrior(Prior):
    """SNIS prior (Lawson et al. 2019, Sec. 3): the best of K proposals by learned weights.

    Sampler: z_1..z_K ~ pi, return z_i with probability w(z_i) / sum_j w(z_j), where
    log w = ``energy(z)`` (the negative energy -U of Lawson et al.). Exact and cheap: K
    energy evaluations per sample. Its density is the expectation

        q_K(z) = pi(z) E_{z_2..z_K ~ pi}[w(z) / Y],   Y = (w(z) + sum_{j>=2} w(z_j)) / K,

    which has no closed form; as K -> oo it tends to pi(z) w(z) / E_pi[w].

    **Log density returned** by :meth:`log_prob` (and used in training and evaluation):
    with one draw of z_2..z_K (shared by all rows of the call),

        l(z) = log pi(z) + log w(z) - log Y.

    exp(l) is an *unbiased* estimate of q_K(z), so E[l] <= log q_K(z): a lower bound in
    expectation (Jensen), of the direction that keeps the ELBO and the IWAE estimate lower
    bounds on log p(x) in expectation (the reported NLL errs high). With ``draws`` = M
    independent sets, l = log mean_m exp(l_m) is still unbiased in exp and tighter. The
    gap, log E[1/Y] - E[log 1/Y], is about Var(Y) / (2 E[Y]^2) ~ Var_pi[w] / (2 M K
    E_pi[w]^2) for large K: it shrinks as 1/(MK). Within one IWAE call all importance
    samples share the auxiliary draw, so that part of the gap does not shrink with the IWAE
    K. Lawson et al. train and evaluate with this bound at M = 1.

    **Training objective**: the ELBO with log p(z) replaced by l(z) (M = 1, one fresh draw
    per step shared across the batch): an unbiased estimate of a lower bound on the ELBO.
    Gradients reach the energy net, z, and a trainable proposal through reparameterised
    z_2..z_K. There is no normalising constant to estimate (``config.has_z`` is False).

    Args:
        proposal: prior with ``log_prob``, ``sample`` (and ``rsample`` if trainable).
        energy: module z (B, D) -> log w(z) (B,).
        num_proposals: K >= 1 (K = 1 is the proposal itself).
    """

    log_prob_draws = True

    def __init__(self, proposal: nn.Module, energy: nn.Module, num_proposals: int = 1024):
        if isinstance(num_proposals, bool) or not isinstance(num_proposals, int):
            raise ValueError(f"num_proposals: expected an integer >= 1, got {num_proposals!r}")
        if num_proposals < 1:
            raise ValueError(f"num_proposals: expected an integer >= 1, got {num_proposals!r}")
        super().__init__(proposal.dim)
        self.proposal = proposal
        self.energy = energy
        self.num_proposals = num_proposals

    def _draw_proposal(self, n: int, generator: torch.Generator | None) -> Tensor:
        trainable = any(p.requires_grad for p in self.proposal.parameters())
        if trainable and hasattr(self.proposal, "rsample"):
            return self.proposal.rsample(n, generator=generator)
        with torch.no_grad():
            return self.proposal.sample(n, generator=generator)

    def log_prob(
        self, z: Tensor, generator: torch.Generator | None = None, draws: int = 1
    ) -> Tensor:
        """l(z) of the class doc with ``draws`` auxiliary sets. z: (B, D) -> (B,)"""
        K = self.num_proposals
        log_pi = self.proposal.log_prob(z)
        if K == 1:
            return log_pi
        b = z.shape[0]
        zs = self._draw_proposal(draws * (K - 1), generator)  # (M (K-1), D)
        log_w = self.energy(torch.cat([z, zs]))
        log_wz = log_w[:b]  # (B,)
        lse_aux = torch.logsumexp(log_w[b:].reshape(draws, K - 1), 1)  # (M,)
        log_y = torch.logaddexp(log_wz.unsqueeze(1), lse_aux) - math.log(K)  # (B, M)
        per_draw = (log_pi + log_wz).unsqueeze(1) - log_y
        return torch.logsumexp(per_draw, 1) - math.log(draws)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact draws: K proposals per row, one picked by Gumbel-max on log w. (n, D)"""
        K = self.num_proposals
        rows = max(1, _SNIS_BLOCK // K)
        out = []
        for start in range(0, n, rows):
            b = min(rows, n - start)
            cand = self.proposal.sample(b * K, generator=generator).reshape(b, K, self.dim)
            log_w = self.energy(cand.reshape(b * K, self.dim)).reshape(b, K)
            u = torch.rand(b, K, generator=generator, device=log_w.device, dtype=torch.float64)
            pick = (log_w.double() - torch.log(-torch.log(u))).argmax(1)  # (b,)
            out.append(cand[torch.arange(b, device=cand.device), pick])
        if not out:
            return self.proposal.sample(0, generator=generator)
        return torch.cat(out)

    def extra_repr(self) -> str:
        return f"num_proposals={self.num_proposals}"


__all__ = ["SNISPrior", "TRSPrior", "trs_expected_rejections", "trs_log_bound"]
