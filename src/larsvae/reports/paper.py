"""Published test NLLs (nats) of Bauer & Mnih (AISTATS 2019), Table 1.

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
