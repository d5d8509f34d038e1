"""segdist.inference: whole vs sliding-window inference, window coverage, TTA, mixed image sizes."""

import pytest
import torch
from torch import nn

from segdist.models.inference import (
    NO_TTA,
    TTA,
    check_mode,
    infer,
    infer_each,
    labels_at,
    parse_tta,
    slide_logits,
    window_starts,
)

CLASSES = 5


class ContextNet(nn.Module):
    """Small conv net with a 7x7 receptive field and a stride-2 stage, so padding and windows matter."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                                  nn.ReLU(), nn.Upsample(scale_factor=2), nn.Conv2d(8, CLASSES, 3, padding=1))

    def forward(self, x):
        return self.body(x)


class Constant(nn.Module):
    """Logits 1 everywhere: any pixel no window covers would come out 0/0 = NaN."""

    def forward(self, x):
        return x.new_ones(x.shape[0], CLASSES, *x.shape[-2:])


@pytest.fixture
def context_net():
    torch.manual_seed(0)
    return ContextNet().eval()


@pytest.fixture
def pixelwise():
    """A 1x1 convolution: each pixel's logits depend on that pixel only (and flipping commutes with it)."""
    torch.manual_seed(0)
    return nn.Conv2d(3, CLASSES, 1).eval()


@pytest.mark.parametrize("size", [(64, 96), (50, 70)])
def test_slide_with_a_window_covering_the_image_equals_whole(context_net, size):
    images = torch.randn(2, 3, *size)
    whole = infer(context_net, images)
    for stride in (size, (size[0] // 2, size[1] // 3)):
        slide = infer(context_net, images, "slide", crop=size, stride=stride)
        assert torch.equal(slide, whole)


@pytest.mark.parametrize("length,window,stride", [(100, 32, 24), (96, 32, 32), (33, 32, 1), (70, 64, 48), (5, 5, 5)])
def test_windows_cover_every_position_and_stay_inside(length, window, stride):
    starts = window_starts(length, window, stride)
    covered = torch.zeros(length, dtype=torch.int64)
    for s in starts:
        assert 0 <= s <= length - window
        covered[s : s + window] += 1
    assert covered.min() >= 1 and starts[-1] == length - window
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("size", [(100, 70), (20, 70), (20, 20)])  # larger than, partly and wholly inside the window
def test_sliding_covers_every_pixel(size):
    logits = slide_logits(Constant(), torch.randn(1, 3, *size), crop=(32, 32), stride=(24, 20))
    assert logits.shape == (1, CLASSES, *size)
    assert torch.all(logits == 1)


def test_sliding_averages_overlaps_to_the_pixelwise_answer(pixelwise):
    images = torch.randn(2, 3, 100, 70)
    whole = infer(pixelwise, images)
    slide = infer(pixelwise, images, "slide", crop=(32, 32), stride=(24, 20))
    torch.testing.assert_close(slide, whole, rtol=0, atol=1e-6)


def test_slide_on_an_image_larger_than_the_window_returns_probabilities(context_net):
    probs = infer(context_net, torch.randn(2, 3, 100, 70), "slide", crop=(32, 32), stride=(24, 20))
    assert probs.shape == (2, CLASSES, 100, 70) and torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 100, 70))


@pytest.mark.parametrize("tta", ["flip", "scales=0.5,0.75,1.0,1.25,1.5", "scales=0.5,1.0,1.5,flip"])
@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_tta_returns_probabilities_at_the_input_size(context_net, tta, mode):
    images = torch.randn(2, 3, 50, 70)
    window = {"crop": (32, 32), "stride": (24, 24)} if mode == "slide" else {}
    probs = infer(context_net, images, mode, tta=parse_tta(tta), **window)
    assert probs.shape == (2, CLASSES, 50, 70) and torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 50, 70))


def test_flip_tta_averages_the_flipped_view_back_in_place(pixelwise, context_net):
    images = torch.randn(1, 3, 50, 70)
    # a flip-equivariant model gives the same answer for both views
    torch.testing.assert_close(infer(pixelwise, images, tta=TTA(flip=True)), infer(pixelwise, images))
    # for any model: the mean of the plain view and the un-flipped prediction of the flipped image
    expected = (infer(context_net, images) + infer(context_net, images.flip(-1)).flip(-1)) / 2
    torch.testing.assert_close(infer(context_net, images, tta=TTA(flip=True)), expected)


def test_infer_each_batches_equal_sizes_and_keeps_each_size(context_net):
    images = [torch.randn(3, 50, 70), torch.randn(3, 64, 64), torch.randn(3, 50, 70)]
    probs = infer_each(context_net, images)
    assert [tuple(p.shape) for p in probs] == [(CLASSES, 50, 70), (CLASSES, 64, 64), (CLASSES, 50, 70)]
    torch.testing.assert_close(probs[1], infer(context_net, images[1][None])[0])
    torch.testing.assert_close(torch.stack([probs[0], probs[2]]), infer(context_net, torch.stack(images[::2])))


def test_labels_at_resizes_probabilities_to_the_label_size():
    probs = torch.zeros(3, 4, 6)
    probs[0, :, :3] = 1  # left half is class 0,
    probs[2, :, 3:] = 1  # right half class 2
    labels = labels_at(probs, (8, 12))
    assert labels.shape == (8, 12) and labels[:, :6].eq(0).all() and labels[:, 6:].eq(2).all()


def test_parse_tta():
    assert parse_tta(None) == parse_tta("none") == NO_TTA and str(NO_TTA) == "none"
    assert parse_tta("flip") == TTA((1.0,), True) and str(parse_tta("flip")) == "flip"
    tta = parse_tta("scales=0.5,0.75,1.0,1.25,1.5,flip")
    assert tta == TTA((0.5, 0.75, 1.0, 1.25, 1.5), True) and tta.views == 10
    assert str(tta) == "scales=0.5,0.75,1,1.25,1.5,flip" and parse_tta(str(tta)) == tta
    for bad in ("mirror", "scales=", "scales=a,1", "scales=0,1", "scales=flip"):
        with pytest.raises(ValueError):
            parse_tta(bad)


def test_check_mode_refuses_what_infer_cannot_do():
    check_mode("whole", None, None)
    check_mode("slide", (64, 64), (32, 48))
    cases = {("tiles", None, None): "not valid", ("slide", None, None): "needs --crop",
             ("whole", (64, 64), (32, 32)): "belong to --mode slide",
             ("slide", (64, 64), (65, 32)): "would leave pixels", ("slide", (0, 64), (1, 1)): "positive"}
    for (mode, crop, stride), message in cases.items():
        with pytest.raises(ValueError, match=message):
            check_mode(mode, crop, stride)
