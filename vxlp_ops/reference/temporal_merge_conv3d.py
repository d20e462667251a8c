import torch
import torch.nn.functional as F

from ._vjp import compute_dtype


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
