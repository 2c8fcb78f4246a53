"""Test helper: MACs counted from the tensors a forward really runs (independent of the planner's count)."""

import torch
from torch import nn


def count_macs(model, x):
    """MACs of every Conv2d / Linear the forward runs on a batch of one, counted from the real tensors.

    General-TT convs fold finished output modes into the batch axis, hence the count over the call's batch.
    """
    total = 0

    def hook(m, inputs, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            per_pixel = (m.in_channels // m.groups) * kh * kw * m.out_channels
            total += out.shape[0] * out.shape[-2] * out.shape[-1] * per_pixel
        else:
            total += inputs[0].numel() // inputs[0].shape[-1] * m.in_features * m.out_features

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return total
