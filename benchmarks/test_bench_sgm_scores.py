"""sgm_scores (OPS.md op 4): Semantic-Guided Masking saliency, one pass over x ``[G, T, S, C]``.

Real: x ``[64, 4, 576, 1152]``, 2 temporal + 2 spatial queries ``[2, 1152]``. A few FLOP per byte:
memory-bound, % of the measured copy ceiling. No library baseline.
"""

import pytest

import _bench as B
import vxlp_ops


def _dims():
    if B.SIZE == "real":
        return 64, 4, 576, 1152, 2, 2  # G, T, S, C, Qt, Qs
    return 2, 4, 36, 64, 2, 2


def make_case() -> B.Case:
    g, t, s, c, qt, qs = _dims()

    def make(gen):
        return {
            "x": B.randn(gen, g, t, s, c),
            "temp_query": B.randn(gen, qt, c, scale=c**-0.5),
            "spatial_query": B.randn(gen, qs, c, scale=c**-0.5),
        }

    e = B.esize()
    # FLOP: st = Σ_c x_t·x_{t−1}·tq (3 per element, T−1 frames), m = mean_n x (1 per element), ss = Σ_c x·m·sq
    # (3 per element): (3·(T−1) + 4·T)·G·S·C; the query sums and the min-max, O(G·T·S), left out.
    flop = (3 * (t - 1) + 4 * t) * g * s * c
    # bytes: x and the queries read once, float32 scores [G, T, S] written once.
    nbytes = (g * t * s * c + (qt + qs) * c) * e + g * t * s * 4
    return B.Case(
        op="sgm_scores",
        name=f"G{g}xT{t}xS{s}xC{c}",
        direction="fwd",
        make=make,
        args=lambda x: (x["x"], x["temp_query"], x["spatial_query"]),
        eager=B.ref.sgm_scores,
        public=vxlp_ops.sgm_scores,
        shapes={"x": [g, t, s, c], "temp_query": [qt, c], "spatial_query": [qs, c]},
        flop=flop,
        bytes=nbytes,
        bound="memory",
    )


@pytest.mark.parametrize("provider", B.provider_params())
def test_sgm_scores(benchmark, ceilings, provider):
    B.run_case(benchmark, make_case(), provider, ceilings)
