"""LARS on the outputs of a VAE ("resampled outputs"): Table D.6 and Figure D.9.

Reference: M. Bauer and A. Mnih, "Resampled Priors for Variational Autoencoders",
AISTATS 2019 (arXiv:1810.11428), Appendix D. Instead of the latent z, the 784-dimensional
binary output x of a standard VAE is resampled. The proposal is the VAE's marginal

    pi(x) = int N(z; 0, I) Bernoulli(x; sigmoid(decoder(z))) dz,

the acceptance a(x) = sigmoid(MLP[784-H-H-1](x)) is as large as the encoder (H = cfg.hidden),
and the model is the truncated LARS density of Eq. A.14 with Z = E_pi[a(x)]:

    log p_T(x) = log pi(x) + log[a(x) (1 - (1-Z)^(T-1)) / Z + (1-Z)^(T-1)]      (*)

The second summand, the *log term*, needs only a(x) and Z; log pi(x) is bounded by the ELBO
for training (Eq. D.24: E_q log pi(x|z) - KL(q(z|x) || p(z)) + log term) and by IWAE for
the test NLL. Z is estimated on decoded samples x_s ~ Bernoulli(decoder(z_s)), z_s ~ N(0, I).

What gets gradients (the training objective, :meth:`ResampledOutputsVAE.loss`):

- a(x)'s parameters: through log a(x_r) of the data and through the Z estimate, whose
  value is Algorithm 1's smoothed running <Z> and whose gradient is that of the current
  estimate Z_S (straight-through, as :meth:`ResampledPrior.train_log_prob`);
- encoder and decoder: through the ELBO of pi only. The Z estimate depends on the decoder
  through the *discrete* samples x_s; they are drawn without gradient and no score-function
  term is added, so the decoder never sees Z (its gradient is exactly that of a standard
  VAE). The log term does not involve the encoder at all.

During training Z is Algorithm 1 with Z_r,curr = Z_S for every example: the data term
w_r a(x_r) of Algorithm 1 needs pi(x_r) / q(x_r), which has no tractable analogue for
outputs, so this is the branch ``train_log_prob(z, log_q=None)`` of the latent LARS prior
(fitting a resampled density to data, Eq. 5). Per step: S = cfg.train_z_samples decoded
samples, Z_smooth = (1 - eps) <Z> + eps Z_S, <Z> <- Z_smooth, all in float64 log space.

    model = build_resampled_outputs(cfg)                  # arch "vae_rx", prior N(0, I)
    train.fit(model, stream, tcfg, out, seed=..., meta=CheckpointMeta(...))  # VAE.loss's contract
    est = zestimate.estimate_z(model.resampler.acceptance, model.resampler.proposal,
                               n, batch, antithetic=False)
    model.resampler.set_log_z(est.log_mean)
    nll_summary(model, x_test, k=1000, z_estimate=est)    # IWAE log pi + log term
    rank_outputs(model, n=10_000, seed=0)                 # Fig. D.9's scores (reports.acceptance)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from larsvae.config import ModelConfig
from larsvae.distributions import AcceptanceMLP, ResampledPrior, StandardNormal
from larsvae.distributions.lars import lars_log_density
from larsvae.evaluation import NLLSummary, dlogp_dlogz, iwae_log_likelihood, summarise_nll
from larsvae.models.vae import DATA_DIM, VAE, LatentVariableModel
from larsvae.objectives import mlp_forward
from larsvae.ranking import RANK_TAG, Ranked
from larsvae.utils import derive_seed, module_device

#: the ``arch`` name of this model in checkpoints and cell paths
ARCH = "vae_rx"
#: decoded samples per decoder call (bounds the (rows, 784) logits and uniforms in memory):
#: CPU, then other devices (which want large calls; 2^16 rows of float64 are 400 MB)
CHUNK_ROWS = 4096
CHUNK_ROWS_DEVICE = 1 << 16


class DecodedProposal(nn.Module):
    """The VAE's marginal pi(x) as a LARS proposal: binary x_s ~ Bernoulli(decoder(z_s)),
    z_s ~ N(0, I). Sampling only: pi(x) has no tractable log density.

    ``decode_logits`` maps z (n, d) to Bernoulli logits (n, D). It is held as a plain
    callable (the model's bound method), not a submodule, so the decoder's weights appear
    once in the model's state dict and never receive gradients through this proposal.
    Samples live on the device and in the dtype of the module's (non-persistent) anchor
    buffer, which follows the model through ``.to(...)``. ``symmetric = False``: pi(x) is
    not invariant under x -> -x, so :func:`larsvae.zestimate.estimate_z` must not use
    antithetic pairs.
    """

    symmetric = False

    def __init__(self, decode_logits: Callable[[Tensor], Tensor], latent_dim: int, dim: int):
        super().__init__()
        self._decode_logits = decode_logits
        self.latent_dim = latent_dim
        self.dim = dim
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    @torch.no_grad()
    def sample_with_latents(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """(z, x): z (n, d) ~ N(0, I), then x (n, D) in {0, 1} ~ Bernoulli(sigmoid(logits)).

        All n latents are drawn first, then the uniforms chunk by chunk. The comparison
        u < sigmoid(logit) is made in float64, so pixel probabilities down to ~1e-16 are
        honoured (float32 uniforms are multiples of 2^-24)."""
        a = self._anchor
        z = torch.randn(n, self.latent_dim, generator=generator, device=a.device, dtype=a.dtype)
        x = torch.empty(n, self.dim, device=a.device, dtype=a.dtype)
        c = CHUNK_ROWS if a.device.type == "cpu" else CHUNK_ROWS_DEVICE
        for lo in range(0, n, c):
            probs = torch.sigmoid(self._decode_logits(z[lo : lo + c]).double())
            u = torch.rand(probs.shape, generator=generator, device=a.device, dtype=torch.float64)
            x[lo : lo + c] = u < probs
        return z, x

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n binary samples x ~ pi(x), (n, D)."""
        return self.sample_with_latents(n, generator)[1]

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, dim={self.dim}"


class ResampledOutputs(ResampledPrior):
    """LARS over x with the proposal pi(x) of a :class:`DecodedProposal` (Eq. A.14 / A.7).

    Inherits the Z state (``log_z``, ``log_z_initialised``, :meth:`set_log_z`, float64
    under dtype changes), :meth:`expected_num_proposals` and the exact truncated rejection
    sampler :meth:`sample` (binary x ~ p_T). log p_T(x) itself is intractable (it contains
    log pi(x)), so ``log_prob`` / ``train_log_prob`` raise; :meth:`log_term` and
    :meth:`train_log_term` give log p_T(x) - log pi(x), to be added to a bound on log pi(x).
    """

    def _stored_log_z(self) -> Tensor:
        if not bool(self.log_z_initialised):
            raise ValueError(
                "the output resampler holds no Z estimate: train the model or call "
                "model.resampler.set_log_z() first"
            )
        return self.log_z

    def log_term(self, x: Tensor, log_z: float | Tensor | None = None) -> Tensor:
        """log[a(x) (1 - (1-Z)^(T-1)) / Z + (1-Z)^(T-1)] (Eq. A.14; log a(x) - log Z for
        T = None, 0 for T = 1) with the stored Z or the given ``log_z``. (B, D) -> (B,)
        float64."""
        log_z = self._stored_log_z() if log_z is None else log_z
        log_a = F.logsigmoid(self.acceptance(x))  # (B,)
        zero = torch.zeros(log_a.shape, dtype=torch.float64, device=log_a.device)
        return lars_log_density(zero, log_a, log_z, self.truncation)

    def train_log_term(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The log term for training: Algorithm 1 with Z_r,curr = Z_S. (B, D) -> (B,) float64.

            Z_S      = mean_s a(x_s),  x_s ~ pi (decoded, no gradient), s = 1..S
            Z_smooth = (1 - eps) <Z> + eps Z_S;   <Z> <- Z_smooth   (<Z> starts at Z_S)
            Z        = Z_S + stop_grad(Z_smooth - Z_S)

        The value uses Z_smooth, the gradient that of Z_S (to a's parameters only). Mirrors
        ``ResampledPrior.train_log_prob(z, log_q=None)``. In eval mode: :meth:`log_term`.
        """
        if not self.training or self.truncation == 1:
            return self.log_term(x)
        S = self.num_z_samples
        xs = self.proposal.sample(S, generator=generator)  # (S, D), no gradient to the decoder
        log_a_rs = F.logsigmoid(self.acceptance(torch.cat([x, xs]))).double()  # one call
        log_a_r, log_a_s = log_a_rs[: x.shape[0]], log_a_rs[x.shape[0] :]
        log_z_s = torch.logsumexp(log_a_s, 0) - math.log(S)  # scalar, log Z_S
        with torch.no_grad():
            # <Z> starts at Z_S; a select, not a branch (no host sync, CUDA-graph safe)
            log_running = torch.where(self.log_z_initialised, self.log_z, log_z_s)
            log_keep = math.log1p(-self.eps) if self.eps < 1.0 else -math.inf
            log_z_smooth = torch.logaddexp(log_keep + log_running, math.log(self.eps) + log_z_s)
            self.log_z.copy_(log_z_smooth)
            self.log_z_initialised.fill_(True)
        # Straight-through in Z space: value Z_smooth, d(log Z) = dZ_S / Z_smooth.
        ratio = torch.exp(log_z_s - log_z_smooth)
        log_z = log_z_smooth + (ratio - ratio.detach())
        self.last_log_z_s = log_z_s.detach()
        self.last_log_z_smooth = log_z_smooth
        return lars_log_density(torch.zeros_like(log_a_r), log_a_r, log_z, self.truncation)

    def log_prob(self, x: Tensor) -> Tensor:
        raise TypeError(
            "log p_T(x) contains the intractable log pi(x): use log_term(x) plus a bound on "
            "log pi(x) (ResampledOutputsVAE.log_weights / log_prob_bound)"
        )

    def train_log_prob(self, x: Tensor, log_q: Tensor | None = None, generator=None) -> Tensor:
        raise TypeError("use train_log_term(x): log pi(x) is bounded by the model's ELBO")


class ResampledOutputsVAE(VAE):
    """The paper's VAE (N(0, I) prior, Bernoulli decoder, Appendix C.2) with LARS on x.

    ``resampler`` (:class:`ResampledOutputs`): ``.acceptance`` a(x) = MLP[784-H-H-1] logits,
    ``.proposal`` (:class:`DecodedProposal`) the decoded samples, and the Z state. Built
    like every model, ``ResampledOutputsVAE(prior, cfg)`` with ``prior`` a StandardNormal,
    so ``models.build_model`` can make it; the VAE part is initialised first, from the same
    random numbers as a plain VAE, then a(x). Reads cfg.latent_dim, hidden, truncation, eps
    and train_z_samples (not acceptance_hidden: a(x) is as large as the encoder).
    """

    arch = ARCH

    def __init__(self, prior: nn.Module, cfg: ModelConfig):
        if type(prior) is not StandardNormal:
            raise ValueError(f"resampled outputs use the N(0, I) prior, got {type(prior).__name__}")
        super().__init__(prior, cfg)
        self.resampler = ResampledOutputs(
            DecodedProposal(self._decoder_logits, cfg.latent_dim, DATA_DIM),
            AcceptanceMLP(DATA_DIM, (cfg.hidden, cfg.hidden)),
            truncation=cfg.truncation,
            eps=cfg.eps,
            num_z_samples=cfg.train_z_samples,
        )

    def _decoder_logits(self, z: Tensor) -> Tensor:
        """Bernoulli logits of p(x | z): (n, d) -> (n, 784)."""
        return mlp_forward(self.decoder, z)

    def loss(
        self, x: Tensor, beta: float = 1.0, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Negative ELBO of Eq. D.24 with KL weight ``beta``; VAE.loss's contract.

        x: (B, 784) in {0, 1}. 'rec' (B,) = -log pi(x|z) - log term (the reconstruction
        under the resampled likelihood), 'kl' (B,) as for the VAE, 'loss' = mean(rec +
        beta * kl), 'elbo' = -(rec + kl); also 'log_term' (B,). Training mode: the log term
        of Algorithm 1 (:meth:`ResampledOutputs.train_log_term`, updates <Z>); eval mode:
        the stored Z. The posterior noise is drawn before the Z samples, both from
        ``generator``, so the VAE part sees the same numbers as ``VAE.loss``.
        """
        x = self._as_input(x)
        out = super().loss(x, beta, generator)
        if self.training:
            log_term = self.resampler.train_log_term(x, generator)
        else:
            log_term = self.resampler.log_term(x)
        rec = out["rec"] - log_term.to(out["rec"].dtype)
        kl = out["kl"]
        return {
            "loss": (rec + beta * kl).mean(),
            "rec": rec,
            "kl": kl,
            "elbo": -(rec + kl),
            "log_term": log_term.detach(),
        }

    def log_weights(
        self,
        x: Tensor,
        k: int,
        generator: torch.Generator | None = None,
        return_top_latent: bool = False,
        *,
        noise: Tensor | None = None,
    ):
        """Importance log weights of the resampled model, log pi(x, z_k) - log q(z_k|x) +
        log term(x) with the stored Z: (B, k). IWAE over them is IWAE of pi plus the log
        term, so :func:`larsvae.evaluation.iwae_log_likelihood` gives log p_T(x) (*)."""
        out = super().log_weights(x, k, generator, return_top_latent, noise=noise)
        log_w, z_top = out if return_top_latent else (out, None)
        log_w = log_w + self.resampler.log_term(self._as_input(x)).to(log_w.dtype).unsqueeze(1)
        return (log_w, z_top) if return_top_latent else log_w

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, max_block: int | None = None
    ) -> Tensor:
        """n exact samples x ~ p_T(x) (truncated rejection sampling over decoded binary
        samples, ``ResampledPrior.sample``), (n, 784) in {0, 1}; unlike VAE.sample, binary
        images, not Bernoulli means. ``max_block`` caps the proposals decoded at once (each
        holds 784 numbers; the default 2^16 on a CPU is ~200 MB in float32)."""
        return self.resampler.sample(n, generator=generator, max_block=max_block)

    def make_posthoc(self, cfg: ModelConfig | None = None) -> None:
        raise ValueError("post-hoc LARS resamples the latent; this model resamples its outputs")

    @torch.no_grad()
    def log_prob_bound(
        self,
        x: Tensor,
        k: int = 1000,
        *,
        log_z: float | Tensor | None = None,
        batch_size: int = 100,
        k_chunk: int = 1000,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> Tensor:
        """IWAE_k log pi(x) + log term(x) with ``log_z`` (default: the stored Z): the test
        log-likelihood (*) per image, (N,) float64 on the CPU. Noise as
        :func:`larsvae.evaluation.iwae_log_likelihood` (``seed`` or ``generator``)."""
        log_pi = iwae_log_likelihood(
            _MarginalOnly(self), x, k, batch_size, k_chunk, generator=generator, seed=seed
        )
        return log_pi + self._log_term_cpu(x, log_z)

    @torch.no_grad()
    def _log_term_cpu(self, x: Tensor, log_z=None) -> Tensor:
        """The log term of x (N, 784) in chunks, (N,) float64 on the CPU."""
        parts = [self.resampler.log_term(self._as_input(p), log_z) for p in x.split(1024)]
        return torch.cat(parts).cpu()


class _MarginalOnly(nn.Module):
    """The VAE of a ResampledOutputsVAE as IWAE sees it: the log weights of pi alone."""

    num_layers = 1

    def __init__(self, model: ResampledOutputsVAE):
        super().__init__()
        self.model = model
        self.latent_dim = model.latent_dim
        self.training = model.training  # IWAE restores this mode on the model afterwards

    def log_weights(self, x, k, generator=None, return_top_latent=False, *, noise=None):
        return LatentVariableModel.log_weights(
            self.model, x, k, generator, return_top_latent, noise=noise
        )


def build_resampled_outputs(cfg: ModelConfig) -> ResampledOutputsVAE:
    """The resampled-outputs model of ``cfg`` (latent_dim, hidden, truncation, eps,
    train_z_samples); the same as ``models.build_model("vae_rx", "gaussian", cfg)``."""
    return ResampledOutputsVAE(StandardNormal(cfg.latent_dim), cfg)


# ---------------------------------------------------------------------------------------
# Test NLL (Table D.6)


@dataclass(frozen=True)
class OutputsNLL:
    """Test NLL of the resampled model and its parts (nats).

    ``summary``: :class:`larsvae.evaluation.NLLSummary` of log p_T(x) (IWAE log pi + log
    term, Z error propagated: d log p_T / d log Z does not depend on z here, it is
    :func:`larsvae.evaluation.dlogp_dlogz` at x). ``nll_marginal``: -mean IWAE log pi(x),
    the VAE alone; ``log_term_mean``: mean log term, so nll = nll_marginal - log_term_mean.
    """

    summary: NLLSummary
    nll_marginal: float
    log_term_mean: float

    @property
    def log_px(self) -> Tensor:
        """Per-image log p_T(x) (N,), as :attr:`NLLSummary.log_px`."""
        return self.summary.log_px

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.summary.to_dict(),
            "nll_marginal": self.nll_marginal,
            "log_term_mean": self.log_term_mean,
        }


@torch.no_grad()
def nll_summary(
    model: ResampledOutputsVAE,
    x: Tensor,
    k: int = 1000,
    batch_size: int = 100,
    k_chunk: int = 1000,
    *,
    z_estimate: Any = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    progress: bool = False,
) -> OutputsNLL:
    """Test NLL of x (N, 784) under (*): IWAE with ``k`` samples for log pi(x) plus the log
    term with the installed Z (``model.resampler.set_log_z``), as
    :func:`larsvae.evaluation.nll_summary` does for LARS priors. ``z_estimate`` (mean,
    stderr, log_mean; e.g. a ZEstimate) must be the installed one; its error is propagated."""
    res = model.resampler
    res._stored_log_z()  # raises without a Z
    log_pi = iwae_log_likelihood(
        _MarginalOnly(model),
        x,
        k,
        batch_size,
        k_chunk,
        generator=generator,
        seed=seed,
        progress=progress,
    )
    log_term = model._log_term_cpu(x)
    sens = torch.cat(
        [dlogp_dlogz(res, model._as_input(p)).cpu() for p in x.split(1024)]
    )  # d log p_T(x) / d log Z, (N,)
    summary = summarise_nll(log_pi + log_term, sens, k, z_estimate, res)
    return OutputsNLL(summary, float(-log_pi.mean()), float(log_term.mean()))


# ---------------------------------------------------------------------------------------
# Figure D.9: decoded samples ranked by a(x)


@torch.no_grad()
def rank_outputs(model: ResampledOutputsVAE, n: int, seed: int) -> Ranked:
    """n decoded samples x ~ pi(x) scored by a(x): a :class:`larsvae.ranking.Ranked` whose
    ``z`` are the latents z_s, ``x`` the binary samples x_s (what a(x) scored; float32)
    and ``log_a`` = log sigmoid(logit(x_s)) from a float64 copy of a. One generator seeded
    with ``derive_seed(seed, ranking.RANK_TAG)`` on the model's device, so the result is a
    function of (model, n, seed)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an integer >= 1, got {n!r}")
    device = module_device(model)
    gen = torch.Generator(device=device).manual_seed(derive_seed(seed, RANK_TAG))
    z, x = model.resampler.proposal.sample_with_latents(n, gen)  # (n, d), (n, 784)
    acceptance64 = copy.deepcopy(model.resampler.acceptance).to(torch.float64)
    log_a = torch.cat([F.logsigmoid(acceptance64(p.double())).cpu() for p in x.split(CHUNK_ROWS)])
    return Ranked(z=z.cpu().numpy(), log_a=log_a.numpy(), x=x.float().cpu().numpy(), seed=int(seed))


__all__ = [
    "ARCH",
    "DecodedProposal",
    "OutputsNLL",
    "ResampledOutputs",
    "ResampledOutputsVAE",
    "build_resampled_outputs",
    "nll_summary",
    "rank_outputs",
]
