"""query_topk_gather (OPS.md op 6): the Query-aware Selector's scores, top-k and gather.

Real: visual ``[1, 2048·144 = 294,912, 2048]``, query ``[1, 64, 2048]``, k = 9600 (2,048 groups of 144 tokens
reaching the LLM, D = 2048). One mat-vec over visual plus a top-k: memory-bound, % of the copy ceiling.
Baseline ``torch_topk``: plain torch (mat-vec with a float32 result, min-max, ``torch.topk``, sort, gather).
Correctness: scores by relative L2, ≥ 99 % of the eager indices (ties at the k-th score may swap in 16-bit),
indices sorted and unique, and ``selected`` equal to the gather of its own indices (+ their scores).
"""

import pytest
import torch

import _bench as B
import vxlp_ops

OVERLAP = 0.99


def _dims():
    if B.SIZE == "real":
        return 1, 2048 * 144, 2048, 64, 9600  # B, N, D, L, k
    return 1, 4096, 64, 16, 128


def _raw_scores(visual, query):
    """``visual · mean_l query`` as float32 ``[B, N]``: bf16 operands, float32 output (two bf16 columns carry
    the float32 query mean as hi + lo, so the result is as exact as the eager float32 mat-vec)."""
    qm = query.float().mean(dim=1)  # [B, D]
    if visual.dtype == torch.float32:
        return torch.bmm(visual, qm.unsqueeze(-1)).squeeze(-1)
    hi = qm.to(visual.dtype)
    lo = (qm - hi.float()).to(visual.dtype)
    cols = torch.stack([hi, lo], dim=-1)  # [B, D, 2]
    try:
        raw = torch.bmm(visual, cols, out_dtype=torch.float32)
    except (TypeError, RuntimeError, NotImplementedError):
        raw = torch.bmm(visual, cols).float()
    return raw.sum(-1)


def torch_topk(visual, query, k, inject_scores=True):
    raw = _raw_scores(visual, query)
    lo, hi = raw.aminmax(dim=-1, keepdim=True)
    rng = hi - lo
    scores = torch.where(rng > 0, (raw - lo) / torch.where(rng > 0, rng, torch.ones_like(rng)), torch.zeros_like(raw))
    idx = torch.topk(scores, k, dim=-1, sorted=False).indices.sort(dim=-1).values
    sel = torch.gather(visual, 1, idx.unsqueeze(-1).expand(-1, -1, visual.shape[-1]))
    if inject_scores:
        sel = (sel.float() + torch.gather(scores, 1, idx).unsqueeze(-1)).to(visual.dtype)
    return sel, idx, scores


def _collect(out):
    sel, idx, scores = out
    return {"selected": sel, "indices": idx, "scores": scores}


def _compare(got: dict, expect: dict, inputs: dict) -> float:
    err = B.check_close("scores", got["scores"].float(), expect["scores"].float())
    idx, ref_idx = got["indices"], expect["indices"]
    assert idx.dtype == torch.int64 and idx.shape == ref_idx.shape, f"indices: {idx.dtype} {tuple(idx.shape)}"
    assert bool((idx[:, 1:] > idx[:, :-1]).all()), "indices: not strictly ascending (unsorted or repeated)"
    overlap = torch.isin(idx, ref_idx).float().mean().item()
    assert overlap >= OVERLAP, f"indices: only {overlap:.4f} of the eager top-k selected (need {OVERLAP})"
    visual, d = inputs["visual"], inputs["visual"].shape[-1]
    own = torch.gather(visual, 1, idx.unsqueeze(-1).expand(-1, -1, d)).float()
    own = (own + torch.gather(got["scores"].float(), 1, idx).unsqueeze(-1)).to(visual.dtype)
    err = max(err, B.check_close("selected", got["selected"], own))
    return err


def make_case() -> B.Case:
    b, n, d, l, k = _dims()

    def make(gen):
        return {"visual": B.randn(gen, b, n, d), "query": B.randn(gen, b, l, d)}

    e = B.esize()
    # FLOP: raw = visual · mean_l query: 2·B·N·D, plus the query mean B·L·D; min-max and top-k (O(B·N·log))
    # left out.
    flop = 2 * b * n * d + b * l * d
    # bytes: visual and query read once; selected [B, k, D] written, int64 indices [B, k] and float32 scores
    # [B, N] written (re-reading the k selected rows is not counted).
    nbytes = (b * n * d + b * l * d + b * k * d) * e + b * k * 8 + b * n * 4
    return B.Case(
        op="query_topk_gather",
        name=f"N{n}xD{d}xk{k}",
        direction="fwd",
        make=make,
        args=lambda x: (x["visual"], x["query"], k, True),
        eager=B.ref.query_topk_gather,
        public=vxlp_ops.query_topk_gather,
        shapes={"visual": [b, n, d], "query": [b, l, d], "k": k},
        flop=flop,
        bytes=nbytes,
        bound="memory",
        baselines={"torch_topk": B.Baseline(fn=torch_topk)},
        compare=_compare,
        collect=_collect,
    )


@pytest.mark.parametrize("provider", B.provider_params("torch_topk"))
def test_query_topk_gather(benchmark, ceilings, provider):
    B.run_case(benchmark, make_case(), provider, ceilings)
