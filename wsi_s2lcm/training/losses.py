"""The S2L-CM loss terms: partial cross-entropy, multiscale contrastive regularization, pixel MIL,
and the gap between nucleus scribbles.

Labels everywhere are ``uint8``/``long`` maps with 1 nucleus, 0 background and 255 ignored. Every
term returns a scalar that is zero (and still part of the graph) when it has nothing to work on —
an empty class never produces NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wsi_s2lcm.training.scribbles import IGNORE


def _zero(reference: torch.Tensor) -> torch.Tensor:
    """A zero scalar connected to ``reference``'s graph."""
    return reference.sum() * 0.0


def partial_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over labelled pixels only (L_s, L_p).

    Parameters
    ----------
    logits
        ``(N, 2, H, W)``.
    labels
        ``(N, H, W)`` with 255 where unlabeled.
    """
    labels = labels.long()
    if not (labels != IGNORE).any():
        return _zero(logits)
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE)


def binarize(probability: torch.Tensor, threshold: float) -> torch.Tensor:
    """Labels from a nucleus probability: 1 where ``p >= t``, 0 where ``p <= 1 - t``, else 255."""
    labels = torch.full(probability.shape, IGNORE, dtype=torch.long, device=probability.device)
    labels[probability <= 1.0 - threshold] = 0
    labels[probability >= threshold] = 1
    return labels


def block_labels(labels: torch.Tensor, factor: int) -> torch.Tensor:
    """Labels at ``1/factor`` resolution: a block's label where all its pixels agree, else 255.

    Parameters
    ----------
    labels
        ``(N, H, W)`` with ``H`` and ``W`` multiples of ``factor``.
    """
    n, h, w = labels.shape
    blocks = labels.reshape(n, h // factor, factor, w // factor, factor).permute(0, 1, 3, 2, 4)
    blocks = blocks.reshape(n, h // factor, w // factor, factor * factor)
    first = blocks[..., 0]
    agree = (blocks == first.unsqueeze(-1)).all(dim=-1) & (first != IGNORE)
    return torch.where(agree, first, torch.full_like(first, IGNORE))


def pairwise_contrastive(fg: torch.Tensor, bg: torch.Tensor, temperature: float) -> torch.Tensor:
    """Pairwise BCE on cosine similarities: same-class pairs -> 1, fg-bg pairs -> 0.

    Parameters
    ----------
    fg, bg
        ``(n, D)`` embeddings of each class (same ``n >= 2``).
    temperature
        Divides the cosine similarity.
    """
    fg = F.normalize(fg.float(), dim=1)
    bg = F.normalize(bg.float(), dim=1)
    n = fg.shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=fg.device)
    same = torch.cat([(fg @ fg.T)[off_diagonal], (bg @ bg.T)[off_diagonal]]) / temperature
    cross = (fg @ bg.T).flatten() / temperature
    return F.binary_cross_entropy_with_logits(
        same, torch.ones_like(same)
    ) + F.binary_cross_entropy_with_logits(cross, torch.zeros_like(cross))


def contrastive_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    max_samples: int,
    min_samples: int = 2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One scale of the MCR term: balanced sampling of labelled pixels, then pairwise BCE.

    Parameters
    ----------
    embeddings
        ``(N, D, h, w)`` projection-head output.
    labels
        ``(N, h, w)`` labels at the same resolution (255 ignored).
    temperature
        Temperature of the cosine logits.
    max_samples
        At most this many pixels per class (``n = min(#fg, #bg, max_samples)``).
    min_samples
        Below this many per class the term is zero.
    generator
        Random generator of the sampling (on the CPU).

    Returns
    -------
    torch.Tensor
        Scalar loss; zero when a class is missing.
    """
    flat = embeddings.permute(0, 2, 3, 1).reshape(-1, embeddings.shape[1])
    labels = labels.reshape(-1)
    fg = torch.nonzero(labels == 1).squeeze(1)
    bg = torch.nonzero(labels == 0).squeeze(1)
    n = min(len(fg), len(bg), max_samples)
    if n < min_samples:
        return _zero(embeddings)
    fg = fg[torch.randperm(len(fg), generator=generator)[:n].to(fg.device)]
    bg = bg[torch.randperm(len(bg), generator=generator)[:n].to(bg.device)]
    return pairwise_contrastive(flat[fg], flat[bg], temperature)


