"""`Geometry`: what a layer's timing depends on besides the runtime (type, shapes, stride, input size).

ResNets repeat most of their layer shapes, so layers are grouped by geometry and each geometry is measured
once; `Geometry.key` is the stable string the cost cache stores it under.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..layers import conv_output_hw, int_padding

__all__ = ["Geometry"]


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[1])


@dataclass(frozen=True)
class Geometry:
    """Shape of one Conv2d or Linear call, for one sample.

    Attributes:
        kind: ``conv`` or ``linear``.
        in_ch: input channels (features of a Linear).
        out_ch: output channels (features).
        kernel: (kh, kw); (1, 1) for a Linear.
        stride: (sh, sw).
        padding: symmetric zero padding (ph, pw).
        dilation: (dh, dw).
        groups: conv groups.
        bias: whether the layer adds a bias.
        in_hw: input (H, W) of a conv; None for a Linear.
        tokens: rows a Linear sees per sample (1 for a classifier); 1 for a conv.
    """

    kind: str
    in_ch: int
    out_ch: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = False
    in_hw: tuple[int, int] | None = None
    tokens: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("conv", "linear"):
            raise ValueError(f"geometry kind must be 'conv' or 'linear', got {self.kind!r}")
        if self.kind == "conv" and self.in_hw is None:
            raise ValueError("a conv geometry needs its input size in_hw")
        if self.in_ch < 1 or self.out_ch < 1 or self.tokens < 1:
            raise ValueError(f"channels and tokens must be positive: {self}")

    @classmethod
    def of(cls, module: nn.Module, in_hw: tuple[int, int] | None = None, tokens: int = 1) -> Geometry:
        """Geometry of a Conv2d (with its input (H, W)) or a Linear (with its rows per sample).

        Raises:
            ValueError: another module type, a conv without ``in_hw``, or a ``padding='same'`` that no
                symmetric integer padding expresses.
        """
        if isinstance(module, nn.Conv2d):
            if in_hw is None:
                raise ValueError("Geometry.of needs the input (H, W) of a conv")
            padding = int_padding(module)
            if padding is None:
                raise ValueError(f"padding {module.padding!r} of a {module.kernel_size} conv has no symmetric "
                                 f"integer form, so it cannot be timed as a plain ONNX Conv")
            return cls("conv", module.in_channels, module.out_channels, _pair(module.kernel_size),
                       _pair(module.stride), padding, _pair(module.dilation), module.groups,
                       module.bias is not None, (int(in_hw[0]), int(in_hw[1])), 1)
        if isinstance(module, nn.Linear):
            return cls("linear", module.in_features, module.out_features, bias=module.bias is not None,
                       tokens=int(tokens))
        raise ValueError(f"layer costs cover Conv2d and Linear, not {type(module).__name__}")

    @property
    def key(self) -> str:
        """Stable, human-readable identity, e.g. ``conv:i64-o64-k3x3-s1x1-p1x1-d1x1-g1-b0-hw56x56``."""
        if self.kind == "linear":
            return f"linear:i{self.in_ch}-o{self.out_ch}-b{int(self.bias)}-t{self.tokens}"
        k, s, p, d, hw = self.kernel, self.stride, self.padding, self.dilation, self.in_hw
        return (f"conv:i{self.in_ch}-o{self.out_ch}-k{k[0]}x{k[1]}-s{s[0]}x{s[1]}-p{p[0]}x{p[1]}-d{d[0]}x{d[1]}"
                f"-g{self.groups}-b{int(self.bias)}-hw{hw[0]}x{hw[1]}")

    def dummy(self, device: str = "meta") -> nn.Module:
        """A layer of this geometry (weights unset on the default meta device), for `layers.structure_for`."""
        if self.kind == "linear":
            return nn.Linear(self.in_ch, self.out_ch, bias=self.bias, device=device)
        return nn.Conv2d(self.in_ch, self.out_ch, self.kernel, stride=self.stride, padding=self.padding,
                         dilation=self.dilation, groups=self.groups, bias=self.bias, device=device)

    def input_shape(self, batch: int) -> tuple[int, ...]:
        """Input tensor shape at ``batch``: (N, C, H, W) for a conv, (N, I) or (N, tokens, I) for a Linear."""
        if self.kind == "conv":
            return (batch, self.in_ch, *self.in_hw)
        return (batch, self.in_ch) if self.tokens == 1 else (batch, self.tokens, self.in_ch)

    def output_shape(self, batch: int) -> tuple[int, ...]:
        """Output tensor shape at ``batch`` (same layout as `input_shape`)."""
        if self.kind == "conv":
            return (batch, self.out_ch, *conv_output_hw(self.dummy(), self.in_hw))
        return (batch, self.out_ch) if self.tokens == 1 else (batch, self.tokens, self.out_ch)
