"""Figures for the metric reports: drawn by matplotlib's Agg backend (no display, no pyplot global state) and written
atomically as PNG."""
from libs.fileio import atomic_open


def new_figure(width: float = 4.5, height: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str) -> None:
    fig.tight_layout()
    with atomic_open(path) as f:
        fig.savefig(f, format='png', dpi=100)
