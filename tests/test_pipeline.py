"""Streaming inference (`VideoChat`, `vxlp chat`): encode once, ask many; the encoding cache; batch inference;
the video block stays within the budget at any length."""

import os

import pytest
import torch

from vxlp_model import (
    VideoXLProConfig,
    VideoXLProForConditionalGeneration,
    VideoXLProProcessor,
    VideoXLProVideoProcessor,
    build_tiny_tokenizer,
    conversation,
    read_video,
)
from vxlp_model.cli import main as cli_main
from vxlp_model.pipeline import VideoChat
from test_eval_support import write_clip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = build_tiny_tokenizer(["red", "blue", "What", "colour", "happens"])
    cfg = VideoXLProConfig.tiny(video_token_id=tok.convert_tokens_to_ids("<|vision_pad|>"), selector_budget=64)
    torch.manual_seed(0)
    model = VideoXLProForConditionalGeneration(cfg)
    with torch.no_grad():  # a model whose temporal blocks and selector do something
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    out = tmp_path_factory.mktemp("chat") / "model"
    model.save_pretrained(out)
    VideoXLProProcessor(VideoXLProVideoProcessor(size=32), tok, tokens_per_group=cfg.tokens_per_group).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", n=26)


def test_encode_once_ask_many_equals_the_one_shot_path(model_dir, clip):
    chat = VideoChat.from_pretrained(model_dir, chunk_frames=8)
    enc = chat.encode(clip, fps=2.0, progress=False)
    frames, ts, _ = read_video(clip, fps=2.0)
    assert enc.num_frames == frames.shape[0] + (-frames.shape[0]) % 4 and enc.tokens.shape[0] == enc.num_frames // 4
    assert set(enc.timings) >= {"decode", "vision", "dts"}
    model, proc = chat.model, chat.processor
    for q in ("What colour?", "What happens?"):
        a = chat.ask(enc, q, max_new_tokens=6, min_new_tokens=6)
        prompt = proc.apply_chat_template(conversation(q), add_generation_prompt=True)
        inputs = proc(text=prompt, videos=frames, video_timestamps=ts)
        ref = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6)[0, inputs["input_ids"].shape[1] :].tolist()
        assert a.token_ids == ref
        assert set(a.timings) == {"selector", "prefill", "generation"} and a.llm_tokens < inputs["input_ids"].shape[1]
    # the same question twice: the same answer
    assert chat.ask(enc, "What colour?", max_new_tokens=6).token_ids == chat.ask(enc, "What colour?", max_new_tokens=6).token_ids


def test_batch_of_pairs_equals_one_by_one(model_dir, clip, tmp_path):
    chat = VideoChat.from_pretrained(model_dir)
    other = write_clip(tmp_path / "other.mp4", n=41, seed=3)
    a = chat.encode(clip, fps=4.0, progress=False)
    b = chat.encode(other, fps=4.0, progress=False)
    pairs = [(a, "What colour?"), (b, "What happens?"), (a, "red blue?"), (b, "What colour?")]
    batched = chat.ask_many(pairs, max_new_tokens=5, min_new_tokens=5)
    for (e, q), ans in zip(pairs, batched):
        assert chat.ask(e, q, max_new_tokens=5, min_new_tokens=5).token_ids == ans.token_ids


def test_encoding_cache(model_dir, clip, tmp_path):
    cache = tmp_path / "cache"
    chat = VideoChat.from_pretrained(model_dir, cache_dir=str(cache))
    first = chat.encode(clip, fps=2.0, progress=False)
    assert not first.from_cache and len(os.listdir(cache)) == 1
    again = VideoChat.from_pretrained(model_dir, cache_dir=str(cache)).encode(clip, fps=2.0, progress=False)
    assert again.from_cache and torch.equal(again.tokens, first.tokens) and again.group_starts == first.group_starts
    other_fps = chat.encode(clip, fps=4.0, progress=False)
    assert not other_fps.from_cache and len(os.listdir(cache)) == 2  # the sampling is part of the key
    # a damaged entry is ignored and rewritten
    entry = os.path.join(cache, f"{first.key}.safetensors")
    with open(entry, "wb") as f:
        f.write(b"not a safetensors file")
    redone = chat.encode(clip, fps=2.0, progress=False)
    assert not redone.from_cache and torch.equal(redone.tokens, first.tokens)
    # another model (different weights) does not share entries
    model = VideoXLProForConditionalGeneration.from_pretrained(model_dir)
    with torch.no_grad():
        model.model.mm_projector[0].bias.add_(1.0)
    changed = VideoChat(model, chat.processor, cache_dir=str(cache)).encode(clip, fps=2.0, progress=False)
    assert not changed.from_cache


