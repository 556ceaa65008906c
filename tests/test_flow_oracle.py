"""Flow matching against independent oracles: diffusers' SD3 training utilities for the timestep densities and loss
weights, a direct masked mean for the loss, and a replay of the step's draws for the training loss.

Each test names the wrong line it would catch; a tiny model trains under all of them without a visible error.
"""

import math

import pytest
import torch
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from radial.models import ModelAdapter
from train.flow import FlowMatching, flow_loss, noisy_latents
from train.step import conditions_of, flow_matching_loss, input_dtype, step_generator

LOW, HIGH = 1e-5, 1 - 1e-5  # the clamp of u before the shift (log(0) and division by zero in the weights)


@pytest.mark.parametrize(
    "sampling, kwargs",
    [
        ("logit_normal", dict(logit_mean=0.7, logit_std=1.3)),
        ("logit_normal", dict(logit_mean=-0.4, logit_std=0.6)),
        ("mode", dict(mode_scale=1.29)),
        ("mode", dict(mode_scale=0.5)),
        ("uniform", {}),
    ],
)
def test_sampling_equals_diffusers_sd3_density(sampling, kwargs):
    """Guards the densities' formulas (mean and std of the logit-normal, mode sampling's cosine term, which branch
    a name takes): the draws equal diffusers' compute_density_for_timestep_sampling from the same generator state."""
    ours = FlowMatching(sampling=sampling, **kwargs).sample_sigmas(4096, torch.Generator().manual_seed(3))
    ref = compute_density_for_timestep_sampling(sampling, 4096, generator=torch.Generator().manual_seed(3), **kwargs)
    # randn * std + mean here, torch.normal(mean, std) there: the same numbers up to one rounding of the product.
    torch.testing.assert_close(ours, ref.clamp(LOW, HIGH), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_draws_are_clamped_away_from_0_and_1(shift):
    """Guards `u.clamp(1e-5, 1 - 1e-5)`: a wide logit-normal saturates to exactly 0 and 1 in float32, which the clamp
    keeps inside (0, 1) (sigma 0 or 1 has no velocity to learn, and sigma_sqrt weights divide by it)."""
    s = FlowMatching(logit_std=60.0, shift=shift).sample_sigmas(4096, torch.Generator().manual_seed(0))
    u = torch.tensor([LOW, HIGH])  # float32, as the draws
    lo, hi = shift * u / (1 + (shift - 1) * u)
    assert (s >= lo).all() and (s <= hi).all()
    assert (s == lo).sum() > 100 and (s == hi).sum() > 100  # the bounds themselves are reached


@pytest.mark.parametrize("lo, hi", [(LOW, 0.5), (0.5, HIGH)])
def test_timestep_range_keeps_its_bounds(lo, hi):
    """Guards the inclusive `>= lo` / `<= hi` of train.timestep_range: draws that land exactly on a bound (here the
    clamp value, reached by most draws of a wide logit-normal) are kept."""
    s = FlowMatching(logit_std=60.0, sigma_range=(lo, hi)).sample_sigmas(256, torch.Generator().manual_seed(1))
    bound = torch.tensor(lo if lo == LOW else hi)
    assert (s == bound).sum() > 50


def test_timestep_range_draws_no_more_than_it_needs():
    """Guards `kept.numel() >= batch`: when the first draw already has enough noise levels inside the range, no
    further numbers are taken from the generator (the noise drawn next from it must not depend on the range)."""
    fm = FlowMatching(sampling="uniform", sigma_range=(0.0, 0.99999))
    g = torch.Generator().manual_seed(4)
    first = FlowMatching(sampling="uniform").sample_sigmas(8, torch.Generator().manual_seed(4))
    assert (first <= 0.99999).all()
    assert torch.equal(fm.sample_sigmas(8, g), first)
    ref = torch.Generator().manual_seed(4)
    torch.rand(8, generator=ref)
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=ref))


@pytest.mark.parametrize("weighting", ["sigma_sqrt", "cosmap"])
def test_loss_weights_equal_diffusers_sd3(weighting):
    """Guards the weighting formulas: equal to diffusers' compute_loss_weighting_for_sd3 (sigma_sqrt capped at 1e4,
    which diffusers does not cap: compared where the cap does not bite, and the cap itself exactly)."""
    sig = torch.linspace(0.02, 0.98, 49)
    torch.testing.assert_close(
        FlowMatching(weighting=weighting).loss_weight(sig), compute_loss_weighting_for_sd3(weighting, sig)
    )
    if weighting == "sigma_sqrt":
        assert FlowMatching(weighting=weighting).loss_weight(torch.tensor([1e-3]))[0].item() == 1e4  # fmt: skip


