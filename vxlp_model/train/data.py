"""LLaVA-style video QA data (SPEC §6): a JSON list of ``{id, video, conversations}`` records.

``conversations`` alternates ``{"from": "human", "value": "<video>\\n{question}"}`` and
``{"from": "gpt", "value": "{answer}"}``; the first human/gpt pair is the sample (loss on the answer only).
Video paths are relative to the JSON file's folder unless absolute.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from ..video import read_video


@dataclass
class VideoQARecord:
    """One training record: a video path, the question (``<video>`` marker removed) and the answer."""

    id: str
    video: str
    question: str
    answer: str


def load_llava_json(path: str) -> list[VideoQARecord]:
    """Parse a LLaVA-style JSON file.

    Raises:
        FileNotFoundError: the JSON file is missing.
        ValueError: not a JSON list, or a record without ``video`` or without a human→gpt pair (names the record).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"training data file not found: {path}")
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    root = os.path.dirname(os.path.abspath(path))
    records = []
    for i, rec in enumerate(data):
        rid = str(rec.get("id", i)) if isinstance(rec, dict) else str(i)
        if not isinstance(rec, dict) or "video" not in rec:
            raise ValueError(f"{path}: record {rid} has no 'video' field")
        conv = rec.get("conversations")
        if not isinstance(conv, list) or len(conv) < 2 or conv[0].get("from") != "human" or conv[1].get("from") != "gpt":
            raise ValueError(f"{path}: record {rid} needs conversations starting with a human then a gpt turn")
        question = conv[0]["value"].replace("<video>", "").strip()
        video = rec["video"] if os.path.isabs(rec["video"]) else os.path.join(root, rec["video"])
        records.append(VideoQARecord(rid, video, question, str(conv[1]["value"]).strip()))
    if not records:
        raise ValueError(f"{path}: no records")
    return records


class VideoQADataset(torch.utils.data.Dataset):
    """Decodes each record's video with PyAV at ``fps`` (SPEC §6: 1 fps) capped at ``max_frames``.

    ``__getitem__`` returns ``(frames uint8 [N, H, W, 3], timestamps float64 [N] s, question, answer)``.
    """

    def __init__(self, records: list[VideoQARecord], fps: float | None = 1.0, max_frames: int | None = 240):
        self.records = records
        self.fps = fps
        self.max_frames = max_frames

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        r = self.records[i]
        frames, timestamps, _ = read_video(r.video, fps=self.fps, max_frames=self.max_frames)
        return frames, timestamps, r.question, r.answer
