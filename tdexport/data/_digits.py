"""scikit-learn's bundled 8x8 digits as a 32x32, 3-channel, in-memory dataset (the offline default)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._spec import DataBundle, DataInfo

if TYPE_CHECKING:
    import torch

INFO = DataInfo("digits", 10, (3, 32, 32))


class ImageTensors:
    """In-memory dataset of ``images (N, 3, H, W)`` and ``labels (N,)`` (as ``TensorDataset.tensors``).

    With ``padded`` (the images padded by ``s`` px on each side) every item is a random ``H x W`` crop of
    its padded image, i.e. a translation by up to ``s`` px: one slice per item, no PIL round trip. Offsets
    come from torch's global RNG (seeded per worker by the DataLoader), as torchvision's random transforms do.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, padded: torch.Tensor | None = None) -> None:
        self.tensors, self.padded = (images, labels), padded

    def __len__(self) -> int:
        return len(self.tensors[1])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        import torch

        image, label = self.tensors[0][i], int(self.tensors[1][i])
        if self.padded is None:
            return image, label
        (h, w), s2 = image.shape[-2:], self.padded.shape[-1] - image.shape[-1]
        dy, dx = torch.randint(0, s2 + 1, (2,)).tolist()
        return self.padded[i, :, dy : dy + h, dx : dx + w], label


def load_digits(augment: bool) -> DataBundle:
    """The digits bundle: stratified 80/20 split (seed 0), normalised by the training split's statistics.

    Args:
        augment: training items are random translations by up to 2 px (background padding).
    """
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    y = torch.as_tensor(digits.target, dtype=torch.int64)
    i_train, i_test = (
        torch.as_tensor(i)
        for i in train_test_split(list(range(len(y))), test_size=0.2, stratify=digits.target, random_state=0)
    )
    x_train = x[i_train]
    mean, std = x_train.mean(dim=(0, 2, 3)), x_train.std(dim=(0, 2, 3), correction=0)

    def norm(t: torch.Tensor) -> torch.Tensor:
        return ((t - mean[:, None, None]) / std[:, None, None]).contiguous()

    # Pad before normalising, so the border is background (0) like the digit's own surround.
    padded = norm(F.pad(x_train, (2, 2, 2, 2))) if augment else None
    train = ImageTensors(norm(x_train), y[i_train], padded)
    test = ImageTensors(norm(x[i_test]), y[i_test])
    stats = (tuple(mean.tolist()), tuple(std.tolist()))
    return DataBundle(INFO.name, train, test, INFO.num_classes, INFO.input_shape, *stats)  # type: ignore[arg-type]
