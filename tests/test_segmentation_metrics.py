import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memkit.kernels.segmentation import (
    boundary_f,
    boundary_f_frames,
    boundary_f_reference,
    boundary_map,
    boundary_radius,
    j_and_f,
    jaccard,
    jaccard_frames,
    jaccard_reference,
)


def square(top, left, side, shape=(40, 40)):
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[top:top + side, left:left + side] = True
    return mask


def test_the_boundary_of_a_square_is_the_outline_of_the_box_one_up_and_left():
    # Pixels differing from their right, lower or lower-right neighbour: the 10x10 square at
    # rows/cols 10..19 has the 11x11 outline of rows/cols 9..19 as its boundary (40 pixels).
    edge = boundary_map(square(10, 10, 10)[None])[0]
    outline = square(9, 9, 11) & ~square(10, 10, 9)
    assert torch.equal(edge, outline) and int(edge.sum()) == 40
    dot = boundary_map(square(5, 5, 1)[None])[0]
    assert dot.nonzero().tolist() == [[4, 4], [4, 5], [5, 4], [5, 5]]


def test_no_boundary_along_the_right_and_bottom_image_border():
    full = torch.ones(1, 6, 7, dtype=torch.bool)
    assert not boundary_map(full).any()
    corner = torch.zeros(1, 6, 7, dtype=torch.bool)
    corner[0, 3:, 4:] = True  # touches the bottom and right borders
    assert int(boundary_map(corner).sum()) == 4 + 3  # row 2 cols 3..6, col 3 rows 3..5


def test_jaccard_of_a_square_and_its_shifted_copy_by_hand():
    a = square(10, 10, 10)
    assert jaccard(a, torch.roll(a, 3, dims=1)) == pytest.approx(70 / 130)
    assert jaccard(a, torch.roll(a, 5, dims=1)) == pytest.approx(50 / 150)
    assert jaccard(a, a) == 1.0
    assert jaccard(a, torch.zeros_like(a)) == 0.0
    assert jaccard(torch.zeros_like(a), torch.zeros_like(a)) == 1.0  # both empty


def test_boundary_f_of_a_square_shifted_beyond_the_tolerance_by_hand():
    # Radius 2, shift 5: of the 40 predicted boundary pixels, 8 on the top row (cols 12..19),
    # 8 on the bottom row and 4 on the right column (rows 10, 11, 17, 18) are within 2 pixels of
    # the shifted outline: P = R = 20 / 40, so F = 0.5.
    a = square(10, 10, 10)
    assert boundary_f(a, torch.roll(a, 5, dims=1), bound_th=2) == pytest.approx(0.5)
    assert boundary_f(a, torch.roll(a, 2, dims=1), bound_th=2) == 1.0
    assert boundary_f(a, a) == 1.0


def test_boundary_f_empty_mask_conventions_and_far_apart_masks():
    a, empty = square(2, 2, 5), torch.zeros(40, 40, dtype=torch.bool)
    assert boundary_f(empty, empty) == 1.0
    assert boundary_f(empty, a) == 0.0 and boundary_f(a, empty) == 0.0
    assert boundary_f(a, square(30, 30, 5)) == 0.0


def test_the_davis_tolerance_radius():
    assert boundary_radius((96, 96)) == 2  # ceil(0.008 * 135.8)
    assert boundary_radius((480, 854)) == 8  # ceil(0.008 * 979.6)
    assert boundary_radius((480, 854), 3) == 3 and boundary_radius((10, 10), 1.0) == 1
    for bad in (0, -0.1, 2.5, float("nan"), True):
        with pytest.raises(ValueError, match="bound_th"):
            boundary_radius((10, 10), bad)


def rectangles(data, t, h, w):
    """Unions of random rectangles: masks with realistic, mostly sparse boundaries."""
    masks = torch.zeros(t, h, w, dtype=torch.bool)
    for frame in range(t):
        for _ in range(data.draw(st.integers(0, 3))):
            y0, x0 = data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1))
            masks[frame, y0:data.draw(st.integers(y0, h)), x0:data.draw(st.integers(x0, w))] = True
    return masks


