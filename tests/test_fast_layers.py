"""The layers behind MaskExtRCNN's fast path give Detectron2's results: separable mask pasting and
convolutions with their frozen batch norm folded in."""

from __future__ import annotations

import copy

import pytest
import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.layers.mask_ops import paste_masks_in_image
from detectron2.modeling.backbone.resnet import BottleneckBlock

from d2_maskext.layers import FrozenBNConv2d, fold_frozen_batchnorm
from d2_maskext.layers.paste_masks import paste_masks


def _random_boxes(num: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    centre = torch.rand(num, 2, generator=generator) * torch.tensor([width, height]) * 1.2 - 0.1 * width
    size = torch.exp(torch.empty(num, 2).uniform_(0.0, 6.0, generator=generator))
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes


@pytest.mark.parametrize("mask_size", [14, 28])
def test_paste_masks_equals_detectron2(mask_size: int):
    generator = torch.Generator().manual_seed(mask_size)
    height, width = 181, 243
    masks = torch.nn.functional.avg_pool2d(torch.rand(60, 1, mask_size, mask_size, generator=generator), 3, 1, 1)[:, 0]
    boxes = _random_boxes(60, height, width, generator)
    boxes[0] = torch.tensor([10.0, 10.0, 10.0, 30.0])  # empty box
    boxes[1] = torch.tensor([0.0, 0.0, float(width), float(height)])  # whole image
    for threshold in (0.3, 0.5, 0.7):
        expected = paste_masks_in_image(masks, boxes, (height, width), threshold=threshold)
        pasted = paste_masks(masks, boxes, (height, width), threshold)
        assert pasted.dtype == torch.bool and pasted.shape == expected.shape
        assert (pasted != expected).sum() <= 1e-5 * expected.numel()


def test_paste_masks_handles_no_masks_and_bad_shapes():
    assert paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (20, 30)).shape == (0, 20, 30)
    with pytest.raises(ValueError, match="expected \\(N, M, M\\) masks and \\(N, 4\\) boxes"):
        paste_masks(torch.zeros(2, 28, 28), torch.zeros(3, 4), (20, 30))


def _frozen_bn(channels: int, generator: torch.Generator) -> FrozenBatchNorm2d:
    norm = FrozenBatchNorm2d(channels)
    norm.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
    norm.bias.copy_(torch.randn(channels, generator=generator))
    norm.running_mean.copy_(torch.randn(channels, generator=generator))
    norm.running_var.copy_(torch.rand(channels, generator=generator) + 0.1)
    return norm


def test_folded_frozen_batchnorm_matches_conv_then_norm_in_values_gradients_and_state():
    generator = torch.Generator().manual_seed(0)
    block = BottleneckBlock(32, 64, bottleneck_channels=16, norm="FrozenBN")
    for module in block.modules():
        if isinstance(module, Conv2d):
            module.norm = _frozen_bn(module.out_channels, generator)
    folded = copy.deepcopy(block)
    assert fold_frozen_batchnorm(folded) == 4  # conv1-3 and the shortcut
    assert all(type(m) is FrozenBNConv2d for m in folded.modules() if isinstance(m, Conv2d))
    assert folded.state_dict().keys() == block.state_dict().keys()

    x = torch.randn(2, 32, 9, 11, generator=generator, requires_grad=True)
    expected, actual = block(x), folded(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    expected.sum().backward()
    grads = [p.grad.clone() for p in block.parameters()]
    actual.sum().backward()
    for grad, param in zip(grads, folded.parameters()):
        torch.testing.assert_close(param.grad, grad, rtol=1e-4, atol=1e-3)


def test_fold_leaves_other_norms_alone():
    conv = Conv2d(4, 4, 3, norm=torch.nn.GroupNorm(2, 4))
    assert fold_frozen_batchnorm(conv) == 0 and type(conv) is Conv2d
