"""Multi-scale SN discriminator: score shapes, size checks, spectral norm, between-scale pooling, gradients."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from dfdcore.arch.discriminator import MultiScaleSNDiscriminator


def _sn_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _sigma_max(layer: nn.Module) -> float:
    w = layer.weight  # the parametrised (normalised) weight, as the forward uses it
    return torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2).item()


@pytest.mark.parametrize("size, dim", [(512, 4), (128, 8), (64, 8)])
def test_score_shapes(size, dim):
    torch.manual_seed(0)
    model = MultiScaleSNDiscriminator(face_size=size, dim=dim)
    with torch.no_grad():
        scores = model(torch.rand(2, 3, size, size) * 2 - 1)
    assert [tuple(s.shape) for s in scores] == [(2, 1), (8, 1), (32, 1)]
    assert all(torch.isfinite(s).all() for s in scores)


def test_branch_structure_at_512():
    model = MultiScaleSNDiscriminator(face_size=512, dim=4)
    assert [len(b.blocks) - 1 for b in model.scales] == [5, 4, 3]  # down blocks after the first block
    assert [b.pool.kernel_size for b in model.scales] == [8, 4, 2]
    assert [b.out_channels for b in model.scales] == [32, 32, 32]
    assert [b.fc.in_features for b in model.scales] == [32, 32, 32]


def test_parameter_count_small():
    model = MultiScaleSNDiscriminator(face_size=128, dim=8)
    assert [len(b.blocks) - 1 for b in model.scales] == [3, 2, 1]
    assert sum(p.numel() for p in model.parameters()) == 99_931


@pytest.mark.parametrize("face_size, dim, num_scales", [(96, 4, 3), (32, 4, 3), (100, 4, 3), (0, 4, 3), (128.0, 4, 3),
                                                     (128, 0, 3), (128, 4, 0), (64, 4, 4)])
def test_bad_configuration_raises(face_size, dim, num_scales):
    with pytest.raises(ValueError):
        MultiScaleSNDiscriminator(face_size=face_size, dim=dim, num_scales=num_scales)


def test_wrong_input_shape_raises():
    model = MultiScaleSNDiscriminator(face_size=64, dim=4)
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\).*\(1, 3, 128, 128\)"):
        model(torch.zeros(1, 3, 128, 128))
    with pytest.raises(ValueError):
        model(torch.zeros(3, 64, 64))


def test_initialisation_orthogonal_gain_and_zero_bias():
    torch.manual_seed(1)
    model = MultiScaleSNDiscriminator(face_size=64, dim=4)
    layers = _sn_layers(model)
    assert layers and all(parametrize.is_parametrized(m, "weight") for m in layers)
    for m in layers:
        w = m.parametrizations.weight.original
        w = w.reshape(w.shape[0], -1)
        small = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        torch.testing.assert_close(small, 0.02 ** 2 * torch.eye(small.shape[0]), atol=1e-7, rtol=0)
        assert not m.bias.any()


def test_spectral_norm_brings_largest_singular_value_to_one():
    torch.manual_seed(2)
    model = MultiScaleSNDiscriminator(face_size=64, dim=4)
    layers = _sn_layers(model)
    # Non-orthogonal weights at very different scales, so that σ = 1 needs the power iterations to converge.
    with torch.no_grad():
        for i, m in enumerate(layers):
            m.parametrizations.weight.original.normal_(0, 10.0 ** (i % 3 - 1))
    model.train()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        for _ in range(12):
            model(x)
    model.eval()  # reading the weight in training mode would run one more power iteration
    sigmas = [_sigma_max(m) for m in layers]
    assert all(abs(s - 1) < 0.05 for s in sigmas), sigmas


def test_power_iteration_only_in_training_mode():
    torch.manual_seed(3)
    model = MultiScaleSNDiscriminator(face_size=64, dim=4)
    layer = model.scales[0].blocks[1].main[1]
    with torch.no_grad():
        layer.parametrizations.weight.original.normal_()
    u = layer.parametrizations.weight[0]._u
    x = torch.rand(1, 3, 64, 64)
    before = u.clone()
    model.eval()
    with torch.no_grad():
        model(x)
    assert torch.equal(u, before)
    model.train()
    with torch.no_grad():
        model(x)
    assert not torch.equal(u, before)


def test_between_scale_pooling_excludes_padding():
    model = MultiScaleSNDiscriminator(face_size=64, dim=4)
    pool = model.downsample
    assert (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    constant = torch.full((1, 3, 64, 64), 0.7)
    down = pool(constant)
    assert down.shape == (1, 3, 32, 32)
    torch.testing.assert_close(down, torch.full_like(down, 0.7))  # corners and edges included


def test_rows_are_grouped_per_image():
    torch.manual_seed(4)
    model = MultiScaleSNDiscriminator(face_size=64, dim=4).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        both = model(x)
        first, second = model(x[:1]), model(x[1:])
    for b, f, s in zip(both, first, second):
        torch.testing.assert_close(b, torch.cat([f, s]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(both[0][0], both[0][1])  # the two images get different scores


def test_gradients_reach_the_input_from_every_scale():
    torch.manual_seed(5)
    model = MultiScaleSNDiscriminator(face_size=64, dim=4)
    x = (torch.rand(1, 3, 64, 64) * 2 - 1).requires_grad_()
    for scores in model(x):
        (grad,) = torch.autograd.grad(scores.sum(), x, retain_graph=True)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # ... and to every parameter through a hinge-style loss.
    loss = sum(torch.relu(1 - s).mean() for s in model(x))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
