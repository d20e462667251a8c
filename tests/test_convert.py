"""`vxlp convert --from released`: synthetic released checkpoints (exact released key names, tests/released_fixtures.py)
converted and run against the independent float64 re-implementation of RELEASED.md §3–§5 (tests/_released_oracle.py,
which imports nothing from vxlp); pro-v1 (Activation-Beacon LLM → vxlp's VST) against the float64 VST reference of
tests/_compression_oracle.py; every bad input of the conversion."""

import json
import os
import shutil
import weakref
from types import SimpleNamespace

import pytest
import torch
from released_fixtures import TINY, released_state_dict, write_released_checkpoint
from _compression_oracle import Decoder, vst_f64
from _released_oracle import released_forward_f64
from safetensors.torch import load_file, save_file

import vxlp_model.convert as convert_mod
from vxlp_model import VideoXLProForConditionalGeneration, convert_released, conversation
from vxlp_model.cli import main as cli_main
from vxlp_model.convert import ConversionError, beacon_settings


def _frames(n, seed, h=40, w=30):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, 3), generator=g, dtype=torch.uint8)


def _run(dst, frames, ts, question, keep_ratio=None, dtype=torch.float64):
    from transformers import AutoProcessor

    model = VideoXLProForConditionalGeneration.from_pretrained(dst, dtype=dtype).eval()
    proc = AutoProcessor.from_pretrained(dst)
    prompt = proc.apply_chat_template(conversation(question), add_generation_prompt=True)
    inputs = proc(text=prompt, videos=frames, video_timestamps=ts)
    kw = {} if keep_ratio is None else {"selector_keep_ratio": keep_ratio}
    with torch.no_grad():
        out = model(**inputs, **kw)
    return model, proc, inputs, out


def _rel(a, b):
    return float((a.double() - b).norm() / b.norm())


@pytest.mark.parametrize(
    "seed,n_frames,keep_ratio,question",
    [(0, 10, 0.9, "What colour is the video?"), (5, 16, 0.75, "Is the helpful option a or the other?")],
)
def test_pro_v2_logits_match_the_float64_reference(tmp_path, seed, n_frames, keep_ratio, question):
    src = write_released_checkpoint(tmp_path / "src", "pro-v2", seed=seed, weight_format="safetensors-index", num_shards=3)
    report = convert_released(src, tmp_path / "dst")
    assert report.variant == "pro-v2" and report.tied_lm_head and report.dtype == "float32"
    assert {k for k, _ in report.dropped} == {
        "model.vision_tower.vision_tower.vision_model.post_layernorm.weight",
        "model.vision_tower.vision_tower.vision_model.post_layernorm.bias",
        "model.WindowTimeToTokenAttention.v_proj.weight",
        "model.WindowTimeToTokenAttention.v_proj.bias",
    }
    frames = _frames(n_frames, seed)
    ts = [round(0.5 * i, 1) for i in range(n_frames)]
    ref = released_forward_f64(src, frames, ts, question, keep_ratio=keep_ratio)
    model, _, inputs, out = _run(tmp_path / "dst", frames, ts, question, keep_ratio)
    assert inputs["input_ids"][0].tolist() == ref["input_ids"]
    assert out.selection[0]["kept_visual"].tolist() == ref["kept_visual"].tolist()
    assert out.logits.shape[1] == ref["logits"].shape[0]
    assert _rel(out.logits[0], ref["logits"]) <= 1e-6
    assert model.config.selector_impl == "released_v2" and model.config.token_layout == "released"


def test_video_xl_2_logits_match_the_float64_reference(tmp_path):
    src = write_released_checkpoint(tmp_path / "src", "video-xl-2", seed=3, weight_format="bin", num_shards=2, include_lm_head=True)
    report = convert_released(src, tmp_path / "dst")
    assert report.variant == "video-xl-2" and not report.tied_lm_head
    frames = _frames(11, 3)  # Video-XL-2's evaluation trims 11 frames to 8
    ts = [round(0.7 * i, 1) for i in range(11)]
    q = "What is the video about?"
    ref = released_forward_f64(src, frames, ts, q)
    model, proc, inputs, out = _run(tmp_path / "dst", frames, ts, q)
    assert inputs["video_num_frames"].tolist() == [8]
    assert "Time 2.8s:" in proc.tokenizer.decode(inputs["input_ids"][0])
    assert inputs["input_ids"][0].tolist() == ref["input_ids"]
    assert _rel(out.logits[0], ref["logits"]) <= 1e-6
    assert model.config.selector_impl == "none" and not hasattr(model.model, "selector")


