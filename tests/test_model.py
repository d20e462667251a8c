"""The whole model on the tiny preset: forward/backward, the processor and chat template, the selector and its call
arguments, GenerationMixin's generate on a compacted prompt, save/load and Auto classes, legacy checkpoints."""

import json
import math
import os
import random
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from vxlp_model import (
    VideoXLProConfig,
    VideoXLProForConditionalGeneration,
    VideoXLProModel,
    VideoXLProProcessor,
    VideoXLProVideoProcessor,
    build_tiny_tokenizer,
    conversation,
)
from vxlp_model.processing import ANSWER, IGNORE_INDEX, QUERY, TEXT, TIME, VIDEO, group_start_times
from vxlp_model.selector import keep_count, rope_interleaved
from vxlp_model.train.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer(["red", "green", "blue", "What", "colour"])


def _cfg(tok, **kw):
    kw.setdefault("video_token_id", tok.convert_tokens_to_ids("<|vision_pad|>"))
    return VideoXLProConfig.tiny(**kw)


def _proc(tok, cfg, **kw):
    return VideoXLProProcessor(VideoXLProVideoProcessor(size=cfg.vision_config.image_size), tok, tokens_per_group=cfg.tokens_per_group, **kw)


def _frames(n, seed=0, h=20, w=24):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, 3), generator=g, dtype=torch.uint8)


def _inputs(proc, lengths, answers=None, question="What colour? (A) red (B) blue Best option:(", **kw):
    answers = answers or [None] * len(lengths)
    prompts = [proc.apply_chat_template(conversation(question, a), add_generation_prompt=a is None) for a in answers]
    return proc(
        text=prompts,
        videos=[_frames(n, seed=i) for i, n in enumerate(lengths)],
        video_timestamps=[torch.arange(n) * 0.5 for n in lengths],
        return_labels=answers[0] is not None,
        **kw,
    )


def test_forward_backward_all_components_get_gradients(tok):
    torch.manual_seed(0)
    cfg = _cfg(tok, selector_mode="ratio")
    model = VideoXLProForConditionalGeneration(cfg)
    proc = _proc(tok, cfg)
    batch = _inputs(proc, [9, 4], answers=["A", "B"], padding_side="right")
    model.train()
    out = model(**batch, selector_keep_ratio=0.8)
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    out.loss.backward()
    for name in ("vision_tower", "sae", "mm_projector", "selector", "language_model"):
        grads = [p.grad for p in getattr(model.model, name).parameters() if p.grad is not None]
        assert grads and sum(float(g.abs().sum()) for g in grads) > 0, name
    # the ReCoT objective trains sae, decoder and the SGM queries; SigLIP stays frozen
    model.zero_grad()
    rec = model.recot_loss(proc.video_processor.pixel_values(_frames(8, seed=3)), mask_ratio=0.5, pool=0.75)
    rec["loss"].backward()
    assert abs(rec["mask_fraction"].item() - 0.5) < 0.1
    for name in ("sae", "recot_decoder", "sgm"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model.model, name).parameters()), name
    assert all(p.grad is None for p in model.model.vision_tower.parameters())


