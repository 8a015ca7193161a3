import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from memkit.data.davis import davis_palette, read_davis, write_davis
from memkit.data.long_video import long_video
from memkit.video import Video

H, W = 40, 56


def generated(seed=0, n_frames=12, name=None):
    return long_video(seed, n_frames=n_frames, size=(H, W), chunk_frames=(3, 6), name=name)


def objects(name="multi", n_frames=4):
    """Three objects with ids 1..3 and smooth frames (little JPEG error)."""
    masks = torch.zeros(n_frames, H, W, dtype=torch.uint8)
    for t in range(n_frames):
        masks[t, 5:15, 5 + t:15 + t] = 1
        masks[t, 20:30, 30:45] = 2
        masks[t, 32:38, 10:20] = 3
    ramp = torch.linspace(0, 255, W).round().to(torch.uint8)
    frames = ramp.expand(n_frames, 3, H, W).clone()
    return Video(name, frames, masks, torch.arange(n_frames))


def test_the_davis_palette_is_the_pascal_voc_colour_map():
    palette = np.array(davis_palette()).reshape(256, 3)
    assert palette[:8].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0],
                                    [0, 0, 128], [128, 0, 128], [0, 128, 128], [128, 128, 128]]
    assert palette[255].tolist() == [224, 224, 192] and len(np.unique(palette, axis=0)) == 256


def test_write_then_read_gives_the_same_masks_and_frames_within_jpeg_error(tmp_path):
    videos = [generated(0, name="gen_a"), generated(1, name="gen_b"), objects()]
    write_davis(videos, tmp_path)
    back = read_davis(tmp_path, imageset=("2017", "val"))
    assert [v.name for v in back] == ["gen_a", "gen_b", "multi"]
    for video, read in zip(videos, back, strict=True):
        assert torch.equal(read.masks, video.masks)
        error = (read.frames.float() - video.frames.float()).abs()
        assert error.mean() < 3 and error.max() < 40 and read.frames.shape == video.frames.shape
        assert read.eval_frames.tolist() == list(range(len(video)))
        assert read.meta["annotated"].all()
        assert read.meta["frame_names"] == [f"{i:05d}" for i in range(len(video))]
    assert set(back[2].masks.unique().tolist()) == {0, 1, 2, 3}


def test_the_files_are_the_davis_layout(tmp_path):
    write_davis([objects()], tmp_path, resolution="Full-Resolution", imageset=("2016", "train"))
    frame = tmp_path / "JPEGImages/Full-Resolution/multi/00003.jpg"
    with Image.open(frame) as image:
        assert image.format == "JPEG" and image.size == (W, H)
    with Image.open(tmp_path / "Annotations/Full-Resolution/multi/00000.png") as mask:
        assert mask.mode == "P" and mask.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
        assert np.array(mask)[25, 35] == 2
    assert (tmp_path / "ImageSets/2016/train.txt").read_text() == "multi\n"
    write_davis([generated(name="later")], tmp_path, resolution="Full-Resolution",
                imageset=("2016", "train"))
    assert (tmp_path / "ImageSets/2016/train.txt").read_text() == "multi\nlater\n"
    assert [p.name for p in tmp_path.iterdir()] != [] and not list(tmp_path.glob(".*"))


def test_a_folder_with_only_the_first_frame_annotated(tmp_path):
    video = objects(n_frames=5)
    write_davis([video], tmp_path)
    for t in range(1, 5):
        (tmp_path / f"Annotations/480p/multi/{t:05d}.png").unlink()
    (read,) = read_davis(tmp_path)
    assert read.eval_frames.tolist() == [0] and read.meta["annotated"].tolist() == [1, 0, 0, 0, 0]
    assert torch.equal(read.masks[0], video.masks[0]) and not read.masks[1:].any()


