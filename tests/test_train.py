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


def test_distillation_in_batch_negatives_match_a_float64_reference(tiny):
    """``selector_distill_negatives``: each sample's distillation softmax also holds the other samples' kept tokens
    (same question only) from groups with mean relevance below half their sample's best group, scored with this
    sample's query on its own min-max range. Checked against the formula in float64; without the flag the loss is
    the plain kept-token KL; the selector's parameters get gradients through the negatives."""
    tok, cfg, proc = tiny
    torch.manual_seed(0)
    model = VideoXLProForConditionalGeneration(cfg).train()
    g = torch.Generator().manual_seed(1)
    questions = ["red?", "red?", "blue?", "red?"]  # sample 2 is asked something else: no negatives to or from it
    prompts = [proc.apply_chat_template(conversation(q, "red")) for q in questions]
    videos = [torch.randint(0, 256, (n, 32, 32, 3), generator=g, dtype=torch.uint8) for n in (12, 16, 12, 8)]
    stamps = [torch.arange(float(v.shape[0])) for v in videos]
    batch = proc(text=prompts, videos=videos, video_timestamps=stamps, return_labels=True, padding_side="right")
    call = dict(selector_mode="ratio", selector_keep_ratio=1.0, selector_distill_temperature=10.0)
    plain = model(**batch, **call)
    out = model(**batch, **call, selector_distill_negatives=True)
    tau, p = 10.0, cfg.tokens_per_group
    torch.testing.assert_close(out.loss, plain.loss)

    def kl(own, neg, target):
        logits = torch.cat([own, neg]) * tau
        logp = logits - torch.logsumexp(logits, 0)
        return float((target * (target.log() - logp[: target.numel()])).sum())

    from vxlp_model.modeling import _distill_kl

    with torch.no_grad():
        # the relevance the LLM pays (the same forward again): the model's loss is the KL with it
        true_rel = model.model(**batch, selector_mode="ratio", selector_keep_ratio=1.0, relevance_rows=True).relevance
    like = out.logits
    with torch.no_grad():
        assert float(out.selector_distill_loss.detach()) == pytest.approx(float(_distill_kl(out.selection, true_rel, tau, like, negatives=True)), rel=1e-5)
        assert float(plain.selector_distill_loss.detach()) == pytest.approx(float(_distill_kl(out.selection, true_rel, tau, like)), rel=1e-5)
    # a relevance with contrast (a random init attends almost uniformly): each sample's first group 5x the rest
    sels = out.selection
    rel = []
    for s in sels:
        grp = s["kept_visual"] // p
        rel.append((torch.rand(grp.numel(), generator=g, dtype=torch.float64) + 0.5) * torch.where(grp == grp.min(), 5.0, 1.0))
    probes = [s["probe"][0][s["probe"][2]].detach().double() for s in sels]  # the kept tokens' probes
    queries = [s["probe"][1].detach().double() for s in sels]
    low = []
    for s, r, pr in zip(sels, rel, probes):
        grp = s["kept_visual"] // p
        means = torch.stack([r[grp == k].mean() for k in grp.unique()])
        low.append(pr[means[grp - grp.min()] < 0.5 * means.max()])
    want_plain, want_neg = [], []
    for i, s in enumerate(sels):
        raw = probes[i] @ queries[i]
        own = (raw - raw.min()) / (raw.max() - raw.min())
        torch.testing.assert_close(s["scores"].detach().double(), own, rtol=1e-4, atol=1e-5)  # the probe gives the scores
        target = rel[i] / rel[i].sum()
        neg = [(low[j] @ queries[i] - raw.min()) / (raw.max() - raw.min())
               for j in range(4) if j != i and questions[j] == questions[i]]
        neg = torch.cat(neg) if neg else own[:0]
        assert (neg.numel() > 0) == (i != 2)
        want_plain.append(kl(own, own[:0], target))
        want_neg.append(kl(own, neg, target))
    rel32 = [r.float() for r in rel]
    assert float(_distill_kl(sels, rel32, tau, like).detach()) == pytest.approx(np.mean(want_plain), rel=1e-4)
    loss = _distill_kl(sels, rel32, tau, like, negatives=True)
    assert float(loss.detach()) == pytest.approx(np.mean(want_neg), rel=1e-4)
    assert np.mean(want_neg) > np.mean(want_plain) + 1e-3  # the negatives add terms to the softmax
    model.zero_grad()
    loss.backward()
    sel_mod = model.model.selector  # (visual_mlp's output layer starts at zero, so its input layer has no gradient yet)
    for prm in (sel_mod.visual_mlp[2].weight, sel_mod.text_mlp[0].weight, sel_mod.time_attn.in_proj_weight):
        assert prm.grad is not None and prm.grad.abs().sum() > 0
    # train_qa passes the flag only when distilling
    seen = []
    orig = model.forward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("selector_distill_negatives", False))
        return orig(*args, **kwargs)

    model.forward = spy

    def sample_fn(gen):
        return torch.randint(0, 256, (8, 32, 32, 3), generator=g, dtype=torch.uint8), torch.arange(8.0), "red?", "red"

    train_qa(model, proc, sample_fn, 2, batch_size=2, progress=False, selector_mode="budget", selector_distill_weight=0.5,
             selector_distill_negatives=True)
    train_qa(model, proc, sample_fn, 1, batch_size=2, progress=False, selector_mode="budget", selector_distill_negatives=True)
    assert seen == [True, True, False]