def sample_features(
    features: list[torch.Tensor], index: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Hypercolumns at chosen full-resolution pixels, without upsampling whole maps.

    Each map is sampled as ``F.interpolate(map, size, mode="bilinear", align_corners=False)``
    would give at those pixels, and the samples are concatenated.

    Parameters
    ----------
    features
        Maps ``(N, C_i, h_i, w_i)`` at any resolutions.
    index
        ``(P, 3)`` long tensor of (image, row, column) at full resolution.
    size
        ``(H, W)`` full resolution.

    Returns
    -------
    torch.Tensor
        ``(P, sum C_i)``.
    """
    n, rows, cols = index[:, 0], index[:, 1].float(), index[:, 2].float()
    columns = []
    for feature in features:
        h, w = feature.shape[-2:]
        y = ((rows + 0.5) * (h / size[0]) - 0.5).clamp(min=0)
        x = ((cols + 0.5) * (w / size[1]) - 0.5).clamp(min=0)
        y0, x0 = y.floor().long(), x.floor().long()
        y1, x1 = (y0 + 1).clamp(max=h - 1), (x0 + 1).clamp(max=w - 1)
        wy, wx = (y - y0).unsqueeze(1), (x - x0).unsqueeze(1)
        channels_last = feature.permute(0, 2, 3, 1)
        top = channels_last[n, y0, x0] * (1 - wx) + channels_last[n, y0, x1] * wx
        bottom = channels_last[n, y1, x0] * (1 - wx) + channels_last[n, y1, x1] * wx
        columns.append(top * (1 - wy) + bottom * wy)
    return torch.cat(columns, dim=1)


def make_bags(
    labels: torch.Tensor, bags: int, bag_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw MIL bags of pixels from binarized labels.

    A positive bag holds ``m ~ U{1..K}`` nucleus pixels and ``K - m`` background pixels, a
    negative bag ``K`` background pixels (the standard MIL assumption: a bag is positive when it
    holds at least one positive instance). Pixels are drawn with replacement from the whole batch.
    Without nucleus pixels no positive bags are made; without background pixels positive bags are
    all nucleus and no negative bags are made.

    Parameters
    ----------
    labels
        ``(N, H, W)`` labels (1, 0, 255 ignored).
    bags
        Positive bags and negative bags to draw (each).
    bag_size
        Instances per bag, ``K``.
    generator
        Random generator (CPU).

    Returns
    -------
    index, bag_labels
        ``(B, K, 3)`` long (image, row, column) of each instance, and ``(B,)`` float labels.
    """
    labels = labels.cpu()
    fg = torch.nonzero(labels == 1)
    bg = torch.nonzero(labels == 0)

    def draw(pool: torch.Tensor, count: int) -> torch.Tensor:
        return pool[torch.randint(len(pool), (count,), generator=generator)]

    members, targets = [], []
    if len(fg):
        counts = torch.randint(1, bag_size + 1, (bags,), generator=generator) if len(bg) else (
            torch.full((bags,), bag_size)
        )
        for m in counts.tolist():
            parts = [draw(fg, m)] + ([draw(bg, bag_size - m)] if m < bag_size else [])
            members.append(torch.cat(parts))
            targets.append(1.0)
    if len(bg):
        for _ in range(bags):
            members.append(draw(bg, bag_size))
            targets.append(0.0)
    if not members:
        return torch.zeros((0, bag_size, 3), dtype=torch.long), torch.zeros(0)
    return torch.stack(members), torch.tensor(targets)


def mil_loss(bag_logits: torch.Tensor, bag_labels: torch.Tensor) -> torch.Tensor:
    """Bag-level BCE (zero without bags)."""
    if bag_logits.numel() == 0:
        return _zero(bag_logits)
    return F.binary_cross_entropy_with_logits(bag_logits.float(), bag_labels.to(bag_logits.device))


def gap_loss(logits: torch.Tensor, pixels: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
    """Each bag of pixels between two nucleus scribbles holds at least one background pixel.

    The bag's loss is the background cross-entropy of its most background-like pixel (MIL max
    pooling), averaged over bags (:mod:`wsi_s2lcm.training.gaps`).

    Parameters
    ----------
    logits
        ``(N, 2, H, W)``.
    pixels
        ``(P, 3)`` long (image, row, column) of the bags' pixels.
    pair
        ``(P,)`` long bag number ``0..K-1`` of each pixel; every number in use.

    Returns
    -------
    torch.Tensor
        Scalar; zero without bags.
    """
    if pair.numel() == 0:
        return _zero(logits)
    pixels, pair = pixels.to(logits.device), pair.to(logits.device)
    background = F.log_softmax(logits.float(), dim=1)[:, 0]
    loss = -background[pixels[:, 0], pixels[:, 1], pixels[:, 2]]
    bags = int(pair.max()) + 1
    best = torch.full((bags,), float("inf"), device=logits.device)
    best = best.scatter_reduce(0, pair, loss, reduce="amin", include_self=True)
    return best.mean()