def test_offloaded_tokens_give_the_same_answer(model_dir, clip):
    chat = VideoChat.from_pretrained(model_dir)
    off = VideoChat.from_pretrained(model_dir, offload_threshold_gb=0.0)
    a, b = chat.encode(clip, fps=4.0, progress=False), off.encode(clip, fps=4.0, progress=False)
    assert b.tokens.device.type == "cpu" and torch.equal(a.tokens, b.tokens)
    assert chat.ask(a, "What colour?", max_new_tokens=4).token_ids == off.ask(b, "What colour?", max_new_tokens=4).token_ids


def test_the_video_block_fits_the_budget_at_any_length(model_dir):
    from vxlp_model.pipeline import EncodedVideo

    chat = VideoChat.from_pretrained(model_dir)
    proc = chat.processor
    n_time = len(proc.time_ids(0.0))
    prompt = proc.apply_chat_template(conversation("What colour?"), add_generation_prompt=True)
    for groups in (2, 40, 700, 3000):  # 8 … 12,000 frames; the tiny LLM has 4,096 positions
        starts = [4.0 * g for g in range(groups)]
        enc = EncodedVideo(torch.randn(groups, 9, chat.model.config.hidden_size), starts, 4 * groups)
        text = proc.encode_prompts(prompt, [starts])["input_ids"].shape[1] - groups * (9 + n_time)
        a = chat.ask(enc, "What colour?", max_new_tokens=1, selector_budget=64)
        assert 0 < a.llm_tokens - text <= 64  # visual tokens + their groups' time text ≤ the budget


def test_cli_chat(model_dir, clip, tmp_path, capsys, monkeypatch):
    args = ["chat", "--model", model_dir, "--video", clip, "--question", "What colour?", "--question", "What happens?",
            "--fps", "2", "--cache", str(tmp_path / "c"), "--no-progress", "--max-new-tokens", "4"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert out.count("Q: ") == 2 and out.count("A: ") == 2 and "peak memory" in out and "prefill" in out and "encoded" in out
    assert cli_main(args) == 0
    assert "from the encoding cache" in capsys.readouterr().out
    assert cli_main(args + ["--frame-selection", "qc_comp"]) == 0
    assert capsys.readouterr().out.count("A: ") == 2
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    assert cli_main(["chat", "--model", model_dir, "--video", str(bad), "--question", "q?", "--no-progress"]) == 2
    assert "bad.mp4" in capsys.readouterr().err
    assert cli_main(["chat", "--model", str(tmp_path / "nope"), "--video", clip, "--question", "q?"]) == 2

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(VideoChat, "encode", interrupted)
    assert cli_main(["chat", "--model", model_dir, "--video", clip, "--question", "q?"]) == 130
    assert "interrupted" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["vst", "lp_comp"])
def test_chat_runs_the_in_llm_compressors(model_dir, clip, tmp_path, kind):
    """A VST / LP-Comp model answers through VideoChat exactly as through generate on the pixels (the compressed
    prefill runs; the plain LLM over the spliced rows would answer differently)."""
    cfg = VideoXLProConfig.from_pretrained(model_dir)
    cfg.llm_compression, cfg.vst_ratio, cfg.vst_window_groups = kind, 2, 1
    model = VideoXLProForConditionalGeneration.from_pretrained(model_dir, config=cfg)
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 1.0)  # a head that makes the answer depend on the prefill
        if kind == "vst":
            model.model.summary_embed_tokens.weight.normal_(0.0, 1.0)
    out = tmp_path / kind
    model.save_pretrained(out)
    VideoXLProProcessor.from_pretrained(model_dir).save_pretrained(out)
    chat = VideoChat.from_pretrained(str(out))
    enc = chat.encode(clip, fps=2.0, progress=False)
    frames, ts, _ = read_video(clip, fps=2.0)
    proc = chat.processor
    prompt = proc.apply_chat_template(conversation("What colour?"), add_generation_prompt=True)
    inputs = proc(text=prompt, videos=frames, video_timestamps=ts)
    ref = chat.model.generate(**inputs, max_new_tokens=6, min_new_tokens=6)[0, inputs["input_ids"].shape[1] :].tolist()
    assert chat.ask(enc, "What colour?", max_new_tokens=6, min_new_tokens=6).token_ids == ref
    # the same rows through the plain LLM give other logits: the compressor did run
    spliced = chat.model.model.splice_video(inputs["input_ids"], inputs["token_type_ids"], [enc.tokens], inputs["attention_mask"])
    with torch.no_grad():
        plain = chat.model(inputs_embeds=spliced["inputs_embeds"], attention_mask=spliced["attention_mask"]).logits[0, -1]
        comp = chat.model(**inputs).logits[0, -1]
    assert not torch.allclose(plain, comp, atol=1e-3)
