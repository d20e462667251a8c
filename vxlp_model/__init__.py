"""vxlp_model: a trainable Video-XL-Pro (SigLIP → DTS → projector → pool → Query-aware Selector → Qwen2.5).

See SPEC §1–7 and RELEASED.md. Public entry points: :class:`VideoXLProConfig`,
:class:`VideoXLProForConditionalGeneration` (and the backbone :class:`VideoXLProModel`),
:class:`VideoXLProProcessor` with :class:`VideoXLProVideoProcessor`, :func:`convert_released`,
:func:`read_video` / :func:`iter_video`. Importing the package registers the model type ``video_xl_pro`` with
transformers' Auto classes (``AutoConfig``, ``AutoModel``, ``AutoModelForImageTextToText``,
``AutoModelForCausalLM``, ``AutoProcessor``, ``AutoVideoProcessor``).
"""

from .config import VideoXLProConfig
from .convert import ConversionError, convert_released
from .modeling import (
    VideoXLProForCausalLM,
    VideoXLProForConditionalGeneration,
    VideoXLProModel,
    VideoXLProPreTrainedModel,
)
from .processing import VideoXLProProcessor, VideoXLProVideoProcessor, build_tiny_tokenizer, conversation
from .video import VideoDecodeError, iter_video, probe_video, read_video


def _register_auto_classes() -> None:
    import transformers

    def video_processor_register(*args, **kwargs):
        return transformers.AutoVideoProcessor.register(*args, **kwargs)

    registrations = (
        (transformers.AutoConfig.register, (VideoXLProConfig.model_type, VideoXLProConfig)),
        (transformers.AutoModel.register, (VideoXLProConfig, VideoXLProModel)),
        (transformers.AutoModelForImageTextToText.register, (VideoXLProConfig, VideoXLProForConditionalGeneration)),
        (transformers.AutoModelForCausalLM.register, (VideoXLProConfig, VideoXLProForConditionalGeneration)),
        (transformers.AutoProcessor.register, (VideoXLProConfig, VideoXLProProcessor)),
        (video_processor_register, (VideoXLProConfig, VideoXLProVideoProcessor)),
    )
    for register, args in registrations:
        try:
            register(*args, exist_ok=True)
        except ImportError:
            # AutoVideoProcessor needs torchvision; vxlp's processor loads its video processor itself, so it is
            # registered only where torchvision is installed.
            pass


_register_auto_classes()

__all__ = [
    "VideoXLProConfig",
    "VideoXLProModel",
    "VideoXLProForConditionalGeneration",
    "VideoXLProForCausalLM",
    "VideoXLProPreTrainedModel",
    "VideoXLProProcessor",
    "VideoXLProVideoProcessor",
    "conversation",
    "convert_released",
    "ConversionError",
    "build_tiny_tokenizer",
    "read_video",
    "iter_video",
    "probe_video",
    "VideoDecodeError",
]
