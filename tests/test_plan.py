"""``vxlp plan`` (vxlp_model/plan.py): the planner's peaks against measured peaks on CPU, its solve for the most
frames that fit, and the command line.

Measured peaks: :class:`vxlp_model.plan.PeakMemory` on CPU reads torch's profiler allocation events, whose
running total is the CPU allocator's live bytes — exact and identical run to run (the CPU analogue of
``torch.cuda.max_memory_allocated``). The planner runs in its CPU mode (``device="cpu"``, ``ops="reference"``:
host-side transients and the reference ops' float32 copies and attention matrices counted). Tolerance: 5 %. The
CPU peaks it predicts are within 2 % (docs/plan.md lists them); the margin covers small allocations the planner
does not list (index tensors of a few hundred bytes per group, Python-side bookkeeping tensors) and oneDNN's
primitive choice, which can change with the CPU model. The GPU check (within 10 %) is the pipeline benchmark's.
"""

import json
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
)
from vxlp_model import plan as P
from vxlp_model.pipeline import EncodedVideo, VideoChat

TOL = 0.05
QUESTION = "What colour is the needle?"


def _tok():
    return build_tiny_tokenizer(["What", "colour", "needle"])


def real_shallow_config(tok, **overrides) -> VideoXLProConfig:
    """``VideoXLProConfig.real()`` with 2 SigLIP layers, 2 LLM layers and the tiny tokenizer's vocabulary."""
    d = VideoXLProConfig.real().to_dict()
    d["vision_config"]["num_hidden_layers"] = 2
    d["text_config"].update(num_hidden_layers=2, vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=None,
                            eos_token_id=tok.eos_token_id)
    d["text_config"].pop("layer_types", None)
    d.update(video_token_id=tok.convert_tokens_to_ids("<|vision_pad|>"), recot_decoder_layers=0)
    d.update(overrides)
    return VideoXLProConfig(**d)


def _model(cfg, dtype):
    torch.manual_seed(0)
    model = VideoXLProForConditionalGeneration(cfg)
    with torch.no_grad():  # temporal blocks and selector that do something
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    return model.to(dtype).eval()


def _chat(cfg, tok, dtype, chunk_frames):
    proc = VideoXLProProcessor(VideoXLProVideoProcessor(size=cfg.vision_config.image_size), tok, tokens_per_group=cfg.tokens_per_group)
    return VideoChat(_model(cfg, dtype), proc, chunk_frames=chunk_frames)


@pytest.fixture(scope="module")
def tiny():
    tok = _tok()
    cfg = VideoXLProConfig.tiny(video_token_id=tok.convert_tokens_to_ids("<|vision_pad|>"), selector_budget=64)
    return cfg, _chat(cfg, tok, torch.float32, 64)


@pytest.fixture(scope="module")
def real2():
    tok = _tok()
    cfg = real_shallow_config(tok, selector_budget=256)
    return cfg, _chat(cfg, tok, torch.bfloat16, 4)


def _settings(chat, groups, dtype, budget=None):
    """The planner's settings for one ask of ``chat`` about ``groups`` groups (prompt length from the processor)."""
    proc = chat.processor
    n_time = len(proc.time_ids(0.0))
    prompt = proc.apply_chat_template(conversation(QUESTION), add_generation_prompt=True)
    length = proc.encode_prompts([prompt], [[4.0 * g for g in range(groups)]])["input_ids"].shape[1]
    prompt_tokens = length - groups * (chat.model.config.tokens_per_group + n_time)
    out = dict(dtype=dtype, device="cpu", ops="reference", prompt_tokens=prompt_tokens, time_tokens=n_time, new_tokens=4,
               chunk_frames=chat.chunk_frames)
    if budget is not None:
        out["budget"] = budget
    return out


def _check(name, measured, predicted, detail):
    ratio = predicted / measured
    assert abs(ratio - 1) <= TOL, (
        f"{name}: planned {predicted / 2**20:.3f} MiB, measured {measured / 2**20:.3f} MiB (ratio {ratio:.3f}); "
        f"terms (MiB): { {k: round(v / 2**20, 3) for k, v in detail.items()} }"
    )


