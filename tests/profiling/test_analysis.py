"""MAC counts (analysis.count_macs): torch's FlopCounterMode plus the attention counts it cannot see.

Every expected figure is written out from the layer shapes: a convolution costs
``out_pixels * out_channels * (in_channels / groups) * kh * kw`` per sample, a linear layer
``in * out``; ACmix's attention core ``pixels_out * kernel_att^2 * out_planes * 2`` (logits and
aggregation), as ``ACmix.attention_macs`` states.
"""

from __future__ import annotations

import pytest
import torch.nn as nn

import acmix_deploy as ad
from acmix_deploy.modules import ACmix

from tests.user_nets import OfficialACmix


def test_small_conv_net_counts_every_convolution_and_linear_layer():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 1, groups=2, bias=False), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    batch = 2  # input 15 x 17 -> 8 x 9 after the stride-2 stem
    stem = (8 * 9) * 8 * 3 * 3 * 3
    grouped = (8 * 9) * 16 * (8 // 2)
    depthwise = (8 * 9) * 16 * 1 * 3 * 3
    fc = 16 * 10
    assert ad.count_macs(net, (3, 15, 17), batch=batch) == batch * (stem + grouped + depthwise + fc) == 61376


def _acmix_block_macs(stride: int, h: int, w: int) -> int:
    """ACmix(8, 8, kernel_att=3, head=2, kernel_conv=3, stride) at 8 x h x w, batch 1, by hand."""
    c, heads, d, ka, kc = 8, 2, 4, 3, 3
    qkv = 3 * (h * w) * c * c  # conv1..conv3, 1x1
    pos = (h * w) * d * 2  # conv_p on the 2-channel coordinate grid
    fc = (d * h * w) * (kc * kc) * (3 * heads)  # 1x1 over the 3h maps of every head-dim index
    ho, wo = (h + 2 - kc) // stride + 1, (w + 2 - kc) // stride + 1
    dep = (ho * wo) * c * (kc * kc * d // d) * kc * kc  # groups = head_dim
    attention = (h // stride) * (w // stride) * ka * ka * c * 2
    return qkv + pos + fc + dep + attention


@pytest.mark.parametrize("stride,h,w,expected", [(1, 6, 7, 50736), (2, 6, 8, 29472)])
def test_acmix_block_and_a_pasted_official_copy_count_alike(stride, h, w, expected):
    """The attention core (broadcast products, invisible to FlopCounterMode) is counted, for this package's
    ACmix and for a copy of the official class that foreign.py recognises."""
    assert _acmix_block_macs(stride, h, w) == expected
    ours = ACmix(8, 8, 3, 2, 3, stride)
    assert ad.count_macs(ours, (8, h, w)) == expected
    assert ad.count_macs(OfficialACmix(8, 8, 3, 2, 3, stride), (8, h, w)) == expected
    pos = h * w * 4 * 2  # conv_p runs once per forward on the coordinate grid, whatever the batch
    assert ad.count_macs(ours, (8, h, w), batch=3) == 3 * (expected - pos) + pos


def test_deploy_core_counts_its_attention_not_its_index_products():
    """The deploy core's matrix products (index gathers among them) are replaced by its stated count."""
    deploy = ACmix(8, 8, 3, 2, 3, 1).eval().fuse()
    qkv = (6 * 7) * 24 * 8
    conv_path = (6 * 7) * 8 * (24 // 4) * 3 * 3
    assert ad.count_macs(deploy, (8, 6, 7)) == qkv + conv_path + deploy.attention_macs((1, 8, 6, 7))


def test_pasted_copies_in_a_network_are_counted_like_adopted_ones():
    """A detector with official-ACmix copies counts the same before and after the copies became ours."""
    import warnings

    from acmix_deploy.foreign import adopt_foreign_operators

    from tests.user_nets import yolo_acmix

    net = yolo_acmix().eval()
    adopted = yolo_acmix().eval()
    adopted.load_state_dict(net.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert adopt_foreign_operators(adopted).adopted
    assert any(isinstance(m, ACmix) for m in adopted.modules())
    assert ad.count_macs(net, (3, 128, 160)) == ad.count_macs(adopted, (3, 128, 160))
