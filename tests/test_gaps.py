"""The gap bags between nucleus scribbles: which pixels they hold, and their loss."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.segmentation import find_boundaries

from wsi_s2lcm.training.gaps import gap_paths
from wsi_s2lcm.training.generate import scribbles_from_labels
from wsi_s2lcm.training.losses import gap_loss


def test_a_bag_holds_the_pixels_between_two_nearby_scribbles_only():
    ids = np.zeros((20, 20), np.int32)
    ids[5, 2:6] = 1
    ids[5, 10:14] = 2
    ids[15, 2:6] = 3  # 10 px below scribble 1: beyond the distance
    pixels, pair = gap_paths(ids, max_distance=6)
    assert pixels.tolist() == [[5, 6], [5, 7], [5, 8], [5, 9]]
    assert pair.tolist() == [0, 0, 0, 0]


def test_pixels_of_one_scribble_never_make_a_bag_and_pairs_are_numbered_densely():
    ids = np.zeros((30, 30), np.int32)
    ids[2:12, 4] = 1
    ids[2:12, 8] = 1  # two strokes of one nucleus (one id): no bag between them
    ids[20, 4:10] = 2
    ids[20, 13:16] = 3
    pixels, pair = gap_paths(ids, max_distance=10)
    assert sorted(set(pair.tolist())) == [0, 1]  # 1-2 (rows 12..19) and 2-3 (columns 10..12)
    assert all(ids[r, c] == 0 for r, c in pixels)
    assert len(gap_paths(np.zeros((8, 8), np.int32), 5)[1]) == 0


def test_every_bag_on_real_nuclei_holds_a_background_or_border_pixel(monuseg_dir):
    """On a packed MoNuSeg image, the segment between two nuclei's scribbles always crosses
    background or the border where two nuclei touch: the bag's assumption holds."""
    labels = np.asarray(Image.open(monuseg_dir / "instance_labels"
                                   / "TCGA-HE-7129-01Z-00-DX1.png")).astype(np.int32)
    nucleus, _ = scribbles_from_labels(labels, ratio=0.5, seed=0)
    window = (slice(0, 400), slice(0, 400))
    pixels, pair = gap_paths(nucleus[window], max_distance=32)
    crop = labels[window]
    assert pair.max() + 1 > 50
    gap = (crop == 0) | find_boundaries(crop, mode="inner")
    holds = np.zeros(pair.max() + 1, bool)
    np.logical_or.at(holds, pair, gap[pixels[:, 0], pixels[:, 1]])
    assert holds.all()
    touching = np.zeros(pair.max() + 1, bool)
    np.logical_or.at(touching, pair, crop[pixels[:, 0], pixels[:, 1]] == 0)
    assert (~touching).sum() > 0  # some pairs touch: their only gap is the border


def test_gap_loss_is_the_mean_of_each_bags_smallest_background_cross_entropy():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 1] = torch.tensor([3.0, 1.0, 2.0, -2.0])  # nucleus logits; background 0
    logits.requires_grad_(True)
    pixels = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 0, 3]])
    pair = torch.tensor([0, 0, 1, 1])
    loss = gap_loss(logits, pixels, pair)
    background = -F.log_softmax(logits.detach(), dim=1)[0, 0, 0]
    expected = (background[1] + background[3]) / 2
    assert torch.isclose(loss, expected)
    loss.backward()
    moved = logits.grad[0, 1, 0] != 0
    assert moved.tolist() == [False, True, False, True]  # only each bag's best pixel


def test_gap_loss_without_bags_is_zero_with_a_gradient():
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    loss = gap_loss(logits, torch.zeros((0, 3), dtype=torch.long),
                    torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_training_batches_carry_gap_bags_only_after_warm_up_and_when_asked():
    from wsi_s2lcm.training.config import TrainConfig
    from wsi_s2lcm.training.dataset import TrainImage
    from wsi_s2lcm.training.pseudo import EmaMaps
    from wsi_s2lcm.training.trainer import _make_batch

    target = np.full((64, 64), 255, np.uint8)
    ids = np.zeros((64, 64), np.int32)
    for number, column in enumerate((10, 20, 30, 40, 50), start=1):
        ids[20:44, column] = number
    target[ids > 0] = 1
    image = TrainImage("a", "a.png", np.full((64, 64, 3), 200, np.uint8), target, ids)
    ema = EmaMaps(0.1, 0.95)
    config = TrainConfig(mpp=0.5, crop_size=64, use_gap=True, gap_max_um=6.0, scale_min=1,
                         scale_max=1)
    rng = np.random.default_rng(0)
    *_, gaps = _make_batch([image, image], [0, 1], ema, config, rng, use_prior=True)
    pixels, pair = gaps
    assert int(pair.max()) + 1 == 8  # 4 neighbouring pairs per crop, numbered across the batch
    assert set(pixels[:, 0].tolist()) == {0, 1}
    assert _make_batch([image], [0], ema, config, rng, use_prior=False)[3] is None
    off = TrainConfig(mpp=0.5, crop_size=64, scale_min=1, scale_max=1)
    assert _make_batch([image], [0], ema, off, rng, use_prior=True)[3] is None
