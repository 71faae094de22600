"""Whole-image prediction during training: input normalization and one image's nucleus
probability, used for EMA pseudo labels, held-out selection and separation calibration."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from wsi_s2lcm.predictor import autocast

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(rgb: np.ndarray) -> torch.Tensor:
    """``(N, H, W, 3)`` or ``(H, W, 3)`` RGB in [0, 1] (or uint8) to a normalized NCHW tensor."""
    array = np.asarray(rgb)
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    if array.ndim == 3:
        array = array[None]
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(0, 3, 1, 2)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (tensor - mean) / std


def predict_probability(
    network: torch.nn.Module, image: np.ndarray, device: str = "cpu", amp: bool = False
) -> np.ndarray:
    """Nucleus probability of a whole ``(H, W, 3)`` uint8 image, padded to multiples of 32.

    The network is put in eval mode and restored to its previous mode afterwards.
    """
    was_training = network.training
    network.eval()
    height, width = image.shape[:2]
    pad_y, pad_x = -height % 32, -width % 32
    x = normalize(image)
    if pad_y or pad_x:
        mode = "reflect" if pad_y < height and pad_x < width else "replicate"
        x = F.pad(x, (0, pad_x, 0, pad_y), mode=mode)
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device, amp):
        logits = network(x)
    network.train(was_training)
    probability = torch.softmax(logits.float(), dim=1)[0, 1, :height, :width]
    return probability.cpu().numpy()
