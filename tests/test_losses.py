"""The loss terms on small hand-made tensors: pCE, MCR sampling and loss, MIL bags and loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wsi_s2lcm.training.losses import (
    IGNORE,
    binarize,
    block_labels,
    contrastive_loss,
    make_bags,
    mil_loss,
    pairwise_contrastive,
    partial_cross_entropy,
    sample_features,
)


def test_partial_cross_entropy_uses_labelled_pixels_only():
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, 0, 0] = 5.0  # confident nucleus at the one labelled pixel
    logits[0, 0, 1, 1] = 5.0  # confident background at an ignored pixel
    labels = torch.full((1, 2, 2), IGNORE)
    labels[0, 0, 0] = 1
    expected = -F.log_softmax(torch.tensor([0.0, 5.0]), 0)[1]
    assert torch.isclose(partial_cross_entropy(logits, labels), expected)


def test_partial_cross_entropy_without_labels_is_zero_with_a_gradient():
    logits = torch.randn(2, 2, 4, 4, requires_grad=True)
    loss = partial_cross_entropy(logits, torch.full((2, 4, 4), IGNORE))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_binarize_leaves_the_uncertain_band_unlabelled():
    p = torch.tensor([0.05, 0.2, 0.5, 0.8, 0.95])
    assert binarize(p, 0.8).tolist() == [0, 0, IGNORE, 1, 1]
    assert binarize(p, 0.5).tolist() == [0, 0, 1, 1, 1]


def test_block_labels_keep_only_unanimous_blocks():
    labels = torch.zeros(1, 4, 8, dtype=torch.long)
    labels[0, :2, 2:4] = 1  # the left block is mixed
    labels[0, :, 4:] = 1  # the right block is nucleus...
    labels[0, 3, 7] = IGNORE  # ...but one ignored pixel spoils it
    blocks = block_labels(labels, 4)
    assert blocks.tolist() == [[[IGNORE, IGNORE]]]
    labels[0, 3, 7] = 1
    labels[0, :2, 2:4] = 0
    assert block_labels(labels, 4).tolist() == [[[0, 1]]]


def test_pairwise_contrastive_matches_hand_computation():
    fg = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    bg = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    t = 0.5
    same = F.binary_cross_entropy_with_logits(torch.tensor(1.0 / t), torch.tensor(1.0))
    cross = F.binary_cross_entropy_with_logits(torch.tensor(0.0), torch.tensor(0.0))
    assert torch.isclose(pairwise_contrastive(fg, bg, t), same + cross)


def test_contrastive_loss_prefers_separated_classes():
    labels = torch.tensor([[[1, 1, 0, 0]]])
    separated = torch.tensor([[1.0, 1.0, -1.0, -1.0], [0.0, 0.1, 0.0, 0.1]]).view(1, 2, 1, 4)
    mixed = torch.tensor([[1.0, -1.0, 1.0, -1.0], [0.0, 0.1, 0.0, 0.1]]).view(1, 2, 1, 4)
    g = torch.Generator().manual_seed(0)
    assert contrastive_loss(separated, labels, 0.3, 10, generator=g) < contrastive_loss(
        mixed, labels, 0.3, 10, generator=g)


def test_contrastive_loss_samples_a_balanced_capped_set(monkeypatch):
    seen = {}

    def spy(fg, bg, temperature):
        seen["shapes"] = (fg.shape, bg.shape)
        return fg.sum() * 0

    monkeypatch.setattr("wsi_s2lcm.training.losses.pairwise_contrastive", spy)
    labels = torch.tensor([1] * 7 + [0] * 20 + [IGNORE] * 5).view(1, 4, 8)
    embeddings = torch.randn(1, 3, 4, 8)
    contrastive_loss(embeddings, labels, 0.3, max_samples=100)
    assert seen["shapes"] == ((7, 3), (7, 3))
    contrastive_loss(embeddings, labels, 0.3, max_samples=5)
    assert seen["shapes"] == ((5, 3), (5, 3))


@pytest.mark.parametrize("present", [1, 0, IGNORE])
def test_contrastive_loss_with_an_empty_class_is_zero_not_nan(present):
    embeddings = torch.randn(2, 8, 4, 4, requires_grad=True)
    labels = torch.full((2, 4, 4), present)
    labels[0, 0, 0] = 1 - present if present in (0, 1) else IGNORE
    loss = contrastive_loss(embeddings, labels, 0.1, 6000)
    loss.backward()
    assert loss.item() == 0.0 and not torch.isnan(embeddings.grad).any()


def test_sample_features_equals_upsampling_then_indexing():
    torch.manual_seed(0)
    features = [torch.randn(2, 3, 2, 2), torch.randn(2, 4, 4, 4), torch.randn(2, 2, 8, 8)]
    index = torch.tensor([[0, 0, 0], [1, 7, 7], [0, 3, 5], [1, 2, 6], [0, 7, 0]])
    sampled = sample_features(features, index, (8, 8))
    full = torch.cat([F.interpolate(f, size=(8, 8), mode="bilinear", align_corners=False)
                      for f in features], dim=1)
    expected = full[index[:, 0], :, index[:, 1], index[:, 2]]
    assert sampled.shape == (5, 9)
    assert torch.allclose(sampled, expected, atol=1e-6)


def test_make_bags_builds_positive_and_negative_bags():
    labels = torch.full((2, 4, 4), IGNORE)
    labels[0, 0, :2] = 1
    labels[1, 2:, :] = 0
    generator = torch.Generator().manual_seed(1)
    index, bag_labels = make_bags(labels, bags=6, bag_size=5, generator=generator)
    assert index.shape == (12, 5, 3) and bag_labels.tolist() == [1.0] * 6 + [0.0] * 6
    member_labels = labels[index[..., 0], index[..., 1], index[..., 2]]
    assert ((member_labels == 1).sum(dim=1)[:6] >= 1).all(), "a positive bag holds a nucleus pixel"
    assert (member_labels[6:] == 0).all(), "a negative bag holds background only"
    assert (member_labels != IGNORE).all(), "ignored pixels never enter a bag"


def test_make_bags_without_nucleus_pixels_makes_negative_bags_only():
    labels = torch.zeros(1, 3, 3, dtype=torch.long)
    index, bag_labels = make_bags(labels, bags=2, bag_size=4)
    assert bag_labels.tolist() == [0.0, 0.0]


def test_make_bags_without_labels_makes_none_and_the_loss_is_zero():
    index, bag_labels = make_bags(torch.full((1, 3, 3), IGNORE), bags=2, bag_size=4)
    assert index.shape == (0, 4, 3)
    logits = torch.zeros(0, requires_grad=True)
    assert mil_loss(logits, bag_labels).item() == 0.0


def test_mil_loss_is_bag_level_bce():
    logits = torch.tensor([2.0, -1.0])
    labels = torch.tensor([1.0, 0.0])
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2
    assert math.isclose(mil_loss(logits, labels).item(), expected, rel_tol=1e-6)


def test_attention_mil_learns_which_bags_hold_a_positive_instance():
    from wsi_s2lcm.network import AttentionMIL

    torch.manual_seed(0)
    labels = torch.zeros(4, 6, 6, dtype=torch.long)
    labels[:, 1, 1] = 1
    features = labels.float().unsqueeze(1).repeat(1, 4, 1, 1) + 0.1 * torch.randn(4, 4, 6, 6)
    model = AttentionMIL(4, 8, 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        index, bag_labels = make_bags(labels, 8, 6, generator)
        bags = sample_features([features], index.reshape(-1, 3), (6, 6)).reshape(16, 6, 4)
        loss = mil_loss(model(bags)[0], bag_labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1
