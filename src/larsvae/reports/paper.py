"""Published numbers of Bauer & Mnih (AISTATS 2019): test NLLs (nats) of Table 1 and the
Appendix D tables.

``PAPER_TABLE1[dataset][arch] = (standard prior, LARS)``; LARS trained jointly."""

from __future__ import annotations

PAPER_TABLE1: dict[str, dict[str, tuple[float, float]]] = {
    "static_mnist": {"vae": (89.11, 86.53), "hvae": (85.91, 84.42), "convhvae": (82.63, 81.70)},
    "dynamic_mnist": {"vae": (84.97, 83.03), "hvae": (82.66, 81.62), "convhvae": (81.21, 80.30)},
    "omniglot": {"vae": (104.47, 102.63), "hvae": (101.38, 100.40), "convhvae": (97.76, 97.08)},
    "fashion_mnist": {
        "vae": (228.68, 227.45),
        "hvae": (227.40, 226.68),
        "convhvae": (226.39, 225.92),
    },
}

DATASET_LABELS = {
    "static_mnist": "staticMNIST",
    "dynamic_mnist": "dynamicMNIST",
    "omniglot": "Omniglot",
    "fashion_mnist": "FashionMNIST",
}
ARCH_LABELS = {"vae": "VAE", "hvae": "HVAE", "convhvae": "ConvHVAE"}


def paper_nll(dataset: str, arch: str, column: str) -> float | None:
    """column: 'standard' or 'lars' (joint). None where the paper has no value."""
    pair = PAPER_TABLE1.get(dataset, {}).get(arch)
    if pair is None:
        return None
    return {"standard": pair[0], "lars": pair[1]}.get(column)


# ---------------------------------------------------------------------------------------
# Appendix D (Bauer & Mnih, 2019). Single-layer VAE throughout; "nll" = test NLL, "neg_elbo"
# = the negative test ELBO, "kl" / "rec" = its KL and reconstruction terms (all nats,
# positive), "z" = the acceptance rate Z of the LARS prior (1 for a normalised prior). A key
# the paper does not give is absent.

#: Table D.1, post-hoc vs joint training: dataset -> row -> values. Rows: "standard"
#: (N(0, I) prior), "posthoc" (LARS a(z) trained on the frozen standard model), "joint"
#: (LARS trained jointly, a = MLP[100-100], T = 100).
PAPER_TABLE_D1: dict[str, dict[str, dict[str, float]]] = {
    "dynamic_mnist": {
        "standard": {"neg_elbo": 89.0, "kl": 25.8, "rec": 63.2, "z": 1.0},
        "posthoc": {"neg_elbo": 87.3, "kl": 24.1, "rec": 63.2, "z": 0.023},
        "joint": {"neg_elbo": 86.6, "kl": 24.7, "rec": 61.9, "z": 0.015},
    },
    "omniglot": {
        "standard": {"neg_elbo": 110.8, "kl": 37.2, "rec": 73.6, "z": 1.0},
        "posthoc": {"neg_elbo": 108.8, "kl": 35.2, "rec": 73.6, "z": 0.015},
        "joint": {"neg_elbo": 108.4, "kl": 35.9, "rec": 72.5, "z": 0.011},
    },
}

#: Table D.2, size of the acceptance network (dynamicMNIST, joint, T = 100):
#: acceptance_hidden -> values; None = the standard N(0, I) prior.
PAPER_TABLE_D2: dict[tuple[int, ...] | None, dict[str, float]] = {
    None: {"nll": 84.97, "z": 1.0},
    (10, 10): {"nll": 84.08, "z": 0.02},
    (50, 50): {"nll": 83.29, "z": 0.016},
    (100, 100): {"nll": 83.05, "z": 0.015},
    (50, 50, 50): {"nll": 83.09, "z": 0.015},
    (100, 100, 100): {"nll": 82.94, "z": 0.014},
}

#: Table D.6, resampled outputs (dynamicMNIST, VAE; LARS on the 784-pixel output,
#: a(x) = MLP[784-300-300-1], T = 100): row -> values.
PAPER_TABLE_D6: dict[str, dict[str, float]] = {
    "standard": {"nll": 84.97, "z": 1.0},
    "resampled prior": {"nll": 83.04, "z": 0.015},
    "resampled outputs": {"nll": 83.63, "z": 0.014},
}

#: Table D.3, truncation T (dynamicMNIST, joint, a = MLP[100-100]): T -> values;
#: None = T = inf (resampling ad infinitum, Eq. A.7).
PAPER_TABLE_D3: dict[int | None, dict[str, float]] = {
    2: {"nll": 84.60, "z": 0.19, "kl": 25.4, "rec": 63.2},
    5: {"nll": 84.11, "z": 0.12, "kl": 25.1, "rec": 63.0},
    10: {"nll": 83.71, "z": 0.08, "kl": 25.0, "rec": 62.6},
    50: {"nll": 83.24, "z": 0.03, "kl": 24.8, "rec": 62.1},
    100: {"nll": 83.05, "z": 0.014, "kl": 24.7, "rec": 61.9},
    None: {"nll": 82.67, "z": 2e-6, "kl": 24.8, "rec": 61.5},
}

#: Tables D.4 (dynamicMNIST) and D.5 (Omniglot), flow priors and proposals: dataset ->
#: prior -> values. "lars" = LARS over N(0, I); "lars_realnvp" = LARS over a jointly
#: trained RealNVP proposal (both a = MLP[100-100], T = 100). No MAF for Omniglot.
PAPER_TABLE_D45: dict[str, dict[str, dict[str, float]]] = {
    "dynamic_mnist": {
        "gaussian": {"nll": 84.97},
        "realnvp": {"nll": 81.86},
        "maf": {"nll": 81.58},
        "lars": {"nll": 83.04, "z": 0.015},
        "lars_realnvp": {"nll": 81.15, "z": 0.027},
    },
    "omniglot": {
        "gaussian": {"nll": 104.53},
        "realnvp": {"nll": 101.50},
        "lars": {"nll": 102.68, "z": 0.012},
        "lars_realnvp": {"nll": 100.56, "z": 0.018},
    },
}
