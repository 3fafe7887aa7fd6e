"""The layers behind MaskExtRCNN's fast path give Detectron2's results: separable mask pasting and
convolutions with their frozen batch norm folded in, fused at CPU inference."""

from __future__ import annotations

import copy

import pytest
import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.layers.mask_ops import paste_masks_in_image
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock

from d2_maskext.layers import FusedConv2d, fuse_convolutions
from d2_maskext.layers.fused_conv import FusedBasicBlock, FusedBasicStem, FusedBottleneckBlock
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
    assert fuse_convolutions(folded) == 4  # conv1-3 and the shortcut
    assert type(folded) is FusedBottleneckBlock
    assert all(type(m) is FusedConv2d for m in folded.modules() if isinstance(m, Conv2d))
    assert folded.state_dict().keys() == block.state_dict().keys()

    x = torch.randn(2, 32, 9, 11, generator=generator, requires_grad=True)
    expected, actual = block(x), folded(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    expected.sum().backward()
    grads = [p.grad.clone() for p in block.parameters()]
    actual.sum().backward()
    for grad, param in zip(grads, folded.parameters()):
        torch.testing.assert_close(param.grad, grad, rtol=1e-4, atol=1e-3)


def test_fuse_leaves_trainable_norms_alone():
    conv = Conv2d(4, 4, 3, norm=torch.nn.GroupNorm(2, 4))
    assert fuse_convolutions(conv) == 0 and type(conv) is Conv2d
    block = BasicBlock(32, 32, norm="GN")
    fuse_convolutions(block)
    with torch.no_grad():  # a block whose convolutions kept their norm runs Detectron2's forward
        assert block(torch.randn(1, 32, 5, 5)).shape == (1, 32, 5, 5)


def _frozen_network(generator: torch.Generator) -> torch.nn.Sequential:
    network = torch.nn.Sequential(
        BasicStem(3, 16, norm="FrozenBN"),
        BottleneckBlock(16, 32, bottleneck_channels=8, stride=2, norm="FrozenBN"),
        BottleneckBlock(32, 32, bottleneck_channels=8, norm="FrozenBN"),
        BasicBlock(32, 32, norm="FrozenBN"),
        Conv2d(32, 8, 3, padding=1, activation=torch.nn.ReLU()),
    )
    for module in network.modules():
        if isinstance(module, Conv2d) and module.norm is not None:
            module.norm = _frozen_bn(module.out_channels, generator)
    return network


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_inference_equals_detectron2_and_follows_weight_changes(dtype: torch.dtype, channels_last: bool):
    torch.manual_seed(1)
    generator = torch.Generator().manual_seed(1)
    reference = _frozen_network(generator)
    fused = copy.deepcopy(reference)
    assert fuse_convolutions(fused) == 11
    assert [type(m) for m in fused[:4]] == [FusedBasicStem, FusedBottleneckBlock, FusedBottleneckBlock, FusedBasicBlock]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    reference.to(memory_format=memory_format)
    fused.to(memory_format=memory_format)

    def run(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            return module(x)

    def check(size: tuple[int, int]) -> torch.Tensor:
        x = (torch.randn(1, 3, *size, generator=generator) * 50).contiguous(memory_format=memory_format)
        expected, actual = run(reference, x), run(fused, x)
        assert actual.dtype == expected.dtype
        if dtype == torch.float32:
            torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-3)
        else:  # folded weights round to bfloat16 differently from the unfolded batch norm: compare overall
            error = (actual.float() - expected.float()).norm() / expected.float().norm()
            assert error < 0.05, f"relative error {error:.4f}"
        return x

    check((37, 45))
    check((64, 29))  # another input size reuses the packed weights
    with torch.no_grad():  # training steps and checkpoint loads change parameters in place: weights repack
        for module in (reference, fused):
            module[1].conv2.weight.mul_(-1.5)
            module[4].bias.add_(1.0)
            module[2].conv1.norm.running_var.mul_(4.0)
    x = check((37, 45))
    fresh = copy.deepcopy(reference)
    fuse_convolutions(fresh)
    assert torch.equal(run(fused, x), run(fresh, x))
    assert fused.state_dict().keys() == reference.state_dict().keys()
    copy.deepcopy(fused)  # packed weights live outside the module: copies and pickles still work
