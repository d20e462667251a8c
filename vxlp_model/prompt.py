"""Prompt building: ChatML with per-group time tokens and visual placeholders (SPEC §5), and a small tokenizer.

The processor lays out one sample as

``<|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n`` +
``[Time {t_g:06.1f}s:  <|vision_pad|> × P] for each group g`` +
``\\n{question}<|im_end|>\\n<|im_start|>assistant\\n`` + (training) ``{answer}<|im_end|>``

and marks every position with a token type (:data:`TEXT`, :data:`QUERY` = the question, :data:`TIME`,
:data:`VIDEO`, :data:`ANSWER`) so the model can find the question (the selector's query, answer excluded),
each group's time tokens, and the placeholders that receive visual tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import Qwen2Tokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

TEXT, QUERY, TIME, VIDEO, ANSWER = 0, 1, 2, 3, 4
IGNORE_INDEX = -100
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_pad|>")
MAX_TIME_SECONDS = 9999.9  # "Time {t:06.1f}s:" keeps a fixed width (and token count) up to here


def group_start_times(timestamps, frames_per_group: int) -> list[float]:
    """Timestamp (s) of the first frame of each group of ``frames_per_group`` frames (last group may be short).

    Raises ``ValueError`` for an empty or non-increasing timestamp list.
    """
    ts = [float(t) for t in (timestamps.tolist() if isinstance(timestamps, torch.Tensor) else timestamps)]
    if not ts:
        raise ValueError("timestamps must hold at least one frame time")
    if any(b < a for a, b in zip(ts, ts[1:])):
        raise ValueError("timestamps must be non-decreasing (seconds)")
    return ts[::frames_per_group]


@dataclass
class Sample:
    """One tokenised sample: ``input_ids``, ``labels`` (IGNORE_INDEX outside the answer), ``token_type_ids``
    (int64 ``[L]`` each)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    token_type_ids: torch.Tensor


class VideoXLProProcessor:
    """Builds model inputs from a question, frame timestamps and (for training) an answer.

    Args:
        tokenizer: a Qwen2 tokenizer holding ``<|im_start|>``, ``<|im_end|>`` and ``<|vision_pad|>``.
        config: :class:`VideoXLProConfig` (``video_token_id``, ``time_format``, ``frames_per_group``,
            ``tokens_per_group``, ``system_prompt``).

    Raises:
        ValueError: the tokenizer's ``<|vision_pad|>`` id differs from ``config.video_token_id``.
    """

    def __init__(self, tokenizer, config):
        self.tokenizer = tokenizer
        self.config = config
        pad_id = tokenizer.convert_tokens_to_ids("<|vision_pad|>")
        if pad_id != config.video_token_id:
            raise ValueError(
                f"config.video_token_id ({config.video_token_id}) must equal the tokenizer's <|vision_pad|> id ({pad_id})"
            )
        self.im_end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.time_token_count = len(self.time_ids(0.0))
        head = f"<|im_start|>system\n{config.system_prompt}<|im_end|>\n<|im_start|>user\n"
        self._head_ids = self._encode(head)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def time_ids(self, t: float) -> list[int]:
        """Token ids of ``config.time_format`` at ``t`` seconds; their count is the same for every ``0 ≤ t ≤ 9999.9``.

        Raises ``ValueError`` for t outside that range (the count would change).
        """
        if not (0.0 <= t <= MAX_TIME_SECONDS) or math.isnan(t):
            raise ValueError(f"timestamp must be within [0, {MAX_TIME_SECONDS}] s, got {t}")
        ids = self._encode(self.config.time_format.format(t=t))
        if hasattr(self, "time_token_count") and len(ids) != self.time_token_count:
            raise ValueError(f"time text for t = {t} s has {len(ids)} tokens, expected {self.time_token_count}")
        return ids

    def num_groups(self, num_frames: int) -> int:
        """Groups for ``num_frames`` frames: ``ceil(N / frames_per_group)`` (the model pads the tail group)."""
        return -(-num_frames // self.config.frames_per_group)

    def __call__(self, question: str, timestamps, answer: str | None = None) -> Sample:
        """Tokenise one sample.

        Args:
            question: the user's question (the selector's query; the answer is never part of it).
            timestamps: frame times in seconds ``[N]`` (tensor or list), non-decreasing.
            answer: the assistant's answer for training (its tokens and the closing ``<|im_end|>`` get labels).

        Returns:
            :class:`Sample` with 1-D int64 tensors of equal length.
        """
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
        ids, types = list(self._head_ids), [TEXT] * len(self._head_ids)
        for t in group_start_times(timestamps, self.config.frames_per_group):
            tid = self.time_ids(t)
            ids += tid + [self.config.video_token_id] * self.config.tokens_per_group
            types += [TIME] * len(tid) + [VIDEO] * self.config.tokens_per_group
        nl = self._encode("\n")
        q = self._encode(question)
        tail = self._encode("<|im_end|>\n<|im_start|>assistant\n")
        ids += nl + q + tail
        types += [TEXT] * len(nl) + [QUERY] * len(q) + [TEXT] * len(tail)
        labels = [IGNORE_INDEX] * len(ids)
        if answer is not None:
            a = self._encode(answer) + [self.im_end_id]
            ids += a
            types += [ANSWER] * len(a)
            labels += a
        as_t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
        return Sample(as_t(ids), as_t(labels), as_t(types))

    def collate(self, samples: list[Sample], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pad samples into a batch: ``input_ids``, ``attention_mask``, ``labels``, ``token_type_ids`` ``[B, L]``."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        length = max(len(s.input_ids) for s in samples)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = {k: [] for k in ("input_ids", "attention_mask", "labels", "token_type_ids")}
        for s in samples:
            n = length - len(s.input_ids)

            def pad(x, value):
                fill = torch.full((n,), value, dtype=torch.long)
                return torch.cat([x, fill]) if padding_side == "right" else torch.cat([fill, x])

            out["input_ids"].append(pad(s.input_ids, pad_id))
            out["attention_mask"].append(pad(torch.ones_like(s.input_ids), 0))
            out["labels"].append(pad(s.labels, IGNORE_INDEX))
            out["token_type_ids"].append(pad(s.token_type_ids, TEXT))
        return {k: torch.stack(v) for k, v in out.items()}


def build_tiny_tokenizer(words=()) -> Qwen2Tokenizer:
    """A byte-level BPE Qwen2 tokenizer with whole-word merges for ``words`` (tests and the demo; no download).

    Every byte is a token, so any text encodes; digits stay single tokens (Qwen2's pre-tokenizer), which keeps the
    time-text token count fixed. Special tokens: ``<|endoftext|>`` (pad/eos), ``<|im_start|>``, ``<|im_end|>``,
    ``<|vision_pad|>``. The vocabulary has 256 bytes + merges + 4 specials.
    """
    b2u = bytes_to_unicode()
    vocab = {ch: i for i, ch in enumerate(b2u[b] for b in range(256))}
    merges = []
    base = ["system", "user", "assistant", "You", "are", "a", "helpful", "Time", "Best", "option"]
    for word in dict.fromkeys(list(base) + list(words)):
        for form in (word, " " + word):
            sym = "".join(b2u[b] for b in form.encode("utf-8"))
            cur = sym[0]
            for ch in sym[1:]:
                nxt = cur + ch
                if nxt not in vocab:
                    merges.append((cur, ch))
                    vocab[nxt] = len(vocab)
                cur = nxt
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    return tok
