import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton / vxlp_ops are imported (kernels decorated then)

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import vxlp_ops  # noqa: E402
from vxlp_ops import dispatch  # noqa: E402

pytestmark = pytest.mark.skipif(
    "triton" in dispatch._UNAVAILABLE or os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs triton and TRITON_INTERPRET=1 set before vxlp_ops is imported",
)

TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}
# The ops with tl.dot (frame / temporal attention, conv): operands in the input dtype, float32 accumulation, the
# probabilities P and dS rounded to the input dtype before the second product (FlashAttention's choice), and the
# interpreter's bf16 downcast truncates (biased; about twice the error of round-to-nearest on a GPU). Measured
# relative L2 errors vs float64 over this file's cases × 3 seeds: bf16 ≤ 7.5e-3 (temporal attention dK; frame
# attention ≤ 6.9e-3, where an eager all-bf16 run of the same inputs gives 3.3e-3 – 5.2e-3 and the old
# upcast-to-float32 kernels 3.4e-3), fp16 ≤ 3.4e-4. Bounds: twice the worst measured, rounded up.
TOL_MMA = {torch.float32: 1e-4, torch.float16: 1e-3, torch.bfloat16: 1.5e-2}


# ----------------------------------------------------------------------------------------------- helpers


class _PoisonTorch:
    """Stands in for ``torch`` inside the vxlp_ops.triton modules: every buffer they allocate with
    ``torch.empty`` / ``torch.empty_like`` starts as NaN (floats) or garbage (ints), so any element a kernel
    fails to write shows up in the comparison."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def _poison(t):
        if t.is_floating_point():
            return t.fill_(float("nan"))
        if t.dtype in (torch.int8, torch.uint8):
            return t.fill_(7)
        return t.fill_(-12345)

    def empty(self, *args, **kwargs):
        return self._poison(torch.empty(*args, **kwargs))

    def empty_like(self, *args, **kwargs):
        return self._poison(torch.empty_like(*args, **kwargs))


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    import vxlp_ops.triton as vt

    for name in ("_shared", "frame_attention", "temporal_attention", "temporal_merge_conv3d", "sgm",
                 "query_topk_gather"):
        monkeypatch.setattr(getattr(vt, name), "torch", _PoisonTorch())
    yield


def rel_err(out, ref):
    out, ref = out.detach().double(), ref.detach().double()
    den = ref.norm().item()
    num = (out - ref).norm().item()
    if den == 0.0:
        return num
    return num / den


def check(out, ref, dtype, what, tol=TOL):
    assert out.shape == ref.shape, what
    assert torch.isfinite(out.double()).all(), f"{what}: non-finite values (unwritten?)"
    err = rel_err(out, ref)
    assert err < tol[dtype], f"{what}: relative L2 error {err:.3g} >= {tol[dtype]}"


def run_triton(op, *args):
    """Call the public op with the triton backend forced, asserting triton is the selected backend."""
    with vxlp_ops.use_backend("triton"):
        assert dispatch.select(op, args)[0] == "triton"
        return getattr(vxlp_ops, op)(*args)


def grads_triton(outs, inputs, grads):
    with vxlp_ops.use_backend("triton"):
        return torch.autograd.grad(outs, inputs, grads)


def leaves(*ts):
    return [t.detach().double().requires_grad_(True) for t in ts]


def rnd(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape) * scale).to(dtype).requires_grad_(True)


# ------------------------------------------------------------------------- independent float64 oracles


def f64_frame_attention(q, k, v, scale):
    logits = torch.einsum("bid,bjd->bij", q, k) * scale
    return torch.einsum("bij,bjd->bid", torch.softmax(logits, -1), v)


def f64_temporal_attention(q, k, v, rel_k, rel_v, transposed):
    n, t, d = q.shape
    r = (rel_k.shape[0] - 1) // 2
    s = d**-0.25
    idx = [[min(max(j - i, -r), r) + r for j in range(t)] for i in range(t)]
    idx = torch.tensor(idx, dtype=torch.long)
    ek, ev = rel_k[idx], rel_v[idx]  # [T, T, D]: e[i, j] = table[r(i, j)]
    w = torch.einsum("nid,njd->nij", q * s, k * s)
    if transposed:
        w = w + torch.einsum("njd,jid->nij", q * s, ek)
    else:
        w = w + torch.einsum("nid,ijd->nij", q * s, ek)
    p = torch.softmax(w, -1)
    return torch.einsum("nij,njd->nid", p, v) + torch.einsum("nij,ijd->nid", p, ev)


def f64_conv(x, weight, bias, stride_t):
    g, t, h, w, c = x.shape
    ti = torch.tensor([min(max(i, 0), t - 1) for i in range(-1, t)])
    hi = torch.tensor([min(max(i, 0), h - 1) for i in range(-1, h + 1)])
    wi = torch.tensor([min(max(i, 0), w - 1) for i in range(-1, w + 1)])
    xp = x[:, ti][:, :, hi][:, :, :, wi].permute(0, 4, 1, 2, 3)  # padded by explicit index, NCDHW
    return F.conv3d(xp, weight, bias, stride=(stride_t, 1, 1)).permute(0, 2, 3, 4, 1)


def f64_minmax(raw):
    lo = raw.amin(-1, keepdim=True)
    hi = raw.amax(-1, keepdim=True)
    rng = hi - lo
    return torch.where(rng > 0, (raw - lo) / torch.where(rng > 0, rng, torch.ones_like(rng)), torch.zeros_like(raw))


def f64_sgm_scores(x, tq, sq):
    g, t, s, c = x.shape
    st = [torch.zeros(g, s, dtype=x.dtype)]
    for i in range(1, t):
        st.append(torch.einsum("gnc,gnc,qc->gn", x[:, i], x[:, i - 1], tq))
    st = torch.stack(st, 1)
    m = x.mean(2)
    ss = torch.einsum("gtnc,gtc,qc->gtn", x, m, sq) / sq.shape[0]
    return f64_minmax((st + ss).reshape(g, t * s)).reshape(g, t, s) + 0.0 * tq.sum()


def f64_query(visual, query, indices, inject):
    raw = torch.einsum("bnd,bld->bn", visual, query) / query.shape[1]
    scores = f64_minmax(raw)
    rows = torch.arange(visual.shape[0])[:, None]
    sel = visual[rows, indices]
    if inject:
        sel = sel + scores[rows, indices][..., None]
    return sel, scores


# --------------------------------------------------------------------------------------- frame_attention


@pytest.mark.parametrize(
    "b,s,d,dtype,scale",
    [
        (2, 37, 24, torch.float32, None),  # D in one chunk, several query/key blocks, masked tails
        (1, 13, 72, torch.float32, 0.3),  # D over several chunks (float32 scratch accumulator = the output)
        (2, 37, 40, torch.float32, None),  # several chunks and several query/key blocks
        (2, 7, 40, torch.float16, None),  # several chunks, separate float32 scratch
        (1, 20, 24, torch.bfloat16, None),
        (1, 13, 72, torch.bfloat16, 0.2),  # forward accumulator in two register tiles, 64 + 16 (masked tail)
        (1, 21, 64, torch.bfloat16, None),  # one 64-wide tile, scores over two chunks
        (2, 19, 48, torch.float16, None),  # two tiles, 32 + 16, no masked tail
    ],
)
def test_frame_attention(b, s, d, dtype, scale):
    q, k, v = rnd(b, s, d, dtype=dtype), rnd(b, s, d, dtype=dtype), rnd(b, s, d, dtype=dtype)
    out = run_triton("frame_attention", q, k, v, scale)
    assert out.dtype == dtype
    go = torch.randn(b, s, d).to(dtype)
    grads = grads_triton(out, (q, k, v), go)
    ql, kl, vl = leaves(q, k, v)
    ref = f64_frame_attention(ql, kl, vl, d**-0.5 if scale is None else scale)
    check(out, ref, dtype, "out", TOL_MMA)
    for name, g, rg in zip("qkv", grads, torch.autograd.grad(ref, (ql, kl, vl), go.double())):
        assert g.dtype == dtype
        check(g, rg, dtype, "d" + name, TOL_MMA)


@pytest.mark.parametrize(
    "b,s,d,dtype",
    [(2, 37, 24, torch.float32), (1, 13, 72, torch.bfloat16), (2, 19, 48, torch.float16)],
)
def test_frame_attention_fwd_lse_and_backward_from_it(b, s, d, dtype):
    """The paired op: out and the log-sum-exp from one forward kernel; the backward from (out, lse); and the
    inputs-only frame_attention_backward (forward with the LSE, then the same backward)."""
    q, k, v = (rnd(b, s, d, dtype=dtype).detach() for _ in range(3))
    go = torch.randn(b, s, d).to(dtype)
    ops = torch.ops.vxlp_ops
    with vxlp_ops.use_backend("triton"):
        assert dispatch.select("frame_attention_fwd", (q, k, v, None))[0] == "triton"
        out, lse = ops.frame_attention_fwd(q, k, v, None)
        grads = ops.frame_attention_fwd_backward(go, q, k, v, out, lse, None)
        grads_inputs_only = ops.frame_attention_backward(go, q, k, v, None)
    ql, kl, vl = leaves(q, k, v)
    scale = d**-0.5
    ref = f64_frame_attention(ql, kl, vl, scale)
    check(out, ref, dtype, "out", TOL_MMA)
    want_lse = torch.logsumexp(torch.einsum("bid,bjd->bij", ql, kl).detach() * scale, -1)
    assert lse.dtype == torch.float32 and lse.shape == (b, s)
    assert (lse.double() - want_lse).abs().max() < 1e-4
    want = torch.autograd.grad(ref, (ql, kl, vl), go.double())
    for name, g, g2, rg in zip("qkv", grads, grads_inputs_only, want):
        assert g.dtype == dtype
        check(g, rg, dtype, "d" + name, TOL_MMA)
        check(g2, rg, dtype, "d" + name + " (frame_attention_backward)", TOL_MMA)


def test_frame_attention_noncontiguous():
    b, s, d = 2, 13, 40
    q = torch.randn(s, b, d).transpose(0, 1)
    k = torch.randn(b, d, s).transpose(1, 2)
    v = torch.randn(b, s, 2 * d)[..., ::2]
    out = run_triton("frame_attention", q, k, v)
    check(out, f64_frame_attention(q.double(), k.double(), v.double(), d**-0.5), torch.float32, "out")


# ------------------------------------------------------------------------------------ temporal_attention


@pytest.mark.parametrize(
    "n,t,d,r,dtype,transposed",
    [
        (5, 4, 24, 2, torch.float32, False),  # T − 1 > R: clamped relative index
        (5, 4, 24, 2, torch.float32, True),
        (3, 13, 40, 8, torch.float32, False),
        (3, 13, 40, 8, torch.float32, True),
        (3, 1, 24, 3, torch.float32, False),  # T = 1
        (2, 64, 16, 64, torch.float32, True),  # the largest T
        (2, 33, 24, 20, torch.float32, False),
        (3, 3, 72, 64, torch.float16, True),
        (4, 4, 40, 64, torch.bfloat16, False),
    ],
)
def test_temporal_attention(n, t, d, r, dtype, transposed):
    q, k, v = (rnd(n, t, d, dtype=dtype) for _ in range(3))
    rk, rv = rnd(2 * r + 1, d, dtype=dtype), rnd(2 * r + 1, d, dtype=dtype)
    out = run_triton("temporal_attention", q, k, v, rk, rv, transposed)
    assert out.dtype == dtype
    go = torch.randn(n, t, d).to(dtype)
    grads = grads_triton(out, (q, k, v, rk, rv), go)
    ls = leaves(q, k, v, rk, rv)
    ref = f64_temporal_attention(*ls, transposed)
    check(out, ref, dtype, "out", TOL_MMA)
    for name, g, rg in zip(("dq", "dk", "dv", "drel_k", "drel_v"), grads, torch.autograd.grad(ref, ls, go.double())):
        assert g.dtype == dtype
        check(g, rg, dtype, name, TOL_MMA)


# --------------------------------------------------------------------------------- temporal_merge_conv3d


@pytest.mark.parametrize(
    "g,t,h,w,cin,cout,stride,dtype,bias",
    [
        (2, 4, 3, 5, 24, 40, 2, torch.float32, True),
        (1, 3, 1, 2, 13, 7, 1, torch.float32, False),  # H = 1: every H tap replicates row 0
        (1, 2, 5, 3, 16, 20, 2, torch.bfloat16, True),  # T = 2 → T_out = 1
        (2, 5, 2, 1, 8, 24, 3, torch.float16, True),
        (1, 4, 3, 3, 8, 16, 1, torch.float32, True),  # stride 1
    ],
)
def test_temporal_merge_conv3d(g, t, h, w, cin, cout, stride, dtype, bias):
    x = rnd(g, t, h, w, cin, dtype=dtype)
    wt = rnd(cout, cin, 3, 3, 3, dtype=dtype, scale=0.2)
    b = rnd(cout, dtype=dtype) if bias else None
    out = run_triton("temporal_merge_conv3d", x, wt, b, stride)
    assert out.dtype == dtype and out.shape == (g, (t - 2) // stride + 1, h, w, cout)
    go = torch.randn(out.shape).to(dtype)
    ins = (x, wt, b) if bias else (x, wt)
    grads = grads_triton(out, ins, go)
    ls = leaves(*ins)
    ref = f64_conv(*ls, stride) if bias else f64_conv(*ls, None, stride)
    check(out, ref, dtype, "out", TOL_MMA)
    for name, gr, rg in zip(("dx", "dweight", "dbias"), grads, torch.autograd.grad(ref, ls, go.double())):
        assert gr.dtype == dtype
        check(gr, rg, dtype, name, TOL_MMA)


# ------------------------------------------------------------------------------------------ sgm_scores


@pytest.mark.parametrize(
    "g,t,s,c,qt,qs,dtype",
    [
        (2, 3, 13, 24, 2, 3, torch.float32),
        (1, 1, 7, 40, 1, 2, torch.float32),  # T = 1: no temporal term
        (2, 4, 7, 72, 3, 1, torch.bfloat16),
        (1, 3, 13, 24, 2, 2, torch.float16),
    ],
)
def test_sgm_scores(g, t, s, c, qt, qs, dtype):
    x, tq, sq = rnd(g, t, s, c, dtype=dtype), rnd(qt, c, dtype=dtype), rnd(qs, c, dtype=dtype)
    out = run_triton("sgm_scores", x, tq, sq)
    assert out.dtype == torch.float32
    go = torch.randn(g, t, s)
    grads = grads_triton(out, (x, tq, sq), go)
    ls = leaves(x, tq, sq)
    ref = f64_sgm_scores(*ls)
    check(out, ref, dtype if dtype != torch.float32 else torch.float32, "scores")
    for name, gr, rg in zip(("dx", "dtemp_query", "dspatial_query"), grads, torch.autograd.grad(ref, ls, go.double())):
        assert gr.dtype == dtype
        check(gr, rg, dtype, name)


def test_sgm_scores_constant_clip():
    x = torch.ones(1, 1, 5, 16, requires_grad=True)  # T = 1, identical tokens: raw is constant
    tq, sq = rnd(1, 16), rnd(2, 16)
    out = run_triton("sgm_scores", x, tq, sq)
    assert torch.equal(out, torch.zeros(1, 1, 5))
    dx, dtq, dsq = grads_triton(out, (x, tq, sq), torch.randn(1, 1, 5))
    for gr in (dx, dtq, dsq):
        assert torch.equal(gr, torch.zeros_like(gr))


# -------------------------------------------------------------------------------------------- sgm_mask


@pytest.mark.parametrize(
    "g,t,s,ratio,pool,dtype",
    [
        (2, 3, 13, 0.3, 0.75, torch.float32),
        (1, 2, 7, 0.5, 0.5, torch.float16),
        (2, 2, 40, 0.0, 0.75, torch.float32),
        (1, 1, 9, 1.0, 1.0, torch.bfloat16),
        (3, 2, 37, 0.6, 0.9, torch.float32),
    ],
)
def test_sgm_mask(g, t, s, ratio, pool, dtype):
    scores = torch.rand(g, t, s)
    scores[0, 0, : s // 2] = 0.5  # ties
    scores = scores.to(dtype)
    gen = torch.Generator().manual_seed(1234)
    mask = run_triton("sgm_mask", scores, ratio, pool, gen)
    gen_ref = torch.Generator().manual_seed(1234)
    ref = vxlp_ops.reference.sgm_mask(scores, ratio, pool, gen_ref)
    assert mask.dtype == torch.bool and mask.shape == (g, t, s)
    assert torch.equal(mask, ref)
    n_pool = min(s, math.ceil(pool * s - 1e-9))
    n_mask = min(n_pool, int(math.floor(ratio * s + 0.5)))
    assert (mask.sum(-1) == n_mask).all()
    # masked ⊆ candidates (the n_pool lowest scores, ties → lower index), computed independently
    for gi in range(g):
        for ti in range(t):
            order = sorted(range(s), key=lambda i: (float(scores[gi, ti, i]), i))
            cand = set(order[:n_pool])
            assert set(torch.nonzero(mask[gi, ti]).flatten().tolist()) <= cand


def test_sgm_mask_generator_state_advances_like_reference():
    scores = torch.rand(2, 2, 11)
    gen = torch.Generator().manual_seed(7)
    gen_ref = torch.Generator().manual_seed(7)
    for _ in range(2):  # same sequence of masks over consecutive calls
        m = run_triton("sgm_mask", scores, 0.4, 0.75, gen)
        assert torch.equal(m, vxlp_ops.reference.sgm_mask(scores, 0.4, 0.75, gen_ref))


# ----------------------------------------------------------------------------------- query_topk_gather


@pytest.mark.parametrize(
    "b,n,l,d,k,inject,dtype",
    [
        (2, 37, 3, 24, 5, True, torch.float32),
        (1, 13, 1, 40, 13, False, torch.float32),
        (3, 7, 2, 72, 1, True, torch.bfloat16),
        (2, 20, 5, 24, 7, True, torch.float16),
    ],
)
def test_query_topk_gather(b, n, l, d, k, inject, dtype):
    visual, query = rnd(b, n, d, dtype=dtype), rnd(b, l, d, dtype=dtype)
    sel, idx, scores = run_triton("query_topk_gather", visual, query, k, inject)
    assert sel.dtype == dtype and idx.dtype == torch.int64 and scores.dtype == torch.float32
    ref_sel, ref_idx, _ = vxlp_ops.reference.query_topk_gather(visual.detach(), query.detach(), k, inject)
    assert torch.equal(idx, ref_idx)  # random inputs: no ties
    gs, gsc = torch.randn(b, k, d).to(dtype), torch.randn(b, n)
    grads = grads_triton((sel, scores), (visual, query), (gs, gsc))
    ls = leaves(visual, query)
    rsel, rscores = f64_query(*ls, idx, inject)
    # independent top-k: k highest (score desc, index asc), then ascending
    for bi in range(b):
        order = sorted(range(n), key=lambda i: (-float(rscores[bi, i].detach()), i))
        assert idx[bi].tolist() == sorted(order[:k])
    check(sel, rsel, dtype, "selected")
    check(scores, rscores, dtype, "scores")
    for name, gr, rg in zip(("dvisual", "dquery"), grads, torch.autograd.grad((rsel, rscores), ls, (gs.double(), gsc.double()))):
        assert gr.dtype == dtype
        check(gr, rg, dtype, name)


def test_query_topk_gather_ties():
    b, n, d = 2, 12, 16
    visual = torch.randn(b, n, d)
    visual[:, 9] = visual[:, 2]  # exact duplicates → tied scores
    visual[:, 5] = visual[:, 2]
    visual[:, 11] = visual[:, 4]
    query = torch.randn(b, 3, d)
    # make the duplicated tokens the best ones so the tie decides the selection
    qm = query.mean(1)
    visual[:, 2] = visual[:, 9] = visual[:, 5] = 3 * qm / qm.norm(dim=-1, keepdim=True)
    for k in (1, 2, 4):
        _, idx, scores = run_triton("query_topk_gather", visual, query, k, True)
        _, ref_idx, _ = vxlp_ops.reference.query_topk_gather(visual, query, k, True)
        assert torch.equal(idx, ref_idx)
        for bi in range(b):
            assert scores[bi, 2] == scores[bi, 5] == scores[bi, 9] == 1.0
            chosen = idx[bi].tolist()
            if k < 3:
                assert chosen == [2, 5, 9][:k]  # ties → lower index
            else:
                assert {2, 5, 9} <= set(chosen)
    # constant rows: all scores 0, indices = the first k
    sel, idx, scores = run_triton("query_topk_gather", torch.ones(1, 6, 16), torch.randn(1, 2, 16), 3, True)
    assert torch.equal(scores, torch.zeros(1, 6)) and idx.tolist() == [[0, 1, 2]]


# ------------------------------------------------------------------------------------ tl.dot operand dtypes


def _matmul_ops(dtype):
    q = rnd(2, 19, 40, dtype=dtype)
    out = run_triton("frame_attention", q, q, q, None)
    grads_triton(out, (q,), torch.randn(out.shape).to(dtype))
    q, rk = rnd(3, 4, 24, dtype=dtype), rnd(5, 24, dtype=dtype)
    out = run_triton("temporal_attention", q, q, q, rk, rk, False)
    grads_triton(out, (q, rk), torch.randn(out.shape).to(dtype))
    x, w = rnd(1, 3, 2, 3, 16, dtype=dtype), rnd(16, 16, 3, 3, 3, dtype=dtype, scale=0.2)
    out = run_triton("temporal_merge_conv3d", x, w, None, 2)
    grads_triton(out, (x, w), torch.randn(out.shape).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
def test_dot_operands_stay_in_the_input_dtype(dtype, monkeypatch):
    """Every tl.dot of the matmul kernels (frame / temporal attention, conv; forward and backward) gets its
    operands in the input dtype and a float32 accumulator: recorded at the interpreter's dot, so this checks the
    kernels as written, not a copy. bf16 is the interpreter's one exception (raw uint16 storage: the operands are
    rounded to bf16, then widened, ``_common.dot_args``); the compiled PTX of the bf16 kernels is checked for
    bf16 tensor-core instructions by tests/test_triton_compile.py."""
    from triton.runtime import interpreter

    builder = getattr(interpreter, "InterpreterBuilder", None)
    if builder is None or not hasattr(builder, "create_dot"):
        pytest.skip("this Triton's interpreter has no InterpreterBuilder.create_dot to instrument")
    seen = []
    original = builder.create_dot

    def record(self, a, b, d, *rest):
        seen.append((str(a.dtype.scalar), str(b.dtype.scalar), str(d.dtype.scalar)))
        return original(self, a, b, d, *rest)

    monkeypatch.setattr(builder, "create_dot", record)
    _matmul_ops(dtype)
    operand = {torch.float16: "fp16", torch.float32: "fp32", torch.bfloat16: "fp32"}[dtype]
    assert len(seen) > 10 and set(seen) == {(operand, operand, "fp32")}, sorted(set(seen))
    from vxlp_ops.triton import _common

    import triton.language as tl

    gpu = _common.dot_args(dtype, interpret=False)
    want = {torch.float16: tl.float16, torch.float32: tl.float32, torch.bfloat16: tl.bfloat16}[dtype]
    assert gpu["IN_T"] == gpu["DOT_T"] == want  # compiled kernels: tl.dot on the input dtype, bf16 included


# ------------------------------------------------------------------------------------------- reasons


def test_reasons_refuse_cpu_without_forcing_and_float64():
    q = torch.randn(1, 5, 16)
    args = (q, q, q, None)
    with vxlp_ops.use_backend(None):
        why = dispatch.backend_reasons("frame_attention", "triton", args)
        assert why and "interpreter" in why[0]
        assert dispatch.select("frame_attention", args)[0] != "triton"
    with vxlp_ops.use_backend("triton"):
        assert dispatch.backend_reasons("frame_attention", "triton", args) == []
        qd = q.double()
        why = dispatch.backend_reasons("frame_attention", "triton", (qd, qd, qd, None))
        assert any("float32/float16/bfloat16" in r for r in why)
        with pytest.raises(dispatch.NoBackendError):
            vxlp_ops.frame_attention(qd, qd, qd)
    x = torch.randn(1, 2, 3, 3, 8, dtype=torch.float64)
    with vxlp_ops.use_backend("triton"):
        assert dispatch.backend_reasons("temporal_merge_conv3d", "triton", (x, torch.randn(4, 8, 3, 3, 3).double(), None, 2))
        assert dispatch.backend_reasons("sgm_mask", "triton", (torch.rand(1, 2, 5).double(), 0.2, 0.5, None))
        qt = torch.randn(2, 65, 16)
        rt = torch.randn(5, 16)
        assert any("T <= 64" in r for r in dispatch.backend_reasons("temporal_attention", "triton", (qt, qt, qt, rt, rt, False)))
    for op in ("temporal_attention", "temporal_merge_conv3d", "sgm_scores", "sgm_mask", "query_topk_gather"):
        assert "triton" in dispatch._IMPLS[op]
