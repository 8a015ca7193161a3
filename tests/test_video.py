import pytest
import torch

from memkit.data.long_video import long_suite, long_video, short_suite, short_video
from memkit.video import Video, clvos_eval_frames

SMALL = {"size": (40, 48)}


def tiny(t=5, h=4, w=6, **changes):
    fields = {"name": "v", "frames": torch.zeros(t, 3, h, w, dtype=torch.uint8),
              "masks": torch.zeros(t, h, w, dtype=torch.uint8),
              "eval_frames": torch.tensor([0, 2], dtype=torch.int64)}
    return Video(**{**fields, **changes})


def test_a_video_holds_frames_masks_and_the_frames_it_is_scored_on():
    video = tiny(meta={"fps": 24})
    assert len(video) == 5 and video.meta == {"fps": 24} and tiny().meta == {}
    with pytest.raises(AttributeError):
        video.name = "w"  # frozen


@pytest.mark.parametrize(("changes", "error", "match"), [
    ({"frames": torch.zeros(5, 3, 4, 6)}, ValueError, "frames of dtype torch.uint8 with 4 dim"),
    ({"frames": torch.zeros(5, 4, 6, dtype=torch.uint8)}, ValueError, "frames of dtype"),
    ({"frames": torch.zeros(5, 4, 4, 6, dtype=torch.uint8)}, ValueError, r"\[T >= 1, 3, H, W\]"),
    ({"frames": torch.zeros(0, 3, 4, 6, dtype=torch.uint8),
      "masks": torch.zeros(0, 4, 6, dtype=torch.uint8),
      "eval_frames": torch.zeros(0, dtype=torch.int64)}, ValueError, r"\[T >= 1, 3, H, W\]"),
    ({"masks": torch.zeros(5, 4, 5, dtype=torch.uint8)}, ValueError,
     r"masks of shape \[T, H, W\] = \[5, 4, 6\].*got \[5, 4, 5\]"),
    ({"masks": torch.zeros(4, 4, 6, dtype=torch.uint8)}, ValueError, "to match the frames"),
    ({"masks": torch.zeros(5, 4, 6, dtype=torch.int64)}, ValueError, "masks of dtype torch.uint8"),
    ({"eval_frames": torch.tensor([0, 5])}, ValueError, r"eval_frames in 0..4, got values from 0"),
    ({"eval_frames": torch.tensor([-1])}, ValueError, r"eval_frames in 0..4"),
    ({"eval_frames": torch.tensor([2, 2])}, ValueError, "strictly increasing"),
    ({"eval_frames": torch.tensor([0, 2], dtype=torch.int32)}, ValueError, "torch.int64"),
    ({"eval_frames": [0, 2]}, TypeError, "eval_frames to be a torch.Tensor"),
    ({"frames": None}, TypeError, "frames to be a torch.Tensor of torch.uint8, got NoneType"),
    ({"meta": [1]}, TypeError, "meta to be a mapping, got list"),
    ({"name": ""}, TypeError, "non-empty name"),
])
def test_a_video_refuses_inconsistent_fields(changes, error, match):
    with pytest.raises(error, match=match):
        tiny(**changes)


def test_clvos_eval_frames_are_the_first_and_middle_frame_of_each_sub_chunk():
    assert clvos_eval_frames([0, 100, 250], 300).tolist() == [0, 50, 100, 175, 250, 275]
    assert clvos_eval_frames([0, 1], 3).tolist() == [0, 1, 2]  # a one-frame chunk counts once
    assert clvos_eval_frames([0], 1).tolist() == [0]
    assert clvos_eval_frames((0, 7), 10).dtype == torch.int64
    for starts, n in (([], 5), ([1, 3], 5), ([0, 3, 3], 5), ([0, 5], 5)):
        with pytest.raises(ValueError, match="strictly increasing chunk starts"):
            clvos_eval_frames(starts, n)
    with pytest.raises(ValueError, match="n_frames >= 1"):
        clvos_eval_frames([0], 0)


