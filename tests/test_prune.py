"""``vxlp prune``: SigLIP frame redundancy per video, per task subset; generated videos of known redundancy."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from _train_data import write_clip, write_png
from vxlp_model import read_video
from vxlp_model.train import prune as prune_mod
from vxlp_model.train.data import Record
from vxlp_model.train.prune import classify_task, load_vision_tower, parse_thresholds, prune_dataset, redundancy


def test_redundancy_matches_numpy_and_tasks_are_classified():
    e = torch.randn(7, 16, generator=torch.Generator().manual_seed(0))
    x = e.double().numpy()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = x @ x.T
    assert redundancy(e) == pytest.approx((s.sum() - np.trace(s)) / 42, abs=1e-12)
    assert redundancy(e, "consecutive") == pytest.approx(np.mean([s[i, i + 1] for i in range(6)]), abs=1e-12)
    assert redundancy(e[:1]) == 1.0 and redundancy(e[:1].repeat(5, 1)) == pytest.approx(1.0)

    def rec(q, a="ok", task=None):
        return Record("r", "/v.mp4", "video", [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": q}]},
                                              {"role": "assistant", "content": [{"type": "text", "text": a}]}], task=task)

    assert classify_task(rec("What colour is the car?\nA. red\nB. blue\nC. green")) == "mcq"
    assert classify_task(rec("Which option is right?", "(B)")) == "mcq"
    assert classify_task(rec("Describe this video in detail.")) == "captioning"
    assert classify_task(rec("Please provide a caption.")) == "captioning"
    assert classify_task(rec("Why does the man laugh?")) == "openqa"
    assert classify_task(rec("Describe it.", task="openqa")) == "openqa"
    assert parse_thresholds("0.9") == {"captioning": 0.9, "mcq": 0.9, "openqa": 0.9}
    assert parse_thresholds("mcq=0.8, captioning=0.95") == {"mcq": 0.8, "captioning": 0.95}
    for bad in ("high", "mcq=x", "poems=0.5"):
        with pytest.raises(ValueError, match="--threshold"):
            parse_thresholds(bad)


def _videos(root):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    clips = {
        "static": np.repeat(base[None], 24, axis=0),  # identical frames: redundancy 1
        "diverse": rng.integers(0, 255, (24, 32, 32, 3), dtype=np.uint8),  # independent noise frames
        "pan": np.stack([np.roll(base, 3 * i, axis=1) for i in range(24)]),
    }
    return {k: write_clip(os.path.join(root, f"{k}.mp4"), v) for k, v in clips.items()}


def _dataset(root):
    _videos(root)
    write_png(os.path.join(root, "img.png"), np.zeros((16, 16, 3), np.uint8))

    def conv(q, a="x"):
        return [{"from": "human", "value": "<video>\n" + q}, {"from": "gpt", "value": a}]

    recs = [
        {"id": "cap-static", "video": "static.mp4", "conversations": conv("Describe the video.")},
        {"id": "cap-diverse", "video": "diverse.mp4", "conversations": conv("Describe the video.")},
        {"id": "mcq-static", "video": "static.mp4", "conversations": conv("Colour?\nA. red\nB. blue", "A")},
        {"id": "mcq-pan", "video": "pan.mp4", "conversations": conv("Colour?\nA. red\nB. blue", "B")},
        {"id": "qa-static", "video": "static.mp4", "conversations": conv("Why?")},
        {"id": "image", "image": "img.png", "conversations": conv("Describe the image.")},
        {"id": "missing", "video": "gone.mp4", "conversations": conv("Why?")},
    ]
    path = os.path.join(root, "data.json")
    with open(path, "w") as f:
        json.dump(recs, f)
    return path


def test_prune_generated_videos_of_known_redundancy(tmp_path):
    data = _dataset(str(tmp_path))
    out = tmp_path / "out" / "pruned.json"
    # openqa is not named: that subset is kept whole (its static video included)
    r = prune_dataset(data, "captioning=0.99,mcq=0.99", out=str(out), config="tiny", num_workers=1, batch_videos=2, progress=False)
    red = {os.path.basename(v["media"]): v for v in r.videos}
    assert red["static.mp4"]["pairwise"] == pytest.approx(1.0, abs=1e-9)
    assert red["diverse.mp4"]["pairwise"] < 0.99 and red["pan.mp4"]["pairwise"] < 0.99
    assert "not found" in red["gone.mp4"]["error"]
    # independent reference: decode 20 uniform frames, run the same tower, mean-pool, numpy cosine similarities
    tower, vp, _ = load_vision_tower(None, "tiny")
    for name in ("diverse.mp4", "pan.mp4"):
        frames, _, _ = read_video(str(tmp_path / name), max_frames=20)
        with torch.no_grad():
            emb = tower(vp.pixel_values(frames), 8).mean(1).double().numpy()
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        s = emb @ emb.T
        assert red[name]["frames"] == 20
        assert red[name]["pairwise"] == pytest.approx((s.sum() - 20) / 380, abs=1e-6)
        assert red[name]["consecutive"] == pytest.approx(np.mean(np.diagonal(s, 1)), abs=1e-6)
    kept = json.loads(out.read_text())
    assert [k["id"] for k in kept] == ["cap-diverse", "mcq-pan", "qa-static", "image"]
    assert all(os.path.isabs(k.get("video", k.get("image"))) and os.path.exists(k.get("video", k.get("image"))) for k in kept)
    assert r.subsets["captioning"] == {"videos": 2, "kept": 1, "dropped": 1, "unreadable": 0}
    assert r.subsets["mcq"] == {"videos": 2, "kept": 1, "dropped": 1, "unreadable": 0}
    assert r.subsets["openqa"] == {"videos": 2, "kept": 1, "dropped": 0, "unreadable": 1}
    assert (r.images, r.kept, r.dropped) == (1, 4, 3)
    report = json.loads((tmp_path / "out" / "pruned.json.report" / "report.json").read_text())
    assert report["subsets"] == r.subsets and report["frames"] == 20
    with open(tmp_path / "out" / "pruned.json.report" / "redundancy.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # the pruned file trains: it is valid LLaVA data whose media resolve from its new folder
    from vxlp_model.train.data import load_records

    assert len(load_records(str(out))) == 4


def test_prune_mixture_yaml_writes_pruned_files_and_yaml(tmp_path):
    data = _dataset(str(tmp_path))
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"datasets:\n  - json_path: {os.path.basename(data)}\n    sampling_strategy: all\n    task: openqa\n")
    r = prune_dataset(str(mix), 0.99, config="tiny", num_workers=0, progress=False)
    import yaml

    doc = yaml.safe_load((tmp_path / "mix.pruned.yaml").read_text())
    assert doc["datasets"][0]["json_path"] == str(tmp_path / "data.pruned.json") and doc["datasets"][0]["task"] == "openqa"
    assert [k["id"] for k in json.loads((tmp_path / "data.pruned.json").read_text())] == ["cap-diverse", "mcq-pan", "image"]
    assert r.subsets["openqa"]["videos"] == 6 and r.subsets["captioning"]["videos"] == 0


def test_prune_resumes_after_a_kill(tmp_path, monkeypatch):
    data = _dataset(str(tmp_path))
    real = prune_mod._embed_batch
    calls = []

    def dies_on_second_batch(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(prune_mod, "_embed_batch", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        prune_dataset(data, 0.99, config="tiny", num_workers=0, batch_videos=1, progress=False)
    cache = tmp_path / "data.pruned.json.report" / "embeddings.jsonl"
    done = [json.loads(line) for line in cache.read_text().splitlines()]
    # batches finished before the kill survived it (videos in path order: diverse embedded, gone unreadable)
    assert [os.path.basename(d["media"]) for d in done] == ["diverse.mp4", "gone.mp4"] and "error" in done[1]
    with open(cache, "a") as f:
        f.write('{"key": "torn')  # a line cut by the kill is ignored
    calls.clear()
    monkeypatch.setattr(prune_mod, "_embed_batch", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    resumed = prune_dataset(data, 0.99, config="tiny", num_workers=0, batch_videos=1, progress=False)
    assert len(calls) == 2  # only the two videos not done before the kill (pan, static)
    fresh = prune_dataset(data, 0.99, config="tiny", num_workers=0, out=str(tmp_path / "fresh.json"), progress=False)
    assert resumed.videos == [dict(v) for v in fresh.videos] and resumed.subsets == fresh.subsets
