"""PNG figures without a display: pyplot on the Agg backend, imported on first use, and an atomic save."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from cocoracle.atomic import atomic_path


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend; imported here only, when a step first draws."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_png(fig: Any, path: str | Path, top: float = 1.0) -> None:
    """Lay out the figure below `top` (a fraction of its height), write it as a PNG atomically and free it."""
    fig.tight_layout(rect=(0, 0, 1, top))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    pyplot().close(fig)
