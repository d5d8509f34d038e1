"""Tests for segdist.models.losses.build_loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segdist.models.losses import LOSSES, build_loss

NUM_CLASSES = 4
IGNORE = 255
WEIGHTS = [0.5, 1.0, 2.0, 4.0]


def _build(name: str, **kwargs) -> torch.nn.Module:
    """Build ``name`` with the arguments it needs (weighted_ce requires class weights)."""
    if name == "weighted_ce":
        kwargs.setdefault("class_weights", WEIGHTS)
    return build_loss(name, NUM_CLASSES, ignore_index=IGNORE, **kwargs)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits [2, C, 8, 8] and targets whose right half (columns 4:) is ignored."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, NUM_CLASSES, 8, 8, generator=generator)
    target = torch.randint(0, NUM_CLASSES, (2, 8, 8), generator=generator)
    target[..., 4:] = IGNORE
    return logits, target


def _loss_and_grad(loss_fn: torch.nn.Module, logits: torch.Tensor, target: torch.Tensor):
    logits = logits.clone().requires_grad_(True)
    loss = loss_fn(logits, target)
    loss.backward()
    return loss.detach(), logits.grad


@pytest.mark.parametrize("name", LOSSES)
def test_loss_is_finite_scalar_and_backpropagates(name: str) -> None:
    loss, grad = _loss_and_grad(_build(name), *_batch())
    assert loss.shape == () and torch.isfinite(loss) and loss > 0
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name", LOSSES)
def test_confident_correct_prediction_has_lower_loss(name: str) -> None:
    _, target = _batch()
    one_hot = F.one_hot(target.clamp(max=NUM_CLASSES - 1), NUM_CLASSES).permute(0, 3, 1, 2)
    correct = 20 * one_hot.float()
    wrong = correct.roll(1, dims=1)
    loss_fn = _build(name)
    assert loss_fn(correct, target) < 1e-3 < loss_fn(wrong, target)


@pytest.mark.parametrize("name", LOSSES)
def test_ignored_pixels_do_not_contribute(name: str) -> None:
    loss_fn = _build(name)
    logits, target = _batch()
    loss, grad = _loss_and_grad(loss_fn, logits, target)

    # Arbitrary logits at ignored pixels leave the loss unchanged...
    scrambled = logits.clone()
    scrambled[..., 4:] = 100 * torch.randn_like(scrambled[..., 4:])
    torch.testing.assert_close(loss_fn(scrambled, target), loss)
    # ...get no gradient...
    assert (grad[..., 4:] == 0).all()
    # ...and the loss equals that of the valid pixels alone.
    torch.testing.assert_close(loss_fn(logits[..., :4], target[..., :4]), loss)


@pytest.mark.parametrize("name", LOSSES)
def test_all_ignored_batch_gives_zero_loss_and_zero_grad(name: str) -> None:
    logits, target = _batch()
    loss, grad = _loss_and_grad(_build(name), logits, torch.full_like(target, IGNORE))
    assert loss.shape == () and loss.item() == 0.0
    assert grad is not None and (grad == 0).all()


def test_focal_with_gamma_zero_is_cross_entropy() -> None:
    logits, target = _batch()
    focal = _build("focal", focal_gamma=0.0)
    expected = F.cross_entropy(logits, target, ignore_index=IGNORE)
    torch.testing.assert_close(focal(logits, target), expected)


def test_focal_with_alpha_matches_formula() -> None:
    logits, target = _batch()
    alpha = [0.1, 0.2, 0.3, 0.4]
    gamma = 2.0
    probs = logits.softmax(dim=1).permute(0, 2, 3, 1)[target != IGNORE]  # [P, C]
    labels = target[target != IGNORE]
    p_true = probs[torch.arange(len(labels)), labels]
    expected = (-torch.tensor(alpha)[labels] * (1 - p_true) ** gamma * p_true.log()).mean()
    actual = _build("focal", focal_gamma=gamma, focal_alpha=alpha)(logits, target)
    torch.testing.assert_close(actual, expected)


def test_weighted_ce_matches_manual_weighted_mean() -> None:
    logits, target = _batch()
    valid = target != IGNORE
    log_probs = logits.log_softmax(dim=1).permute(0, 2, 3, 1)[valid]
    labels = target[valid]
    pixel_weights = torch.tensor(WEIGHTS)[labels]
    nll = -log_probs[torch.arange(len(labels)), labels]
    expected = (pixel_weights * nll).sum() / pixel_weights.sum()
    torch.testing.assert_close(_build("weighted_ce")(logits, target), expected)


def _numpy_dice_loss(logits: np.ndarray, target: np.ndarray, ignore: int) -> float:
    """Soft Dice over the whole batch: mean over classes of 1 - 2|P.T| / (|P| + |T|).

    Classes absent from the valid target contribute 0 (but still count in the mean),
    matching segmentation_models_pytorch.
    """
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # [N, C, H, W]
    valid = target != ignore
    losses = []
    for c in range(logits.shape[1]):
        p = probs[:, c][valid]
        t = (target[valid] == c).astype(np.float64)
        losses.append(1 - 2 * (p * t).sum() / (p.sum() + t.sum()) if t.sum() > 0 else 0.0)
    return float(np.mean(losses))


def test_dice_matches_hand_computed_example() -> None:
    # Three classes on a 1x2x2 image; the ignored pixel has a confidently wrong logit.
    logits = np.log(
        np.array(
            [
                [[0.7, 0.2], [0.1, 0.98]],  # class 0
                [[0.2, 0.6], [0.1, 0.01]],  # class 1
                [[0.1, 0.2], [0.8, 0.01]],  # class 2
            ]
        )
    )[None]
    target = np.array([[[0, 1], [1, IGNORE]]])
    # By hand: class 0: 1 - 2*0.7/(1.0 + 1) = 0.3; class 1: 1 - 2*0.7/(0.9 + 2) = 1 - 1.4/2.9;
    # class 2 is absent from the valid pixels, so 0.
    hand = (0.3 + (1 - 1.4 / 2.9) + 0.0) / 3
    assert _numpy_dice_loss(logits, target, IGNORE) == pytest.approx(hand)
    loss = build_loss("dice", 3, ignore_index=IGNORE)(torch.tensor(logits), torch.tensor(target))
    assert loss.item() == pytest.approx(hand, rel=1e-6)


def test_dice_matches_numpy_reference_on_random_batch() -> None:
    logits, target = _batch(seed=1)
    target[0, 0, :4] = 3  # make sure every class is present in some valid pixel
    expected = _numpy_dice_loss(logits.double().numpy(), target.numpy(), IGNORE)
    assert _build("dice")(logits, target).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("class_weights", [None, WEIGHTS])
def test_dice_ce_is_weighted_sum(class_weights: list[float] | None) -> None:
    logits, target = _batch()
    dice = _build("dice")(logits, target)
    weight = None if class_weights is None else torch.tensor(class_weights)
    ce = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE)
    actual = _build("dice_ce", dice_weight=0.3, class_weights=class_weights)(logits, target)
    torch.testing.assert_close(actual, 0.3 * dice + 0.7 * ce)


def test_unknown_loss_lists_choices() -> None:
    with pytest.raises(ValueError, match="tversky") as error:
        build_loss("tversky", NUM_CLASSES)
    for name in LOSSES:
        assert name in str(error.value)


@pytest.mark.parametrize("name", ["weighted_ce", "dice_ce"])
def test_wrong_length_class_weights_raise(name: str) -> None:
    with pytest.raises(ValueError, match="3 entries but num_classes is 4"):
        build_loss(name, NUM_CLASSES, class_weights=[1.0, 2.0, 3.0])


def test_wrong_length_focal_alpha_raises() -> None:
    with pytest.raises(ValueError, match="focal_alpha has 5 entries"):
        build_loss("focal", NUM_CLASSES, focal_alpha=[0.2] * 5)


def test_weighted_ce_requires_weights() -> None:
    with pytest.raises(ValueError, match="requires class_weights"):
        build_loss("weighted_ce", NUM_CLASSES)


@pytest.mark.parametrize("name", ["ce", "focal", "dice", "lovasz"])
def test_unused_class_weights_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="not used"):
        build_loss(name, NUM_CLASSES, class_weights=WEIGHTS)


def test_invalid_dice_weight_raises() -> None:
    with pytest.raises(ValueError, match="dice_weight"):
        build_loss("dice_ce", NUM_CLASSES, dice_weight=1.5)
