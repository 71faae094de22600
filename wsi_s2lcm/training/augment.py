"""Training-crop augmentation in numpy/OpenCV: zoom, crop, flips, 90° rotations, colour and stain.

Geometric transforms move the image, its sparse scribble target, its EMA prior and its
nucleus-scribble ids together (nearest-neighbour for the target and the ids); photometric ones
touch the image only. The H&E stain
augmentation perturbs the Ruifrok-Johnston haematoxylin, eosin and DAB concentrations,
``c' = c * U(1 - alpha, 1 + alpha) + U(-beta, beta)`` (Tellez et al. 2018, "HED-light"), the
scheme of tiatoolbox's ``StainAugmentor`` without its per-image stain estimation, so it costs a
few milliseconds per crop.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.color import hed2rgb, rgb2hed

from wsi_s2lcm.training.scribbles import IGNORE


def crop_sample(
    image: np.ndarray,
    target: np.ndarray,
    prior: np.ndarray | None,
    crop_size: int,
    scale: float,
    rng: np.random.Generator,
    ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Cut a random window of ``crop_size / scale`` pixels and resize it to ``crop_size``.

    Images smaller than the window are padded (reflected image, unlabeled target, prior 0.5,
    ids 0). ``ids`` (int32) draws no random number, so crops are the same with or without it.
    """
    window = max(int(round(crop_size / scale)), 8)
    height, width = target.shape
    pad_y, pad_x = max(window - height, 0), max(window - width, 0)
    if pad_y or pad_x:
        pads = ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2))
        image = np.pad(image, pads + ((0, 0),), mode="reflect")
        target = np.pad(target, pads, constant_values=IGNORE)
        if prior is not None:
            prior = np.pad(prior, pads, constant_values=0.5)
        if ids is not None:
            ids = np.pad(ids, pads, constant_values=0)
        height, width = target.shape
    y = int(rng.integers(0, height - window + 1))
    x = int(rng.integers(0, width - window + 1))
    box = (slice(y, y + window), slice(x, x + window))
    size = (crop_size, crop_size)
    image = cv2.resize(image[box], size, interpolation=cv2.INTER_LINEAR)
    target = cv2.resize(target[box], size, interpolation=cv2.INTER_NEAREST)
    if prior is not None:
        prior = cv2.resize(prior[box], size, interpolation=cv2.INTER_LINEAR)
    if ids is not None:
        ids = cv2.resize(ids[box].astype(np.int32), size, interpolation=cv2.INTER_NEAREST)
    return image, target, prior, ids


def flip_rotate(arrays: list[np.ndarray | None], flip: bool, rotate: bool,
                rng: np.random.Generator) -> list[np.ndarray | None]:
    """Apply one random flip and 90-degree rotation to all arrays (``None`` passes through)."""
    do_flip = flip and bool(rng.integers(0, 2))
    turns = int(rng.integers(0, 4)) if rotate else 0
    result = []
    for array in arrays:
        if array is not None:
            if do_flip:
                array = array[:, ::-1]
            array = np.ascontiguousarray(np.rot90(array, turns))
        result.append(array)
    return result


def stain_augment(
    rgb: np.ndarray, alpha: float, beta: float, rng: np.random.Generator
) -> np.ndarray:
    """Perturb the H, E and D concentrations of an RGB image in [0, 1] (float32 out)."""
    if alpha == 0 and beta == 0:
        return rgb.astype(np.float32)
    hed = rgb2hed(rgb)
    hed = hed * rng.uniform(1 - alpha, 1 + alpha, 3) + rng.uniform(-beta, beta, 3)
    return np.clip(hed2rgb(hed), 0.0, 1.0).astype(np.float32)


def colour_jitter(
    rgb: np.ndarray, brightness: float, contrast: float, saturation: float, hue: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Random brightness, contrast, saturation and hue changes of an RGB image in [0, 1]."""
    rgb = rgb * rng.uniform(1 - brightness, 1 + brightness)
    mean = rgb.mean()
    rgb = (rgb - mean) * rng.uniform(1 - contrast, 1 + contrast) + mean
    grey = rgb.mean(axis=2, keepdims=True)
    rgb = (rgb - grey) * rng.uniform(1 - saturation, 1 + saturation) + grey
    rgb = np.clip(rgb, 0.0, 1.0).astype(np.float32)
    if hue:
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-hue, hue) * 360.0) % 360.0
        rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return np.clip(rgb, 0.0, 1.0)


def augment_sample(
    image: np.ndarray,
    target: np.ndarray,
    prior: np.ndarray | None,
    config: object,
    rng: np.random.Generator,
    ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """One augmented training crop.

    Parameters
    ----------
    image
        ``(H, W, 3)`` uint8 RGB at the model's mpp.
    target
        ``(H, W)`` uint8 scribble target (1, 0, 255).
    prior
        ``(H, W)`` float EMA estimate of the nucleus probability, or ``None``.
    config
        A :class:`~wsi_s2lcm.training.config.TrainConfig`.
    rng
        Random generator.
    ids
        ``(H, W)`` int nucleus-scribble ids (0 elsewhere), or ``None``; moved with the target.

    Returns
    -------
    image, target, prior, ids
        ``(C, C, 3)`` float32 RGB in [0, 1], ``(C, C)`` uint8, ``(C, C)`` float32 or ``None``,
        ``(C, C)`` int32 or ``None``.
    """
    scale = float(np.exp(rng.uniform(np.log(config.scale_min), np.log(config.scale_max))))
    image, target, prior, ids = crop_sample(image, target, prior, config.crop_size, scale, rng,
                                            ids)
    image, target, prior, ids = flip_rotate([image, target, prior, ids], config.flip,
                                            config.rotate90, rng)
    rgb = image.astype(np.float32) / 255.0
    rgb = stain_augment(rgb, config.stain_alpha, config.stain_beta, rng)
    rgb = colour_jitter(rgb, config.brightness, config.contrast, config.saturation, config.hue, rng)
    return rgb, target, prior, ids
