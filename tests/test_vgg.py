"""VGG-19 features: layout, checks, feature taps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from faket.errors import FaketInputError
from faket.vgg import (LAYER_NAMES, VGGFeatures, expected_shapes, min_input_size,
                       validate_state_dict)


def test_layer_names_follow_torchvision_indices():
    assert [LAYER_NAMES[i] for i in (0, 1, 4, 6, 8, 11, 20, 29, 36)] == [
        "conv1_1", "relu1_1", "pool1", "relu2_1", "relu2_2", "relu3_1", "relu4_1", "relu5_1", "pool5"]


def test_expected_shapes_cover_16_convolutions():
    shapes = expected_shapes()
    assert len(shapes) == 32
    assert shapes["features.0.weight"] == (64, 3, 3, 3)
    assert shapes["features.34.weight"] == (512, 512, 3, 3)


def test_min_input_size():
    assert min_input_size(1) == 1 and min_input_size(8) == 2 and min_input_size(29) == 16


def test_first_conv_uses_replicate_padding(test_weights):
    net = VGGFeatures(test_weights, [0, 1])
    x = torch.rand(2, 3, 12, 12)
    feats = net(x, [0, 1])
    xn = (x - torch.tensor([0.485, 0.456, 0.406]).view(-1, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(-1, 1, 1)
    ref = F.conv2d(F.pad(xn, (1, 1, 1, 1), mode="replicate"), test_weights["features.0.weight"],
                   test_weights["features.0.bias"])
    # a taken convolution output is not overwritten by the in-place ReLU after it
    assert torch.equal(feats[0], ref)                  # the same values, bit for bit
    assert torch.equal(feats[1], ref.clamp(min=0))
    assert (feats[0] < 0).any()


def test_network_is_truncated_and_frozen(test_weights):
    net = VGGFeatures(test_weights, [1, 6, 8])
    assert len(net.body) == 9
    assert not any(p.requires_grad for p in net.parameters())
    with pytest.raises(ValueError):
        net(torch.rand(1, 3, 16, 16), [11])


def test_validate_state_dict_accepts_classifier_keys(test_weights):
    sd = dict(test_weights)
    sd["classifier.0.weight"] = torch.zeros(2, 2)
    out = validate_state_dict(sd, "x.pth")
    assert set(out) == set(expected_shapes())


@pytest.mark.parametrize("damage,match", [
    (lambda sd: sd.pop("features.10.weight"), "lacks"),
    (lambda sd: sd.__setitem__("features.0.weight", torch.zeros(64, 3, 5, 5)), "shape"),
    (lambda sd: sd.__setitem__("features.0.bias", torch.zeros(64, dtype=torch.int64)), "dtype"),
    (lambda sd: sd.__setitem__("features.2.bias", torch.full((64,), float("nan"))), "NaN"),
    (lambda sd: sd.__setitem__("extra.weight", torch.zeros(1)), "unexpected"),
])
def test_validate_state_dict_refuses_damage(test_weights, damage, match):
    sd = dict(test_weights)
    damage(sd)
    with pytest.raises(FaketInputError, match=match):
        validate_state_dict(sd, "bad.pth")


def test_tile_halo_is_just_enough_for_relu5_1(test_weights):
    """Inner features of a tile with the halo equal the whole image's; 16 pixels less do not."""
    from faket.vgg import receptive_field, tile_halo

    assert receptive_field(29) == 156 and tile_halo(29) == 80
    net = VGGFeatures(test_weights, [29]).double()
    x = torch.rand(1, 3, 288, 288, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    full = net(x, [29])[29]
    y0, y1 = 112, 176                                  # an interior tile, aligned to 16

    def inner(halo):
        crop = x[..., y0 - halo:y1 + halo, y0 - halo:y1 + halo]
        f = net(crop, [29])[29]
        return f[..., halo // 16:(halo + y1 - y0) // 16, halo // 16:(halo + y1 - y0) // 16]

    want = full[..., y0 // 16:y1 // 16, y0 // 16:y1 // 16]
    assert (inner(80) - want).abs().max() < 1e-10
    assert (inner(64) - want).abs().max() > 1e-6
