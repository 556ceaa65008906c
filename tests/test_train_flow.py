"""Flow matching: interpolation and target, timestep sampling with shift, loss weighting, config errors."""

import pytest
import torch

from train.flow import FlowMatching, flow_loss, noisy_latents


def test_interpolation_and_target():
    x0, noise = torch.randn(2, 3, 4, 5, 5), torch.randn(2, 3, 4, 5, 5)
    sig = torch.tensor([0.0, 1.0])
    xt, target = noisy_latents(x0, noise, sig)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[1], noise[1])
    torch.testing.assert_close(target, noise - x0)
    # Integrating the exact velocity from t=1 to t=0 recovers x0.
    xt, _ = noisy_latents(x0, noise, torch.tensor([0.3, 0.7]))
    torch.testing.assert_close(xt - torch.tensor([0.3, 0.7]).view(-1, 1, 1, 1, 1) * (noise - x0), x0)


@pytest.mark.parametrize("sampling", ["logit_normal", "uniform", "mode"])
def test_sigmas_in_range_and_reproducible(sampling):
    fm = FlowMatching(sampling=sampling)
    a = fm.sample_sigmas(4096, torch.Generator().manual_seed(1))
    b = fm.sample_sigmas(4096, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and (a > 0).all() and (a < 1).all()


def test_shift_moves_mass_to_high_noise():
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = FlowMatching(shift=1.0).sample_sigmas(8192, g())
    shifted = FlowMatching(shift=5.0).sample_sigmas(8192, g())
    assert shifted.mean() > plain.mean() + 0.2
    u = plain
    torch.testing.assert_close(shifted, 5 * u / (1 + 4 * u))


def test_logit_normal_is_centred():
    s = FlowMatching().sample_sigmas(20000, torch.Generator().manual_seed(0))
    assert abs(s.median().item() - 0.5) < 0.02


def test_weights_and_loss():
    sig = torch.tensor([0.1, 0.5, 0.9])
    assert torch.equal(FlowMatching().loss_weight(sig), torch.ones(3))
    assert FlowMatching(weighting="sigma_sqrt").loss_weight(sig)[0] == pytest.approx(100.0)
    w = FlowMatching(weighting="cosmap").loss_weight(sig)
    assert w[1] > w[0] and w[1] > w[2]
    pred, target = torch.zeros(3, 4), torch.ones(3, 4)
    assert flow_loss(pred, target, torch.tensor([1.0, 2.0, 3.0])).item() == pytest.approx(2.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sampling="beta"), "train.timestep_sampling"),
        (dict(weighting="snr"), "train.loss_weighting"),
        (dict(shift=0), "shift"),
        (dict(sigma_range=(0.5, 0.5)), "train.timestep_range"),
        (dict(sigma_range=(-0.1, 0.5)), "train.timestep_range"),
    ],
)
def test_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FlowMatching(**kwargs)


@pytest.mark.parametrize("lo, hi", [(0.875, 1.0), (0.0, 0.875), (0.2, 0.3)])
def test_sigma_range_keeps_the_distribution_shape(lo, hi):
    """A Wan2.2 expert's share: every draw inside [lo, hi], reproducible, and distributed as the full distribution
    conditioned on the range (rejection, not rescaling)."""
    fm = FlowMatching(shift=3.0, sigma_range=(lo, hi))
    a = fm.sample_sigmas(4096, torch.Generator().manual_seed(5))
    assert torch.equal(a, fm.sample_sigmas(4096, torch.Generator().manual_seed(5)))
    assert a.shape == (4096,) and (a >= lo).all() and (a <= hi).all()
    full = FlowMatching(shift=3.0).sample_sigmas(400_000, torch.Generator().manual_seed(6))
    inside = full[(full >= lo) & (full <= hi)]
    for q in (0.1, 0.5, 0.9):
        assert a.quantile(q).item() == pytest.approx(inside.quantile(q).item(), abs=0.02 * (hi - lo))
    # The full range draws exactly what it drew before the option existed.
    assert torch.equal(FlowMatching(shift=3.0, sigma_range=(0.0, 1.0)).sample_sigmas(64, torch.Generator().manual_seed(7)),
                       FlowMatching(shift=3.0).sample_sigmas(64, torch.Generator().manual_seed(7)))  # fmt: skip


def test_sigma_range_the_distribution_never_reaches_is_named():
    with pytest.raises(ValueError, match=r"train.timestep_range=\[0.0, 1e-09\].*almost never"):
        FlowMatching(sigma_range=(0.0, 1e-9)).sample_sigmas(2, torch.Generator().manual_seed(0))
