"""The demo's training pieces: schedule, loop, ``train_recot`` / ``train_qa`` (tests/test_train_scale.py: ``vxlp train``)."""

import json
import os

import numpy as np
import pytest
import torch

from vxlp_model import (
    VideoXLProConfig,
    VideoXLProForConditionalGeneration,
    VideoXLProProcessor,
    VideoXLProVideoProcessor,
    build_tiny_tokenizer,
    conversation,
)
from vxlp_model.train import cosine_schedule, train_loop, train_qa, train_recot
from vxlp_model.train.data import load_llava_json


def test_cosine_schedule():
    assert cosine_schedule(0, 100, 10) == pytest.approx(0.1)
    assert cosine_schedule(9, 100, 10) == pytest.approx(1.0)
    assert cosine_schedule(10, 100, 10) == pytest.approx(1.0)
    assert cosine_schedule(55, 100, 10) == pytest.approx(0.5)
    assert cosine_schedule(100, 100, 10) == pytest.approx(0.0, abs=1e-12)


def test_train_loop_fits_a_regression_and_rejects_bad_input():
    torch.manual_seed(0)
    w_true = torch.randn(5)
    x = torch.randn(256, 5)
    y = x @ w_true
    w = torch.nn.Parameter(torch.zeros(5))
    hist = train_loop([w], lambda s: (((x @ w) - y).pow(2).mean(), {}), 300, 0.05, progress=False)
    assert hist[-1]["loss"] < 1e-3 * hist[0]["loss"]
    assert torch.allclose(w.detach(), w_true, atol=1e-2)
    with pytest.raises(ValueError, match="steps"):
        train_loop([w], lambda s: (w.sum(), {}), 0, 0.1)
    with pytest.raises(ValueError, match="non-finite"):
        train_loop([w], lambda s: (w.sum() * float("nan"), {}), 2, 0.1, progress=False)


@pytest.fixture(scope="module")
def tiny():
    tok = build_tiny_tokenizer(["red", "blue"])
    cfg = VideoXLProConfig.tiny(video_token_id=tok.convert_tokens_to_ids("<|vision_pad|>"), dts_grid=4, selector_budget=32)
    proc = VideoXLProProcessor(VideoXLProVideoProcessor(size=32), tok, tokens_per_group=cfg.tokens_per_group)
    return tok, cfg, proc


def test_recot_stage_reduces_reconstruction_loss(tiny):
    tok, cfg, proc = tiny
    torch.manual_seed(0)
    model = VideoXLProForConditionalGeneration(cfg)
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (6, 32, 32, 3), generator=g, dtype=torch.uint8)
    video = base.repeat_interleave(4, dim=0)  # slowly changing video
    hist = train_recot(model, proc, [video, video.flip(0)], 40, lr=3e-3, progress=False)
    first = np.mean([h["recon_loss"] for h in hist[:5]])
    last = np.mean([h["recon_loss"] for h in hist[-5:]])
    assert last < 0.7 * first
    with pytest.raises(ValueError, match="at least 4"):
        train_recot(model, proc, video[:3], 1, progress=False)


def test_qa_stage_learns_a_visual_answer(tiny):
    """A two-way task (a red or a blue video) must be learned from the visual tokens alone."""
    tok, cfg, proc = tiny
    torch.manual_seed(0)
    model = VideoXLProForConditionalGeneration(cfg)

    def video(colour):
        f = torch.zeros(8, 32, 32, 3, dtype=torch.uint8)
        f[..., 0 if colour == "red" else 2] = 220
        return f

    def sample_fn(gen):
        colour = "red" if torch.rand((), generator=gen) < 0.5 else "blue"
        return video(colour), torch.arange(8.0), "Which colour?", colour

    before = cfg.to_json_string()
    hist = train_qa(model, proc, sample_fn, 45, batch_size=8, lr=3e-3, progress=False, selector_distill_weight=0.2)
    assert np.mean([h["lm_loss"] for h in hist[-5:]]) < 0.1
    assert all("distill" in h and np.isfinite(h["distill"]) for h in hist)
    assert model.config.to_json_string() == before  # training never rewrites the configuration
    model.eval()
    prompt = proc.apply_chat_template(conversation("Which colour?"), add_generation_prompt=True)
    for colour in ("red", "blue"):
        batch = proc(text=prompt, videos=video(colour), video_timestamps=torch.arange(8.0))
        out = model.generate(**batch, max_new_tokens=2)
        assert tok.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True).strip() == colour


