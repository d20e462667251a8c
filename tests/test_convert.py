"""`vxlp convert --from released`: synthetic released checkpoints (exact released key names, tests/released_fixtures.py)
converted and run against the independent float64 re-implementation of RELEASED.md §3–§5 (tests/_released_oracle.py,
which imports nothing from vxlp); every bad input of the conversion."""

import json
import os
import shutil
import weakref

import pytest
import torch
from released_fixtures import released_state_dict, write_released_checkpoint
from _released_oracle import released_forward_f64
from safetensors.torch import load_file, save_file

import vxlp_model.convert as convert_mod
from vxlp_model import VideoXLProForConditionalGeneration, convert_released, conversation
from vxlp_model.cli import main as cli_main
from vxlp_model.convert import ConversionError


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


def test_pro_v1_is_refused_with_what_it_needs(tmp_path):
    src = write_released_checkpoint(tmp_path / "src", "pro-v1")
    with pytest.raises(ConversionError, match="Activation-Beacon.*VST"):
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