def test_chat_template_prompt_layout_and_token_types(tok):
    cfg = _cfg(tok)
    proc = _proc(tok, cfg)
    prompt = proc.apply_chat_template(conversation("What colour?"), add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<video>\nWhat colour?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ts = torch.arange(10) * 1.5  # 10 frames → padded to 12 → 3 groups starting at 0, 6, 12 s
    b = proc(text=prompt, videos=_frames(10), video_timestamps=ts)
    ids, types = b["input_ids"][0], b["token_type_ids"][0]
    pad = "<|vision_pad|>" * cfg.tokens_per_group
    assert tok.decode(ids) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"Time 00:00:00.0:{pad}Time 00:00:06.0:{pad}Time 00:00:12.0:{pad}"
        "\nWhat colour?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert b["video_num_frames"].tolist() == [12] and b["pixel_values_videos"].shape == (12, 3, 32, 32)
    assert int((types == VIDEO).sum()) == 3 * cfg.tokens_per_group
    assert int((types == TIME).sum()) == 3 * len(proc.time_ids(0.0))
    assert tok.decode(ids[types == QUERY]) == "\nWhat colour?"
    assert int((types == TEXT).sum()) > 0 and int((types == ANSWER).sum()) == 0
    assert group_start_times(ts, 4) == [0.0, 6.0, 12.0]
    # the last frame (and its timestamp) is repeated to fill the last group
    px = b["pixel_values_videos"]
    assert torch.equal(px[10], px[9]) and torch.equal(px[11], px[9])


def test_labels_cover_every_assistant_turn(tok):
    cfg = _cfg(tok)
    proc = _proc(tok, cfg)
    messages = conversation("What colour?", "red") + [
        {"role": "user", "content": "And now?"},
        {"role": "assistant", "content": "blue"},
    ]
    b = proc(text=proc.apply_chat_template(messages), videos=_frames(4), video_timestamps=[0, 1, 2, 3], return_labels=True)
    labels, types = b["labels"][0], b["token_type_ids"][0]
    assert torch.equal(labels != IGNORE_INDEX, types == ANSWER)
    assert tok.decode(labels[labels != IGNORE_INDEX]) == "red<|im_end|>blue<|im_end|>"
    assert tok.decode(b["input_ids"][0][types == QUERY]) == "\nWhat colour?And now?"


def test_time_text_token_count_is_fixed_and_bounded(tok):
    from vxlp_model.processing import RELEASED_TIME_FORMAT, format_time

    cfg = _cfg(tok)
    proc = _proc(tok, cfg)
    g = torch.Generator().manual_seed(0)
    # the default time text keeps one token count from 0 to 99:59:59.9 (day-long video and beyond)
    times = [0.0, 0.05, 9.95, 59.95, 3599.95, 9999.9, 86399.9, 359999.9] + (torch.rand(300, generator=g) * 359999.9).tolist()
    assert len({len(proc.time_ids(t)) for t in times}) == 1
    assert format_time(proc.time_format, 3723.44) == "Time 01:02:03.4:"
    assert format_time(proc.time_format, 59.96) == "Time 00:01:00.0:"  # rounded to a tenth first: never ":60.0"
    assert format_time(proc.time_format, 86399.9) == "Time 23:59:59.9:"
    with pytest.raises(ValueError, match="359999.9"):
        proc.time_ids(360000.0)
    with pytest.raises(ValueError, match="timestamp"):
        proc.time_ids(-1.0)
    released = _proc(tok, cfg, time_format=RELEASED_TIME_FORMAT)
    assert len({len(released.time_ids(t)) for t in [0.0, 7.5, 123.4, 9999.9]}) == 1
    with pytest.raises(ValueError, match="9999.9"):
        released.time_ids(10000.0)
    free = _proc(tok, cfg, time_format="Time {t:.1f}s:")  # Video-XL-2's unpadded text: any length
    assert len(free.time_ids(12345.6)) > len(free.time_ids(1.0))
    none = _proc(tok, cfg, time_format="")
    assert none.time_ids(3.0) == []


def test_processor_bad_inputs(tok):
    cfg = _cfg(tok)
    proc = _proc(tok, cfg)
    prompt = proc.apply_chat_template(conversation("q?"), add_generation_prompt=True)
    with pytest.raises(ValueError, match="timestamps"):
        proc(text=prompt, videos=_frames(4))
    with pytest.raises(ValueError, match="more videos"):
        proc(text=prompt, videos=[_frames(4), _frames(4)], fps=1.0)
    with pytest.raises(ValueError, match="more <video> markers"):
        proc(text=[prompt, prompt], videos=[_frames(4)], fps=1.0)
    with pytest.raises(ValueError, match="non-decreasing"):
        proc(text=prompt, videos=_frames(4), video_timestamps=[0, 2, 1, 3])
    with pytest.raises(ValueError, match="4 frames but 3 timestamps"):
        proc(text=prompt, videos=_frames(4), video_timestamps=[0, 1, 2])
    with pytest.raises(ValueError, match="uint8"):
        proc(text=prompt, videos=torch.zeros(4, 8, 8, 3), fps=1.0)
    with pytest.raises(ValueError, match="video_token"):
        _proc(tok, cfg, video_token="<|nope|>")
    # fps gives frame i the time i / fps
    b = proc(text=prompt, videos=_frames(8), fps=2.0)
    assert "Time 00:00:02.0:" in tok.decode(b["input_ids"][0])


def test_generate_is_generation_mixins_and_matches_a_recomputed_greedy_loop(tok):
    torch.manual_seed(1)
    cfg = _cfg(tok, selector_budget=16)
    model = VideoXLProForConditionalGeneration(cfg).eval()
    proc = _proc(tok, cfg)
    batch = _inputs(proc, [13, 6])
    length = batch["input_ids"].shape[1]
    out = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] <= length + 5
    assert torch.equal(out[:, :length], batch["input_ids"])  # prompt + new tokens, as every decoder-only model
    # the same tokens, recomputed from scratch at every step (no cache: the full prompt is spliced each time)
    ids = batch["input_ids"]
    mask, types = batch["attention_mask"], batch["token_type_ids"]
    video = {k: batch[k] for k in ("pixel_values_videos", "video_num_frames")}
    with torch.no_grad():
        for _ in range(out.shape[1] - length):
            logits = model(input_ids=ids, attention_mask=mask, token_type_ids=types, **video).logits[:, -1]
            nxt = logits.argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
            types = torch.cat([types, torch.zeros_like(nxt)], 1)
    assert torch.equal(ids, out)
    assert torch.equal(model.generate(**batch, max_new_tokens=5), out)  # deterministic
    assert torch.equal(model.generate(**batch, max_new_tokens=5, use_cache=False), out)
    # generation_config is honoured
    model.generation_config.max_new_tokens = 1
    assert model.generate(**batch).shape[1] == length + 1
    beams = model.generate(**batch, num_beams=2, max_new_tokens=3, num_return_sequences=2)
    assert beams.shape[0] == 4


