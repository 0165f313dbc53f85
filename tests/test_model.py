import pytest
import torch

from lfa_ray.model import UNet


@pytest.mark.parametrize("size", [(64, 64), (50, 37), (33, 100)])
def test_output_matches_input_size_even_when_not_a_multiple_of_16(size):
    model = UNet(features=[4, 8, 16]).eval()
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 1, *size)


def test_seed_architecture_widths():
    model = UNet()  # the original's [64, 128, 256, 512]
    assert [d[0].out_channels for d in model.downs] == [64, 128, 256, 512]
    assert model.bottleneck[0].out_channels == 1024
    assert all(not d[0].bias is not None for d in model.downs)  # conv without bias before BatchNorm
    assert model.final_conv.out_channels == 1


def test_wrong_input_shape_says_what_to_do():
    model = UNet(features=[4, 8])
    with pytest.raises(ValueError, match="add a batch dimension or convert the images to RGB"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(torch.randn(1, 1, 32, 32))


@pytest.mark.parametrize("features", [[8, 16, 16, 16], [8, 12, 16, 24], [16, 8]])
def test_widths_need_not_double(features):
    model = UNet(features=features)
    images = torch.randn(2, 3, 32, 32)
    out = model(images)
    assert out.shape == (2, 1, 32, 32)
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    # each upsampling reads the width of the level below it: the bottleneck, then the decoder's widths
    assert [up.in_channels for up in model.ups[::2]] == [features[-1] * 2, *reversed(features[1:])]


def test_doubling_widths_keep_the_original_layers():
    model = UNet()
    ups = [(up.in_channels, up.out_channels) for up in model.ups[::2]]
    assert ups == [(1024, 512), (512, 256), (256, 128), (128, 64)]
