import torch
import torch.nn.functional as F

from ._common import compute_dtype


def temporal_merge_conv3d(x, weight, bias=None, stride_t: int = 2) -> torch.Tensor:
    """Replicate-padded (T 1/0, H 1/1, W 1/1) Conv3d, stride ``(stride_t, 1, 1)``, channels-last.

    x ``[G, T, H, W, Cin]``, weight ``[Cout, Cin, 3, 3, 3]`` → ``[G, T_out, H, W, Cout]`` (dtype of x); the
    padding and the convolution run in float32 (SPEC §2: "padding computed in fp32").
    """
    ct = compute_dtype(x)
    xc = x.to(ct).permute(0, 4, 1, 2, 3).contiguous()  # channels-first: the CPU conv3d fast path
    xp = F.pad(xc, (1, 1, 1, 1, 1, 0), mode="replicate")
    b = None if bias is None else bias.to(ct)
    out = F.conv3d(xp, weight.to(ct), b, stride=(stride_t, 1, 1))
    return out.permute(0, 2, 3, 4, 1).to(x.dtype).contiguous()


def _fold_replicate(gpad: torch.Tensor) -> torch.Tensor:
    """Adjoint of replicate padding T (1, 0), H (1, 1), W (1, 1) on ``[G, C, T+1, H+2, W+2]`` → ``[G, C, T, H, W]``."""
    g = gpad[:, :, 1:].clone()
    g[:, :, 0] += gpad[:, :, 0]
    h = g[:, :, :, 1:-1].clone()
    h[:, :, :, 0] += g[:, :, :, 0]
    h[:, :, :, -1] += g[:, :, :, -1]
    w = h[..., 1:-1].clone()
    w[..., 0] += h[..., 0]
    w[..., -1] += h[..., -1]
    return w


def temporal_merge_conv3d_backward(grad_out, x, weight, stride_t: int = 2):
    """Explicit gradient of :func:`temporal_merge_conv3d`: ``(dx [G,T,H,W,Cin], dweight, dbias [Cout])``.

    ``aten.convolution_backward`` on the replicate-padded input, then the padding's adjoint folds the border
    gradients back onto the replicated source elements.
    """
    ct = compute_dtype(x)
    xp = F.pad(x.to(ct).permute(0, 4, 1, 2, 3).contiguous(), (1, 1, 1, 1, 1, 0), mode="replicate")
    go = grad_out.to(ct).permute(0, 4, 1, 2, 3).contiguous()
    wf = weight.to(ct)
    dxp, dw, db = torch.ops.aten.convolution_backward(
        go, xp, wf, [wf.shape[0]], [stride_t, 1, 1], [0, 0, 0], [1, 1, 1], False, [0, 0, 0], 1, [True, True, True]
    )
    dx = _fold_replicate(dxp).permute(0, 2, 3, 4, 1).contiguous()
    return dx.to(x.dtype), dw.to(weight.dtype), db.to(weight.dtype)
