"""The NLL summary and the IWAE tiling by hand: -mean and its standard error of a few
per-image log p(x), the first-order error that Z's standard error adds (Sec. 5), the
installed-Z check, the JSON views, the (point, sample) tiles on a CPU and an accelerator,
and the refused arguments of the IWAE estimator."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from larsvae.config import ModelConfig
from larsvae.distributions import AcceptanceMLP, ResampledPrior, StandardNormal
from larsvae.evaluation import (
    CPU_CALL_ROWS,
    MIN_DEVICE_ROWS,
    ELBOSummary,
    dlogp_dlogz,
    iwae_log_likelihood,
    iwae_tiles,
    nll_summary,
    nll_z_error,
    summarise_nll,
)
from larsvae.models import VAE, build_model

LOG_PX = torch.tensor([-1.0, -2.0, -4.0], dtype=torch.float64)


def holder(log_z: float) -> ResampledPrior:
    prior = ResampledPrior(StandardNormal(2), AcceptanceMLP(2, hidden=(4,)))
    prior.set_log_z(log_z)
    return prior


def test_nll_and_its_standard_error_by_hand():
    """log p(x) = -1, -2, -4: NLL 7/3; deviations 4/3, 1/3, -5/3 give the unbiased variance
    (16 + 1 + 25) / 9 / 2 = 7/3, so SE = sqrt(7/3) / sqrt(3) = sqrt(7) / 3."""
    s = summarise_nll(LOG_PX, None, k=50)
    assert s.nll == pytest.approx(7 / 3, rel=1e-15)
    assert s.nll_stderr == pytest.approx(math.sqrt(7) / 3, rel=1e-14)
    assert (s.n, s.k) == (3, 50)
    assert s.dnll_dlogz == 0.0 and s.z_rel_stderr is None and s.nll_z_stderr == 0.0
    assert torch.equal(s.log_px, LOG_PX)


def test_two_images_have_a_standard_error():
    """-1 and -3: unbiased variance 2, SE = sqrt(2) / sqrt(2) = 1."""
    s = summarise_nll(torch.tensor([-1.0, -3.0], dtype=torch.float64), None, k=1)
    assert s.nll == 2.0 and s.nll_stderr == pytest.approx(1.0, rel=1e-15)


def test_one_image_has_no_standard_error():
    s = summarise_nll(torch.tensor([-3.5], dtype=torch.float64), None, k=1)
    assert s.nll == 3.5 and math.isnan(s.nll_stderr) and s.n == 1


def test_z_error_is_carried_into_the_nll_to_first_order():
    """d log p(x) / d log Z = 0.5, 1, 1.5 per image: d NLL / d log Z = -1; SE(Z) / Z = 0.04,
    so the NLL error from Z is |-1| x 0.04."""
    sens = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
    z = SimpleNamespace(mean=0.25, stderr=0.01, log_mean=math.log(0.25))
    s = summarise_nll(LOG_PX, sens, k=50, z_estimate=z, holder=holder(math.log(0.25)))
    assert s.dnll_dlogz == -1.0
    assert s.z_rel_stderr == pytest.approx(0.04, rel=1e-15)
    assert s.nll_z_stderr == pytest.approx(0.04, rel=1e-15)
    assert s.nll == pytest.approx(7 / 3, rel=1e-15)
    # without a log_mean, log(mean) is what the holder must hold
    plain = SimpleNamespace(mean=0.25, stderr=0.01)
    assert summarise_nll(LOG_PX, sens, 50, plain, holder(math.log(0.25))).nll_z_stderr == (
        pytest.approx(0.04, rel=1e-15)
    )


def test_without_a_holder_or_an_estimate_z_adds_no_error():
    sens = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
    z = SimpleNamespace(mean=0.25, stderr=0.01, log_mean=math.log(0.25))
    for s in (summarise_nll(LOG_PX, sens, 50, z, None), summarise_nll(LOG_PX, sens, 50)):
        assert s.dnll_dlogz == -1.0 and s.z_rel_stderr is None and s.nll_z_stderr == 0.0


def test_the_installed_z_must_be_the_estimate_within_1e9_in_log():
    z = SimpleNamespace(mean=0.25, stderr=0.01, log_mean=math.log(0.25))
    summarise_nll(LOG_PX, LOG_PX, 5, z, holder(math.log(0.25) + 0.5e-9))
    for off in (2e-9, -2e-9, 1e-3):
        with pytest.raises(ValueError, match="is not the given estimate's"):
            summarise_nll(LOG_PX, LOG_PX, 5, z, holder(math.log(0.25) + off))


def test_the_installed_z_check_is_absolute_also_for_a_tiny_z():
    """log Z = -100: a relative tolerance of 1e-9 would allow 1e-7 in log Z."""
    z = SimpleNamespace(mean=math.exp(-100.0), stderr=1e-50, log_mean=-100.0)
    summarise_nll(LOG_PX, LOG_PX, 5, z, holder(-100.0 + 0.5e-9))
    with pytest.raises(ValueError, match="is not the given estimate's"):
        summarise_nll(LOG_PX, LOG_PX, 5, z, holder(-100.0 + 5e-9))


@pytest.mark.parametrize("mean", [0.0, -0.1, math.nan])
def test_a_z_estimate_must_have_a_positive_mean(mean):
    z = SimpleNamespace(mean=mean, stderr=0.01, log_mean=-1.0)
    with pytest.raises(ValueError, match="expected a positive number"):
        summarise_nll(LOG_PX, LOG_PX, 5, z, holder(-1.0))


def test_nll_z_error_is_the_absolute_first_order_term():
    assert nll_z_error(-2.0, 0.5, 0.01) == 0.04
    assert nll_z_error(2.0, 0.5, 0.01) == 0.04
    assert nll_z_error(0.0, 0.5, 0.01) == 0.0


def test_json_views():
    s = summarise_nll(LOG_PX, None, k=50)
    assert s.to_dict() == {
        "nll": s.nll,
        "nll_stderr": s.nll_stderr,
        "n": 3,
        "k": 50,
        "dnll_dlogz": 0.0,
        "z_rel_stderr": None,
        "nll_z_stderr": 0.0,
    }
    e = ELBOSummary(neg_elbo=95.0, kl=25.0, rec=70.0, neg_elbo_stderr=0.5, samples=10, n=4)
    assert e.to_dict() == {
        "neg_elbo": 95.0,
        "kl": 25.0,
        "rec": 70.0,
        "neg_elbo_stderr": 0.5,
        "elbo_samples": 10,
    }


# -- tiles -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nb, k, batch_size, k_chunk, want",
    [
        (100, 1000, 100, 1000, (1, 1000)),  # one point's K = 1000 per call
        (100, 10, 100, 1000, (100, 10)),  # 1024 // 10 = 102 points, but only 100
        (500, 10, 500, 1000, (102, 10)),
        (7, 5000, 100, 1000, (1, CPU_CALL_ROWS)),  # one point in pieces of 1024
        (7, 1024, 100, 1000, (1, 1024)),
        (7, 512, 100, 1000, (2, 512)),
    ],
)
def test_cpu_tiles_hold_about_a_thousand_pairs(nb, k, batch_size, k_chunk, want):
    assert iwae_tiles(nb, k, batch_size, k_chunk, torch.device("cpu")) == want


@pytest.mark.parametrize(
    "nb, k, batch_size, k_chunk, want",
    [
        (100, 1000, 100, 1000, (100, 1000)),  # batch_size * k_chunk = 1e5 pairs
        (100, 1000, 100, 50, (5, 1000)),
        (100, 1000, 2, 10, (4, 1000)),  # 20 pairs: at least MIN_DEVICE_ROWS = 4096
        (100, 8192, 2, 10, (1, MIN_DEVICE_ROWS)),
    ],
)
def test_accelerator_tiles_are_large(nb, k, batch_size, k_chunk, want):
    assert iwae_tiles(nb, k, batch_size, k_chunk, torch.device("cuda")) == want


# -- arguments of the IWAE estimator -------------------------------------------------------


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return VAE(StandardNormal(2), ModelConfig(latent_dim=2, hidden=8))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"k": 0}, "k"),
        ({"k": True}, "k"),
        ({"k": 2.0}, "k"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": False}, "batch_size"),
        ({"k_chunk": 0}, "k_chunk"),
        ({"k_chunk": 1.5}, "k_chunk"),
    ],
)
def test_iwae_refuses_sizes_that_are_not_positive_integers(vae, kwargs, name):
    x = torch.zeros(2, 784)
    with pytest.raises(ValueError, match=f"^{name}: expected a positive integer"):
        iwae_log_likelihood(vae, x, **{"k": 2, **kwargs})


def test_iwae_takes_a_seed_or_a_generator_not_both(vae):
    x = torch.zeros(2, 784)
    with pytest.raises(ValueError, match="either generator or seed"):
        iwae_log_likelihood(vae, x, k=2, seed=0, generator=torch.Generator())
    a = iwae_log_likelihood(vae, x, k=3, seed=4)
    b = iwae_log_likelihood(vae, x, k=3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    one = iwae_log_likelihood(vae, x, k=1, batch_size=1, k_chunk=1, seed=4)
    assert one.shape == (2,) and torch.isfinite(one).all()


def test_iwae_of_a_float32_model_is_float64_and_restores_its_mode(vae):
    """The log-sum-exp of the weights and the returned log p(x) are float64 (a float32 sum
    of 1000 weights loses digits the NLL's third decimal needs); the mode is restored."""
    x = torch.zeros(3, 784)
    for training in (True, False):
        vae.train(training)
        ll = iwae_log_likelihood(vae, x, k=3, batch_size=2, seed=1)
        assert ll.dtype == torch.float64 and ll.device.type == "cpu" and ll.shape == (3,)
        assert vae.training is training


def test_nll_summary_uses_the_paper_k_and_the_given_generator(vae):
    """K = 1000 importance samples by default (Sec. 5); a generator gives the numbers its
    seed gives; the summary is that of the per-image estimates."""
    x = torch.zeros(2, 784)
    s = nll_summary(vae, x, seed=3)
    assert s.k == 1000 and s.n == 2
    assert torch.equal(s.log_px, iwae_log_likelihood(vae, x, k=1000, seed=3))
    assert torch.equal(s.log_px, iwae_log_likelihood(vae, x, seed=3))  # K = 1000 there too
    g = nll_summary(vae, x, k=4, generator=torch.Generator().manual_seed(5))
    assert g.k == 4 and torch.equal(g.log_px, nll_summary(vae, x, k=4, seed=5).log_px)
    assert g.nll == pytest.approx(-float(g.log_px.mean()), rel=1e-15)


class PriorIsPosterior(torch.nn.Module):
    """A model without a single tensor: q(z|x) = p(z) = N(0, 1) and p(x|z) = 1, so every
    log weight is 0 and log p(x) = 0 exactly; its dtype and device are those of x."""

    num_layers, latent_dim = 1, 1

    def log_weights(self, x, k, generator=None, *, noise=None):
        return torch.zeros(x.shape[0], noise.shape[2], dtype=noise.dtype)


def test_iwae_of_a_model_without_tensors_follows_the_data():
    x = torch.zeros(3, 2, dtype=torch.float64)
    ll = iwae_log_likelihood(PriorIsPosterior(), x, k=5, seed=0)
    assert torch.equal(ll, torch.zeros(3, dtype=torch.float64))


def test_data_are_cast_to_the_model_dtype():
    torch.manual_seed(0)
    vae64 = VAE(StandardNormal(2), ModelConfig(latent_dim=2, hidden=8)).double()
    x = (torch.rand(2, 784) < 0.3).float()
    assert torch.equal(
        iwae_log_likelihood(vae64, x, k=3, seed=2),
        iwae_log_likelihood(vae64, x.double(), k=3, seed=2),
    )


@pytest.mark.parametrize("k", [7, 600])  # 600: one image per tile of 1024 pairs
def test_z_sensitivity_is_accumulated_in_float64(k):
    """d log p(x) / d log Z of a LARS VAE (T = 5) by hand: self-normalised weights of the same
    noise times dlogp_dlogz, in float64; the estimator's agrees to float64 rounding."""
    cfg = ModelConfig(latent_dim=2, hidden=8, acceptance_hidden=(4,), truncation=5)
    torch.manual_seed(0)
    model = build_model("vae", "lars", cfg).double()
    model.top_prior.set_log_z(math.log(0.3))
    x = (torch.rand(3, 784, generator=torch.Generator().manual_seed(1)) < 0.3).double()
    s = nll_summary(model, x, k=k, seed=4)
    noise = torch.randn(
        (3, 1, k, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64
    )
    with torch.no_grad():
        log_w, z_top = model.log_weights(x, k, return_top_latent=True, noise=noise)
        g = dlogp_dlogz(model.top_prior, z_top.reshape(-1, 2)).view(3, k)
    sens = (torch.softmax(log_w.double(), 1) * g).sum(1)
    assert s.dnll_dlogz == pytest.approx(-float(sens.mean()), rel=1e-13)


class Float64Weights(torch.nn.Module):
    """A float64 model that uses x as it comes (a float32 x would not multiply its buffer)."""

    num_layers, latent_dim = 1, 1

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.full((2, 1), 0.5, dtype=torch.float64))

    def log_weights(self, x, k, generator=None, *, noise=None):
        return (x @ self.w).expand(-1, noise.shape[2]) + noise[:, 0, :, 0]


def test_iwae_hands_the_data_over_in_the_model_dtype():
    x = torch.tensor([[1.0, 3.0], [0.0, -2.0]])  # float32
    ll = iwae_log_likelihood(Float64Weights(), x, k=4, seed=0)
    assert torch.equal(ll, iwae_log_likelihood(Float64Weights(), x.double(), k=4, seed=0))
