"""sgm_mask (OPS.md op 5): per frame, mask round(ρ·S) tokens drawn from the ceil(pool·S) lowest scores.

Real: scores ``[64, 4, 576]`` float32, ρ = 0.5, pool = 0.75 (config defaults). No arithmetic to speak of
(sorts and a draw): memory-bound, % of the copy ceiling; the input is 0.6 MB, so up to 256 input sets rotate
to keep it out of L2. Correctness is checked by the mask's defining properties (exact count per frame, every
masked token inside the candidate pool), since backends may draw different random subsets.
"""

import pytest
import torch

import _bench as B
import vxlp_ops
from vxlp_ops.reference.sgm import mask_counts

MASK_RATIO, POOL = 0.5, 0.75


def _dims():
    if B.SIZE == "real":
        return 64, 4, 576
    return 2, 4, 36


def _check_mask(got: dict, expect: dict, inputs: dict) -> float:
    m, scores = got["out"], inputs["scores"]
    assert m.dtype == torch.bool and m.shape == scores.shape, f"mask: {m.dtype} {tuple(m.shape)}"
    n_pool, n_mask = mask_counts(scores.shape[-1], MASK_RATIO, POOL)
    counts = m.sum(-1)
    assert bool((counts == n_mask).all()), f"mask: per-frame counts {counts.unique().tolist()} != {n_mask}"
    thr = scores.sort(dim=-1).values[..., n_pool - 1 : n_pool].expand_as(scores)
    assert bool((scores[m] <= thr[m]).all()), "mask: a masked token lies outside the candidate pool"
    return 0.0


def make_case() -> B.Case:
    g, t, s = _dims()

    def make(gen):
        return {
            "scores": torch.rand(g, t, s, generator=gen, device=B.DEVICE, dtype=torch.float32),
            "generator": torch.Generator(device=B.DEVICE).manual_seed(7),
        }

    # FLOP: none counted (comparisons and a random draw). bytes: float32 scores read, bool mask written.
    nbytes = g * t * s * (4 + 1)
    return B.Case(
        op="sgm_mask",
        name=f"G{g}xT{t}xS{s}",
        direction="fwd",
        make=make,
        args=lambda x: (x["scores"], MASK_RATIO, POOL, x["generator"]),
        eager=B.ref.sgm_mask,
        public=vxlp_ops.sgm_mask,
        shapes={"scores": [g, t, s]},
        flop=0,
        bytes=nbytes,
        bound="memory",
        compare=_check_mask,
        note=f"mask_ratio={MASK_RATIO}, pool={POOL}",
    )


@pytest.mark.parametrize("provider", B.provider_params())
def test_sgm_mask(benchmark, ceilings, provider):
    B.run_case(benchmark, make_case(), provider, ceilings)