def test_same_seed_same_video_and_another_seed_another():
    a, b = long_video(3, n_frames=400, **SMALL), long_video(3, n_frames=400, **SMALL)
    assert torch.equal(a.frames, b.frames) and torch.equal(a.masks, b.masks)
    assert torch.equal(a.eval_frames, b.eval_frames) and a.meta.keys() == b.meta.keys()
    assert all(torch.equal(torch.as_tensor(a.meta[k]), torch.as_tensor(b.meta[k])) for k in a.meta)
    c = long_video(4, n_frames=400, **SMALL)
    assert not torch.equal(a.frames, c.frames) and not torch.equal(a.masks, c.masks)
    assert a.frames.shape == (400, 3, 40, 48) and a.masks.shape == (400, 40, 48)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regimes_switch_in_sub_chunks_of_50_to_300_frames_and_recur(seed):
    video = long_video(seed, n_frames=2000, size=(16, 16), n_regimes=3)
    starts, regime = video.meta["chunk_starts"], video.meta["regime"]
    lengths = torch.diff(torch.tensor([*starts, 2000]))
    assert starts[0] == 0 and bool(((lengths >= 50) & (lengths <= 300)).all())
    chunk_regimes = [int(regime[s]) for s in starts]
    assert chunk_regimes == [k % 3 for k in range(len(starts))]
    assert torch.equal(regime, torch.repeat_interleave(torch.tensor(chunk_regimes), lengths))
    assert all(chunk_regimes.count(r) >= 2 for r in range(3)), "every regime recurs"
    assert torch.equal(video.eval_frames, clvos_eval_frames(starts, 2000))


def test_a_recurring_regime_looks_the_same_and_the_others_differ():
    video = long_video(7, n_frames=900, size=(32, 32), n_distractors=0, occluders=False,
                       jitter=0, n_regimes=2)
    starts = video.meta["chunk_starts"]
    first, again, other = starts[0], starts[2], starts[1]
    assert video.meta["regime"][[first, again, other]].tolist() == [0, 0, 1]
    free = (video.masks[first] == 0) & (video.masks[again] == 0) & (video.masks[other] == 0)
    assert torch.equal(video.frames[first][:, free], video.frames[again][:, free])
    changed = (video.frames[first][:, free] != video.frames[other][:, free]).any(dim=0)
    assert changed.float().mean() > 0.5


def colour_codes(frames):
    f = frames.to(torch.int32)
    return f[:, 0] * 65536 + f[:, 1] * 256 + f[:, 2]


@pytest.mark.parametrize("seed", [0, 5])
def test_the_mask_is_exactly_the_pixels_of_the_flat_coloured_target(seed):
    video = long_video(seed, n_frames=600, size=(40, 56), texture="flat", n_distractors=2)
    codes, masks = colour_codes(video.frames), video.masks.bool()
    seen = 0
    for t in range(len(video)):
        if not masks[t].any():
            continue
        inside = codes[t][masks[t]]
        assert bool((inside == inside[0]).all()), f"frame {t}: one colour inside the mask"
        assert not bool((codes[t][~masks[t]] == inside[0]).any()), f"frame {t}: only inside"
        seen += 1
    assert seen > 500 and set(video.masks.unique().tolist()) == {0, 1}


def test_occluded_pixels_are_left_out_of_the_mask():
    on = long_video(2, n_frames=600, size=(40, 56), texture="flat")
    off = long_video(2, n_frames=600, size=(40, 56), texture="flat", occluders=False)
    occluder = (on.frames != off.frames).any(dim=1)  # where the occluder is painted
    assert torch.equal(on.masks.bool(), off.masks.bool() & ~occluder)
    hidden = (off.masks.bool() & occluder).flatten(1).any(dim=1)
    assert torch.equal(on.meta["occluded"], hidden) and int(hidden.sum()) >= 10
    assert not off.meta["occluded"].any()