def test_loss_is_the_weighted_mean_of_per_sample_mse():
    """Guards the per-sample mean and the sign of the error: samples with different errors and weights give
    sum_i w_i * mean((pred_i - target_i)^2) / B."""
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 2, 4, generator=g), torch.randn(3, 2, 4, generator=g) * 2
    w = torch.tensor([0.5, 1.0, 3.0])
    expected = sum(w[i] * ((pred[i] - target[i]) ** 2).mean() for i in range(3)) / 3
    torch.testing.assert_close(flow_loss(pred, target, w), expected)


def test_masked_loss_averages_over_the_masked_in_elements():
    """Guards the masked mean (Wan2.2 TI2V's clean first frame left out): per sample, the mean of the squared error
    over the elements where the mask is 1, the mask broadcast over channels; a sample masked out entirely adds 0."""
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(3, 4, 5, 2, 2, generator=g), torch.randn(3, 4, 5, 2, 2, generator=g)
    mask = torch.ones(3, 1, 5, 1, 1)
    mask[0, :, 0] = 0  # sample 0: first frame clean
    mask[1, :, :3] = 0  # sample 1: three frames clean
    mask[2] = 0  # sample 2: nothing to learn
    w = torch.tensor([1.0, 2.0, 4.0])
    err = (pred - target) ** 2
    per = [err[0, :, 1:].mean(), err[1, :, 3:].mean(), torch.tensor(0.0)]
    expected = sum(w[i] * per[i] for i in range(3)) / 3
    torch.testing.assert_close(flow_loss(pred, target, w, mask), expected)


def test_noisy_latents_keep_the_latents_dtype():
    """Guards the cast of t to the latents' dtype: bf16 latents give bf16 x_t (an fp32 t would upcast the model
    input and double its memory)."""
    x0 = torch.randn(2, 3, 4, dtype=torch.bfloat16)
    xt, target = noisy_latents(x0, torch.randn_like(x0), torch.tensor([0.3, 0.6]))
    assert xt.dtype == torch.bfloat16 and target.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(logit_std=0.0), "train.logit_std=0.0: expected > 0"),
        (dict(sigma_range=(0.5, 1.5)), r"train.timestep_range=\[0.5, 1.5\]: expected \[lo, hi\] noise levels with 0 <= lo < hi <= 1"),
        (dict(sigma_range=(0.8, 0.2)), r"train.timestep_range=\[0.8, 0.2\]: expected \[lo, hi\] noise levels with 0 <= lo < hi <= 1 \(reversed\? train.timestep_range=\[0.2,0.8\]\)"),
        (dict(sampling="beta"), r"train.timestep_sampling='beta': expected one of \['logit_normal', 'uniform', 'mode'\]"),
        (dict(weighting="snr"), r"train.loss_weighting='snr': expected one of \['none', 'sigma_sqrt', 'cosmap'\]"),
        (dict(shift=-1.0), r"model.flow_shift=-1.0: expected > 0"),
        (dict(distill_guidance=0.5), r"train.distill_guidance=0.5: expected >= 1 \(1 = off\)"),
        # the "reversed?" hint exactly where swapping the two would give a valid range (its bounds included)
        (dict(sigma_range=(0.8, 0.0)), r"train.timestep_range=\[0.8, 0.0\]: expected \[lo, hi\] noise levels with 0 <= lo < hi <= 1 \(reversed\? train.timestep_range=\[0.0,0.8\]\)"),
        (dict(sigma_range=(1.0, 0.2)), r"train.timestep_range=\[1.0, 0.2\]: expected \[lo, hi\] noise levels with 0 <= lo < hi <= 1 \(reversed\? train.timestep_range=\[0.2,1.0\]\)"),
        (dict(sigma_range=(0.5, 0.5)), r"train.timestep_range=\[0.5, 0.5\]: expected \[lo, hi\] noise levels with 0 <= lo < hi <= 1"),
        (dict(sigma_range=(1.5, 0.2)), r"train.timestep_range=\[1.5, 0.2\]: expected \[lo, hi\] noise levels with 0 <= lo < hi <= 1"),
    ],
)  # fmt: skip
def test_bad_values_name_the_key_and_value(kwargs, match):
    """Guards each check and its whole message (key, what is expected, the value given)."""
    with pytest.raises(ValueError, match=f"^{match}$"):
        FlowMatching(**kwargs)


