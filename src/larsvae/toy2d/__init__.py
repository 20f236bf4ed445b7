"""The paper's 2-D illustrative example (Bauer & Mnih 2019, Sec. 3, Fig. 2-style).

* :mod:`.targets` -- the 2-D target densities (``sample``, ``log_prob``);
* :mod:`.fit`     -- maximum-likelihood fitting of LARS / flow priors to samples (Eq. 5);
* :mod:`.figure`  -- plotting only;
* :func:`make_figure` -- the pipeline's step: fit, plot, return a per-target summary.
"""

from .example import make_figure
from .figure import Row, grid_panels, plot_rows
from .fit import FitHistory, average_log_likelihood, fit_density, install_high_precision_z
from .targets import TARGETS, Target2D, get_target

__all__ = [
    "make_figure",
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
