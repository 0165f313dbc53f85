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