class EchoAdapter(ModelAdapter):
    """An adapter whose model returns its input: records what the training step hands it."""

    family = "wan"  # its spec: no streams denoised beside the video

    def __init__(self):
        self.calls = []

    def predict(self, model, latents, timestep, conditions):
        self.calls.append((latents, timestep))
        return latents


@pytest.mark.parametrize("masked", [False, True])
def test_training_loss_replays_from_the_generator(masked):
    """Guards train/step.py: sigma then noise drawn from the generator, x_t = (1 - t) x0 + t noise given to the model
    in the model's dtype at timestep 1000 t, the loss against noise - x0 with the flow's weights and the
    conditions' first_frame_mask."""
    flow = FlowMatching(weighting="cosmap", shift=2.0)
    x0 = torch.randn(2, 3, 4, 2, 2, generator=torch.Generator().manual_seed(7))
    mask = torch.ones(2, 1, 4, 1, 1)
    mask[:, :, 0] = 0
    conditions = {"first_frame_mask": mask} if masked else {}
    adapter = EchoAdapter()
    loss = flow_matching_loss(adapter, None, flow, x0, conditions, torch.Generator().manual_seed(9), torch.bfloat16)
    g = torch.Generator().manual_seed(9)
    sigma = flow.sample_sigmas(2, g)
    noise = torch.randn(x0.shape, generator=g)
    t = sigma.view(-1, 1, 1, 1, 1)
    xt = ((1 - t) * x0 + t * noise).to(torch.bfloat16)
    (seen_latents, seen_t), = adapter.calls  # fmt: skip
    assert seen_latents.dtype == torch.bfloat16 and torch.equal(seen_latents, xt)
    torch.testing.assert_close(seen_t, sigma * 1000, rtol=0, atol=0)
    expected = flow_loss(xt, noise - x0, flow.loss_weight(sigma), mask if masked else None)
    assert math.isfinite(loss.item())
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)


def test_conditions_of_a_batch():
    """Guards conditions_of: the batch less latents / meta / cursor, on the device; floating tensors in the model's
    dtype, integer masks kept as they are, other values untouched; no dtype given keeps every dtype."""
    batch = {
        "latents": torch.zeros(1),
        "meta": [{"key": "a"}],
        "cursor": 3,
        "prompt_embeds": torch.ones(1, 2, dtype=torch.bfloat16),
        "prompt_attention_mask": torch.ones(1, 2, dtype=torch.int64),
        "guidance": 4.0,
    }
    got = conditions_of(batch, torch.device("cpu"), torch.float32)
    assert set(got) == {"prompt_embeds", "prompt_attention_mask", "guidance"}
    assert got["prompt_embeds"].dtype == torch.float32 and got["prompt_attention_mask"].dtype == torch.int64
    assert got["guidance"] == 4.0
    on = conditions_of(batch, torch.device("meta"), torch.float32)  # meta stands in for a GPU
    assert on["prompt_embeds"].device.type == on["prompt_attention_mask"].device.type == "meta"
    assert conditions_of(batch, torch.device("meta"))["prompt_embeds"].device.type == "meta"
    kept = conditions_of(batch, torch.device("cpu"))
    assert kept["prompt_embeds"].dtype == torch.bfloat16 and torch.equal(
        kept["prompt_attention_mask"], batch["prompt_attention_mask"]
    )