def _measure_encode(chat, n_frames, dtype):
    s = chat.model.config.vision_config.image_size
    gen = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (n_frames, s, s, 3), dtype=torch.uint8, generator=gen)
    with P.PeakMemory("cpu") as m:
        enc = chat.encode(frames, timestamps=torch.arange(n_frames, dtype=torch.float64), progress=False)
    p = P.plan(chat.model.config, n_frames, **_settings(chat, n_frames // 4, dtype))
    return m.increase, p, enc


def _measure_ask(chat, groups, dtype, budget=None):
    """Peak of ``ask`` about synthetic tokens of ``groups`` groups (splice + selector, prefill, 4 new tokens)."""
    cfg = chat.model.config
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randn(groups, cfg.tokens_per_group, cfg.hidden_size, generator=gen).to(chat.model.dtype)
    enc = EncodedVideo(tokens, [4.0 * g for g in range(groups)], 4 * groups)
    with P.PeakMemory("cpu") as m:
        ans = chat.ask(enc, QUESTION, max_new_tokens=4, min_new_tokens=4, selector_budget=budget)
    p = P.plan(cfg, 4 * groups, **_settings(chat, groups, dtype, budget))
    return m.increase, p, ans


def _ask_predicted(p):
    return max(p.phases["select"]["peak"], p.phases["prefill"]["peak"]) - p.phases["select"]["entry"]


# ---------------------------------------------------------------------------------------------- measurement tool


def test_peak_memory_reads_the_allocator_exactly():
    with P.PeakMemory("cpu") as m:
        a = torch.empty(1 << 20, dtype=torch.uint8).fill_(1)  # 1 MiB
        b = torch.empty(3 << 20, dtype=torch.uint8).fill_(1)  # + 3 MiB: 4 MiB live
        del a
        c = torch.empty(2 << 20, dtype=torch.uint8).fill_(1)  # 5 MiB live: the peak
        del b, c
    assert m.increase == 5 << 20
    with P.PeakMemory("cpu") as again:  # the profiler's running total persists across sessions: taken relative
        d = torch.empty(1 << 20, dtype=torch.uint8).fill_(1)
    assert again.increase == 1 << 20
    del d


# ---------------------------------------------------------------------------------------------- weights


def test_weights_are_every_parameter_and_buffer_once(tiny):
    cfg, chat = tiny
    model = chat.model
    seen = {}
    for t in list(model.parameters()) + list(model.buffers()):
        seen[t.data_ptr()] = t.numel() * t.element_size()
    assert P.weight_bytes(cfg, 4) == sum(seen.values())
    real = VideoXLProConfig.real()
    with torch.device("meta"):
        counts = VideoXLProForConditionalGeneration(real).parameter_counts()
    # bf16 parameters (tied embeddings once) + int64 position ids [1, 729] + two float32 rotary tables of 64
    assert P.weight_bytes(real, 2) == 2 * counts["total"] + 8 * 729 + 2 * 2 * 64


# ---------------------------------------------------------------------------------------------- planned vs measured, CPU


def test_tiny_encode_peak_matches_the_measurement(tiny):
    _, chat = tiny
    measured, p, enc = _measure_encode(chat, 256, "fp32")
    assert enc.tokens.numel() * enc.tokens.element_size() == p.phases["select"]["entry"] - p.weights
    _check("tiny encode (4 chunks of 64 frames)", measured, p.phases["encode"]["peak"] - p.weights, p.phases["encode"]["detail"])


def test_tiny_selector_peak_matches_the_measurement_fused_and_chunked(tiny):
    _, chat = tiny
    # 1,024 groups: one scoring chunk (the fused op); 8,000 groups: > 65,536 / 9 tokens, scored chunk by chunk
    for groups in (1024, 8000):
        measured, p, ans = _measure_ask(chat, groups, "fp32")
        assert ans.llm_tokens <= p.llm_tokens <= ans.llm_tokens + 16  # the budget bounds the prompt
        assert p.phases["select"]["peak"] >= p.phases["prefill"]["peak"]
        _check(f"tiny ask, {groups} groups", measured, _ask_predicted(p), p.phases["select"]["detail"])


def test_real_width_encode_peak_matches_the_measurement(real2):
    """SigLIP so400m / DTS / Qwen2.5-3B widths (2 + 2 layers), bf16, one chunk of 4 frames."""
    _, chat = real2
    measured, p, _ = _measure_encode(chat, 4, "bf16")
    _check("real-width encode", measured, p.phases["encode"]["peak"] - p.weights, p.phases["encode"]["detail"])


def test_real_width_ask_peaks_match_the_measurement(real2):
    _, chat = real2
    # 32 groups, budget 256: the selector's scoring chunk is the peak
    measured, p, _ = _measure_ask(chat, 32, "bf16", budget=256)
    assert p.phases["select"]["peak"] > p.phases["prefill"]["peak"]
    _check("real-width ask (selector peak)", measured, _ask_predicted(p), p.phases["select"]["detail"])
    # 8 groups, budget 2,048 (everything kept, 1,290 LLM tokens): the prefill's MLP is the peak
    measured, p, ans = _measure_ask(chat, 8, "bf16", budget=2048)
    assert p.phases["prefill"]["peak"] > p.phases["select"]["peak"] and ans.llm_tokens == p.llm_tokens
    _check("real-width ask (prefill peak)", measured, _ask_predicted(p), p.phases["prefill"]["detail"])


# ---------------------------------------------------------------------------------------------- the plan's structure


def test_real_plan_terms_at_scale():
    cfg = VideoXLProConfig.real()
    p = P.plan(cfg, 100_000, budget=32_704)
    assert p.tokens_bytes_per_frame == 144 * 2048 * 2 / 4  # 147,456 B: ≤ 0.2 MB per frame
    tok = 25_000 * 144 * 2048 * 2
    enc = p.phases["encode"]["components"]
    # one preallocated buffer, the last chunk's largest step beside it
    assert enc["compact_tokens"] == tok
    assert enc["chunk_activations"] == max(v for k, v in p.phases["encode"]["detail"].items() if k != "tokens_buffer")
    assert p.llm_tokens == 64 + 32_704
    kv = p.phases["prefill"]["components"]["kv_cache"]
    assert kv == 36 * 2 * 2 * 128 * 2 * (p.llm_tokens + 64)
    # the peak of every phase is the sum of its components
    for ph in p.phases.values():
        assert ph["peak"] == sum(ph["components"].values())
    # offload: no compact token on the device, the selector's time rows remain
    off = P.plan(cfg, 100_000, budget=32_704, offload=True)
    assert all(ph["components"]["compact_tokens"] <= 144 * 64 * 2048 * 2 for ph in off.phases.values())
    assert off.peak_bytes < p.peak_bytes and off.host_bytes >= tok


def test_small_videos_peak_in_the_chunk_or_the_prefill():
    cfg = VideoXLProConfig.real()
    p = P.plan(cfg, 64)
    assert p.phases["encode"]["components"]["chunk_activations"] > 1 * 2**30  # the SigLIP MLP of 64 frames
    steps = {k: v for k, v in p.phases["encode"]["detail"].items() if k != "tokens_buffer"}
    assert max(steps, key=steps.get) == "siglip_mlp"


def test_max_frames_is_the_largest_count_that_fits():
    cfg = VideoXLProConfig.real()
    gpu = 80 * P.GIB
    r = P.max_frames(cfg, gpu)
    n = r["frames"]
    assert n % 4 == 0 and n > 200_000
    assert r["plan"].peak_bytes + P.GIB <= gpu < P.plan(cfg, n + 4).peak_bytes + P.GIB
    assert r["term"] == "compact_tokens" and r["phase"] in ("encode", "select") and "compact tokens" in r["limit"]
    off = P.max_frames(cfg, gpu, offload=True)
    assert off["frames"] > 4 * n and off["term"] == "held_time_rows"
    host = P.max_frames(cfg, gpu, host_mem_bytes=64 * P.GIB, offload=True)
    assert host["term"] == "host" and host["plan"].host_bytes <= 64 * P.GIB < P.plan(cfg, host["frames"] + 4, offload=True).host_bytes
    tight = P.max_frames(cfg, 4 * P.GIB)
    assert tight["frames"] == 0 and "fixed terms" in tight["limit"]


def test_the_llm_positions_limit_the_released_selector():
    # the released selector keeps every group's time text: the prompt grows with the video until 32K positions
    cfg = VideoXLProConfig.real(selector_impl="released_v2")
    r = P.max_frames(cfg, 141 * P.GIB, time_tokens=10)
    assert r["term"] == "positions" and "32,768 positions" in r["limit"]
    assert r["plan"].llm_tokens <= 32_768 < P.plan(cfg, r["frames"] + 4, time_tokens=10).llm_tokens


def test_bad_settings_name_the_argument():
    cfg = VideoXLProConfig.tiny()
    for kwargs, word in (
        (dict(frames=0), "frames"), (dict(frames=8, dtype="int8"), "dtype"), (dict(frames=8, budget=100), "budget"),
        (dict(frames=8, ops="cudnn"), "ops"), (dict(frames=8, device="tpu"), "device"),
        (dict(frames=8, device="cpu", ops="cuda"), "ops"), (dict(frames=8, chunk_frames=6), "chunk_frames"),
        (dict(frames=8, time_tokens=-1), "time_tokens"),
    ):
        frames = kwargs.pop("frames")
        with pytest.raises(P.PlanError, match=word):
            P.plan(cfg, frames, **kwargs)
    for kwargs, word in (
        (dict(gpu_mem_bytes=-1.0), "gpu_mem_bytes"), (dict(gpu_mem_bytes=1e9, overhead_bytes=float("nan")), "overhead_bytes"),
        (dict(gpu_mem_bytes=1e9, host_mem_bytes=0), "host_mem_bytes"), (dict(gpu_mem_bytes=1e9, dtype="int4"), "dtype"),
    ):
        with pytest.raises(P.PlanError, match=word):
            P.max_frames(cfg, **kwargs)


# ---------------------------------------------------------------------------------------------- command line


def test_cli_table_and_json(capsys):
    assert P.main(["--config", "real", "--gpu-mem", "80GB", "--frames", "4096"]) == 0
    out = capsys.readouterr().out
    for word in ("weights", "compact_tokens", "chunk_activations", "selector", "kv_cache", "prefill_activations",
                 "most frames that fit, tokens on the GPU", "with host offload"):
        assert word in out
    assert P.main(["--config", "real", "--gpu-mem", "80GiB", "--budget", "32704", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    mf = doc["max_frames"]
    assert doc["plan"]["frames"] == mf["tokens_on_gpu"]["frames"] and doc["fits"]
    assert mf["host_offload"]["frames"] > mf["tokens_on_gpu"]["frames"] and doc["offload_supported"] is True
    assert doc["plan"]["llm_tokens"] == 64 + 32_704


def test_cli_reads_a_model_folder_without_weights(tmp_path, capsys):
    tok = _tok()
    cfg = VideoXLProConfig.tiny(video_token_id=tok.convert_tokens_to_ids("<|vision_pad|>"))
    cfg.save_pretrained(tmp_path)  # config.json only, no weights
    VideoXLProProcessor(VideoXLProVideoProcessor(size=32), tok, tokens_per_group=cfg.tokens_per_group).save_pretrained(tmp_path)
    assert not [f for f in os.listdir(tmp_path) if f.endswith((".safetensors", ".bin"))]
    assert P.main(["--config", str(tmp_path), "--gpu-mem", "1GB", "--frames", "64", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["settings"]["time_tokens"] == 13  # from the folder's processor
    expect = P.plan(cfg, 64, time_tokens=13)
    assert doc["plan"]["peak_bytes"] == expect.peak_bytes


def test_cli_errors_name_the_argument(tmp_path, capsys):
    cases = [
        (["--gpu-mem", "lots"], "--gpu-mem"),
        (["--gpu-mem=-3GB"], "--gpu-mem"),
        (["--gpu-mem", "80GB", "--frames", "0"], "--frames"),
        (["--gpu-mem", "80GB", "--budget", "100"], "--budget"),
        (["--gpu-mem", "80GB", "--chunk-frames", "6"], "--chunk-frames"),
        (["--gpu-mem", "80GB", "--time-tokens=-2"], "--time-tokens"),
        (["--gpu-mem", "80GB", "--host-mem", "x"], "--host-mem"),
        (["--gpu-mem", "80GB", "--overhead-gb=-1"], "--overhead-gb"),
        (["--gpu-mem", "80GB", "--config", str(tmp_path / "nope")], "--config"),
    ]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    cases.append((["--gpu-mem", "80GB", "--config", str(tmp_path / "bad")], "--config"))
    for argv, flag in cases:
        assert P.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("vxlp plan: error: ") and flag in err, (argv, err)


def test_add_plan_parser_registers_the_subcommand(capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="vxlp")
    P.add_plan_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["plan", "--config", "tiny", "--gpu-mem", "2GB", "--frames", "8"])
    assert args.func(args) == 0 and "tokens on the GPU" in capsys.readouterr().out
    args = parser.parse_args(["plan", "--config", "tiny", "--gpu-mem", "2GB", "--frames=-8"])
    assert args.func(args) == 2 and "--frames" in capsys.readouterr().err
