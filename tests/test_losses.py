"""Loss terms: hinge GAN values, pixel MSE, total variation, VGG19 content/style (random small VGG)."""
from __future__ import annotations

import copy

import pytest
import torch

from dfdcore.arch.vgg import VGGFeatures
from dfdcore.training.losses import PerceptualLoss, hinge_d_loss, hinge_g_loss, pixel_loss, tv_loss

SIZE = 32


def test_hinge_values_single_scale():
    real, fake = [torch.tensor([[2.0], [0.5]])], [torch.tensor([[-2.0], [0.5]])]
    # D: mean(relu(1 − [2, 0.5])) = 0.25, mean(relu(1 + [−2, 0.5])) = 0.75; G: −mean([−2, 0.5]) = 0.75.
    assert hinge_d_loss(real, fake).item() == pytest.approx(1.0)
    assert hinge_g_loss(fake).item() == pytest.approx(0.75)


def test_hinge_sums_over_scales():
    real = [torch.tensor([2.0, 0.5]), torch.tensor([0.0, 0.0, 0.0, 3.0])]
    fake = [torch.tensor([-2.0, 0.5]), torch.tensor([1.0, -1.0, -1.0, -1.0])]
    # scale 2: real mean(relu(1 − r)) = 3/4, fake mean(relu(1 + f)) = 2/4.
    assert hinge_d_loss(real, fake).item() == pytest.approx(1.0 + 0.75 + 0.5)
    assert hinge_g_loss(fake).item() == pytest.approx(0.75 + 0.5)


def test_hinge_rejects_mismatched_or_empty_scales():
    with pytest.raises(ValueError, match="2 real and 1 fake"):
        hinge_d_loss([torch.zeros(1), torch.zeros(1)], [torch.zeros(1)])
    with pytest.raises(ValueError):
        hinge_g_loss([])


def test_hinge_gradient_signs():
    fake = torch.tensor([-2.0, 0.5], requires_grad=True)
    hinge_d_loss([torch.tensor([2.0, 0.5])], [fake]).backward()
    assert fake.grad.tolist() == [0.0, 0.5]  # only the fake score above −1 is pushed down


def test_pixel_loss_is_mse():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 8, 8, generator=gen), torch.rand(2, 3, 8, 8, generator=gen)
    torch.testing.assert_close(pixel_loss(a, b), ((a - b) ** 2).sum() / a.numel())
    with pytest.raises(ValueError, match="same shape"):
        pixel_loss(a, b[:1])


def test_tv_loss_values():
    assert tv_loss(torch.full((2, 3, 5, 7), 0.3)).item() == 0.0
    pattern = torch.tensor([[0.0, 1.0, 0.0], [2.0, 2.0, 2.0]]).view(1, 1, 2, 3)
    # vertical: (4 + 1 + 4) / (1·1·3) = 3; horizontal: (1 + 1 + 0 + 0) / (1·2·2) = 0.5; 2·(3 + 0.5)/1 = 7.
    assert tv_loss(pattern).item() == pytest.approx(7.0)
    assert tv_loss(pattern, weight=0.5).item() == pytest.approx(3.5)
    assert tv_loss(pattern.repeat(4, 1, 1, 1)).item() == pytest.approx(7.0)  # divided by the batch
    with pytest.raises(ValueError):
        tv_loss(torch.zeros(1, 3, 1, 4))


@pytest.fixture(scope="module")
def vgg() -> VGGFeatures:
    torch.manual_seed(0)
    return VGGFeatures(width=8)


@pytest.fixture(scope="module")
def perceptual(vgg) -> PerceptualLoss:
    return PerceptualLoss(vgg)


def _faces(batch: int = 2, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, SIZE, SIZE, generator=gen) * 2 - 1


def _reference_taps(vgg: VGGFeatures, x: torch.Tensor) -> list[torch.Tensor]:
    """relu1_1, relu2_1, relu3_1, relu4_1 of an independent copy of the VGG."""
    layers = copy.deepcopy(vgg.model.features)
    h = ((x + 1) / 2 - vgg.RGB_mean.detach()) / vgg.RGB_std.detach()
    taps = []
    for i in range(21):
        h = layers[i](h)
        if i in (1, 6, 11, 20):
            taps.append(h.clone())
    return taps