def test_negative_memory_is_a_fifo_per_question():
    from vxlp_model.selector import SelectorNegativeMemory

    g = torch.Generator().manual_seed(0)
    mem = SelectorNegativeMemory(5)
    red, blue = torch.tensor([3, 4]), torch.tensor([3, 9])
    vis = torch.randn(4, 9, 8, generator=g)
    rows = torch.randn(4, 3, 8, generator=g)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    mem.push(red, vis[:3], rows[:3], mask[:3])
    mem.push(blue, vis[3:], rows[3:], mask[3:])
    assert len(mem) == 4 and mem.groups(torch.tensor([7])) is None
    v, r, m = mem.groups(red)
    assert torch.equal(v, vis[:3]) and torch.equal(m, mask[:3]) and torch.equal(r[m], rows[:3][mask[:3]])
    assert not r[~m].any()
    vis[0] += 1.0  # the memory holds copies
    assert not torch.equal(mem.groups(red)[0][0], vis[0])
    mem.push(red, vis[:3], rows[:3], mask[:3])  # 7 groups pushed into 5 places: the two oldest (red) go
    assert len(mem) == 5
    v, _, _ = mem.groups(red)
    assert v.shape[0] == 4 and torch.equal(v[1:], vis[:3])
    assert mem.groups(blue)[0].shape[0] == 1
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="capacity"):
            SelectorNegativeMemory(bad)


def test_distillation_memory_negatives_match_a_float64_reference(tiny):
    """``selector_distill_memory``: the memory's groups asked a sample's question join its softmax, re-scored by the
    current selector on the sample's min-max range; afterwards the step's low-relevance groups are in the memory."""
    import copy

    from vxlp_model.modeling import _distill_kl
    from vxlp_model.selector import SelectorNegativeMemory

    tok, cfg, proc = tiny
    torch.manual_seed(0)
    model = VideoXLProForConditionalGeneration(cfg).train()
    with torch.no_grad():  # the residual MLP starts at zero: give it something to do
        model.model.selector.visual_mlp[2].weight.normal_(0.0, 0.05)
    g = torch.Generator().manual_seed(4)
    questions = ["red?", "blue?", "red?"]
    prompts = [proc.apply_chat_template(conversation(q, "red")) for q in questions]
    videos = [torch.randint(0, 256, (n, 32, 32, 3), generator=g, dtype=torch.uint8) for n in (12, 8, 16)]
    batch = proc(text=prompts, videos=videos, video_timestamps=[torch.arange(float(v.shape[0])) for v in videos],
                 return_labels=True, padding_side="right")
    out = model(**batch, selector_mode="ratio", selector_keep_ratio=1.0, selector_distill_temperature=10.0)
    sels, tau, p, d = out.selection, 10.0, cfg.tokens_per_group, cfg.text_config.hidden_size
    rel = []
    for s in sels:  # relevance with contrast: each sample's first group 5x the rest
        grp = s["kept_visual"] // p
        rel.append(((torch.rand(grp.numel(), generator=g, dtype=torch.float64) + 0.5) * torch.where(grp == grp.min(), 5.0, 1.0)).float())
    mem = SelectorNegativeMemory(64)
    held_vis = torch.randn(3, p, d, generator=g)
    held_rows = torch.randn(3, 4, d, generator=g)
    held_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    mem.push(sels[0]["query_ids"], held_vis, held_rows, held_mask)  # asked "red?"
    loss = _distill_kl(sels, rel, tau, out.logits, memory=mem, selector=model.model.selector)
    plain = _distill_kl(sels, rel, tau, out.logits)
    # float64 reference: the memory's probes by a float64 copy of the selector, the formula written out
    sel64 = copy.deepcopy(model.model.selector).double()
    with torch.no_grad():
        mem_probe = sel64.probe_groups(held_vis.double(), held_rows.double(), held_mask).reshape(-1, d)
    want = []
    for i, s in enumerate(sels):
        probe = s["probe"][0][s["probe"][2]].detach().double()
        query = s["probe"][1].detach().double()
        raw = probe @ query
        own = (raw - raw.min()) / (raw.max() - raw.min())
        neg = (mem_probe @ query - raw.min()) / (raw.max() - raw.min()) if questions[i] == "red?" else own[:0]
        logits = tau * torch.cat([own, neg])
        target = rel[i].double() / rel[i].double().sum()
        logp = (logits - torch.logsumexp(logits, 0))[: target.numel()]
        want.append(float((target * (target.log() - logp)).sum()))
    assert float(loss.detach()) == pytest.approx(np.mean(want), rel=1e-4)
    assert float(loss.detach()) > float(plain.detach()) + 1e-4
    # afterwards: the 3 held groups, then each sample's low-relevance groups (every group but its first)
    n_groups = [v.shape[0] // cfg.frames_per_group for v in videos]
    assert len(mem) == 3 + sum(n - 1 for n in n_groups)
    v_red, _, _ = mem.groups(sels[0]["query_ids"])
    assert v_red.shape[0] == 3 + (n_groups[0] - 1) + (n_groups[2] - 1) and torch.equal(v_red[:3], held_vis)
    assert mem.groups(sels[1]["query_ids"])[0].shape[0] == n_groups[1] - 1
    # the memory's probes carry gradient to the selector's parameters
    model.zero_grad()
    loss.backward(retain_graph=True)
    grad_mem = model.model.selector.visual_mlp[0].weight.grad.clone()
    model.zero_grad()
    plain_again = _distill_kl(sels, rel, tau, out.logits)
    plain_again.backward()
    assert not torch.allclose(grad_mem, model.model.selector.visual_mlp[0].weight.grad)
    with pytest.raises(ValueError, match="selector_distill_memory"):
        train_qa(model, proc, lambda gen: None, 1, progress=False, selector_distill_memory=-1)