def test_distractors_are_painted_but_never_labelled():
    with_d = long_video(4, n_frames=300, size=(40, 56), texture="flat", n_distractors=2)
    without = long_video(4, n_frames=300, size=(40, 56), texture="flat", n_distractors=0)
    assert torch.equal(with_d.masks, without.masks)
    painted = (with_d.frames != without.frames).any(dim=1)
    assert painted.float().mean() > 0.05 and not (painted & with_d.masks.bool()).any()


def test_the_camera_shifts_the_whole_background():
    video = long_video(1, n_frames=200, size=(32, 32), n_distractors=0, occluders=False,
                       jitter=3)
    camera = video.meta["camera"]
    assert camera.abs().max() == 3 and len(camera.unique(dim=0)) > 5
    a = 0
    b = next(t for t in range(1, 50) if not torch.equal(camera[t], camera[a]))
    dx, dy = (camera[b] - camera[a]).tolist()
    ys, xs = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    ya, xa = ys + dy, xs + dx  # frame b at (y, x) shows what frame a showed at (y + dy, x + dx)
    ok = (ya >= 0) & (ya < 32) & (xa >= 0) & (xa < 32)
    ok &= video.masks[b] == 0
    ok[ok.clone()] &= video.masks[a][ya[ok], xa[ok]] == 0
    assert ok.sum() > 300
    assert torch.equal(video.frames[b][:, ys[ok], xs[ok]], video.frames[a][:, ya[ok], xa[ok]])


def test_photo_and_noise_textures_are_not_flat_and_the_target_moves():
    for texture in ("photo", "noise"):
        video = long_video(0, n_frames=300, size=(48, 48), texture=texture)
        assert video.frames.float().std(dim=(2, 3)).mean() > 10
        area = video.masks.flatten(1).sum(1).float()
        assert area[~video.meta["occluded"]].min() > 0.03 * 48 * 48  # the target stays in view
        centre = [torch.nonzero(m).float().mean(0) for m in video.masks[::50]]
        assert max(float((c - centre[0]).norm()) for c in centre) > 3


def test_short_videos_have_one_regime_and_are_scored_the_davis_way():
    video = short_video(0)
    assert len(video) == 80 and video.meta["chunk_starts"] == [0]
    assert not video.meta["regime"].any()
    assert video.eval_frames.tolist() == list(range(1, 79))
    assert short_video(0, n_frames=2).eval_frames.tolist() == [0, 1]


def test_suites_are_seeded_lists_of_distinct_named_videos():
    suite = long_suite(2, seed=5, n_frames=120, size=(24, 24), chunk_frames=(20, 50))
    assert [v.name for v in suite] == ["long_5_0", "long_5_1"]
    assert not torch.equal(suite[0].frames, suite[1].frames)
    again = long_suite(2, seed=5, n_frames=120, size=(24, 24), chunk_frames=(20, 50))
    assert all(torch.equal(a.frames, b.frames) for a, b in zip(suite, again, strict=True))
    short = short_suite(3, seed=1, n_frames=30, size=(24, 24))
    assert [len(v) for v in short] == [30, 30, 30] and short[2].name == "short_1_2"
    with pytest.raises(ValueError, match="n_videos >= 1"):
        long_suite(0)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"seed": -1}, "seed >= 0"), ({"seed": 0, "n_frames": 0}, "n_frames >= 1"),
    ({"seed": 0, "size": (8, 40)}, r"size \(H, W\) of integers >= 16"),
    ({"seed": 0, "texture": "plaid"}, "texture in"),
    ({"seed": 0, "drift": 1.5}, r"drift in \[0, 1\]"),
    ({"seed": 0, "n_regimes": 0}, "n_regimes >= 1"),
    ({"seed": 0, "chunk_frames": (100, 150)}, "2 \\* lo <= hi"),
])
def test_bad_generator_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        long_video(**kwargs)


def test_videos_compare_by_identity_and_hash():
    a, b = tiny(), tiny()
    assert a == a and a != b and len({a, b}) == 2
