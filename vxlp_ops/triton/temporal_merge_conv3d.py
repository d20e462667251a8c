"""Triton ``temporal_merge_conv3d``: replicate-padded 3×3×3 Conv3d, stride (stride_t, 1, 1), channels-last.

Forward (``_conv_fwd``): implicit GEMM, M = G·T_out·H·W output rows, N = Cout, K = 27·Cin; the replicate
padding is fused into the loads by clamping the source coordinates (no padded copy). The weight is used as
[27, Cin, Cout] (and [27, Cout, Cin] for the input gradient), laid out on the host once per weight state
(``vxlp_ops._layout_cache``: re-laid only after an in-place update of the weight).

Backward:
- ``_conv_dx``: transposed implicit GEMM computed per *source* element (no atomics, deterministic). Per dim,
  a source coordinate s is read by the (tap, output) pairs (k, s+1−k) ("main") plus, through the replicate
  clamp, (0, s) when s is the first and (2, s) when s is the last coordinate (T: first only). The 4·5·5
  combinations each map a source row to at most one output row; a combination is skipped at run time when
  no row of the block needs it (interior blocks: only the in-range main taps run).
- ``_conv_dw``: dweight[tap] = X_tapᵀ · dY as a GEMM over M (optionally split over M into partials that
  torch sums — deterministic).
- ``_colsum``: dbias = column sums of dY.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vxlp_ops import dispatch
from vxlp_ops._layout_cache import conv_weight

from . import _common as C
from . import _shared as SH


@triton.jit
def _conv_fwd(X, WT, BIAS, OUT, M, T, H, W, T_out, Cin, Cout, stride_t,
              HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
              IN_T: tl.constexpr, DOT_T: tl.constexpr, PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    mm = offs_m < M
    w_o = offs_m % W
    h_o = (offs_m // W) % H
    t_o = (offs_m // (W * H)) % T_out
    g = offs_m // (W * H * T_out)
    offs_n = pid_n * BN + tl.arange(0, BN)
    mn = offs_n < Cout
    offs_k = tl.arange(0, BK)
    acc = tl.zeros([BM, BN], tl.float32)
    for tap in range(27):
        kt = tap // 9
        kh = (tap // 3) % 3
        kw = tap % 3
        ts = tl.minimum(tl.maximum(t_o * stride_t - 1 + kt, 0), T - 1)
        hs = tl.minimum(tl.maximum(h_o + kh - 1, 0), H - 1)
        ws = tl.minimum(tl.maximum(w_o + kw - 1, 0), W - 1)
        src = (((g * T + ts) * H + hs) * W + ws).to(tl.int64) * Cin
        for c0 in range(0, Cin, BK):
            kk = c0 + offs_k
            mk = kk < Cin
            a = tl.load(X + src[:, None] + kk[None, :], mask=mm[:, None] & mk[None, :], other=0.0)
            b = SH.load_tile(WT, 0, tap * Cin + kk, mk, offs_n, Cout, Cout)
            acc = SH.mma(a, b, acc, IN_T, DOT_T, PREC)
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_n, mask=mn, other=0.0).to(tl.float32)[None, :]
    tl.store(OUT + offs_m.to(tl.int64)[:, None] * Cout + offs_n[None, :], acc.to(OUT.dtype.element_ty),
             mask=mm[:, None] & mn[None, :])


@triton.jit
def _conv_dx(GO, WT2, DX, M_src, T, H, W, T_out, Cin, Cout, stride_t,
             BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
             IN_T: tl.constexpr, DOT_T: tl.constexpr, PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_r = pid_m * BM + tl.arange(0, BM)
    mr = offs_r < M_src
    ws_ = offs_r % W
    hs_ = (offs_r // W) % H
    ts_ = (offs_r // (W * H)) % T
    g = offs_r // (W * H * T)
    offs_c = pid_n * BN + tl.arange(0, BN)  # input channels
    mc = offs_c < Cin
    offs_k = tl.arange(0, BK)  # output channels (reduction)
    acc = tl.zeros([BM, BN], tl.float32)
    # Per dim, the (tap k, output o) pairs with clamp(o + k − 1) = s (T: clamp(o·stride + k − 1)):
    # c = 0: k=0 "extra" (o = s, only for the first s); c = 1, 2, 3: k = c − 1 "main" (o = s + 1 − k);
    # H and W also c = 4: k=2 "extra" (o = s, only for the last s). 4·5·5 combos, each giving ≤ 1 row;
    # nested so that a T (or T,H) choice no row of the block needs prunes its whole subtree.
    for ct in range(4):
        kt = tl.maximum(ct - 1, 0)
        tn = ts_ + 1 - kt
        tnc = tl.maximum(tn, 0)
        t_o = tl.where(ct == 0, 0, tnc // stride_t)
        ok_t = mr & tl.where(ct == 0, ts_ == 0, (tn >= 0) & ((tnc % stride_t) == 0) & (t_o < T_out))
        if tl.max(ok_t.to(tl.int32), 0) > 0:
            for ch in range(5):
                kh = tl.minimum(tl.maximum(ch - 1, 0), 2)
                h_m = hs_ + 1 - kh
                h_o = tl.where((ch == 0) | (ch == 4), hs_, h_m)
                ok_h = ok_t & tl.where(ch == 0, hs_ == 0, tl.where(ch == 4, hs_ == H - 1, (h_m >= 0) & (h_m < H)))
                if tl.max(ok_h.to(tl.int32), 0) > 0:
                    for cw in range(5):
                        kw = tl.minimum(tl.maximum(cw - 1, 0), 2)
                        w_m = ws_ + 1 - kw
                        w_o = tl.where((cw == 0) | (cw == 4), ws_, w_m)
                        ok = ok_h & tl.where(cw == 0, ws_ == 0,
                                             tl.where(cw == 4, ws_ == W - 1, (w_m >= 0) & (w_m < W)))
                        if tl.max(ok.to(tl.int32), 0) > 0:
                            tap = kt * 9 + kh * 3 + kw
                            orow = tl.where(ok, ((g * T_out + t_o) * H + h_o) * W + w_o, 0).to(tl.int64) * Cout
                            for c0 in range(0, Cout, BK):
                                kk = c0 + offs_k
                                mk = kk < Cout
                                a = tl.load(GO + orow[:, None] + kk[None, :], mask=ok[:, None] & mk[None, :],
                                            other=0.0)
                                b = SH.load_tile(WT2, 0, tap * Cout + kk, mk, offs_c, Cin, Cin)
                                acc = SH.mma(a, b, acc, IN_T, DOT_T, PREC)
    tl.store(DX + offs_r.to(tl.int64)[:, None] * Cin + offs_c[None, :], acc.to(DX.dtype.element_ty),
             mask=mr[:, None] & mc[None, :])


@triton.jit
def _conv_dw(X, GO, PW, M, T, H, W, T_out, Cin, Cout, stride_t, m_per_split, n_kblocks,
             BK: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr,
             IN_T: tl.constexpr, DOT_T: tl.constexpr, PREC: tl.constexpr):
    pid0 = tl.program_id(0)
    tap = pid0 // n_kblocks
    kb = pid0 % n_kblocks
    pid_n = tl.program_id(1)
    split = tl.program_id(2)
    kt = tap // 9
    kh = (tap // 3) % 3
    kw = tap % 3
    offs_c = kb * BK + tl.arange(0, BK)
    mc = offs_c < Cin
    offs_n = pid_n * BN + tl.arange(0, BN)
    mn = offs_n < Cout
    acc = tl.zeros([BK, BN], tl.float32)
    m_start = split * m_per_split
    m_end = tl.minimum(m_start + m_per_split, M)
    for m0 in range(m_start, m_end, BM):
        offs_m = m0 + tl.arange(0, BM)
        mm = offs_m < m_end
        w_o = offs_m % W
        h_o = (offs_m // W) % H
        t_o = (offs_m // (W * H)) % T_out
        g = offs_m // (W * H * T_out)
        ts = tl.minimum(tl.maximum(t_o * stride_t - 1 + kt, 0), T - 1)
        hs = tl.minimum(tl.maximum(h_o + kh - 1, 0), H - 1)
        ws = tl.minimum(tl.maximum(w_o + kw - 1, 0), W - 1)
        src = (((g * T + ts) * H + hs) * W + ws).to(tl.int64) * Cin
        a = tl.load(X + src[:, None] + offs_c[None, :], mask=mm[:, None] & mc[None, :], other=0.0)
        gg = SH.load_tile(GO, 0, offs_m.to(tl.int64), mm, offs_n, Cout, Cout)
        acc = SH.mma(tl.trans(a), gg, acc, IN_T, DOT_T, PREC)
    off = split.to(tl.int64) * 27 * Cin * Cout + (tap * Cin + offs_c)[:, None] * Cout + offs_n[None, :]
    tl.store(PW + off, acc, mask=mc[:, None] & mn[None, :])


@triton.jit
def _colsum(X, OUT, M, N, BM: tl.constexpr, BN: tl.constexpr):
    pid = tl.program_id(0)
    offs_n = pid * BN + tl.arange(0, BN)
    mn = offs_n < N
    acc = tl.zeros([BN], tl.float32)
    for m0 in range(0, M, BM):
        offs_m = m0 + tl.arange(0, BM)
        x = tl.load(X + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :], mask=(offs_m < M)[:, None] & mn[None, :],
                    other=0.0).to(tl.float32)
        acc += tl.sum(x, 0)
    tl.store(OUT + offs_n, acc, mask=mn)


def _config(gpu: bool) -> dict:
    if gpu:
        return dict(BM=64, BN=64, BK=32, num_warps=4, num_stages=3)
    return dict(BM=32, BN=32, BK=32)


def out_frames(t: int, stride_t: int) -> int:
    return (t + 1 - 3) // stride_t + 1


def forward(x, weight, bias=None, stride_t=2):
    x = x.contiguous()
    g, t, h, w, cin = x.shape
    cout = weight.shape[0]
    stride_t = int(stride_t)
    t_out = out_frames(t, stride_t)
    wt = conv_weight(weight, "taps_in_out")  # [tap, Cin, Cout], laid out once per weight state
    out = torch.empty((g, t_out, h, w, cout), dtype=x.dtype, device=x.device)
    m = g * t_out * h * w
    cfg = _config(C.on_gpu(x))
    b = bias.contiguous() if bias is not None else wt
    grid = (C.cdiv(m, cfg["BM"]), C.cdiv(cout, cfg["BN"]))
    _conv_fwd[grid](x, wt, b, out, m, t, h, w, t_out, cin, cout, stride_t, HAS_BIAS=bias is not None,
                    **C.dot_args(x.dtype), **cfg)
    return out


def backward(grad_out, x, weight, stride_t=2):
    x = x.contiguous()
    go = grad_out.contiguous()
    g, t, h, w, cin = x.shape
    cout = weight.shape[0]
    stride_t = int(stride_t)
    t_out = out_frames(t, stride_t)
    m = g * t_out * h * w
    gpu = C.on_gpu(x)
    cfg = _config(gpu)
    dargs = C.dot_args(x.dtype)
    # dx
    wt2 = conv_weight(weight, "taps_out_in")  # [tap, Cout, Cin], laid out once per weight state
    dx = torch.empty_like(x)
    m_src = g * t * h * w
    _conv_dx[(C.cdiv(m_src, cfg["BM"]), C.cdiv(cin, cfg["BN"]))](
        go, wt2, dx, m_src, t, h, w, t_out, cin, cout, stride_t, **dargs, **cfg)
    # dweight: GEMM over M, split into partials when there are few output tiles
    bk, bn, bm = cfg["BN"], cfg["BN"], cfg["BM"]  # Cin tile, Cout tile, rows per step
    nkb = C.cdiv(cin, bk)
    tiles = 27 * nkb * C.cdiv(cout, bn)
    want = 2 * C.sm_count(x)
    split = max(1, min(C.cdiv(want, tiles), C.cdiv(m, 4 * bm))) if gpu else min(2, C.cdiv(m, bm))
    m_per_split = C.cdiv(C.cdiv(m, split), bm) * bm
    split = C.cdiv(m, m_per_split)
    pw = torch.empty((split, 27, cin, cout), dtype=torch.float32, device=x.device)
    lw = {k: v for k, v in cfg.items() if k in ("num_warps", "num_stages")}
    _conv_dw[(27 * nkb, C.cdiv(cout, bn), split)](
        x, go, pw, m, t, h, w, t_out, cin, cout, stride_t, m_per_split, nkb, BK=bk, BN=bn, BM=bm, **dargs, **lw)
    dw = pw.sum(0) if split > 1 else pw[0]
    dweight = dw.view(3, 3, 3, cin, cout).permute(4, 3, 0, 1, 2).to(weight.dtype).contiguous()
    # dbias
    db = torch.empty((cout,), dtype=torch.float32, device=x.device)
    _colsum[(C.cdiv(cout, bn),)](go, db, m, cout, BM=bm, BN=bn, **lw)
    return dx, dweight, db.to(weight.dtype)


def reasons(x, weight, bias=None, stride_t=2):
    return C.common_reasons(x, weight, bias)


dispatch.register("temporal_merge_conv3d", "triton", forward=forward, backward=backward, reasons=reasons)