def test_weight_formats_convert_to_the_same_weights(tmp_path):
    outs = []
    for fmt, shards in (("safetensors-single", 1), ("safetensors-index", 4), ("bin", 1), ("bin", 3)):
        src = write_released_checkpoint(tmp_path / f"src-{fmt}-{shards}", "pro-v2", seed=1, weight_format=fmt, num_shards=shards)
        dst = tmp_path / f"dst-{fmt}-{shards}"
        convert_released(src, dst)
        with open(dst / "model.safetensors.index.json") as f:
            files = set(json.load(f)["weight_map"].values())
        sd = {}
        for name in files:
            sd.update(load_file(str(dst / name)))
        outs.append(sd)
    for sd in outs[1:]:
        assert sd.keys() == outs[0].keys() and all(torch.equal(sd[k], outs[0][k]) for k in sd)


def test_conversion_holds_one_shard_at_a_time(tmp_path, monkeypatch):
    src = write_released_checkpoint(tmp_path / "src", "pro-v2", num_shards=4)
    alive: list = []
    original = convert_mod._read_shard

    def tracking(fmt, path):
        assert all(r() is None for r in alive), "an earlier shard's tensors are still alive"
        sd = original(fmt, path)
        alive.extend(weakref.ref(t) for t in sd.values())
        return sd

    monkeypatch.setattr(convert_mod, "_read_shard", tracking)
    convert_released(src, tmp_path / "dst")
    assert len(alive) == len(released_state_dict(src))


def test_real_width_checkpoint_converts_and_answers_about_8_frames(tmp_path):
    """SigLIP so400m / DTS / Qwen2.5-3B widths with 2 SigLIP and 2 LLM layers, random bf16 weights."""
    src = write_released_checkpoint(tmp_path / "src", "pro-v2", geometry="real2", dtype=torch.bfloat16, num_shards=2)
    convert_released(src, tmp_path / "dst")
    dst = tmp_path / "dst"
    first = load_file(str(dst / "model-00001-of-00002.safetensors"))
    assert {v.dtype for v in first.values()} == {torch.bfloat16}  # dtype kept
    frames = _frames(8, 11, h=240, w=320)
    ts = [float(i) for i in range(8)]
    q = "What colour is the video?"
    model, proc, inputs, _ = _run(dst, frames, ts, q, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.config.vision_config.image_size == 384
    assert model.config.tokens_per_group == 144 and inputs["pixel_values_videos"].shape == (8, 3, 384, 384)
    out = model.generate(**inputs, max_new_tokens=3)
    new = out[0, inputs["input_ids"].shape[1] :]
    assert new.numel() >= 1 and isinstance(proc.batch_decode(new[None])[0], str)
    assert torch.equal(model.generate(**inputs, max_new_tokens=3), out)
    # the same checkpoint at real widths, in float64, against the float64 reference
    ref = released_forward_f64(src, frames, ts, q, keep_ratio=0.9)
    model64 = model.double()
    with torch.no_grad():
        logits = model64(**inputs, selector_keep_ratio=0.9).logits[0]
    assert _rel(logits, ref["logits"]) <= 1e-6


# ---------------------------------------------------------------------- bad input: clear errors, DST never half-written
@pytest.fixture()
def src(tmp_path):
    return write_released_checkpoint(tmp_path / "src", "pro-v2", num_shards=3)


def _no_dst(tmp_path):
    assert not (tmp_path / "dst").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith("dst")]


def test_missing_shard(tmp_path, src):
    os.remove(os.path.join(src, "model-00002-of-00003.safetensors"))
    with pytest.raises(FileNotFoundError, match="model-00002-of-00003.safetensors"):
        convert_released(src, tmp_path / "dst")
    _no_dst(tmp_path)


def test_wrong_model_type(tmp_path, src):
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["model_type"] = "qwen2"
    json.dump(cfg, open(os.path.join(src, "config.json"), "w"))
    with pytest.raises(ConversionError, match="config.json: model_type is 'qwen2'"):
        convert_released(src, tmp_path / "dst")
    _no_dst(tmp_path)


def _edit_shard(src, fn):
    path = os.path.join(src, "model-00001-of-00003.safetensors")
    sd = load_file(path)
    fn(sd)
    save_file(sd, path, metadata={"format": "pt"})
    return path


def test_shape_mismatch(tmp_path, src):
    def fn(sd):
        key = next(k for k in sd if k.endswith("weight") and sd[k].dim() == 2)
        sd[key] = sd[key][:, :-1].contiguous()

    _edit_shard(src, fn)
    with pytest.raises(ConversionError, match="has shape"):
        convert_released(src, tmp_path / "dst")
    _no_dst(tmp_path)


