"""Reports: Table 1 (ours beside the paper's), the main-job summary, metrics and figures.

Used by the workflow's report step (``larsvae report``, :func:`larsvae.steps.report`)."""

from .figures import plot_training_curves, read_curve
from .paper import PAPER_TABLE1, paper_nll
from .table1 import load_results, metrics, render_main, render_table1

__all__ = [
    "PAPER_TABLE1",
    "paper_nll",
    "load_results",
    "metrics",
    "render_main",
    "render_table1",
    "plot_training_curves",
    "read_curve",
]