def test_sparse_annotations_and_reading_only_the_first(tmp_path):
    video = objects(n_frames=10)
    flags = torch.zeros(10, dtype=torch.bool)
    flags[[0, 4, 9]] = True
    write_davis([Video("sparse", video.frames, video.masks, torch.arange(10),
                       {"annotated": flags})], tmp_path)
    pngs = sorted(p.name for p in (tmp_path / "Annotations/480p/sparse").iterdir())
    assert pngs == ["00000.png", "00004.png", "00009.png"]
    (read,) = read_davis(tmp_path, videos=["sparse"])
    assert read.eval_frames.tolist() == [0, 4, 9] and torch.equal(read.meta["annotated"], flags)
    assert torch.equal(read.masks[flags], video.masks[flags]) and not read.masks[~flags].any()
    (first,) = read_davis(tmp_path, annotated="first")
    assert first.eval_frames.tolist() == [0] and not first.masks[1:].any()


def test_grey_masks_are_ids_and_davis_2016_binary_masks_become_one(tmp_path):
    write_davis([objects(n_frames=2)], tmp_path)
    folder = tmp_path / "Annotations/480p/multi"
    binary = np.zeros((H, W), np.uint8)
    binary[3:9, 4:12] = 255
    Image.fromarray(binary).save(folder / "00000.png")  # mode L, values 0 / 255
    ids = np.zeros((H, W), np.uint8)
    ids[10:20, 10:20] = 2
    Image.fromarray(ids).save(folder / "00001.png")  # mode L, ids
    (read,) = read_davis(tmp_path)
    assert torch.equal(read.masks[0], torch.from_numpy(binary // 255))
    assert torch.equal(read.masks[1], torch.from_numpy(ids))


def test_void_pixels_read_as_background_and_are_written_back(tmp_path):
    write_davis([objects(n_frames=2)], tmp_path)
    path = tmp_path / "Annotations/480p/multi/00001.png"
    with Image.open(path) as image:
        labels = np.array(image)
    labels[0:4, 0:6] = 255
    marked = Image.fromarray(labels)
    marked.putpalette(davis_palette())
    marked.save(path)
    (read,) = read_davis(tmp_path)
    assert int(read.meta["void"].sum()) == 24 and not read.meta["void"][0].any()
    assert not read.masks[1, 0:4, 0:6].any() and read.masks.max() == 3
    write_davis([read], tmp_path / "again")
    with Image.open(tmp_path / "again/Annotations/480p/multi/00001.png") as image:
        assert np.array_equal(np.array(image), labels)
    with pytest.raises(ValueError, match=r"meta\['void'\] of shape \[2, 40, 56\]"):
        write_davis([Video("v", read.frames, read.masks, read.eval_frames,
                           {"void": torch.zeros(2, 40, 5)})], tmp_path)


def test_the_long_videos_layout_has_no_resolution_level(tmp_path):
    write_davis([objects(n_frames=3)], tmp_path, resolution=None, imageset=None)
    assert (tmp_path / "JPEGImages/multi/00002.jpg").is_file()
    assert (tmp_path / "Annotations/multi/00000.png").is_file()
    (read,) = read_davis(tmp_path, resolution=None)
    assert torch.equal(read.masks, objects(n_frames=3).masks)
    with pytest.raises(FileNotFoundError, match=r"expected JPEGImages/480p/<video>/00000\.jpg"):
        read_davis(tmp_path)


def test_named_frames_keep_their_names(tmp_path):
    video = objects(n_frames=3)
    named = Video("yt", video.frames, video.masks, video.eval_frames,
                  {"frame_names": ["00000", "00005", "00010"]})
    write_davis([named], tmp_path, imageset=None)
    (read,) = read_davis(tmp_path)
    assert read.meta["frame_names"] == ["00000", "00005", "00010"]
    assert torch.equal(read.masks, video.masks) and not (tmp_path / "ImageSets").exists()


def test_a_failed_write_leaves_no_half_written_video_and_keeps_the_old_one(tmp_path, monkeypatch):
    write_davis([objects()], tmp_path)
    before = sorted(p.name for p in (tmp_path / "JPEGImages/480p/multi").iterdir())
    calls = {"n": 0}
    save = Image.Image.save

    def failing_save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise OSError("disk full")
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_davis([generated(name="fresh"), objects(n_frames=7)], tmp_path)
    monkeypatch.undo()
    assert not (tmp_path / "JPEGImages/480p/fresh").exists()
    assert not (tmp_path / "Annotations/480p/fresh").exists()
    assert sorted(p.name for p in (tmp_path / "JPEGImages/480p/multi").iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert (tmp_path / "ImageSets/2017/val.txt").read_text() == "multi\n"


def corrupt(tmp_path, damage):
    write_davis([objects()], tmp_path)
    damage(tmp_path / "JPEGImages/480p/multi", tmp_path / "Annotations/480p/multi")


@pytest.mark.parametrize(("damage", "error", "match"), [
    (lambda f, a: shutil.rmtree(a), FileNotFoundError,
     r"missing folder .*Annotations/480p/multi"),
    (lambda f, a: [p.unlink() for p in f.iterdir()], FileNotFoundError, "no .jpg frames"),
    (lambda f, a: (a / "00003.png").rename(a / "00009.png"), ValueError,
     r"4 annotation PNGs but .* has 4 frames; 00009.png match no .jpg frame"),
    (lambda f, a: Image.new("RGB", (W, H)).save(a / "00002.png"), ValueError,
     r"00002.png: expected an indexed \(P\) or grey \(L\) PNG .* got mode RGB"),
    (lambda f, a: Image.new("L", (W + 1, H)).save(a / "00001.png"), ValueError,
     r"00001.png: expected a 56x40 mask like the frames, got 57x40"),
    (lambda f, a: Image.new("RGB", (W, H - 2)).save(f / "00002.jpg"), ValueError,
     r"00002.jpg: expected a 56x40 frame like 00000.jpg, got 56x38"),
    (lambda f, a: [p.unlink() for p in a.iterdir()], FileNotFoundError, "no annotation PNGs"),
])
def test_broken_folders_are_refused_naming_the_file(tmp_path, damage, error, match):
    corrupt(tmp_path, damage)
    with pytest.raises(error, match=match):
        read_davis(tmp_path)


def test_bad_reader_and_writer_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no folder .*JPEGImages/480p"):
        read_davis(tmp_path)
    write_davis([objects()], tmp_path)
    (tmp_path / "Annotations/480p/multi/00000.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"first frame's annotation 00000\.png"):
        read_davis(tmp_path, annotated="first")
    with pytest.raises(ValueError, match="annotated in"):
        read_davis(tmp_path, annotated="some")
    with pytest.raises(FileNotFoundError, match="no image set"):
        read_davis(tmp_path, imageset=("2019", "test"))
    with pytest.raises(ValueError, match=r"videos \['bear'\] are not in"):
        read_davis(tmp_path, imageset=("2017", "val"), videos=["bear"])
    with pytest.raises(TypeError, match="expected Video objects"):
        write_davis([objects().frames], tmp_path)
    with pytest.raises(ValueError, match=r"jpeg_quality in 1\.\.100"):
        write_davis([objects()], tmp_path, jpeg_quality=0)
    for bad in ("../up", "two words", ".hidden"):
        with pytest.raises(ValueError, match="video name usable as a file name"):
            write_davis([objects(name=bad)], tmp_path)
    video = objects(n_frames=2)
    with pytest.raises(ValueError, match="2 distinct meta\\['frame_names'\\], got 2 \\(1 distinct"):
        write_davis([Video("dup", video.frames, video.masks, video.eval_frames,
                           {"frame_names": ["a", "a"]})], tmp_path)
    with pytest.raises(ValueError, match=r"meta\['annotated'\] of shape \[2\]"):
        write_davis([objects(name="fine"), Video("flags", video.frames, video.masks,
                                                 video.eval_frames, {"annotated": torch.ones(3)})],
                    tmp_path)
    assert not (tmp_path / "JPEGImages/480p/fine").exists(), "checked before writing"
