"""The segmentation network: a U-Net on a torchvision ResNet encoder, with training-only heads.

:func:`build_network` turns a model card's ``architecture`` mapping (JSON-able) into a
:class:`UNet`. ``forward(x)`` returns 2-class logits (background, nucleus) at the input's
resolution; :meth:`UNet.forward_features` also returns the decoder features the S2L-CM losses
need. The training-only heads are the submodules ``projection_full``, ``projection_quarter``
(MCR embeddings) and ``mil`` (the attention-MIL predictor of pMIL); :mod:`wsi_s2lcm.models`
drops them when saving and tolerates their absence when loading.

Encoders start from random weights unless ``encoder_weights`` names a local file holding a
torchvision ResNet state dict (safetensors, or a ``torch.save`` file loaded with
``weights_only=True``). Nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

ENCODER_CHANNELS = {
    "resnet18": (64, 64, 128, 256, 512),
    "resnet34": (64, 64, 128, 256, 512),
    "resnet50": (64, 256, 512, 1024, 2048),
}
DEFAULT_ARCHITECTURE: dict[str, Any] = {
    "type": "unet",
    "encoder": "resnet18",
    "encoder_weights": None,
    "decoder_channels": [256, 128, 64, 32, 16],
    "classes": 2,
    "projection_dim": 32,
    "mil_hidden": 128,
    "mil_attention": 64,
}
HYPERCOLUMN_LEVELS = (1, 2, 3, 4)
"""Decoder blocks whose outputs form the pMIL hypercolumn (128 + 64 + 32 + 16 = 240 channels)."""
QUARTER_LEVEL = 2
"""Decoder block at 1/4 resolution (64 channels) feeding ``projection_quarter``."""


def build_network(architecture: Mapping[str, Any]) -> "UNet":
    """Build the network a model card describes.

    Parameters
    ----------
    architecture
        Keys of :data:`DEFAULT_ARCHITECTURE`; missing keys take its values. ``type`` must be
        ``"unet"``; ``encoder`` one of ``resnet18``, ``resnet34``, ``resnet50``;
        ``encoder_weights`` ``None`` or the path of a local torchvision ResNet state dict.

    Returns
    -------
    UNet
        The network in training mode.

    Raises
    ------
    ValueError
        On an unknown key or an invalid value.
    """
    unknown = sorted(set(architecture) - set(DEFAULT_ARCHITECTURE))
    if unknown:
        raise ValueError(f"unknown architecture key(s) {', '.join(unknown)}")
    values = {**DEFAULT_ARCHITECTURE, **dict(architecture)}
    if values["type"] != "unet":
        raise ValueError(f"architecture type {values['type']!r} is not 'unet'")
    if values["encoder"] not in ENCODER_CHANNELS:
        raise ValueError(
            f"encoder {values['encoder']!r} is not one of {', '.join(ENCODER_CHANNELS)}"
        )
    decoder = tuple(int(c) for c in values["decoder_channels"])
    if len(decoder) != 5 or min(decoder) < 1:
        raise ValueError(f"decoder_channels {decoder} must be five positive integers")
    network = UNet(
        encoder=values["encoder"],
        decoder_channels=decoder,
        classes=int(values["classes"]),
        projection_dim=int(values["projection_dim"]),
        mil_hidden=int(values["mil_hidden"]),
        mil_attention=int(values["mil_attention"]),
    )
    if values["encoder_weights"]:
        network.load_encoder_weights(values["encoder_weights"])
    return network


class ConvBnRelu(nn.Sequential):
    """3x3 convolution, batch norm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DecoderBlock(nn.Module):
    """Upsample by 2, concatenate the skip connection, two 3x3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvBnRelu(in_channels + skip_channels, out_channels)
        self.conv2 = ConvBnRelu(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


def projection_head(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    """1x1 conv, BN, ReLU, 1x1 conv, BN: the MCR projection head of METHOD.md."""
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 1),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, out_channels, 1),
        nn.BatchNorm2d(out_channels),
    )


class AttentionMIL(nn.Module):
    """Attention-based MIL pooling (Ilse et al. 2018) scoring bags of pixel hypercolumns.

    Parameters
    ----------
    in_features
        Length of one instance vector (240 for the default decoder).
    hidden
        Width of the instance embedding.
    attention
        Width of the attention network.
    """

    def __init__(self, in_features: int, hidden: int, attention: int) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True))
        self.attention = nn.Sequential(
            nn.Linear(hidden, attention), nn.Tanh(), nn.Linear(attention, 1)
        )
        self.classifier = nn.Linear(hidden, 1)

    def forward(self, bags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score bags.

        Parameters
        ----------
        bags
            ``(B, K, in_features)`` instance vectors.

        Returns
        -------
        logits, weights
            ``(B,)`` bag logits (foreground bag) and ``(B, K)`` attention weights.
        """
        embedded = self.embed(bags)
        weights = torch.softmax(self.attention(embedded).squeeze(-1), dim=1)
        pooled = torch.einsum("bk,bkh->bh", weights, embedded)
        return self.classifier(pooled).squeeze(-1), weights


