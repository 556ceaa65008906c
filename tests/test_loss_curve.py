"""The run's loss_curve.png (train.export.save_loss_curve): the losses and their running mean, labelled, at its size."""

import matplotlib.image
import numpy as np
import pytest

from train.export import save_loss_curve


@pytest.fixture
def drawn(monkeypatch):
    """The figures save_loss_curve draws, kept open for inspection (it closes them after saving)."""
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    return figures


@pytest.mark.parametrize("n", [4, 5, 30])
def test_loss_curve_draws_the_losses_and_their_running_mean(tmp_path, drawn, n):
    """Guards what the picture shows: the loss per step, and from 5 steps on the mean of k = max(2, n // 10)
    consecutive losses at each window's last step, drawn bolder than the faint losses; axis labels, legend; a 720x420
    PNG (6 x 3.5 in at 120 dpi)."""
    losses = [(i + 1, 1.0 / (i + 1) + 0.1 * (i % 3)) for i in range(n)]
    path = save_loss_curve(losses, tmp_path / "loss_curve.png")
    assert path == tmp_path / "loss_curve.png"
    assert matplotlib.image.imread(str(path)).shape[:2] == (420, 720)
    ((fig,),) = [drawn]
    (ax,) = fig.axes
    steps, values = np.array([s for s, _ in losses]), np.array([v for _, v in losses])
    lines = ax.get_lines()
    assert np.array_equal(lines[0].get_xdata(), steps) and np.array_equal(lines[0].get_ydata(), values)
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "flow-matching loss"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    if n < 5:
        assert len(lines) == 1 and labels == ["loss"]
        return
    k = max(2, n // 10)
    mean = np.array([values[i - k + 1 : i + 1].mean() for i in range(k - 1, n)])
    assert len(lines) == 2 and labels == ["loss", f"mean of {k}"]
    assert np.array_equal(lines[1].get_xdata(), steps[k - 1 :])
    np.testing.assert_allclose(lines[1].get_ydata(), mean, rtol=1e-12)
    assert lines[0].get_alpha() < 1 and lines[1].get_alpha() is None  # the losses faint, their mean opaque
    assert lines[0].get_linewidth() < 1 < lines[1].get_linewidth()  # and thinner than the mean
