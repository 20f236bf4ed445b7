"""The paper's 2-D illustrative example (Bauer & Mnih 2019, Sec. 3, Fig. 2-style).

* :mod:`.targets` -- the 2-D target densities (``sample``, ``log_prob``);
* :mod:`.fit`     -- maximum-likelihood fitting of LARS / flow priors to samples (Eq. 5);
* :mod:`.figure`  -- plotting only;
* :func:`make_figure` -- the pipeline's step: fit, plot, return a per-target summary;
* :mod:`.mog` / :func:`mog_experiment` -- Fig. 2 / D.3 / D.4: LARS, RealNVP and LARS over a
  joint RealNVP fitted to a 2-D mixture of Gaussians, KL(q || p) table and figure.
"""

from .example import make_figure
from .figure import Row, grid_panels, plot_rows
from .fit import FitHistory, average_log_likelihood, fit_density, install_high_precision_z
from .mog import mog_experiment, paper_mixture
from .targets import TARGETS, Target2D, get_target

__all__ = [
    "make_figure",
    "mog_experiment",
    "paper_mixture",
    "TARGETS",
    "Target2D",
    "get_target",
    "FitHistory",
    "fit_density",
    "average_log_likelihood",
    "install_high_precision_z",
    "Row",
    "grid_panels",
    "plot_rows",
]
