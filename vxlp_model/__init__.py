"""vxlp_model: a trainable Video-XL-Pro (SigLIP → DTS → projector → pool → Query-aware Selector → Qwen2.5).

See SPEC §1–7. Public entry points: :class:`VideoXLProConfig`, :class:`VideoXLProForCausalLM`,
:class:`VideoXLProProcessor`, :func:`read_video` / :func:`iter_video`.
"""

from .config import VideoXLProConfig
from .modeling import VideoXLProForCausalLM, VideoXLProPreTrainedModel
from .prompt import VideoXLProProcessor, build_tiny_tokenizer
from .video import VideoDecodeError, iter_video, probe_video, read_video

__all__ = [
    "VideoXLProConfig",
    "VideoXLProForCausalLM",
    "VideoXLProPreTrainedModel",
    "VideoXLProProcessor",
    "build_tiny_tokenizer",
    "read_video",
    "iter_video",
    "probe_video",
    "VideoDecodeError",
]