def test_llava_json_first_turn_view(tmp_path):
    """The one-turn view of LLaVA records (the first layout's ``load_llava_json``) on the new parser."""
    records = [
        {"id": f"s{i}", "video": f"clips/v{i}.mp4", "conversations": [
            {"from": "human", "value": "<video>\nWhich colour?"}, {"from": "gpt", "value": ["red", "blue"][i]}]}
        for i in range(2)
    ]
    data = tmp_path / "train.json"
    data.write_text(json.dumps(records))
    recs = load_llava_json(str(data))
    assert [r.question for r in recs] == ["Which colour?", "Which colour?"]
    assert recs[1].answer == "blue" and os.path.isabs(recs[0].video)
    assert recs[0].video == str(tmp_path / "clips" / "v0.mp4")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "x", "video": "a.mp4", "conversations": []}]))
    with pytest.raises(ValueError, match=r"bad.json: record 0 \(id 'x'\)"):
        load_llava_json(str(bad))
    with pytest.raises(FileNotFoundError):
        load_llava_json(str(tmp_path / "missing.json"))


def test_qa_stage_selector_warmup_and_budget_range(tiny):
    """``selector_off_steps``: the first steps run with the selector off; ``selector_budget_range``: a budget per
    step, a multiple of 16 within the range; bad values are refused."""
    tok, cfg, proc = tiny
    torch.manual_seed(0)
    model = VideoXLProForConditionalGeneration(cfg)
    g = torch.Generator().manual_seed(0)
    calls = []
    orig = model.forward

    def spy(*args, **kwargs):
        calls.append((kwargs.get("selector_mode"), kwargs.get("selector_budget")))
        return orig(*args, **kwargs)

    model.forward = spy

    def sample_fn(gen):
        return torch.randint(0, 256, (8, 32, 32, 3), generator=g, dtype=torch.uint8), torch.arange(8.0), "red?", "red"

    train_qa(model, proc, sample_fn, 12, batch_size=1, lr=1e-3, progress=False, selector_mode="budget",
             selector_budget_range=(20, 64), selector_off_steps=3)
    assert [m for m, _ in calls[:3]] == ["off"] * 3 and all(m == "budget" for m, _ in calls[3:])
    budgets = {b for _, b in calls}
    assert budgets <= {32, 48, 64} and len(budgets) > 1
    with pytest.raises(ValueError, match="selector_budget_range"):
        train_qa(model, proc, sample_fn, 1, progress=False, selector_budget_range=(8, 64))
    with pytest.raises(ValueError, match="selector_off_steps"):
        train_qa(model, proc, sample_fn, 1, progress=False, selector_off_steps=-1)


def test_qa_stage_full_view_steps_score_every_token(tiny):
    """``selector_full_view_fraction``: with distillation, the warm-up steps and about that fraction of the later
    steps keep every token and still score them (ratio 1), so the distillation covers the whole video; the others
    use the budget. Without distillation nothing changes; bad values are refused."""
    tok, cfg, proc = tiny
    torch.manual_seed(0)
    model = VideoXLProForConditionalGeneration(cfg)
    g = torch.Generator().manual_seed(0)
    calls, distills = [], []
    orig = model.forward

    def spy(*args, **kwargs):
        calls.append((kwargs.get("selector_mode"), kwargs.get("selector_keep_ratio")))
        out = orig(*args, **kwargs)
        distills.append(out.selector_distill_loss)
        return out

    model.forward = spy

    def sample_fn(gen):
        return torch.randint(0, 256, (8, 32, 32, 3), generator=g, dtype=torch.uint8), torch.arange(8.0), "red?", "red"

    train_qa(model, proc, sample_fn, 40, batch_size=1, lr=1e-3, progress=False, selector_mode="budget",
             selector_budget=32, selector_off_steps=4, selector_full_view_fraction=0.5, selector_distill_weight=0.5)
    assert calls[:4] == [("ratio", 1.0)] * 4
    later = [m for m, _ in calls[4:]]
    assert set(later) == {"ratio", "budget"} and 6 <= later.count("ratio") <= 30, later
    assert all(r == 1.0 for m, r in calls if m == "ratio")
    # every step distils (full view included: the selector scored the tokens)
    assert all(d is not None and torch.isfinite(d) for d in distills)
    calls.clear()
    train_qa(model, proc, sample_fn, 6, batch_size=1, lr=1e-3, progress=False, selector_mode="budget",
             selector_budget=32, selector_off_steps=2, selector_full_view_fraction=1.0)
    assert [m for m, _ in calls] == ["off"] * 2 + ["budget"] * 4  # no distillation: full view is moot
    with pytest.raises(ValueError, match="selector_full_view_fraction"):
        train_qa(model, proc, sample_fn, 1, progress=False, selector_full_view_fraction=1.5)
