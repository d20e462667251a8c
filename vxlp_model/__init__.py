"""vxlp_model: a trainable Video-XL-Pro (SigLIP → DTS → projector → pool → Query-aware Selector → Qwen2.5).

See SPEC §1–7. Public entry points: :class:`VideoXLProConfig`, :class:`VideoXLProForCausalLM`,
:class:`VideoXLProProcessor`, :func:`read_video` / :func:`iter_video`.
"""

from .config import VideoXLProConfig
from .modeling import VideoXLProForCausalLM, VideoXLProPreTrainedModel
from .prompt import VideoXLProProcessor, build_tiny_tokenizer
from .video import VideoDecodeError, iter_video, probe_video, read_video


def _register_auto_classes() -> None:
    """Make ``AutoConfig`` / ``AutoModelForCausalLM`` / ``AutoTokenizer`` resolve ``model_type="video_xl_pro"``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        AutoConfig.register(VideoXLProConfig.model_type, VideoXLProConfig)
        AutoModelForCausalLM.register(VideoXLProConfig, VideoXLProForCausalLM)
    except ValueError:  # already registered (module reloaded)
        pass


_register_auto_classes()

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