def test_input_dtype_is_the_frozen_weights():
    """Guards input_dtype: the dtype of the frozen (base) weights; fp32 when every weight trains (train.mode=full)."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0].to(torch.bfloat16).requires_grad_(False)
    assert input_dtype(model) == torch.bfloat16
    model[0].requires_grad_(True)
    assert input_dtype(model) == torch.float32


def test_full_range_of_bounds_draws_exactly_the_unrestricted_noise_levels():
    """Guards the inclusive bounds of the first draw: with the range at the clamp values, every draw is inside it
    (most on a bound, from a wide logit-normal), so the range changes nothing: the same values in the same order."""
    fm = FlowMatching(logit_std=60.0, sigma_range=(LOW, HIGH))
    free = FlowMatching(logit_std=60.0).sample_sigmas(256, torch.Generator().manual_seed(2))
    assert ((free == torch.tensor(LOW)) | (free == torch.tensor(HIGH))).sum() > 100
    assert torch.equal(fm.sample_sigmas(256, torch.Generator().manual_seed(2)), free)


@pytest.mark.parametrize("lo, hi", [(LOW, 0.5), (0.5, HIGH)])
def test_redraws_keep_their_bounds_too(lo, hi):
    """Guards the inclusive bounds of the redraws: about half of a wide logit-normal's first draw falls outside a
    half range, so most of the result comes from redraws, and those keep the draws on the bound (84% of the draws
    inside either half sit on its clamp value; a redraw that dropped them would leave about half)."""
    s = FlowMatching(logit_std=60.0, sigma_range=(lo, hi)).sample_sigmas(512, torch.Generator().manual_seed(1))
    bound = torch.tensor(lo if lo == LOW else hi)
    assert (s == bound).float().mean() > 0.75


def test_noise_levels_and_loss_stay_on_the_latents_device():
    """Guards every `.to(device)` of the step and of sample_sigmas: drawn on the CPU, everything the model sees and
    the loss land on the latents' device (the meta device stands in for a GPU here: mixing it with CPU tensors
    fails)."""
    assert FlowMatching().sample_sigmas(4, torch.Generator().manual_seed(0), device="meta").device.type == "meta"
    x0 = torch.empty(2, 3, 4, 2, 2, device="meta")
    adapter = EchoAdapter()
    loss = flow_matching_loss(adapter, None, FlowMatching(), x0, {}, torch.Generator().manual_seed(0), torch.float32)
    ((latents, timestep),) = adapter.calls
    assert loss.device.type == latents.device.type == timestep.device.type == "meta"


def test_masked_loss_of_a_single_element():
    """Guards the masked mean's divisor (clamped at 1 only so that an empty mask gives 0): one masked-in element's
    loss is its own squared error."""
    pred, target = torch.zeros(1, 1, 2, 1, 1), torch.tensor([3.0, 5.0]).view(1, 1, 2, 1, 1)
    mask = torch.tensor([0.0, 1.0]).view(1, 1, 2, 1, 1)
    assert flow_loss(pred, target, torch.ones(1), mask).item() == 25.0


class GuidedJointAdapter(ModelAdapter):
    """An adapter for a family with a sound track (h3) whose prediction depends on the LoRA being on (a scale read
    from a one-weight PEFT model) and on the text states: records every call."""

    family = "h3"

    def __init__(self):
        self.calls = []

    def predict_joint(self, model, latents, timestep, conditions):
        scale = model(torch.ones(1, 1)).reshape(())
        text = conditions["prompt_embeds"].float().mean()
        self.calls.append({"latents": latents, "timestep": timestep, "scale": scale, "conditions": dict(conditions)})
        preds = {"audio_latents": conditions["audio_latents"].float() * scale - text}
        return latents.float() * scale + text, preds


def _one_weight_lora_model() -> torch.nn.Module:
    """nn.Linear(1, 1) with weight 1 and a LoRA that adds 0.5: 1.0 with the LoRA off, 1.5 with it on."""
    from peft import LoraConfig, inject_adapter_in_model

    model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False))
    torch.nn.init.ones_(model[0].weight)
    model = inject_adapter_in_model(LoraConfig(r=1, lora_alpha=1, target_modules=["0"]), model)
    torch.nn.init.ones_(model[0].lora_A["default"].weight)
    torch.nn.init.constant_(model[0].lora_B["default"].weight, 0.5)
    return model


@pytest.mark.parametrize("w", [1.0, 3.0])
def test_joint_streams_and_distill_guidance_replay_from_the_generator(w):
    """Guards the sound track and train.distill_guidance in train/step.py: the track's noise drawn after the video's
    from the same generator, noised at the same t, its loss added; with w > 1 both targets become u + w (target - u),
    u the prediction with the LoRA off and the unconditional text states, and the tuned forward sees the prompt's."""
    flow = FlowMatching(weighting="sigma_sqrt", shift=3.0, distill_guidance=w)
    gen = torch.Generator().manual_seed(3)
    x0, audio = torch.randn(2, 3, 4, 2, 2, generator=gen), torch.randn(2, 5, 7, generator=gen)
    cond = {"prompt_embeds": torch.full((2, 4, 8), 0.25), "audio_latents": audio}
    uncond = {"prompt_embeds": torch.full((2, 4, 8), -0.75)}
    adapter, model = GuidedJointAdapter(), _one_weight_lora_model()
    loss = flow_matching_loss(adapter, model, flow, x0, cond, torch.Generator().manual_seed(9), torch.float32, uncond)

    g = torch.Generator().manual_seed(9)
    sigma = flow.sample_sigmas(2, g)
    noise, audio_noise = torch.randn(x0.shape, generator=g), torch.randn(audio.shape, generator=g)
    t, ta = sigma.view(-1, 1, 1, 1, 1), sigma.view(-1, 1, 1)
    xt, at = (1 - t) * x0 + t * noise, (1 - ta) * audio + ta * audio_noise
    target, audio_target = noise - x0, audio_noise - audio
    if w != 1.0:
        base, tuned = adapter.calls
        assert base["scale"].item() == 1.0 and torch.equal(base["conditions"]["prompt_embeds"], uncond["prompt_embeds"])
        assert torch.equal(base["conditions"]["audio_latents"], at) and torch.equal(base["latents"], xt)
        torch.testing.assert_close(base["timestep"], sigma * 1000, rtol=0, atol=0)
        u, ua = xt * 1.0 - 0.75, at * 1.0 + 0.75
        target, audio_target = u + w * (target - u), ua + w * (audio_target - ua)
    else:
        (tuned,) = adapter.calls
    assert tuned["scale"].item() == 1.5 and torch.equal(tuned["conditions"]["prompt_embeds"], cond["prompt_embeds"])
    assert torch.equal(tuned["latents"], xt) and torch.equal(tuned["conditions"]["audio_latents"], at)
    torch.testing.assert_close(tuned["timestep"], sigma * 1000, rtol=0, atol=0)
    weight = flow.loss_weight(sigma)
    expected = flow_loss(xt * 1.5 + 0.25, target, weight) + flow_loss(at * 1.5 - 0.25, audio_target, weight)
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)
    assert torch.equal(cond["audio_latents"], audio)  # the caller's batch is not noised in place