def test_batch_generation_equals_one_by_one(tok):
    """Ragged videos and questions in one batch: the selector shortens each sample differently, and every answer
    equals the one of the same sample alone."""
    torch.manual_seed(11)
    cfg = _cfg(tok, selector_budget=48)
    model = VideoXLProForConditionalGeneration(cfg).eval()
    proc = _proc(tok, cfg)
    questions = ["What colour?", "red blue green What colour is it?", "blue?"]
    lengths = [13, 6, 22]
    videos = [_frames(n, seed=20 + i) for i, n in enumerate(lengths)]
    stamps = [torch.arange(n) * 0.7 for n in lengths]
    prompts = [proc.apply_chat_template(conversation(q), add_generation_prompt=True) for q in questions]
    batch = proc(text=prompts, videos=videos, video_timestamps=stamps)
    out = model.generate(**batch, max_new_tokens=6, min_new_tokens=6)
    new = out[:, batch["input_ids"].shape[1] :]
    for i in range(3):
        one = proc(text=prompts[i], videos=videos[i], video_timestamps=stamps[i])
        alone = model.generate(**one, max_new_tokens=6, min_new_tokens=6)[0, one["input_ids"].shape[1] :]
        assert torch.equal(alone, new[i]), i
    with torch.no_grad():  # the compacted lengths differ, and the compacted batch is left-padded
        spliced = model(**batch)
    lens = spliced.attention_mask.sum(1)
    assert len(set(lens.tolist())) > 1 and bool(spliced.attention_mask[:, -1].all())


def test_inference_touches_no_global_rng(tok):
    torch.manual_seed(2)
    cfg = _cfg(tok, selector_mode="ratio", selector_keep_ratio=0.7)
    model = VideoXLProForConditionalGeneration(cfg).eval()
    batch = _inputs(_proc(tok, cfg), [12])
    state, py_state = torch.random.get_rng_state(), random.getstate()
    out1 = model.generate(**batch, max_new_tokens=3)
    out2 = model.generate(**batch, max_new_tokens=3)
    assert torch.equal(out1, out2)
    assert torch.equal(torch.random.get_rng_state(), state) and random.getstate() == py_state


