"""Triton backend of vxlp_ops: importing it registers a ``triton`` implementation of each op with
:mod:`vxlp_ops.dispatch` (forward, backward and ``reasons``).

Runs on CUDA devices of compute capability ≥ 8.0, and on CPU tensors only through the Triton interpreter when
explicitly asked (``TRITON_INTERPRET=1`` set before import and the backend forced). float64 is refused.
Kernels use plain pointer arithmetic + masks and only APIs present in Triton 3.6 and 3.7.
"""

from . import frame_attention  # noqa: F401
from . import temporal_attention  # noqa: F401
from . import temporal_merge_conv3d  # noqa: F401
from . import sgm  # noqa: F401
from . import query_topk_gather  # noqa: F401
from . import dts_block  # noqa: F401
