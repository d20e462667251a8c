"""Self-checks of the released-format fixtures (tests/released_fixtures.py) and of the float64 released-forward
oracle (tests/_released_oracle.py). Neither imports vxlp_model or vxlp_ops; the sub-part checks compare the
oracle with other formulations (tests/_float64_oracles.py, F.conv3d, complex numbers, transformers' Qwen2 and
SigLIP in float64)."""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

import _float64_oracles as ops_oracle
import _released_oracle as ro
from released_fixtures import (
    REAL2,
    SPECIAL_TOKENS,
    TINY,
    TOKENIZER_WORDS,
    WEIGHT_FORMATS,
    released_key_shapes,
    released_state_dict,
    write_released_checkpoint,
)

F64 = torch.float64
QUESTION = "What colour is the video?"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("released")
    return {v: write_released_checkpoint(root / v, v, seed=1) for v in ("pro-v2", "video-xl-2", "pro-v1")}


@pytest.fixture(scope="module")
def video():
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (10, 40, 56, 3), generator=g, dtype=torch.uint8)
    return frames, [0.5 * i for i in range(10)]


@pytest.fixture(scope="module")
def tok(ckpts):
    from transformers import AutoTokenizer, PretrainedConfig

    return AutoTokenizer.from_pretrained(ckpts["pro-v2"], config=PretrainedConfig())


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.mark.parametrize("fmt", WEIGHT_FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_formats_round_trip(tmp_path, fmt, dtype):
    ref = write_released_checkpoint(tmp_path / "ref", "pro-v2", seed=3, dtype=dtype, weight_format="safetensors-single")
    ref_sd = released_state_dict(ref)
    out = write_released_checkpoint(tmp_path / "x", "pro-v2", seed=3, dtype=dtype, weight_format=fmt, num_shards=3)
    sd = released_state_dict(out)
    assert list(sd) and set(sd) == set(ref_sd)
    for k, v in ref_sd.items():
        assert sd[k].dtype == dtype and torch.equal(sd[k], v), k
    files = set(os.listdir(out))
    if fmt == "safetensors-single":
        assert "model.safetensors" in files and not any(f.endswith(".index.json") for f in files)
    elif fmt == "bin":
        assert "pytorch_model.bin.index.json" in files and "pytorch_model-00003-of-00003.bin" in files
    else:
        assert "model-00001-of-00003.safetensors" in files and "model-00003-of-00003.safetensors" in files
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["torch_dtype"] == {torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype]


def test_unsharded_bin_and_no_overwrite(tmp_path):
    out = write_released_checkpoint(tmp_path, "video-xl-2", weight_format="bin", num_shards=1)
    assert "pytorch_model.bin" in os.listdir(out) and not os.path.exists(os.path.join(out, "pytorch_model.bin.index.json"))
    assert len(released_state_dict(out)) > 0
    with pytest.raises(FileExistsError):
        write_released_checkpoint(tmp_path, "video-xl-2")


def test_index_weight_map_covers_every_key_once(ckpts):
    from safetensors import safe_open

    d = ckpts["pro-v2"]
    index = json.load(open(os.path.join(d, "model.safetensors.index.json")))
    wm = index["weight_map"]
    seen, total = [], 0
    for name in sorted(set(wm.values())):
        with safe_open(os.path.join(d, name), "pt") as f:
            for k in f.keys():
                assert wm[k] == name
                t = f.get_tensor(k)
                seen.append(k)
                total += t.numel() * t.element_size()
    assert len(set(wm.values())) == 3
    assert sorted(seen) == sorted(wm) and len(seen) == len(set(seen))
    assert index["metadata"]["total_size"] == total


def test_variant_key_sets(ckpts):
    keys = {v: set(released_state_dict(d)) for v, d in ckpts.items()}
    wtta = {f"model.WindowTimeToTokenAttention.{p}_proj.{s}" for p in "qkv" for s in ("weight", "bias")}
    wtta |= {"model.WindowTimeToTokenAttention.out_proj.weight", "model.WindowTimeToTokenAttention.out_proj.bias"}
    text_mlp = {"model.text_mlp.0.weight", "model.text_mlp.0.bias"}
    assert wtta | text_mlp <= keys["pro-v2"]
    assert {"model.sae.encoder.1.proj_out.bias", "model.sae.encoder.4.proj_out.bias"} <= keys["pro-v2"]
    assert not any("WindowTimeToToken" in k or "text_mlp" in k for k in keys["video-xl-2"])
    assert not any("WindowTimeToToken" in k for k in keys["pro-v1"]) and text_mlp <= keys["pro-v1"]
    assert "model.beacon_embed_tokens.weight" in keys["pro-v1"]
    assert {f"model.layers.1.self_attn.beacon_{p}_proj.{s}" for p in "qkvo" for s in ("weight", "bias")} <= keys["pro-v1"]
    for v, ks in keys.items():
        assert ro.detect_variant(ks) == v
        assert "lm_head.weight" not in ks
        assert not any(".head." in k for k in ks)
        assert "model.vision_tower.vision_tower.vision_model.post_layernorm.weight" in ks
        assert "model.layers.0.self_attn.o_proj.weight" in ks and "model.layers.0.self_attn.o_proj.bias" not in ks
        assert "model.layers.0.self_attn.q_proj.bias" in ks and "model.mm_projector.2.bias" in ks
        common = keys["video-xl-2"]
        assert ks - common == {k for k in ks if "WindowTimeToToken" in k or "text_mlp" in k or "beacon" in k}
    # the released key table, real widths: the DTS is 93,526,272 parameters (SPEC §2)
    shapes = released_key_shapes("pro-v2", REAL2)
    assert sum(math.prod(s) for k, s in shapes.items() if k.startswith("model.sae.")) == 93_526_272
    assert shapes["model.sae.encoder.4.relative_position_k.embeddings_table"] == (129, 1152)
    assert shapes["model.vision_tower.vision_tower.vision_model.embeddings.position_embedding.weight"] == (729, 1152)
    assert shapes["model.layers.1.self_attn.k_proj.weight"] == (256, 2048)
    assert shapes["model.layers.1.mlp.down_proj.weight"] == (2048, 11008)


def test_lm_head_and_config(tmp_path, ckpts):
    out = write_released_checkpoint(tmp_path, "pro-v2", include_lm_head=True, weight_format="safetensors-single")
    sd = released_state_dict(out)
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert sd["lm_head.weight"].shape == sd["model.embed_tokens.weight"].shape and cfg["tie_word_embeddings"] is False
    cfg = json.load(open(os.path.join(ckpts["pro-v2"], "config.json")))
    assert cfg["model_type"] == "llava_qwen" and cfg["architectures"] == ["LlavaQwenForCausalLM"]
    assert cfg["tie_word_embeddings"] is True and cfg["vocab_size"] % 8 == 0
    assert cfg["dts_grid"] == TINY.dts_grid and cfg["vision_config"]["image_size"] == TINY.image_size
    assert cfg["mm_hidden_size"] == TINY.vision_hidden and cfg["mm_spatial_pool_stride"] == 2


def test_tokenizer(tok):
    lens = {len(tok(f"Time {t:06.1f}s:", add_special_tokens=False)["input_ids"]) for t in (0.0, 7.5, 123.4, 9999.9)}
    assert lens == {10}
    for s in SPECIAL_TOKENS:
        assert len(tok(s, add_special_tokens=False)["input_ids"]) == 1
    ids = tok.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    assert ids == list(range(ids[0], ids[0] + len(SPECIAL_TOKENS)))  # Qwen2.5's relative order
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.bos_token is None
    assert len(tok("<|vision_pad|>" * 5, add_special_tokens=False)["input_ids"]) == 5
    for w in TOKENIZER_WORDS:
        assert len(tok(w, add_special_tokens=False)["input_ids"]) == 1, w
        assert len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1, w
    text = ro.SYSTEM_PREFIX + "Best option?<|im_end|>\n"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == ro.SYSTEM_PREFIX + "hi<|im_end|>\n<|im_start|>assistant\n"
    assert "<image>" not in tok.get_vocab()


# ----------------------------------------------------------------------------------------------- oracle
@pytest.fixture(scope="module")
def runs(ckpts, video):
    frames, ts = video
    return {
        "v2": ro.released_forward_f64(ckpts["pro-v2"], frames, ts, QUESTION, keep_ratio=0.9),
        "v2_again": ro.released_forward_f64(ckpts["pro-v2"], frames, ts, QUESTION, keep_ratio=0.9),
        "xl2": ro.released_forward_f64(ckpts["video-xl-2"], frames, ts, QUESTION),
    }


def test_oracle_pro_v2(runs, tok, ckpts):
    out = runs["v2"]
    p = TINY.tokens_per_group
    assert out["variant"] == "pro-v2" and out["num_groups"] == 3 and p == 9
    assert out["time_texts"] == ["Time 0000.0s:", "Time 0002.0s:", "Time 0004.0s:"]
    ids = out["input_ids"]
    n_vis = 3 * p
    pad = tok.convert_tokens_to_ids("<|vision_pad|>")
    assert ids.count(pad) == n_vis
    k = int(n_vis * 0.9) - int(n_vis * 0.9) % 16
    assert k == 16 and out["kept_visual"].tolist() == sorted(out["kept_visual"].tolist()) and len(out["kept_visual"]) == k
    vocab = json.load(open(os.path.join(ckpts["pro-v2"], "config.json")))["vocab_size"]
    assert out["logits"].shape == (len(ids) - (n_vis - k), vocab)
    assert out["logits"].dtype == F64 and torch.isfinite(out["logits"]).all()
    assert out["scores"].shape == (n_vis,) and out["scores"].min() == 0 and out["scores"].max() == 1
    # the kept tokens are the top-16 scores
    assert set(out["kept_visual"].tolist()) == set(torch.argsort(out["scores"], descending=True)[:k].tolist())
    assert out["visual_tokens"].shape == (n_vis, 64)
    assert len(out["kept_positions"]) == out["logits"].shape[0]
    for key in ("logits", "scores", "visual_tokens", "kept_visual"):
        assert torch.equal(out[key], runs["v2_again"][key])
    assert out["input_ids"] == runs["v2_again"]["input_ids"]


def test_oracle_video_xl_2(runs, ckpts):
    out = runs["xl2"]
    # Video-XL-2's evaluation trims 10 frames to 8 (2 groups) instead of padding to 12
    assert out["variant"] == "video-xl-2" and out["num_groups"] == 2 and out["scores"] is None
    assert out["time_texts"] == ["Time 0.0s:", "Time 2.0s:"]
    assert out["logits"].shape[0] == len(out["input_ids"]) and torch.isfinite(out["logits"]).all()
    assert out["kept_visual"].tolist() == list(range(18))
    # no RoPE, no score: the LLM input is exactly embed_tokens with the placeholders replaced by V
    w = ro.load_weights_f64(ckpts["video-xl-2"])
    e = w["model.embed_tokens.weight"][torch.tensor(out["input_ids"])]
    pad = ro.load_checkpoint(ckpts["video-xl-2"])[2].convert_tokens_to_ids("<|vision_pad|>")
    mask = torch.tensor(out["input_ids"]) == pad
    e[mask] = out["visual_tokens"]
    assert torch.equal(out["inputs_embeds"], e)


def _complex_rope_fp32_angles(e):
    """RoPE on interleaved pairs as a complex rotation, angles from the fp32 table of RELEASED.md §4."""
    n, d = e.shape
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(1e6) / d))
    ang = (torch.arange(n, dtype=torch.float32)[:, None] * div)
    rot = torch.complex(torch.cos(ang).to(F64), torch.sin(ang).to(F64))
    return torch.view_as_real(torch.view_as_complex(e.reshape(n, d // 2, 2).contiguous()) * rot).reshape(n, d)


def test_oracle_pro_v2_llm_input(runs, ckpts, tok):
    out = runs["v2"]
    ids = torch.tensor(out["input_ids"])
    b0 = len(tok(ro.SYSTEM_PREFIX, add_special_tokens=False)["input_ids"])
    b1 = b0 + 3 * (10 + TINY.tokens_per_group)
    w = ro.load_weights_f64(ckpts["pro-v2"])
    e = w["model.embed_tokens.weight"][ids]
    vis = ids == tok.convert_tokens_to_ids("<|vision_pad|>")
    e[vis] = out["visual_tokens"]
    block = _complex_rope_fp32_angles(e[b0:b1])  # RoPE over the whole block, positions from its start
    block[vis[b0:b1]] += out["scores"][:, None]  # then the score on every channel of the visual rows
    ref = torch.cat([e[:b0], block, e[b1:]])[out["kept_positions"]]
    assert torch.allclose(out["inputs_embeds"], ref, rtol=0, atol=1e-12)
    # kept positions: every non-visual token plus the kept visual ones
    vis_pos = torch.nonzero(vis).squeeze(1)
    expect = sorted(set(torch.nonzero(~vis).squeeze(1).tolist()) | set(vis_pos[out["kept_visual"]].tolist()))
    assert out["kept_positions"].tolist() == expect


def test_oracle_refuses_pro_v1(ckpts, video):
    with pytest.raises(NotImplementedError, match="pro-v1"):
        ro.released_forward_f64(ckpts["pro-v1"], *video, QUESTION)


def test_oracle_question_and_padding(ckpts, video, runs):
    frames, ts = video
    other = ro.released_forward_f64(ckpts["pro-v2"], frames, ts, "Best option is the video?", keep_ratio=0.9)
    assert not torch.allclose(other["scores"], runs["v2"]["scores"])
    assert torch.equal(other["visual_tokens"], runs["v2"]["visual_tokens"])
    # padding 10 → 12 frames repeats the last frame: passing the 12 frames explicitly gives the same result
    f12 = torch.cat([frames, frames[-1:], frames[-1:]])
    same = ro.released_forward_f64(ckpts["pro-v2"], f12, ts + [ts[-1]] * 2, QUESTION, keep_ratio=0.9)
    assert torch.equal(same["logits"], runs["v2"]["logits"])
    # keep_ratio=None keeps every visual token; the kept rows of the block are unchanged by the compaction
    full = ro.released_forward_f64(ckpts["pro-v2"], frames, ts, QUESTION)
    assert len(full["kept_visual"]) == 27 and full["logits"].shape[0] == len(full["input_ids"])
    pos = runs["v2"]["kept_positions"]
    assert torch.equal(full["inputs_embeds"][pos], runs["v2"]["inputs_embeds"])


# ----------------------------------------------------------------------------------------------- sub-parts
def test_temporal_attention_matches_ops_oracle():
    g = torch.Generator().manual_seed(4)
    b, c, t, r = 5, 16, 4, 64
    q, k, v = (torch.randn(b, c, t, generator=g, dtype=F64) for _ in range(3))
    rk, rv = (torch.randn(2 * r + 1, c, generator=g, dtype=F64) for _ in range(2))
    out = ro.temporal_attention_core(q, k, v, rk, rv)
    ref = ops_oracle.temporal_attention(*(x.transpose(1, 2) for x in (q, k, v)), rk, rv, transposed_rel_k=True)
    assert torch.allclose(out, ref.transpose(1, 2), rtol=1e-12, atol=1e-12)
    # and it is not the untransposed (Shaw) form
    shaw = ops_oracle.temporal_attention(*(x.transpose(1, 2) for x in (q, k, v)), rk, rv, transposed_rel_k=False)
    assert not torch.allclose(out, shaw.transpose(1, 2), atol=1e-3)


def test_merge_conv_matches_conv3d():
    g = torch.Generator().manual_seed(5)
    c = 8
    w = {
        "m.conv.weight": torch.randn(c, c, 3, 3, 3, generator=g, dtype=F64),
        "m.conv.bias": torch.randn(c, generator=g, dtype=F64),
    }
    for t in (4, 2):
        x = torch.randn(2, c, t, 5, 6, generator=g, dtype=F64)
        out = ro.temporal_merge_conv(x, w, "m.")
        xp = F.pad(x, (1, 1, 1, 1, 1, 0), mode="replicate")
        ref = F.conv3d(xp, w["m.conv.weight"], w["m.conv.bias"], stride=(2, 1, 1))
        assert out.shape == ref.shape and torch.allclose(out, ref, rtol=1e-12, atol=1e-12)


def test_released_group_layout():
    g, c, side = 2, 8, 3
    feat = torch.randn(4 * g, c, side, side, dtype=F64)
    x = ro.released_groups(feat)
    for gi, cp, tp in ((0, 0, 0), (1, 5, 2), (1, 7, 3), (0, 3, 1)):
        f, ch = divmod(4 * cp + tp, c)
        assert torch.equal(x[gi, cp, tp], feat[4 * gi + f, ch])


def test_embedding_rope_matches_complex_form():
    g = torch.Generator().manual_seed(6)
    n, d = 300, 64
    e = torch.randn(n, d, generator=g, dtype=F64)
    out = ro.rope_interleaved_fp32_table(e)
    assert torch.allclose(out, _complex_rope_fp32_angles(e), rtol=0, atol=1e-12)
    # sin/cos taken in fp32 (not fp64 of the fp32 angles): ≈ fp32 ulp apart, but not equal
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(1e6) / d))
    ang = (torch.arange(n, dtype=torch.float32)[:, None] * div).to(F64)
    z = torch.view_as_complex(e.reshape(n, d // 2, 2).contiguous()) * torch.polar(torch.ones_like(ang), ang)
    ref64 = torch.view_as_real(z).reshape(n, d)
    assert torch.allclose(out, ref64, rtol=0, atol=1e-5) and not torch.equal(out, ref64)
    # the fp32 table differs from an fp64 one at large positions (RELEASED.md §4)
    pos = torch.arange(5000, dtype=F64)
    a64 = pos[:, None] * (1e6 ** (-torch.arange(0, d, 2, dtype=F64) / d))
    big = ro.rope_interleaved_fp32_table(torch.ones(5000, d, dtype=F64))
    assert (big[:, 0::2] - (torch.cos(a64) - torch.sin(a64))).abs().max() > 1e-5


def test_qwen2_matches_transformers(ckpts):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = json.load(open(os.path.join(ckpts["pro-v2"], "config.json")))
    w = ro.load_weights_f64(ckpts["pro-v2"])
    hf_cfg = Qwen2Config(
        **{k: cfg[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                               "num_key_value_heads", "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings")},
        rope_parameters={"rope_type": "default", "rope_theta": cfg["rope_theta"]},
    )  # fmt: skip
    hf_cfg._attn_implementation = "eager"
    model = Qwen2ForCausalLM(hf_cfg).to(F64).eval()
    sd = {k: v for k, v in w.items() if k.startswith(("model.embed_tokens.", "model.layers.", "model.norm."))}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    model.tie_weights()
    x = torch.randn(40, cfg["hidden_size"], dtype=F64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = model(inputs_embeds=x[None]).logits[0]
    out = ro.qwen2_forward(x, w, cfg)
    # transformers keeps the softmax, RMSNorm and inv_freq in fp32 even for a float64 model: ≈ 1e-7 apart
    assert (out - ref).norm() / ref.norm() < 1e-5


def test_siglip_matches_transformers(ckpts):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    cfg = json.load(open(os.path.join(ckpts["pro-v2"], "config.json")))
    w = ro.load_weights_f64(ckpts["pro-v2"])
    vc = ro.vision_config(cfg, w)
    fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size",
              "layer_norm_eps", "hidden_act")  # fmt: skip
    model = SiglipVisionModel(SiglipVisionConfig(**{k: vc[k] for k in fields}, vision_use_head=False)).to(F64).eval()
    model.config._attn_implementation = "eager"
    sd = {k[len(ro.VISION_PREFIX) :]: v for k, v in w.items() if k.startswith(ro.VISION_PREFIX)}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not missing and not unexpected
    px = torch.rand(3, 3, vc["image_size"], vc["image_size"], dtype=F64, generator=torch.Generator().manual_seed(8)) * 2 - 1
    with torch.no_grad():
        ref = model(pixel_values=px, output_hidden_states=True).hidden_states[-1]
    out = ro.siglip_features(px, w, vc)
    assert (out - ref).norm() / ref.norm() < 1e-5  # transformers' softmax is fp32 even in a float64 model