def test_unknown_key(tmp_path, src):
    _edit_shard(src, lambda sd: sd.__setitem__("model.mystery_head.weight", torch.zeros(2, 2)))
    with pytest.raises(ConversionError, match="model.mystery_head.weight"):
        convert_released(src, tmp_path / "dst")
    _no_dst(tmp_path)


def test_missing_key(tmp_path, src):
    def fn(sd):
        sd.pop(next(k for k in sd))

    _edit_shard(src, fn)
    with pytest.raises(ConversionError):
        convert_released(src, tmp_path / "dst")
    _no_dst(tmp_path)


def test_existing_destination_is_never_touched(tmp_path, src):
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="dst"):
        convert_released(src, tmp_path / "dst")
    assert os.listdir(tmp_path / "dst") == ["keep.txt"]


def test_pro_v1_with_a_beacon_o_proj_bias_is_refused(tmp_path):
    """The recognisable-only pro-v1 fixture stores a ``beacon_o_proj.bias``, which the released Qwen2 code never
    builds (o_proj has no bias) and vxlp's ``summary_o_proj`` does not have: a strict error naming the key."""
    src = write_released_checkpoint(tmp_path / "src", "pro-v1")
    with pytest.raises(ConversionError, match=r"beacon_o_proj\.bias.*summary_o_proj\.bias.*does not have"):
        convert_released(src, tmp_path / "dst")
    _no_dst(tmp_path)


