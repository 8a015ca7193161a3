import json
import runpy
from pathlib import Path

import pytest
import torch

from memkit.agents.vos import FrameEncoder, matching_loss, train_frame_encoder
from memkit.data.long_video import long_video
from memkit.testing import load_script
from memkit.video import clvos_eval_frames

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(seeds=(0,), budgets=(2, 3), methods=("lwl_fifo", "grcl", "rmscl"), long_videos=1,
            long_frames=60, short_videos=1, short_frames=12, size=(24, 24), ramp=5)


@pytest.fixture(scope="module")
def bench():
    return load_script(ROOT / "benchmarks" / "vos_long_video.py")


@pytest.fixture()
def random_encoder(bench, tmp_path, monkeypatch):
    path = tmp_path / "encoder.safetensors"
    FrameEncoder(seed=3).save(path)
    monkeypatch.setattr(bench, "ENCODER_PATH", path)
    return path


def tiny(bench, **changes):
    return bench.Setting(**{**TINY, **changes})


def test_every_memory_holds_exactly_n_frames_and_grcl_pairs_come_on_top(bench):
    encoder = FrameEncoder()
    video = long_video(0, n_frames=30, size=(32, 32), chunk_frames=(5, 10))
    for method in bench.BOUNDED:
        for n in (2, 5):
            learner = bench.build(method, n, (32, 32), 0, encoder, {"coords": False})
            learner.segment(video)
            assert learner.memory.capacity == n, (method, n)
            assert learner.budget.used <= learner.budget.capacity
            pairs = learner.stores.get("regularizer")
            entry = bench.entry_nbytes(learner, (32, 32))
            extra = 2 * bench.pair_nbytes(learner) if method in ("grcl", "hybrid") else 0
            assert learner.budget.capacity == n * entry + extra
            assert (pairs is not None) == (method in ("grcl", "hybrid"))


def test_scored_frames_leave_out_frame_zero_and_follow_clvos(bench):
    video = long_video(1, n_frames=90, size=(24, 24), chunk_frames=(10, 30))
    frames = bench.scored_frames(video)
    expected = clvos_eval_frames(video.meta["chunk_starts"], 90)
    assert frames["annotated"].tolist() == expected[1:].tolist()
    assert frames["all"].tolist() == list(range(1, 90))
    strip = bench.strip_frames(video, 4)
    assert len(strip) == 4 and strip == sorted(strip) and strip[0] > 0


def test_summary_is_the_mean_and_std_over_seeds_of_video_means(bench):
    def record(seed, video, jf, method="lwl_fifo", frames=4):
        score = {"J": jf, "F": jf, "JF": jf}
        return {"suite": "long", "video": video, "seed": seed, "method": method,
                "frames": frames, "scores": {"annotated": score, "all": score}, "fps": 10.0,
                "held_nbytes": 100, "budget_nbytes": 120}

    records = [record(0, "a", 0.2), record(0, "b", 0.4), record(1, "a", 0.5), record(1, "b", 0.7),
               record(0, "a", 0.5, "rmscl"), record(0, "b", 0.5, "rmscl"),
               record(1, "a", 0.5, "rmscl"), record(1, "b", 0.9, "rmscl")]
    summary = bench.summarise(records)
    cell = summary["long"]["lwl_fifo"]["4"]["JF_annotated"]
    assert cell["mean"] == pytest.approx(0.45) and cell["std"] == pytest.approx(0.15)
    check = bench.shape_check(summary, [4])
    # per-seed differences: seed 0 0.5 - 0.3 = +20 points, seed 1 0.7 - 0.6 = +10 points
    assert check["long"]["rmscl"]["4"]["mean"] == pytest.approx(15.0)
    assert check["long"]["rmscl"]["4"]["std"] == pytest.approx(5.0)


def test_a_tiny_benchmark_writes_its_tables_plots_and_strip(bench, random_encoder, tmp_path):
    setting = tiny(bench)
    records = bench.run_all(setting, jobs=1)
    # long + short, each 3 methods x 2 budgets + unbounded once
    assert len(records) == 2 * (3 * 2 + 1)
    for r in records:
        assert 0 <= r["scores"]["annotated"]["JF"] <= 1 and r["fps"] > 0
        if r["frames"] is not None:
            assert r["held_nbytes"] <= r["budget_nbytes"]
            assert r["stores"]["memory"]["capacity"] == r["frames"]
    summary = bench.summarise(records)
    assert set(summary) == {"long", "short"}
    assert set(summary["long"]["rmscl"]) == {"2", "3"}
    assert set(summary["long"]["unbounded"]) == {"unbounded"}
    meta = {"setting": vars(setting), "entry_nbytes": 1,
            "pair_nbytes": 2, "seconds": 1.0}
    text = bench.markdown(summary, bench.shape_check(summary, setting.budgets), meta)
    assert "| rmscl |" in text and "N=2" in text and "unbounded" in text
    bench.plot(summary, tmp_path / "p.png")
    assert bench.plot_strip(setting, records, tmp_path / "s.png")
    assert (tmp_path / "p.png").stat().st_size > 0 and (tmp_path / "s.png").stat().st_size > 0


