"""vxlp_ops: drop-in torch ops for Video-XL-Pro's token compression (the contract is OPS.md).

Six ops, each importable as ``vxlp_ops.<name>`` and registered as ``torch.ops.vxlp_ops.<name>`` with a schema,
a fake (meta) kernel and, where marked, autograd; all ``torch.compile(fullgraph=True)``-safe:

- :func:`frame_attention` — per-frame single-head attention (DTS spatial attention)
- :func:`temporal_attention` — attention along time with relative positions (DTS temporal attention)
- :func:`temporal_merge_conv3d` — replicate-padded 3×3×3 conv with time stride 2 (DTS merge)
- :func:`sgm_scores`, :func:`sgm_mask` — Semantic-Guided Masking (ReCoT pre-training)
- :func:`query_topk_gather` — Query-aware Selector scoring + top-k + gather

Fused, inference-only forms of whole DTS blocks (GroupNorm + projections + attention + residual):
:func:`dts_spatial_block`, :func:`dts_temporal_block` (:mod:`vxlp_ops.dts_block`).

Backends: ``cuda`` (compiled kernels), ``triton``, ``reference`` (eager PyTorch, any device), chosen per call
in that order (:mod:`vxlp_ops.dispatch`; per-op orders: ``dispatch.set_priority`` or the measured
``dispatch.tune``); ``VXLP_BACKEND`` forces one. Optional: ``xformers`` for ``frame_attention`` where installed,
never chosen unless an op's order puts it first. ``python -m vxlp_ops.info`` explains which backends are usable
here and why not. Importing never fails because a backend is missing.
"""

from . import _ext, dispatch
from .dispatch import NoBackendError, set_backend, use_backend
from .dts_block import dts_spatial_block, dts_temporal_block
from .frame_attention import frame_attention, frame_attention_fwd
from .query_topk_gather import query_topk_gather
from .sgm_mask import sgm_mask
from .sgm_scores import sgm_scores
from .temporal_attention import temporal_attention
from .temporal_merge_conv3d import temporal_merge_conv3d
from . import _backends

__version__ = "0.1.0"

__all__ = [
    "frame_attention",
    "temporal_attention",
    "temporal_merge_conv3d",
    "sgm_scores",
    "sgm_mask",
    "query_topk_gather",
    "dts_spatial_block",
    "dts_temporal_block",
    "frame_attention_fwd",
    "dispatch",
    "set_backend",
    "use_backend",
    "NoBackendError",
]
