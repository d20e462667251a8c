import torch


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other floating dtype computes in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def vjp(fn, inputs, grad_outputs):
    """Vector-Jacobian product of ``fn(*inputs)`` by recomputation under autograd.

    ``inputs``: tensors (or None / non-tensors, passed through and given a None gradient);
    ``grad_outputs``: one gradient per tensor output of ``fn`` (None = zero). Returns one gradient per input,
    zeros where an input does not influence the outputs, None for non-tensors.
    """
    with torch.enable_grad():
        leaves = [
            x.detach().requires_grad_(True) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
            for x in inputs
        ]
        outs = fn(*leaves)
        if isinstance(outs, torch.Tensor):
            outs = (outs,)
        pairs = [
            (o, g)
            for o, g in zip(outs, grad_outputs)
            if g is not None and isinstance(o, torch.Tensor) and o.requires_grad
        ]
        diff = [x for x in leaves if isinstance(x, torch.Tensor) and x.requires_grad]
        grads = (
            torch.autograd.grad([o for o, _ in pairs], diff, [g for _, g in pairs], allow_unused=True)
            if pairs and diff
            else [None] * len(diff)
        )
    it = iter(grads)
    result = []
    for x in leaves:
        if isinstance(x, torch.Tensor) and x.requires_grad:
            g = next(it)
            result.append(torch.zeros_like(x) if g is None else g)
        else:
            result.append(None)
    return result