def test_missing_tokenizer_and_config(tmp_path, src):
    os.remove(os.path.join(src, "tokenizer_config.json"))
    for f in os.listdir(src):
        if f.startswith(("vocab", "merges", "tokenizer")):
            os.remove(os.path.join(src, f))
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        convert_released(src, tmp_path / "dst")
    os.remove(os.path.join(src, "config.json"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        convert_released(src, tmp_path / "dst")
    _no_dst(tmp_path)


def test_failure_while_writing_leaves_no_destination(tmp_path, src, monkeypatch):
    calls = []

    def failing_save(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return save_file(*a, **k)

    monkeypatch.setattr("safetensors.torch.save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        convert_released(src, tmp_path / "dst")
    _no_dst(tmp_path)


def test_cli_convert(tmp_path, src, capsys):
    assert cli_main(["convert", "--from", "released", src, "--out", str(tmp_path / "dst"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "converted pro-v2" in printed and "dropped model.WindowTimeToTokenAttention.v_proj.weight" in printed
    assert cli_main(["convert", "--from", "released", src, "--out", str(tmp_path / "dst")]) == 2
    assert "already exists" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "dst")


# ---------------------------------------------------------------------- pro-v1: Activation-Beacon LLM → VST
P = TINY.tokens_per_group  # 9 visual tokens per group in the tiny geometry
PRO_V1_BEACON = {
    "beacon_window": 2 * P,  # two groups per window
    "beacon_stride": 2 * P,
    "beacon_attn": "full-coverage",
    "beacon_pos": "interleave",
    "beacon_sink_size": 0,
    "beacon_attend_prev": True,
    "beacon_ratio": [4],
    "beacon_ratio_mix": "step-random",
    "beacon_param": ["q", "k", "v", "o"],
    "beacon_embed_init": "eos",
}


def _pro_v1(path, seed=2, **changes):
    return write_released_checkpoint(path, "pro-v1", seed=seed, num_shards=2, beacon_config={**PRO_V1_BEACON, **changes})


def _spliced(model, inputs):
    inner = model.model
    vids = inner.get_video_features(inputs["pixel_values_videos"], inputs["video_num_frames"])
    return inner.splice_video(inputs["input_ids"], inputs["token_type_ids"], vids, inputs["attention_mask"])


def test_pro_v1_converts_the_beacon_weights_into_the_vst_llm(tmp_path):
    src = _pro_v1(tmp_path / "src")
    report = convert_released(src, tmp_path / "dst")
    assert report.variant == "pro-v1" and report.copied == [] and report.tied_lm_head
    assert {k for k, _ in report.dropped} == {
        "model.vision_tower.vision_tower.vision_model.post_layernorm.weight",
        "model.vision_tower.vision_tower.vision_model.post_layernorm.bias",
    }
    model, info = VideoXLProForConditionalGeneration.from_pretrained(tmp_path / "dst", output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    cfg = model.config
    assert (cfg.llm_compression, cfg.vst_window_groups, cfg.vst_ratio) == ("vst", 2, 4)
    assert (cfg.selector_impl, cfg.selector_mode, cfg.selector_budget) == ("released_v1", "budget", 9600)
    assert cfg.token_layout == "released" and not hasattr(model.model.selector, "time_attn")
    # every destination tensor written, every released tensor used (all but the two dropped)
    with open(tmp_path / "dst" / "model.safetensors.index.json") as f:
        written = set(json.load(f)["weight_map"])
    assert written == set(model.state_dict()) - {"lm_head.weight"}
    released = released_state_dict(src)
    assert report.num_tensors == len(written) == len(released) - 2
    sd = model.state_dict()
    assert torch.equal(sd["model.summary_embed_tokens.weight"], released["model.beacon_embed_tokens.weight"])
    assert sd["model.summary_embed_tokens.weight"].shape == (1, TINY.llm_hidden)
    for n in range(TINY.llm_layers):
        for p in "qkvo":
            dst, rel = f"model.language_model.layers.{n}.self_attn.summary_{p}_proj.", f"model.layers.{n}.self_attn.beacon_{p}_proj."
            assert torch.equal(sd[dst + "weight"], released[rel + "weight"])
            if p == "o":
                assert dst + "bias" not in sd and rel + "bias" not in released
            else:
                assert torch.equal(sd[dst + "bias"], released[rel + "bias"])
        # the summary projections are the beacon ones, not copies of the originals
        own = f"model.layers.{n}.self_attn.q_proj.weight"
        assert not torch.equal(sd[f"model.language_model.layers.{n}.self_attn.summary_q_proj.weight"], released[own])
    with open(tmp_path / "dst" / "vxlp_conversion.json") as f:
        assert json.load(f)["variant"] == "pro-v1"


def test_pro_v1_forward_matches_the_float64_vst_reference(tmp_path):
    """The converted model's LLM, fed its own spliced embeddings, against the float64 VST of SPEC §8
    (tests/_compression_oracle.py) run on the *released* tensors under their released names (beacon_* read as the
    summary parameters) and the released config.json's shapes."""
    src = _pro_v1(tmp_path / "src")
    convert_released(src, tmp_path / "dst")
    frames, q = _frames(20, 7), "What colour is the video?"
    model, proc, inputs, out = _run(tmp_path / "dst", frames, [round(0.5 * i, 1) for i in range(20)], q)
    assert "Time" not in proc.tokenizer.decode(inputs["input_ids"][0])  # the paper-era model has no time text
    with torch.no_grad():
        inner = model.model(**inputs)
        sp = _spliced(model, inputs)
    real = sp["attention_mask"][0].bool()
    emb, grp = sp["inputs_embeds"][0][real], sp["row_group"][0][real]
    # 5 groups of 9 tokens: the budget's rounding to 16 keeps 32 of the 45, every group keeps some (3 windows of 2)
    assert sorted(set(grp[grp >= 0].tolist())) == [0, 1, 2, 3, 4] and int((grp >= 0).sum()) == 32
    released = {k: v.double() for k, v in released_state_dict(src).items()}
    llm = ("model.layers.", "model.norm.")
    weights = {k.replace(".beacon_", ".summary_"): v for k, v in released.items() if k.startswith(llm)}
    rc = json.load(open(os.path.join(src, "config.json")))
    text = SimpleNamespace(
        num_attention_heads=rc["num_attention_heads"], num_key_value_heads=rc["num_key_value_heads"],
        hidden_size=rc["hidden_size"], rms_norm_eps=rc["rms_norm_eps"], rope_parameters={"rope_theta": rc["rope_theta"]},
        num_hidden_layers=rc["num_hidden_layers"],
    )
    ref, kept = vst_f64(Decoder(weights, text, prefix="model."), emb, grp, 2, 4, released["model.beacon_embed_tokens.weight"][0])
    tol = dict(rtol=1e-5, atol=1e-5)  # transformers computes the RoPE angles in float32
    torch.testing.assert_close(inner.last_hidden_state[0][real], ref, **tol)
    torch.testing.assert_close(out.logits[0][real], ref @ released["model.embed_tokens.weight"].T, **tol)
    # the memory left for decoding: the text rows and one summary per 4 kept visual rows of each window
    assert inner.summary_tokens == [sum(-(-int(((grp >= 2 * w) & (grp < 2 * w + 2)).sum()) // 4) for w in range(3))]
    assert int(inner.attention_mask[0].sum()) == kept == int((grp < 0).sum()) + inner.summary_tokens[0]
    # and generation runs from the compressed cache
    gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] == inputs["input_ids"].shape[1] + 3


def test_pro_v1_projection_left_to_the_original_is_copied(tmp_path):
    """``beacon_param = ["q", "k", "v"]``: the released code gives the beacon tokens the original o_proj, so the
    summary o projection is filled with a copy of o_proj (listed in the report)."""
    src = _pro_v1(tmp_path / "src", beacon_param=["q", "k", "v"])
    released = released_state_dict(src)
    assert not any("beacon_o_proj" in k for k in released)
    report = convert_released(src, tmp_path / "dst")
    layers = range(TINY.llm_layers)
    assert sorted(d for d, _, _ in report.copied) == [f"model.language_model.layers.{n}.self_attn.summary_o_proj.weight" for n in layers]
    model, info = VideoXLProForConditionalGeneration.from_pretrained(tmp_path / "dst", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    sd = model.state_dict()
    for n in layers:
        dst, rel = f"model.language_model.layers.{n}.self_attn.", f"model.layers.{n}.self_attn."
        assert torch.equal(sd[dst + "summary_o_proj.weight"], released[rel + "o_proj.weight"])
        assert torch.equal(sd[dst + "summary_v_proj.weight"], released[rel + "beacon_v_proj.weight"])


def _edit_config(src, **changes):
    path = os.path.join(src, "config.json")
    cfg = json.load(open(path))
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    json.dump(cfg, open(path, "w"))


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"beacon_pos": "append"}, "beacon_pos = 'append'"),
        ({"beacon_attn": "segmentation"}, "beacon_attn = 'segmentation'"),
        ({"beacon_sink_size": 4}, "beacon_sink_size = 4"),
        ({"beacon_stride": P}, "beacon_stride = 9 differs from beacon_window = 18"),
        ({"beacon_window": 2 * P + 1, "beacon_stride": 2 * P + 1}, "beacon_window = 19 is not a positive multiple of the 9"),
        ({"beacon_ratio": [3]}, r"beacon_ratio = \[3\]"),
        ({"beacon_ratio": [32]}, r"beacon_ratio = \[32\]"),
        ({"beacon_ratio": [3, 32]}, r"beacon_ratio = \[3, 32\] holds none"),
        ({"beacon_attend_prev": False}, "beacon_attend_prev = False"),
        ({"beacon_parallel_window": 2}, "beacon_parallel_window = 2"),
        ({"beacon_param": ["q", "k", "v", "o", "mlp"]}, "beacon_param = .*'mlp'"),
        ({"beacon_param": ["q", "k", "v"]}, "beacon_o_proj weights but beacon_param"),
    ],
)
def test_pro_v1_unsupported_beacon_settings_are_refused(tmp_path, changes, match):
    src = _pro_v1(tmp_path / "src")
    _edit_config(src, **changes)
    with pytest.raises(ConversionError, match=match):
        convert_released(src, tmp_path / "dst")
    _no_dst(tmp_path)


def test_pro_v1_beacon_mlp_weights_and_missing_beacon_weights_are_refused(tmp_path):
    src = _pro_v1(tmp_path / "mlp", beacon_param=["q", "k", "v", "o", "mlp"])
    with pytest.raises(ConversionError, match=r"model\.layers\.0\.mlp\.beacon_down_proj\.weight: beacon MLP"):
        convert_released(src, tmp_path / "dst")
    _edit_config(src, beacon_param=["q", "k", "v", "o"])  # the keys alone are refused too
    with pytest.raises(ConversionError, match="beacon MLP"):
        convert_released(src, tmp_path / "dst")
    src = _pro_v1(tmp_path / "qkv", beacon_param=["q", "k", "v"])
    _edit_config(src, beacon_param=None)  # default: q, k, v and o, but the checkpoint has no beacon_o_proj
    with pytest.raises(ConversionError, match="names 'o' but the checkpoint has no model.layers.N.self_attn.beacon_o_proj"):
        convert_released(src, tmp_path / "dst")
    _no_dst(tmp_path)


@pytest.mark.parametrize(
    "ratio,want",
    [([4], 4), (2, 2), ([1], 1), ([16], 16), ([2, 4, 8], 8), ([2, 4, 8, 16, 32], 16), ([2, 4, 12], 4), (None, 8)],
)
def test_pro_v1_vst_ratio_from_beacon_ratio(ratio, want):
    cfg = {} if ratio is None else {"beacon_ratio": ratio}
    keys = [f"model.layers.0.self_attn.beacon_{p}_proj.weight" for p in "qkvo"]
    s = beacon_settings(cfg, keys, 144, "config.json")
    # no beacon settings at all: Video-XL's defaults (a window of 1440 tokens = 10 groups of 144)
    assert (s.ratio, s.window_groups, s.param) == (want, 10, ("q", "k", "v", "o"))