def test_distill_guidance_needs_the_unconditional_text():
    flow = FlowMatching(distill_guidance=2.0)
    with pytest.raises(ValueError) as e:
        flow_matching_loss(EchoAdapter(), None, flow, torch.zeros(1, 1, 1, 1, 1), {}, torch.Generator(), torch.float32)
    assert str(e.value) == "train.distill_guidance > 1 needs the unconditional text states (uncond_text)"


def test_step_generator_is_the_documented_seed_of_each_micro_step():
    """Guards step_generator: a resumed run (or one on another device type) must draw the same noise for the same
    (seed, step, micro-step, rank), so the seed is pinned to its derivation (SHA-256 of "seed/step/micro/rank",
    first 8 bytes little-endian, 63 bits); each of the four changes the draw."""
    import hashlib

    def documented(seed, step, micro, rank):
        digest = hashlib.sha256(f"{seed}/{step}/{micro}/{rank}".encode()).digest()
        return int.from_bytes(digest[:8], "little") & (2**63 - 1)

    args = [(0, 0, 0, 0), (7, 12, 1, 3), (7, 12, 1, 2), (7, 12, 0, 3), (7, 11, 1, 3), (6, 12, 1, 3)]
    for a in args:
        g = step_generator(*a)
        assert g.device.type == "cpu" and g.initial_seed() == documented(*a), a
    draws = {a: tuple(torch.randn(4, generator=step_generator(*a)).tolist()) for a in args}
    assert len(set(draws.values())) == len(args)
    assert draws[(7, 12, 1, 3)] == tuple(torch.randn(4, generator=step_generator(7, 12, 1, 3)).tolist())


class JointEchoAdapter(ModelAdapter):
    """An h3-family adapter whose model returns its inputs (the video and the sound track): records every call."""

    family = "h3"

    def __init__(self):
        self.calls = []

    def predict_joint(self, model, latents, timestep, conditions):
        self.calls.append((latents, timestep, conditions["audio_latents"]))
        return latents, {"audio_latents": conditions["audio_latents"]}


def test_sound_track_and_guidance_on_the_latents_device_in_the_model_dtype():
    """Guards the `.to(device)` / `.to(model_dtype)` of the sound track and of the guidance pass: both forwards get
    bf16 inputs and the timestep on the latents' device (meta standing in for a GPU), and the loss lands there."""
    x0 = torch.empty(2, 3, 4, 2, 2, device="meta")
    cond = {"audio_latents": torch.empty(2, 5, 7, device="meta"), "prompt_embeds": torch.empty(2, 4, 8, device="meta")}
    uncond = {"prompt_embeds": torch.empty(2, 4, 8, device="meta")}
    adapter, flow = JointEchoAdapter(), FlowMatching(distill_guidance=2.0)
    gen = torch.Generator().manual_seed(0)
    loss = flow_matching_loss(adapter, torch.nn.Module(), flow, x0, cond, gen, torch.bfloat16, uncond)
    assert loss.device.type == "meta" and len(adapter.calls) == 2
    for latents, timestep, audio in adapter.calls:
        assert latents.device.type == timestep.device.type == audio.device.type == "meta"
        assert latents.dtype == audio.dtype == torch.bfloat16