def test_perceptual_shares_and_freezes_the_vgg(vgg, perceptual):
    assert len(perceptual.layers) == 21  # stops after relu4_1
    assert perceptual.layers[0].weight is vgg.model.features[0].weight
    assert perceptual.layers[19].weight is vgg.model.features[19].weight
    assert perceptual.RGB_mean is vgg.RGB_mean
    assert all(not p.requires_grad for p in perceptual.parameters())
    perceptual.train()
    assert not any(m.training for m in perceptual.layers.modules())


def test_perceptual_zero_for_identical_and_positive_for_different(perceptual):
    x = _faces()
    content, style = perceptual(x, x.clone())
    assert content.item() == 0.0 and style.item() == 0.0
    content, style = perceptual(x, _faces(seed=2))
    assert content.item() > 0 and style.item() > 0


def test_perceptual_grows_with_noise(perceptual):
    x = _faces()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    values = [perceptual(x + a * noise, x) for a in (0.05, 0.2, 0.5)]
    contents, styles = [c.item() for c, _ in values], [s.item() for _, s in values]
    assert contents == sorted(contents) and contents[0] < contents[-1], contents
    assert styles == sorted(styles) and styles[0] < styles[-1], styles


def test_perceptual_terms_match_explicit_computation(vgg, perceptual):
    restored, target = _faces(seed=4), _faces(seed=5)
    content, style = perceptual(restored, target)
    taps_r, taps_t = _reference_taps(vgg, restored), _reference_taps(vgg, target)
    assert [t.shape[1:] for t in taps_r] == [(8, 32, 32), (16, 16, 16), (32, 8, 8), (64, 4, 4)]
    want_content = want_style = 0.0
    for w, fr, ft in zip((1 / 8, 1 / 4, 1 / 2, 1), taps_r, taps_t):
        b, c, h, wd = fr.shape
        want_content += w * ((fr - ft) ** 2).sum().item() / (b * c * h * wd)
        grams = []
        for f in (fr, ft):
            grams.append(torch.stack([f[i].reshape(c, h * wd) @ f[i].reshape(c, h * wd).T for i in range(b)]))
        want_style += ((grams[0] - grams[1]) ** 2).mean().item() / (b * c * h * wd)
    assert content.item() == pytest.approx(want_content, rel=1e-4)
    assert style.item() == pytest.approx(want_style, rel=1e-4)


def test_perceptual_layer_weights(vgg):
    restored, target = _faces(seed=6), _faces(seed=7)
    only_last = PerceptualLoss(vgg, layer_weights=(0, 0, 0, 1))
    taps_r, taps_t = _reference_taps(vgg, restored), _reference_taps(vgg, target)
    want = ((taps_r[3] - taps_t[3]) ** 2).mean().item()
    assert only_last(restored, target)[0].item() == pytest.approx(want, rel=1e-4)
    with pytest.raises(ValueError, match="4 layer weights"):
        PerceptualLoss(vgg, layer_weights=(1, 1))


def test_perceptual_gradients_and_vgg_untouched(vgg, perceptual):
    state = {k: v.clone() for k, v in vgg.state_dict().items()}
    flags = {k: p.requires_grad for k, p in vgg.named_parameters()}
    probe = _faces(seed=8)
    with torch.no_grad():
        before = [t.clone() for t in vgg(probe)]
    restored = _faces(seed=9).requires_grad_()
    target = _faces(seed=10).requires_grad_()
    content, style = perceptual(restored, target)
    (content + style).backward()
    assert restored.grad is not None and restored.grad.abs().sum() > 0
    assert target.grad is None
    assert all(p.grad is None for p in vgg.parameters())
    for k, v in vgg.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert {k: p.requires_grad for k, p in vgg.named_parameters()} == flags
    with torch.no_grad():
        after = vgg(probe)
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_perceptual_rejects_bad_inputs(vgg, perceptual):
    with pytest.raises(ValueError, match="same shape"):
        perceptual(_faces(), _faces(batch=1))
    with pytest.raises(ValueError, match=r"\(B, 3, S, S\)"):
        perceptual(torch.zeros(1, 1, SIZE, SIZE), torch.zeros(1, 1, SIZE, SIZE))
    with pytest.raises(TypeError):
        PerceptualLoss(torch.nn.Identity())
