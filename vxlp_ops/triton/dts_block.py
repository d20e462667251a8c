"""Triton backend of the fused DTS blocks (``dts_spatial_block``, ``dts_temporal_block``; inference only).

Per block, on channels-last ``x [G, T, H, W, C]`` viewed as ``M = G·T·S`` frame-major rows (S = H·W) of C:

1. ``_gn_stats``: the GroupNorm mean and 1/sqrt(var + eps) in float32, one read of x. A program owns one
   statistics row (a sample g for the spatial block, a position (g, s) for the temporal one) and a block of GB
   groups; it walks the rows in tiles of BR, and merges each tile's mean and centred sum of squares into the
   running ones (Chan et al.'s pairwise update), so no E[x²] − E[x]² cancellation.
2. ``_dts_gemm`` (the q/k/v projection): ``out_j = norm(x) @ W_jᵀ + b_j`` for j = q, k, v with one
   ``[3C, C]`` weight read in its own (nn.Linear) layout. The GroupNorm is applied to each A tile as it is
   loaded — ``((x − mean)·rstd)·γ + β`` in float32, rounded to the input dtype, as the eager GroupNorm rounds
   its output — so the normalised activations never reach memory. The epilogue writes each column block into
   q, k or v (``[3, M, C]``, three contiguous tensors), for the temporal block at row ``(g·S + s)·T + t``:
   the ``[G·S, T, C]`` layout ``temporal_attention`` reads, with no permute or ``contiguous`` copy.
3. the attention: the public ops :func:`vxlp_ops.frame_attention` / :func:`vxlp_ops.temporal_attention`
   (their own dispatch: CUDA or Triton kernels).
4. ``_dts_gemm`` again (``proj_out``): ``out = x + a @ W_projᵀ + b`` with bias and residual added to the float32
   accumulator in the epilogue (one rounding); the temporal block's A rows are read from the position-major
   attention output at ``(g·S + s)·T + t``, so its output is frame-major again without a permute.

What is not fused, and why: the attention stays the shared op (its kernels are the work of their own op and
are tuned there); the GroupNorm statistics need a full reduction over a sample (spatial) before the first
normalised tile can be formed, so they are one extra read of x rather than a GEMM prologue; the merge conv
(``temporal_merge_conv3d``) already fuses its replicate padding and has no elementwise neighbours to absorb.

GEMM operands reach ``tl.dot`` in the input dtype (bf16 / fp16 on the tensor cores, float32 with
``input_precision="ieee"``; ``_shared.mma``), float32 accumulator. Grouped program order (GROUP_M row tiles
share the column sweep) keeps the weight tiles in L2. GPU configuration (:func:`_gemm_config`): 128 × 128
tiles, 8 warps, 3 stages, BK = 32 (normalising) / 64 (plain), chosen from ptxas's register / spill report for
sm_80 with the launch's divisibility specialisation (``scripts/check_triton_compile.py``), not timed on a GPU:
bf16, 154–160 and 178 registers, no spills, every operand load pipelined (``cp.async``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vxlp_ops import dispatch

from . import _common as C
from . import _shared as SH


@triton.jit
def _gn_stats(X, MEAN, RSTD, R, n_inner, stride_outer, stride_inner, row_stride, CG, NG, eps,
              BR: tl.constexpr, GB: tl.constexpr, BC: tl.constexpr):
    """GroupNorm statistics of statistics row ``o = pid // n_gb`` for groups ``[GB·b, GB·b + GB)``,
    ``b = pid % n_gb`` (n_gb = cdiv(NG, GB)): the programs of one row's groups are launched together and share
    the cache lines of its elements.

    The elements of (o, group) are ``X[base(o) + r·row_stride + group·CG + c]`` for r < R, c < CG, with
    ``base(o) = (o // n_inner)·stride_outer + (o % n_inner)·stride_inner``. Writes float32 ``MEAN[o, group]``
    and ``RSTD[o, group] = 1/sqrt(var + eps)`` (biased variance)."""
    n_gb = tl.cdiv(NG, GB)
    o = tl.program_id(0) // n_gb
    grp = (tl.program_id(0) % n_gb) * GB + tl.arange(0, GB)
    mg = grp < NG
    cols = tl.arange(0, BC)
    mc = cols < CG
    base = (o // n_inner).to(tl.int64) * stride_outer + (o % n_inner).to(tl.int64) * stride_inner
    col_off = (grp[:, None] * CG + cols[None, :])[None, :, :]  # [1, GB, BC]
    cmask = (mg[:, None] & mc[None, :])[None, :, :]
    n_acc = tl.zeros([GB], tl.float32)
    mean = tl.zeros([GB], tl.float32)
    m2 = tl.zeros([GB], tl.float32)
    for r0 in range(0, R, BR):
        rows = r0 + tl.arange(0, BR)
        msk = (rows < R)[:, None, None] & cmask
        x = tl.load(X + base + rows.to(tl.int64)[:, None, None] * row_stride + col_off, mask=msk,
                    other=0.0).to(tl.float32)
        cnt = tl.sum(tl.sum(msk.to(tl.float32), 2), 0)  # [GB]
        cnt_safe = tl.maximum(cnt, 1.0)
        t_mean = tl.sum(tl.sum(x, 2), 0) / cnt_safe
        d = tl.where(msk, x - t_mean[None, :, None], 0.0)
        t_m2 = tl.sum(tl.sum(d * d, 2), 0)
        tot = n_acc + cnt
        tot_safe = tl.maximum(tot, 1.0)
        delta = t_mean - mean
        mean += delta * (cnt / tot_safe)
        m2 += t_m2 + delta * delta * (n_acc * cnt / tot_safe)
        n_acc = tot
    rstd = 1.0 / tl.sqrt(m2 / tl.maximum(n_acc, 1.0) + eps)
    out = o.to(tl.int64) * NG + grp
    tl.store(MEAN + out, mean, mask=mg)
    tl.store(RSTD + out, rstd, mask=mg)


@triton.jit
def _position_major(m, T, S):
    """Frame-major row ``m = (g·T + t)·S + s`` → position-major row ``(g·S + s)·T + t``."""
    s = m % S
    gt = m // S
    return ((gt // T) * S + s) * T + gt % T


@triton.jit
def _dts_gemm(A, W, BIAS, RES, OUT, MEAN, RSTD, GAMMA, BETA, M, K, N, N_OUT, T, S, CG, NG,
              NORM: tl.constexpr, STATS_PER_POSITION: tl.constexpr, A_POSITION_MAJOR: tl.constexpr,
              OUT_POSITION_MAJOR: tl.constexpr, HAS_RES: tl.constexpr,
              BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
              IN_T: tl.constexpr, DOT_T: tl.constexpr, PREC: tl.constexpr):
    """``Y = f(A) @ Wᵀ + bias (+ RES)`` for frame-major rows m < M, columns n < N (W ``[N, K]`` row-major).

    ``f`` is the GroupNorm of the statistics row of m (``NORM``; the sample ``m // (T·S)``, or the position
    ``(m // (T·S))·S + m % S`` with ``STATS_PER_POSITION``) over groups of CG channels, or the identity. A is
    read at row m, or at its position-major row (``A_POSITION_MAJOR``). Column n goes to output
    ``j = n // N_OUT`` of ``OUT [N // N_OUT, M, N_OUT]`` at row m, or its position-major row
    (``OUT_POSITION_MAJOR``); RES has OUT's layout (``HAS_RES``; only with N_OUT = N)."""
    pid = tl.program_id(0)
    n_m = tl.cdiv(M, BM)
    n_n = tl.cdiv(N, BN)
    per_group = GROUP_M * n_n
    first_m = (pid // per_group) * GROUP_M
    rows_in_group = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % rows_in_group
    pid_n = (pid % per_group) // rows_in_group
    offs_m = pid_m * BM + tl.arange(0, BM)
    mm = offs_m < M
    offs_n = pid_n * BN + tl.arange(0, BN)
    mn = offs_n < N
    offs_k = tl.arange(0, BK)
    if A_POSITION_MAJOR:
        a_rows = _position_major(offs_m, T, S).to(tl.int64)
    else:
        a_rows = offs_m.to(tl.int64)
    if NORM:
        if STATS_PER_POSITION:
            stat = (offs_m // (T * S)) * S + offs_m % S
        else:
            stat = offs_m // (T * S)
        stat = stat * NG  # int32: the host checks (statistics rows)·NG < 2³¹
    acc = tl.zeros([BM, BN], tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + offs_k
        mk = kk < K
        a = SH.load_tile(A, 0, a_rows, mm, kk, K, K)
        if NORM:
            both = mm[:, None] & mk[None, :]
            sidx = stat[:, None] + (kk // CG)[None, :]
            mu = tl.load(MEAN + sidx, mask=both, other=0.0)
            rs = tl.load(RSTD + sidx, mask=both, other=0.0)
            ga = tl.load(GAMMA + kk, mask=mk, other=0.0).to(tl.float32)
            be = tl.load(BETA + kk, mask=mk, other=0.0).to(tl.float32)
            h = ((a.to(tl.float32) - mu) * rs) * ga[None, :] + be[None, :]
            a = tl.where(both, h, 0.0).to(A.dtype.element_ty)  # eager GroupNorm rounds to x's dtype here
        w = SH.load_tile(W, 0, offs_n, mn, kk, K, K)  # [BN, BK]
        acc = SH.mma(a, tl.trans(w), acc, IN_T, DOT_T, PREC)
    acc += tl.load(BIAS + offs_n, mask=mn, other=0.0).to(tl.float32)[None, :]
    if OUT_POSITION_MAJOR:
        o_rows = _position_major(offs_m, T, S).to(tl.int64)
    else:
        o_rows = offs_m.to(tl.int64)
    # column n of output j = n // N_OUT (a BN block never straddles two outputs when BN divides N_OUT, but it
    # may when it does not, so the offset is per column)
    col = (offs_n // N_OUT).to(tl.int64) * M * N_OUT + offs_n % N_OUT
    om = mm[:, None] & mn[None, :]
    if HAS_RES:
        acc += tl.load(RES + o_rows[:, None] * N_OUT + col[None, :], mask=om, other=0.0).to(tl.float32)
    tl.store(OUT + o_rows[:, None] * N_OUT + col[None, :], acc.to(OUT.dtype.element_ty), mask=om)


def _gemm_config(gpu: bool, norm: bool, dtype: torch.dtype) -> dict:
    """Tiles of :func:`_dts_gemm`. GPU: 128 × 128, 8 warps, 3 stages; BK = 32 for the normalising GEMM (it also
    stages [BM, BK] float32 mean / rstd tiles) and 64 otherwise; with float32 operands (no tensor cores, larger
    tiles) the normalising GEMM uses BN = 64. No spills for sm_80 (``check_triton_compile.py``)."""
    if gpu:
        return dict(BM=128, BN=64 if (norm and dtype == torch.float32) else 128, BK=32 if norm else 64, GROUP_M=8,
                    num_warps=8, num_stages=3)
    return dict(BM=32, BN=32, BK=32, GROUP_M=2)


def _gemm(a, w, bias, out, *, m, t, s, res=None, stats=None, gamma=None, beta=None, cg=1, ng=1,
          stats_per_position=False, a_position_major=False, out_position_major=False):
    """Launch :func:`_dts_gemm` (see there); ``stats = (mean, rstd)`` turns the GroupNorm prologue on."""
    n, k = w.shape
    n_out = out.shape[-1]
    if stats is not None and stats[0].numel() >= 2**31:
        raise ValueError(f"too many GroupNorm statistics rows for int32 indexing: {stats[0].numel()}")
    cfg = _gemm_config(C.on_gpu(a), stats is not None, a.dtype)
    mean, rstd = stats if stats is not None else (bias, bias)
    grid = (C.cdiv(m, cfg["BM"]) * C.cdiv(n, cfg["BN"]),)
    _dts_gemm[grid](a, w, bias, res if res is not None else out, out, mean, rstd,
                    gamma if gamma is not None else bias, beta if beta is not None else bias,
                    m, k, n, n_out, t, s, cg, ng,
                    NORM=stats is not None, STATS_PER_POSITION=stats_per_position,
                    A_POSITION_MAJOR=a_position_major, OUT_POSITION_MAJOR=out_position_major,
                    HAS_RES=res is not None, **C.dot_args(a.dtype), **cfg)
    return out


def group_norm_stats(x: torch.Tensor, num_groups: int, eps: float, per_position: bool):
    """float32 ``(mean, rstd)`` of x ``[G, T, H, W, C]`` contiguous: ``[G, num_groups]`` over (C/groups, T, H, W)
    per sample, or (``per_position``) ``[G·H·W, num_groups]`` over (C/groups, T) per position."""
    g, t, hh, ww, c = x.shape
    s = hh * ww
    cg = c // num_groups
    gpu = C.on_gpu(x)
    if per_position:  # stats row (g, s); rows t at stride S·C
        n_stat, n_inner, rows, row_stride = g * s, s, t, s * c
    else:  # stats row g; rows (t, s) at stride C
        n_stat, n_inner, rows, row_stride = g, 1, t * s, c
    bc = max(2, C.next_pow2(cg))
    budget = 4096 if gpu else 1024  # elements of one [BR, GB, BC] tile
    if per_position:  # few rows (T ≤ 64): all of them in one tile, several groups per program
        br = max(2, C.next_pow2(rows))
        gb = max(1, min(C.next_pow2(num_groups), budget // (br * bc)))
    else:  # T·H·W rows: one group per program, walked in tiles of BR rows
        br = max(2, min(C.next_pow2(rows), budget // bc))
        gb = 1
    mean = torch.empty((n_stat, num_groups), dtype=torch.float32, device=x.device)
    rstd = torch.empty((n_stat, num_groups), dtype=torch.float32, device=x.device)
    warps = dict(num_warps=4) if gpu else {}
    _gn_stats[(C.cdiv(num_groups, gb) * n_stat,)](x, mean, rstd, rows, n_inner, t * s * c, c, row_stride, cg,
                                                num_groups, float(eps), BR=br, GB=gb, BC=bc, **warps)
    return mean, rstd


def _project_qkv(x, norm_weight, norm_bias, qkv_weight, qkv_bias, num_groups, eps, temporal):
    g, t, hh, ww, c = x.shape
    s = hh * ww
    m = g * t * s
    stats = group_norm_stats(x, num_groups, eps, per_position=temporal)
    qkv = torch.empty((3, m, c), dtype=x.dtype, device=x.device)
    _gemm(x, qkv_weight, qkv_bias, qkv, m=m, t=t, s=s, stats=stats, gamma=norm_weight, beta=norm_bias,
          cg=c // num_groups, ng=num_groups, stats_per_position=temporal, out_position_major=temporal)
    return qkv


def spatial_forward(x, norm_weight, norm_bias, qkv_weight, qkv_bias, proj_weight, proj_bias, num_groups, eps):
    x, norm_weight, norm_bias, qkv_weight, qkv_bias, proj_weight, proj_bias = (
        t.contiguous() for t in (x, norm_weight, norm_bias, qkv_weight, qkv_bias, proj_weight, proj_bias))
    g, t, hh, ww, c = x.shape
    qkv = _project_qkv(x, norm_weight, norm_bias, qkv_weight, qkv_bias, num_groups, eps, temporal=False)
    q, k, v = (qkv[j].view(g * t, hh * ww, c) for j in range(3))
    a = torch.ops.vxlp_ops.frame_attention(q, k, v, None)  # [G·T, S, C], frame-major rows
    out = torch.empty_like(x)
    return _gemm(a, proj_weight, proj_bias, out, m=g * t * hh * ww, t=t, s=hh * ww, res=x)


def temporal_forward(x, norm_weight, norm_bias, qkv_weight, qkv_bias, rel_k, rel_v, proj_weight, proj_bias,
                     num_groups, eps, transposed_rel_k=False):
    x, norm_weight, norm_bias, qkv_weight, qkv_bias, proj_weight, proj_bias = (
        t.contiguous() for t in (x, norm_weight, norm_bias, qkv_weight, qkv_bias, proj_weight, proj_bias))
    g, t, hh, ww, c = x.shape
    s = hh * ww
    qkv = _project_qkv(x, norm_weight, norm_bias, qkv_weight, qkv_bias, num_groups, eps, temporal=True)
    q, k, v = (qkv[j].view(g * s, t, c) for j in range(3))
    a = torch.ops.vxlp_ops.temporal_attention(q, k, v, rel_k.contiguous(), rel_v.contiguous(),
                                              bool(transposed_rel_k))  # [G·S, T, C], position-major rows
    out = torch.empty_like(x)
    return _gemm(a, proj_weight, proj_bias, out, m=g * t * s, t=t, s=s, res=x, a_position_major=True)


def reasons(*args):
    """Why the Triton backend cannot run a block on these arguments (device, dtype; shapes are checked by the op)."""
    return C.common_reasons(*args)


dispatch.register("dts_spatial_block", "triton", forward=spatial_forward, reasons=reasons)
dispatch.register("dts_temporal_block", "triton", forward=temporal_forward, reasons=reasons)