class UNet(nn.Module):
    """U-Net with a torchvision ResNet encoder; input height and width multiples of 32."""

    def __init__(
        self,
        encoder: str = "resnet18",
        decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
        classes: int = 2,
        projection_dim: int = 32,
        mil_hidden: int = 128,
        mil_attention: int = 64,
    ) -> None:
        super().__init__()
        resnet = getattr(torchvision.models, encoder)(weights=None)
        self.encoder_name = encoder
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu)
        self.pool = resnet.maxpool
        self.layer1, self.layer2 = resnet.layer1, resnet.layer2
        self.layer3, self.layer4 = resnet.layer3, resnet.layer4
        enc = ENCODER_CHANNELS[encoder]
        skips = (enc[3], enc[2], enc[1], enc[0], 0)
        inputs = (enc[4],) + tuple(decoder_channels[:-1])
        self.decoder = nn.ModuleList(
            DecoderBlock(i, s, o) for i, s, o in zip(inputs, skips, decoder_channels)
        )
        self.head = nn.Conv2d(decoder_channels[-1], classes, 3, padding=1)
        full, quarter = decoder_channels[-1], decoder_channels[QUARTER_LEVEL]
        self.projection_full = projection_head(full, full, projection_dim)
        self.projection_quarter = projection_head(quarter, projection_dim, projection_dim)
        self.hypercolumn_channels = sum(decoder_channels[i] for i in HYPERCOLUMN_LEVELS)
        self.mil = AttentionMIL(self.hypercolumn_channels, mil_hidden, mil_attention)

    def encoder_modules(self) -> list[nn.Module]:
        """The ResNet parts (for a separate learning rate)."""
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the five decoder outputs (1/16, 1/8, 1/4, 1/2 and full resolution)."""
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be multiples of 32")
        f0 = self.stem(x)
        f1 = self.layer1(self.pool(f0))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        features = []
        y = f4
        for block, skip in zip(self.decoder, (f3, f2, f1, f0, None)):
            y = block(y, skip)
            features.append(y)
        return self.head(y), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``(N, 2, H, W)`` logits for ``(N, 3, H, W)`` normalized RGB."""
        return self.forward_features(x)[0]

    def load_encoder_weights(self, path: str | Path) -> None:
        """Load a local torchvision ResNet state dict into the encoder (``fc`` keys ignored)."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise ValueError(f"encoder_weights {path} is not a file")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        renamed = {}
        for key, value in state.items():
            head, _, rest = key.partition(".")
            if head in ("conv1", "bn1"):
                renamed[f"stem.{0 if head == 'conv1' else 1}.{rest}"] = value
            elif head.startswith("layer"):
                renamed[key] = value
        missing = [
            k
            for k in self.state_dict()
            if k.startswith(("stem.", "layer")) and k not in renamed
        ]
        if missing:
            raise ValueError(
                f"encoder_weights {path} does not fit {self.encoder_name} (missing {missing[:3]})"
            )
        self.load_state_dict(renamed, strict=False)