def test_selector_arguments_are_per_call_with_config_defaults(tok):
    torch.manual_seed(3)
    cfg = _cfg(tok, selector_budget=48)
    model = VideoXLProForConditionalGeneration(cfg).eval()
    proc = _proc(tok, cfg)
    batch = _inputs(proc, [16])  # 4 groups × 9 = 36 visual tokens, each group with its time text
    n_vis, n_time = 36, len(proc.time_ids(0.0))
    full_len = batch["input_ids"].shape[1]

    def kept(**kw):
        with torch.no_grad():
            out = model(**batch, **kw)
        sel = out.selection[0]
        groups = len(set((sel["kept_visual"] // cfg.tokens_per_group).tolist()))
        n_kept = sel["positions"].numel()
        # time text travels with the groups that keep visual tokens; the sequence shrinks accordingly
        assert out.logits.shape[1] == full_len - n_vis - 4 * n_time + n_kept + groups * n_time
        return n_kept, groups

    n_kept, groups = kept()
    assert n_kept + groups * n_time <= 48 and n_kept >= 1  # the budget counts visual and time tokens
    n_kept, groups = kept(selector_budget=96)
    assert n_kept + groups * n_time <= 96 and n_kept > kept()[0]
    assert kept(selector_mode="off") == (n_vis, 4)
    assert kept(selector_mode="ratio", selector_keep_ratio=0.5)[0] == 18  # vxlp: round(0.5 · 36)
    model.config.selector_budget = 256  # changing the config after construction takes effect at the next call
    assert kept() == (n_vis, 4)
    with pytest.raises(ValueError, match="selector_budget"):
        model(**batch, selector_budget=20)
    with pytest.raises(ValueError, match="selector_mode"):
        model(**batch, selector_mode="all")
    with pytest.raises(ValueError, match="selector_keep_ratio"):
        model(**batch, selector_mode="ratio", selector_keep_ratio=1.5)


def test_budget_selection_matches_a_python_reference():
    from vxlp_model.selector import budget_selection

    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        groups, p = int(torch.randint(1, 30, (1,), generator=g)), int(torch.randint(1, 6, (1,), generator=g))
        scores = torch.rand(groups * p, generator=g).round(decimals=2)  # ties on purpose
        times = torch.randint(0, 12, (groups,), generator=g)
        budget = int(times.max()) + 1 + int(torch.randint(0, 60, (1,), generator=g))
        got = budget_selection(scores, p, times, budget).tolist()
        order = sorted(range(groups * p), key=lambda i: (-float(scores[i]), i))
        used, seen, ref = 0, set(), []
        for i in order:
            cost = 1 + (0 if i // p in seen else int(times[i // p]))
            if used + cost > budget:
                break
            used += cost
            seen.add(i // p)
            ref.append(i)
        assert got == sorted(ref or order[:1]), trial
    with pytest.raises(ValueError, match="cannot hold one group"):
        budget_selection(torch.rand(8), 4, torch.tensor([10, 10]), 10)


def test_selector_keeps_top_scores_in_temporal_order(tok):
    torch.manual_seed(4)
    cfg = _cfg(tok, selector_mode="ratio", selector_keep_ratio=0.4)
    model = VideoXLProForConditionalGeneration(cfg).eval()
    proc = _proc(tok, cfg)
    batch = _inputs(proc, [20])  # 5 groups × 9 = 45 visual tokens
    with torch.no_grad():
        out = model(**batch)
    sel = out.selection[0]
    kept = sel["kept_visual"].tolist()
    assert kept == sorted(kept) and len(kept) == 18  # round(0.4 · 45)
    # the kept visual tokens carry the 18 best scores; min-max normalised scores span [0, 1]
    assert float(sel["scores"].min()) >= 0.0 and float(sel["scores"].max()) <= 1.0
    types = batch["token_type_ids"][0]
    n_time = len(proc.time_ids(0.0))
    groups = len(set(k // cfg.tokens_per_group for k in kept))
    assert out.logits.shape[1] == int((types != VIDEO).sum()) - (5 - groups) * n_time + 18
    # the kept positions hold the kept visual tokens, each right after its group's time text or another kept token
    ids = batch["input_ids"][0]
    assert int((types == TIME).sum()) == 5 * n_time and int((ids == cfg.video_token_id).sum()) == 45


@pytest.mark.parametrize("impl", ["vxlp", "released_v2", "released_v1"])
@pytest.mark.parametrize("mode", ["budget", "ratio"])
def test_chunked_scoring_equals_the_fused_op(tok, impl, mode):
    """Long videos are scored chunk by chunk; the result equals scoring the whole video at once."""
    torch.manual_seed(12)
    cfg = _cfg(tok, selector_impl=impl)
    sel = VideoXLProForConditionalGeneration(cfg).eval().model.selector
    g, p, d = 23, cfg.tokens_per_group, cfg.hidden_size
    visual = torch.randn(g, p, d)
    time_group = torch.arange(g).repeat_interleave(3)
    time_rows = torch.randn(time_group.shape[0], d)
    text = torch.randn(5, d)
    with torch.no_grad():
        whole = sel(visual, time_rows, time_group, text, mode, 64, 0.6)
        chunked = sel(visual, time_rows, time_group, text, mode, 64, 0.6, chunk_tokens=2 * p)
    assert torch.equal(whole.kept_visual, chunked.kept_visual)
    assert torch.allclose(whole.scores, chunked.scores, atol=1e-5)
    assert torch.allclose(whole.visual_rows, chunked.visual_rows, atol=1e-5)
    assert torch.equal(whole.kept_time, chunked.kept_time) and torch.allclose(whole.time_rows, chunked.time_rows)


def test_keep_count_rules():
    assert keep_count(1440, "released_v2", "ratio", 9600, 0.9) == 1296  # int(1296.0) is a multiple of 16
    assert keep_count(1440, "released_v2", "ratio", 9600, 0.85) == 1216  # int(1224.0) = 1224 → 1216
    assert keep_count(20000, "released_v1", "budget", 9600, 1.0) == 9600
    assert keep_count(27, "released_v2", "ratio", 9600, 0.9) == 16
    assert keep_count(10, "released_v2", "ratio", 9600, 0.5) == 10  # nothing left after rounding: keep min(N, 16)
    assert keep_count(36, "vxlp", "ratio", 9600, 0.5) == 18
    assert keep_count(36, "vxlp", "budget", 16, 0.5) == 16
    assert keep_count(36, "vxlp", "off", 16, 0.5) == 36


def test_rope_on_embeddings_matches_complex_rotation():
    torch.manual_seed(5)
    x = torch.randn(37, 16, dtype=torch.float64)
    pos = torch.arange(37)
    out = rope_interleaved(x, pos)
    d = 16
    inv = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(1e6) / d))
    ang = pos.float()[:, None] * inv[None]  # the released fp32 angle table, sin/cos in fp32 (RELEASED.md §4)
    z = torch.complex(x[:, 0::2], x[:, 1::2]) * torch.complex(ang.cos().double(), ang.sin().double())
    ref = torch.stack([z.real, z.imag], -1).flatten(-2)
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)
    # half precision: computed in float32, rounded once
    xh = x.to(torch.bfloat16)
    assert torch.equal(rope_interleaved(xh, pos), rope_interleaved(xh.float(), pos).to(torch.bfloat16))


def test_query_excludes_answer_tokens(tok):
    """Changing the answer changes the labels but not the selection (the released code leaked answers)."""
    torch.manual_seed(6)
    for impl in ("vxlp", "released_v2"):
        cfg = _cfg(tok, selector_budget=16, selector_impl=impl, selector_mode="budget")
        model = VideoXLProForConditionalGeneration(cfg).eval()
        proc = _proc(tok, cfg)
        picks = []
        for answer in ("red", "blue green blue"):
            batch = _inputs(proc, [12], answers=[answer])
            with torch.no_grad():
                picks.append(model(**batch).selection[0]["kept_visual"])
        assert torch.equal(picks[0], picks[1]), impl


def test_released_v2_selector_runs_and_changes_with_the_question(tok):
    torch.manual_seed(7)
    cfg = _cfg(tok, selector_impl="released_v2", selector_mode="ratio", selector_keep_ratio=0.9, token_layout="released", transposed_rel_k=True)
    model = VideoXLProForConditionalGeneration(cfg).eval()
    assert "model.selector.time_attn.q_proj.weight" in model.state_dict()
    assert not any("v_proj" in k for k in model.state_dict() if k.startswith("model.selector"))
    proc = _proc(tok, cfg)
    outs = []
    for q in ("What colour?", "red red red blue green"):
        with torch.no_grad():
            outs.append(model(**_inputs(proc, [16], question=q)))
    assert outs[0].selection[0]["positions"].numel() == 32  # int(36 · 0.9) = 32, a multiple of 16
    assert not torch.equal(outs[0].selection[0]["scores"], outs[1].selection[0]["scores"])


def test_streaming_encode_equals_whole_and_chunking_is_invisible(tok):
    torch.manual_seed(8)
    cfg = _cfg(tok, chunk_frames=8)
    model = VideoXLProForConditionalGeneration(cfg).eval()
    vp = VideoXLProVideoProcessor(size=32)
    frames = _frames(23, seed=9)
    px = vp.pixel_values(frames)
    with torch.no_grad():
        whole = model.encode_video(px)
        streamed = model.encode_video(iter([px[:5], px[5:6], px[6:20], px[20:]]))
        one_chunk = model.encode_video(px, chunk_frames=64)
        padded = torch.cat([px, px[-1:]])
        batched = model.get_video_features(torch.cat([padded, padded[:8]]), [24, 8])
    assert whole.shape == (math.ceil(23 / 4), cfg.tokens_per_group, cfg.hidden_size)
    assert torch.allclose(whole, streamed, atol=1e-5)
    assert torch.allclose(whole, one_chunk, atol=1e-5)
    assert torch.allclose(batched[0], whole, atol=1e-5) and batched[1].shape[0] == 2
    # precomputed visual tokens give the same logits as pixels
    batch = _inputs(_proc(tok, cfg), [23])
    with torch.no_grad():
        a = model(**batch).logits
        emb = model.get_video_features(batch["pixel_values_videos"], batch["video_num_frames"])
        b = model(**{k: v for k, v in batch.items() if k != "pixel_values_videos"}, video_embeds=torch.cat(emb)).logits
    assert torch.allclose(a, b, atol=1e-6)


def test_model_bad_inputs(tok):
    cfg = _cfg(tok)
    model = VideoXLProForConditionalGeneration(cfg)
    batch = _inputs(_proc(tok, cfg), [8])
    with pytest.raises(ValueError, match="video_num_frames"):
        model(**{**batch, "video_num_frames": torch.tensor([12])})
    with pytest.raises(ValueError, match="placeholders"):
        px = torch.cat([batch["pixel_values_videos"], batch["pixel_values_videos"][:4]])
        model(**{**batch, "pixel_values_videos": px, "video_num_frames": torch.tensor([12])})
    with pytest.raises(ValueError, match="token_type_ids"):
        model(**{k: v for k, v in batch.items() if k != "token_type_ids"})
    with pytest.raises(ValueError, match="either"):
        model(**batch, video_embeds=torch.zeros(2, cfg.tokens_per_group, cfg.hidden_size))
    with pytest.raises(ValueError, match="more videos"):
        model(**{**batch, "pixel_values_videos": torch.cat([batch["pixel_values_videos"]] * 2), "video_num_frames": torch.tensor([8, 8])})
    other = _cfg(tok, video_token_id=5)
    with pytest.raises(ValueError, match="id 5"):
        VideoXLProForConditionalGeneration(other)(**batch)
    model.config.selector_impl = "released_v2"
    with pytest.raises(ValueError, match="architecture setting"):
        model(**batch)
    with pytest.raises(ValueError, match="token_layout"):
        _cfg(tok, token_layout="time_major")
    with pytest.raises(ValueError, match="selector_budget"):
        _cfg(tok, selector_budget=100)
    with pytest.raises(ValueError, match="selector_impl"):
        _cfg(tok, selector_impl="v3")


def test_save_load_round_trip_auto_classes_and_deterministic_generate(tok, tmp_path):
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

    torch.manual_seed(9)
    cfg = _cfg(tok, selector_budget=16)
    model = VideoXLProForConditionalGeneration(cfg).eval()
    proc = _proc(tok, cfg)
    batch = _inputs(proc, [13, 6])
    gen1 = model.generate(**batch, max_new_tokens=4)
    path = save_checkpoint(model, str(tmp_path / "ckpt"), processor=proc)
    assert isinstance(AutoConfig.from_pretrained(path), VideoXLProConfig)
    loaded = AutoModelForImageTextToText.from_pretrained(path).eval()
    assert isinstance(loaded, VideoXLProForConditionalGeneration)
    assert isinstance(AutoModelForCausalLM.from_pretrained(path), VideoXLProForConditionalGeneration)
    assert isinstance(AutoModel.from_pretrained(path), VideoXLProModel)
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.language_model.embed_tokens.weight.data_ptr()
    proc2 = AutoProcessor.from_pretrained(path)
    assert isinstance(proc2, VideoXLProProcessor) and isinstance(proc2.video_processor, VideoXLProVideoProcessor)
    assert proc2.chat_template == proc.chat_template and proc2.tokens_per_group == cfg.tokens_per_group
    batch2 = _inputs(proc2, [13, 6])
    assert all(torch.equal(batch[k], batch2[k]) for k in batch)
    assert torch.equal(loaded.generate(**batch2, max_new_tokens=4), gen1)
    saved = json.loads(open(os.path.join(path, "config.json")).read())
    assert "selector_distill_weight" not in saved and "sgm_mask_ratio" not in saved  # training settings stay out


def test_checkpoint_is_atomic(tok, tmp_path):
    model = VideoXLProForConditionalGeneration(_cfg(tok))
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
    VideoXLProForConditionalGeneration.from_pretrained(str(target))


# ---------------------------------------------------------------------- the first layout's checkpoints
_LEGACY_NAMES = (  # current → legacy (the inverse of vxlp_model.legacy.LEGACY_KEY_MAP, written independently)
    ("lm_head.", "language_model.lm_head."),
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.", "vision_tower.model."),
    ("model.selector.text_mlp.", "selector.text_proj."),
    ("model.selector.time_attn.", "selector.window_attn."),
    ("model.sae.", "sae."),
    ("model.recot_decoder.", "recot_decoder."),
    ("model.sgm.", "sgm."),
    ("model.mm_projector.", "mm_projector."),
)


def test_legacy_checkpoints_still_load(tok, tmp_path):
    """A folder in the first layout (27-layer-style tower read at layer -2, no temporal proj_out bias, training keys in
    config.json) loads with from_pretrained and AutoProcessor and gives the same outputs."""
    from transformers import AutoProcessor

    torch.manual_seed(10)
    cfg = _cfg(tok, selector_budget=16)
    model = VideoXLProForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # the legacy layout had no temporal proj_out bias: zero reproduces it
        for name, p in model.named_parameters():
            if name.endswith("proj_out.bias") and p.dim() == 1 and (".encoder.1." in name or ".encoder.4." in name or ".blocks.1." in name):
                p.zero_()
    legacy = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":
            continue
        if key.endswith("proj_out.bias") and (".encoder.1." in key or ".encoder.4." in key or ".blocks.1." in key):
            continue
        if key.startswith("model.selector.visual_mlp."):  # not in the legacy layout (zero output at init)
            continue
        for new, old in _LEGACY_NAMES:
            if key.startswith(new):
                legacy[old + key[len(new) :]] = value.clone()
                break
        else:
            raise AssertionError(key)
    c = cfg.vision_config.hidden_size
    legacy["vision_tower.model.encoder.layers.1.layer_norm1.weight"] = torch.ones(c)  # the unused last layer (part)
    legacy["vision_tower.model.post_layernorm.weight"] = torch.ones(c)
    legacy["vision_tower.model.head.probe"] = torch.zeros(1, 1, c)
    out = tmp_path / "legacy"
    out.mkdir()
    save_file(legacy, str(out / "model.safetensors"), metadata={"format": "pt"})
    raw = json.loads(cfg.to_json_string())
    raw["vision_config"]["num_hidden_layers"] = 2
    raw.update(vision_feature_layer=-2, sgm_mask_ratio=0.5, sgm_pool=0.75, selector_distill_weight=0.2,
               selector_ratio_min=0.7, selector_ratio_max=0.95, time_format="Time {t:06.1f}s:", image_mean=0.5, image_std=0.5,
               system_prompt="You are a helpful assistant.", architectures=["VideoXLProForCausalLM"])
    (out / "config.json").write_text(json.dumps(raw))
    tok.save_pretrained(out)
    loaded = VideoXLProForConditionalGeneration.from_pretrained(str(out))
    assert loaded.config.vision_config.num_hidden_layers == 1
    proc = AutoProcessor.from_pretrained(str(out))
    batch = _inputs(proc, [9])
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, model(**batch).logits, atol=1e-6)
    resaved = save_checkpoint(loaded, str(tmp_path / "resaved"), processor=proc)  # re-saved in the current layout
    again = VideoXLProForConditionalGeneration.from_pretrained(resaved)
    assert set(again.state_dict()) == set(model.state_dict())


def test_cli_info_real_counts():
    res = subprocess.run([sys.executable, "-m", "vxlp_model.cli", "info", "--config", "real", "--json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    counts = json.loads(res.stdout)
    assert counts["sae"] == 93_526_272  # RELEASED.md §2, temporal proj_out biases included
    assert 3.0e9 < counts["language_model"] < 3.2e9  # Qwen2.5-3B, tied embeddings
    assert 3.9e8 < counts["vision_tower"] < 4.2e8  # SigLIP so400m with 26 of its 27 layers
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
