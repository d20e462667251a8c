"""The whole model on the tiny preset: forward/backward, save/load, selector, prompt layout, streaming, CLI."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from vxlp_model import VideoXLProConfig, VideoXLProForCausalLM, VideoXLProProcessor, build_tiny_tokenizer
from vxlp_model.prompt import ANSWER, QUERY, TEXT, TIME, VIDEO, group_start_times
from vxlp_model.train.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer(["red", "green", "blue", "What", "colour"])


def _cfg(tok, **kw):
    kw.setdefault("video_token_id", tok.convert_tokens_to_ids("<|vision_pad|>"))
    return VideoXLProConfig.tiny(**kw)


def _frames(n, seed=0, h=20, w=24):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, 3), generator=g, dtype=torch.uint8)


def _batch(proc, lengths, answers=("A", "B", "C")):
    samples = [proc("What colour? (A) red (B) blue Best option:(", torch.arange(n) * 0.5, a) for n, a in zip(lengths, answers)]
    return samples, [_frames(n, seed=i) for i, n in enumerate(lengths)]


def test_forward_backward_all_components_get_gradients(tok):
    torch.manual_seed(0)
    cfg = _cfg(tok, selector_mode="ratio")
    model = VideoXLProForCausalLM(cfg)
    proc = VideoXLProProcessor(tok, cfg)
    samples, frames = _batch(proc, [9, 4])
    model.train()
    out = model(**proc.collate(samples), video_frames=frames)
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    out.loss.backward()
    for name in ("vision_tower", "sae", "mm_projector", "selector", "language_model"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.grad is not None]
        assert grads and sum(float(g.abs().sum()) for g in grads) > 0, name
    # the ReCoT objective trains sae, decoder and the SGM queries
    model.zero_grad()
    rec = model.recot_loss(_frames(8, seed=3))
    rec["loss"].backward()
    assert abs(rec["mask_fraction"].item() - 0.5) < 0.1
    for name in ("sae", "recot_decoder", "sgm"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, name).parameters()), name
    assert all(p.grad is None for p in model.vision_tower.parameters())  # SigLIP frozen in ReCoT


def test_loss_only_on_answer_tokens(tok):
    cfg = _cfg(tok)
    proc = VideoXLProProcessor(tok, cfg)
    s = proc("What colour?", [0.0, 1.0], "red")
    labelled = s.labels != -100
    assert torch.equal(labelled, s.token_type_ids == ANSWER)
    assert tok.decode(s.input_ids[labelled]) == "red<|im_end|>"


def test_save_load_round_trip_and_deterministic_generate(tok, tmp_path):
    torch.manual_seed(1)
    cfg = _cfg(tok, selector_budget=16)
    model = VideoXLProForCausalLM(cfg).eval()
    proc = VideoXLProProcessor(tok, cfg)
    samples, frames = _batch(proc, [13, 6])
    batch = proc.collate(samples, padding_side="left")
    gen1 = model.generate(**batch, video_frames=frames, max_new_tokens=4)
    gen2 = model.generate(**batch, video_frames=frames, max_new_tokens=4)
    assert torch.equal(gen1, gen2)
    path = save_checkpoint(model, str(tmp_path / "ckpt"), tokenizer=tok)
    loaded = VideoXLProForCausalLM.from_pretrained(path).eval()
    assert loaded.config.selector_budget == 16 and loaded.config.token_layout == cfg.token_layout
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert loaded.language_model.lm_head.weight.data_ptr() == loaded.language_model.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        l1 = model(**proc.collate(samples), video_frames=frames).logits
        l2 = loaded(**proc.collate(samples), video_frames=frames).logits
    assert torch.equal(l1, l2)
    assert torch.equal(loaded.generate(**batch, video_frames=frames, max_new_tokens=4), gen1)


def test_checkpoint_is_atomic(tok, tmp_path):
    cfg = _cfg(tok)
    model = VideoXLProForCausalLM(cfg)
    target = tmp_path / "ckpt"
    save_checkpoint(model, str(target))
    before = sorted(os.listdir(target))

    class Boom(RuntimeError):
        pass

    def broken(*a, **k):
        raise Boom("disk full")

    orig = model.save_pretrained
    model.save_pretrained = broken
    with pytest.raises(Boom):
        save_checkpoint(model, str(target))
    model.save_pretrained = orig
    assert sorted(os.listdir(target)) == before  # the old checkpoint is untouched
    assert [p for p in os.listdir(tmp_path) if p != "ckpt"] == []  # no temporary leftovers
    VideoXLProForCausalLM.from_pretrained(str(target))


def test_selector_budget_keeps_top_tokens_in_order_and_is_deterministic(tok):
    torch.manual_seed(2)
    cfg = _cfg(tok, selector_budget=16)
    model = VideoXLProForCausalLM(cfg).eval()
    sel = model.selector
    g, p, d = 5, cfg.tokens_per_group, cfg.hidden_size
    visual = torch.randn(g, p, d)
    time_embeds = torch.randn(g, 3, d)
    query = torch.randn(4, d)
    with torch.no_grad():
        keep1, selected1, scores1 = sel(visual, time_embeds, query)
        keep2, selected2, scores2 = sel(visual, time_embeds, query)
    assert torch.equal(keep1, keep2) and torch.equal(selected1, selected2)
    assert int(keep1.sum()) == 16
    idx = keep1.nonzero().squeeze(-1)
    # kept = the 16 best scores (independent check by Python sorting, ties → lower index)
    order = sorted(range(g * p), key=lambda i: (-float(scores1[i]), i))[:16]
    assert sorted(order) == idx.tolist()
    assert torch.allclose(selected1, visual.reshape(-1, d)[idx] + scores1[idx, None])
    assert float(scores1.min()) == 0.0 and float(scores1.max()) == 1.0
    # budget above N keeps everything
    sel.budget = 10_000
    with torch.no_grad():
        keep, selected, _ = sel(visual, time_embeds, query)
    assert bool(keep.all()) and selected.shape == (g * p, d)


def test_selector_modes(tok):
    cfg = _cfg(tok, selector_mode="ratio")
    model = VideoXLProForCausalLM(cfg)
    sel = model.selector
    sel.train()
    counts = {sel.keep_count(1000, torch.Generator().manual_seed(s)) for s in range(40)}
    assert min(counts) >= 700 and max(counts) <= 950 and len(counts) > 5
    sel.eval()
    assert {sel.keep_count(1000) for _ in range(5)} == {825}
    sel.mode = "off"
    visual = torch.randn(2, cfg.tokens_per_group, cfg.hidden_size)
    keep, selected, scores = sel(visual, torch.randn(2, 0, cfg.hidden_size), torch.randn(1, cfg.hidden_size))
    assert bool(keep.all()) and scores is None and torch.equal(selected, visual.reshape(-1, cfg.hidden_size))
    sel.mode = "budget"
    with pytest.raises(ValueError, match="query_embeds"):
        sel(visual, torch.randn(2, 0, cfg.hidden_size), torch.randn(0, cfg.hidden_size))


def test_query_excludes_answer_tokens(tok):
    """Changing the answer changes the labels but not the selection (the released code leaked answers)."""
    torch.manual_seed(3)
    cfg = _cfg(tok, selector_budget=16)
    model = VideoXLProForCausalLM(cfg).eval()
    proc = VideoXLProProcessor(tok, cfg)
    frames = [_frames(12)]
    outs = []
    for answer in ("red", "blue green blue"):
        s = proc("What colour? Best option:(", torch.arange(12.0), answer)
        b = proc.collate([s])
        with torch.no_grad():
            emb, mask, labels = model.prepare_inputs_embeds(b["input_ids"], b["token_type_ids"], frames, b["attention_mask"], b["labels"])
        n_prompt = int((s.token_type_ids != ANSWER).sum()) - (12 // 4) * (cfg.tokens_per_group) + 16
        outs.append(emb[0, :n_prompt])
    assert torch.equal(outs[0], outs[1])


def test_prompt_layout(tok):
    cfg = _cfg(tok)
    proc = VideoXLProProcessor(tok, cfg)
    ts = torch.arange(10) * 1.5  # 10 frames → 3 groups starting at 0, 6, 12 s
    s = proc("What colour?", ts)
    text = tok.decode(s.input_ids)
    pad = "<|vision_pad|>" * cfg.tokens_per_group
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"Time 0000.0s:{pad}Time 0006.0s:{pad}Time 0012.0s:{pad}"
        "\nWhat colour?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert text == expected
    types = s.token_type_ids
    assert int((types == VIDEO).sum()) == 3 * cfg.tokens_per_group
    assert int((types == TIME).sum()) == 3 * proc.time_token_count
    assert tok.decode(s.input_ids[types == QUERY]) == "What colour?"
    assert int((types == TEXT).sum()) > 0
    assert group_start_times(ts, 4) == [0.0, 6.0, 12.0]


def test_time_token_count_never_changes(tok):
    cfg = _cfg(tok)
    proc = VideoXLProProcessor(tok, cfg)
    g = torch.Generator().manual_seed(0)
    times = [0.0, 0.05, 9.95, 59.9, 3599.5, 9999.9] + (torch.rand(200, generator=g) * 9999.9).tolist()
    assert {len(proc.time_ids(t)) for t in times} == {proc.time_token_count}
    short = proc("q?", torch.arange(8.0))
    long = proc("q?", torch.arange(4000.0))
    per_group = lambda s: int((s.token_type_ids == TIME).sum()) / proc.num_groups(int((s.token_type_ids == VIDEO).sum()) // cfg.tokens_per_group * 4)  # noqa: E731
    assert per_group(short) == per_group(long) == proc.time_token_count
    with pytest.raises(ValueError, match="timestamp"):
        proc.time_ids(10000.0)
    with pytest.raises(ValueError, match="question"):
        proc("", [0.0])
    bad = _cfg(tok, video_token_id=5)
    with pytest.raises(ValueError, match="video_token_id"):
        VideoXLProProcessor(tok, bad)


def test_streaming_encode_equals_whole_and_chunking_is_invisible(tok):
    torch.manual_seed(4)
    cfg = _cfg(tok, chunk_frames=8)
    model = VideoXLProForCausalLM(cfg).eval()
    frames = _frames(23, seed=9)
    with torch.no_grad():
        whole = model.encode_video(frames)
        streamed = model.encode_video(iter([frames[:5], frames[5:6], frames[6:20], frames[20:]]))
        pairs = model.encode_video(iter([(frames[:10], torch.arange(10.0)), (frames[10:], torch.arange(10.0, 23.0))]))
        model.config.chunk_frames = 64
        one_chunk = model.encode_video(frames)
    assert whole.shape == (math.ceil(23 / 4), cfg.tokens_per_group, cfg.hidden_size)
    assert torch.allclose(whole, streamed, atol=1e-5)
    assert torch.allclose(whole, pairs, atol=1e-5)
    assert torch.allclose(whole, one_chunk, atol=1e-5)
    # the tail group is padded by repeating the last frame
    padded = torch.cat([frames, frames[-1:].expand(1, -1, -1, -1)])
    with torch.no_grad():
        assert torch.allclose(model.encode_video(padded), whole, atol=1e-5)


def test_bad_inputs(tok):
    cfg = _cfg(tok)
    model = VideoXLProForCausalLM(cfg)
    proc = VideoXLProProcessor(tok, cfg)
    samples, frames = _batch(proc, [8])
    b = proc.collate(samples)
    with pytest.raises(ValueError, match="placeholders"):
        model(**b, video_frames=[_frames(12)])
    with pytest.raises(ValueError, match="one entry per sample"):
        model(**b, video_frames=frames * 2)
    with pytest.raises(ValueError, match="uint8"):
        model(**b, video_frames=[torch.zeros(8, 4, 4, 3, dtype=torch.int32)])
    with pytest.raises(ValueError, match="token_layout"):
        _cfg(tok, token_layout="time_major")
    with pytest.raises(ValueError, match="selector_budget"):
        _cfg(tok, selector_budget=100)


def test_released_layout_model_runs(tok):
    cfg = _cfg(tok, token_layout="released", transposed_rel_k=True)
    model = VideoXLProForCausalLM(cfg).eval()
    proc = VideoXLProProcessor(tok, cfg)
    samples, frames = _batch(proc, [8])
    with torch.no_grad():
        out = model(**proc.collate(samples), video_frames=frames)
    assert torch.isfinite(out.logits).all()


def test_cli_info_real_counts():
    res = subprocess.run([sys.executable, "-m", "vxlp_model.cli", "info", "--config", "real", "--json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    counts = json.loads(res.stdout)
    assert 93.0e6 < counts["sae"] < 94.0e6
    assert 3.0e9 < counts["language_model"] < 3.2e9  # Qwen2.5-3B, tied embeddings
    assert 4.0e8 < counts["vision_tower"] < 4.4e8  # SigLIP so400m
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")


def test_auto_classes_resolve_local_checkpoint(tok, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = _cfg(tok)
    VideoXLProForCausalLM(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), VideoXLProConfig)
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path), VideoXLProForCausalLM)
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded_tok.convert_tokens_to_ids("<|vision_pad|>") == cfg.video_token_id