def test_the_same_seed_gives_the_same_numbers(bench, random_encoder):
    setting = tiny(bench, budgets=(2,), methods=("rmscl",))
    a = bench.run_video(setting, "long", 0, 0, "rmscl")
    b = bench.run_video(setting, "long", 0, 0, "rmscl")
    assert a[0]["scores"] == b[0]["scores"] and a[0]["strip"] == b[0]["strip"]


def test_main_runs_on_a_davis_folder(bench, random_encoder, tmp_path, monkeypatch):
    from memkit.data.davis import write_davis

    write_davis([long_video(5, n_frames=20, size=(32, 32), chunk_frames=(5, 10), name="clip")],
                tmp_path / "davis")
    monkeypatch.setattr(bench, "QUICK", tiny(bench, budgets=(2,), methods=("lwl_fifo",)))
    out = tmp_path / "res" / "vos"
    result = bench.main(["--quick", "--davis", str(tmp_path / "davis"), "--davis-scale", "1",
                         "--jobs", "1", "--out", str(out)])
    assert set(result["summary"]) == {"davis"}
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["summary"]["davis"]["lwl_fifo"]["2"]["JF_annotated"]["n"] == 1
    assert out.with_suffix(".md").exists() and out.with_name("vos_strip.png").exists()


def test_the_example_runs(random_encoder, capsys):
    runpy.run_path(str(ROOT / "examples" / "vos_long_video.py"), run_name="not_main")
    module = runpy.run_path(str(ROOT / "examples" / "vos_long_video.py"))
    results = module["main"](["--frames", "60", "--size", "32", "--budget-frames", "3",
                              "--encoder", str(random_encoder)])
    assert set(results) == {"lwl_fifo", "rmscl"}
    assert all(r["entries"] == 3 and 0 <= r["JF"] <= 1 for r in results.values())
    assert "holds 3 frames" in capsys.readouterr().out


def test_the_encoder_round_trips_and_training_changes_it_deterministically(tmp_path):
    options = dict(size=(32, 32), n_videos=2, n_frames=80, steps=3, pairs=2)
    a, b = train_frame_encoder(**options), train_frame_encoder(**options)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))
    initial = FrameEncoder(width=32)
    assert not torch.equal(a.convs[0].weight, initial.convs[0].weight)
    a.save(tmp_path / "e.safetensors")
    loaded = FrameEncoder.load(tmp_path / "e.safetensors")
    frames = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(loaded(frames), a(frames)) and not loaded.convs[0].weight.requires_grad


def test_matching_loss_against_a_hand_computed_case():
    # two cells in a: target (1, 0) and other (0, 1); b's cells equal them, labels agree
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)
    b = torch.tensor([[2.0, 0.0], [0.0, 3.0]]).view(1, 2, 1, 2)
    label = torch.tensor([[[255, 0]]], dtype=torch.uint8)
    loss = matching_loss(a, label, b, label, temperature=1.0)
    # logits +1 (target cell) and -1 (other cell); balanced weights 1/2 each
    expected = torch.nn.functional.softplus(torch.tensor(-1.0))
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_a_ramp_fades_only_a_regimes_first_showing():
    abrupt = long_video(2, n_frames=400, size=(24, 24), chunk_frames=(40, 80))
    faded = long_video(2, n_frames=400, size=(24, 24), chunk_frames=(40, 80), ramp=10)
    starts = abrupt.meta["chunk_starts"]
    assert torch.equal(abrupt.masks, faded.masks)
    differs = (abrupt.frames != faded.frames).flatten(1).any(1)
    expected = torch.zeros(400, dtype=torch.bool)
    for k in (1, 2):  # chunks 1 and 2 first show regimes 1 and 2
        expected[starts[k]: starts[k] + 10] = True
    assert not differs[~expected].any() and differs[expected].float().mean() > 0.8
    with pytest.raises(ValueError, match="ramp >= 0"):
        long_video(2, n_frames=50, ramp=-1)


def test_the_learner_rejects_an_encoder_of_the_wrong_type(tmp_path):
    from memkit.agents.vos import OnlineVOSLearner
    from memkit.io import save_tensors

    with pytest.raises(TypeError, match="expected encoder None or a FrameEncoder"):
        OnlineVOSLearner(encoder="trained")
    save_tensors(tmp_path / "x.safetensors", {"a": torch.zeros(1)}, {"kind": "other"})
    with pytest.raises(ValueError, match="expected a frame encoder file"):
        FrameEncoder.load(tmp_path / "x.safetensors")