@settings(max_examples=120, deadline=None)
@given(data=st.data(), t=st.integers(1, 3), h=st.integers(1, 24), w=st.integers(1, 24),
       kind=st.sampled_from(["noise", "rectangles"]),
       bound_th=st.sampled_from([0.008, 0.05, 0.15, 1, 2, 4]))
def test_fast_scores_equal_the_frame_by_frame_reference(data, t, h, w, kind, bound_th):
    if kind == "noise":
        seed, density = data.draw(st.integers(0, 2**31)), data.draw(st.floats(0, 1))
        g = torch.Generator().manual_seed(seed)
        pred, gt = (torch.rand(t, h, w, generator=g) < density for _ in range(2))
    else:
        pred, gt = rectangles(data, t, h, w), rectangles(data, t, h, w)
    np.testing.assert_allclose(jaccard_frames(pred, gt).numpy(), jaccard_reference(pred, gt),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(boundary_f_frames(pred, gt, bound_th).numpy(),
                               boundary_f_reference(pred, gt, bound_th), rtol=0, atol=1e-12)


def test_j_and_f_averages_over_frames_then_objects():
    gt = torch.zeros(4, 40, 50, dtype=torch.uint8)
    gt[:, 5:15, 5:15] = 1
    gt[:, 25:35, 25:35] = 2
    pred = torch.where(gt == 1, gt, torch.zeros_like(gt))  # object 1 right, object 2 missed
    assert j_and_f(pred, gt) == {"J": 0.5, "F": 0.5, "JF": 0.5}
    pred[2:] = gt[2:]  # frames 2, 3 now perfect
    assert j_and_f(pred, gt) == {"J": 0.75, "F": 0.75, "JF": 0.75}
    assert j_and_f(pred, gt, frames=torch.tensor([2, 3])) == {"J": 1.0, "F": 1.0, "JF": 1.0}
    shifted = torch.roll(gt, 5, dims=2)
    score = j_and_f(shifted, gt, frames=[0], bound_th=2)
    assert score["J"] == pytest.approx(1 / 3) and score["F"] == pytest.approx(0.5)
    assert score["JF"] == pytest.approx((1 / 3 + 0.5) / 2)


def test_objects_are_counted_over_the_whole_video_even_when_frames_are_chosen():
    gt = torch.zeros(2, 20, 20, dtype=torch.uint8)
    gt[:, 2:6, 2:6] = 1
    gt[0, 10:15, 10:15] = 2  # object 2 only in frame 0
    pred = gt.clone()
    pred[1] = 0  # misses object 1 in frame 1; object 2 rightly absent there
    assert j_and_f(pred, gt, frames=[1]) == {"J": 0.5, "F": 0.5, "JF": 0.5}
    assert j_and_f(pred, gt, frames=[0])["JF"] == 1.0


def test_j_and_f_without_objects_scores_the_foreground_against_nothing():
    empty = np.zeros((2, 8, 8), dtype=np.uint8)
    assert j_and_f(empty, empty)["JF"] == 1.0
    some = empty.copy()
    some[1, 2:4, 2:4] = 1
    assert j_and_f(some, empty) == {"J": 0.5, "F": 0.5, "JF": 0.5}


def test_bad_input_is_refused_with_what_was_expected():
    gt = torch.zeros(2, 8, 8, dtype=torch.uint8)
    gt[:, 1:3, 1:3] = 1
    with pytest.raises(ValueError, match=r"one shape \[T, H, W\]"):
        j_and_f(gt[0], gt[0])
    with pytest.raises(ValueError, match=r"one shape \[H, W\] or \[T, H, W\]"):
        jaccard(gt, gt[:1, :4])
    with pytest.raises(TypeError, match="bool or integer dtype"):
        boundary_f(gt.float(), gt)
    with pytest.raises(TypeError, match=r"torch\.Tensor or numpy array"):
        jaccard([[1]], [[1]])
    with pytest.raises(ValueError, match="predicted ids go up to 3"):
        j_and_f(gt * 3, gt)
    with pytest.raises(ValueError, match=r"frames in 0..1"):
        j_and_f(gt, gt, frames=[0, 2])
    with pytest.raises(ValueError, match="ids >= 0"):
        j_and_f(gt.long() - 1, gt.long())
