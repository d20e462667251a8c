"""``VideoXLProConfig``: the HF configuration of the whole Video-XL-Pro model (SPEC §1–5).

Two presets: :func:`VideoXLProConfig.real` (SigLIP so400m-patch14-384 + Qwen2.5-3B shapes, the released
model's) and :func:`VideoXLProConfig.tiny` (a few-hundred-thousand-parameter model for tests and the demo).
"""

from __future__ import annotations

from typing import Literal

from transformers import PreTrainedConfig, Qwen2Config, SiglipVisionConfig
from transformers.configuration_utils import SubConfigSpec

TOKEN_LAYOUTS = ("frame_major", "released")
SELECTOR_MODES = ("off", "ratio", "budget")


class VideoXLProConfig(PreTrainedConfig):
    """Configuration of :class:`vxlp_model.VideoXLProForCausalLM`.

    Sub-configs: ``vision_config`` (``SiglipVisionConfig``) and ``text_config`` (``Qwen2Config``).

    Vision (SPEC §1): ``vision_feature_layer`` (-2: penultimate layer, no post-layernorm); the vision grid
    (``image_size // patch_size``, 27 for so400m-384) is bilinearly resized in float32 to ``dts_grid`` (24).

    DTS (SPEC §2): ``frames_per_group`` (4) frames → 1 frame's worth of tokens; ``dts_norm_groups`` (32) GroupNorm
    groups, ``dts_norm_eps`` (1e-6); ``dts_max_relative_position`` (64: tables of 129 rows); ``token_layout``:
    ``"frame_major"`` (clean default) or ``"released"`` (the released checkpoint's ``view(G, C, 4, 24, 24)``
    layout, where the DTS time axis is ``channel mod 4``); ``transposed_rel_k`` (the released checkpoint's
    transposed key term).

    ReCoT (SPEC §3): ``recot_decoder_layers`` (spatial+temporal block pairs in the decoder), ``sgm_mask_ratio``
    (ρ, 0.5), ``sgm_pool`` (0.75), ``sgm_num_temp_queries`` / ``sgm_num_spatial_queries`` (2 each),
    ``sgm_score_loss_weight`` (weight of the auxiliary loss that teaches the SGM queries, our design).

    Projector and pooling: ``pool_size`` (2: 2×2 average pool, 24×24 → 12×12 = 144 tokens per group).

    Selector (SPEC §4): ``selector_mode`` (``off`` | ``ratio`` | ``budget``), ``selector_budget`` (visual tokens
    kept at inference in budget mode, a multiple of 16), ``selector_ratio_min`` / ``selector_ratio_max`` (keep
    ratio drawn uniformly in training; the midpoint in eval mode), ``selector_num_heads`` (4),
    ``selector_distill_weight`` (0 = the released training; > 0 adds our relevance-distillation loss, see
    ``VideoXLProForCausalLM._selector_distill_loss``; needs eager LLM attention), ``selector_distill_temperature``.

    Prompt (SPEC §5): ``video_token_id`` (151654 ``<|vision_pad|>``), ``time_format`` (``"Time {t:06.1f}s:"``),
    ``system_prompt``. Streaming: ``chunk_frames`` frames go through vision + DTS at a time (multiple of
    ``frames_per_group``).
    """

    model_type = "video_xl_pro"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=SiglipVisionConfig),
        "text_config": SubConfigSpec(config_class=Qwen2Config),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    vision_feature_layer: int = -2
    frames_per_group: int = 4
    dts_grid: int = 24
    dts_norm_groups: int = 32
    dts_norm_eps: float = 1e-6
    dts_max_relative_position: int = 64
    token_layout: Literal["frame_major", "released"] = "frame_major"
    transposed_rel_k: bool = False
    recot_decoder_layers: int = 4
    sgm_mask_ratio: float = 0.5
    sgm_pool: float = 0.75
    sgm_num_temp_queries: int = 2
    sgm_num_spatial_queries: int = 2
    sgm_score_loss_weight: float = 0.1
    pool_size: int = 2
    selector_mode: Literal["off", "ratio", "budget"] = "budget"
    selector_budget: int = 9600
    selector_ratio_min: float = 0.70
    selector_ratio_max: float = 0.95
    selector_num_heads: int = 4
    selector_distill_weight: float = 0.0
    selector_distill_temperature: float = 10.0
    video_token_id: int = 151654
    time_format: str = "Time {t:06.1f}s:"
    system_prompt: str = "You are a helpful assistant."
    chunk_frames: int = 64
    image_mean: float = 0.5
    image_std: float = 0.5
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.tie_word_embeddings = bool(self.text_config.tie_word_embeddings)
        self.validate_vxlp()

    # ------------------------------------------------------------------ derived sizes
    @property
    def vision_grid(self) -> int:
        """Side of the vision encoder's token grid (27 for so400m-patch14-384)."""
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def dts_channels(self) -> int:
        """DTS width C = the vision hidden size (1152)."""
        return self.vision_config.hidden_size

    @property
    def tokens_per_frame(self) -> int:
        """Tokens per frame entering the DTS, ``dts_grid²`` (576)."""
        return self.dts_grid**2

    @property
    def pooled_grid(self) -> int:
        return self.dts_grid // self.pool_size

    @property
    def tokens_per_group(self) -> int:
        """Visual tokens per group of ``frames_per_group`` frames reaching the LLM (144)."""
        return self.pooled_grid**2

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    def validate_vxlp(self) -> None:
        """Raise ``ValueError`` naming the field for inconsistent settings."""
        c = self.dts_channels
        if self.token_layout not in TOKEN_LAYOUTS:
            raise ValueError(f"token_layout must be one of {TOKEN_LAYOUTS}, got {self.token_layout!r}")
        if self.selector_mode not in SELECTOR_MODES:
            raise ValueError(f"selector_mode must be one of {SELECTOR_MODES}, got {self.selector_mode!r}")
        if self.frames_per_group < 1:
            raise ValueError(f"frames_per_group must be >= 1, got {self.frames_per_group}")
        if c % self.dts_norm_groups:
            raise ValueError(f"dts_norm_groups ({self.dts_norm_groups}) must divide the vision hidden size {c}")
        if self.token_layout == "released" and c % self.frames_per_group:
            raise ValueError(f"token_layout='released' needs frames_per_group to divide the hidden size {c}")
        if self.dts_grid % self.pool_size:
            raise ValueError(f"pool_size ({self.pool_size}) must divide dts_grid ({self.dts_grid})")
        if self.chunk_frames < self.frames_per_group or self.chunk_frames % self.frames_per_group:
            raise ValueError(
                f"chunk_frames ({self.chunk_frames}) must be a positive multiple of frames_per_group ({self.frames_per_group})"
            )
        if self.selector_budget < 16 or self.selector_budget % 16:
            raise ValueError(f"selector_budget must be a positive multiple of 16, got {self.selector_budget}")
        if not 0.0 < self.selector_ratio_min <= self.selector_ratio_max <= 1.0:
            raise ValueError(
                "selector_ratio_min and selector_ratio_max must satisfy 0 < min <= max <= 1, got "
                f"{self.selector_ratio_min}, {self.selector_ratio_max}"
            )
        if not 0.0 <= self.sgm_mask_ratio <= self.sgm_pool <= 1.0:
            raise ValueError(f"need 0 <= sgm_mask_ratio <= sgm_pool <= 1, got {self.sgm_mask_ratio}, {self.sgm_pool}")
        if self.hidden_size % self.selector_num_heads:
            raise ValueError(f"selector_num_heads ({self.selector_num_heads}) must divide hidden size {self.hidden_size}")
        self.time_format.format(t=0.0)  # raises on a malformed format

    # ------------------------------------------------------------------ presets
    @classmethod
    def real(cls, **overrides) -> "VideoXLProConfig":
        """SigLIP so400m-patch14-384 + Qwen2.5-3B-Instruct shapes (SPEC §1, §5)."""
        vision = SiglipVisionConfig(
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=27,
            num_attention_heads=16,
            image_size=384,
            patch_size=14,
            hidden_act="gelu_pytorch_tanh",
            layer_norm_eps=1e-6,
        )
        text = Qwen2Config(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            bos_token_id=151643,
            eos_token_id=151645,
        )
        return cls(vision_config=vision, text_config=text, **overrides)

    @classmethod
    def tiny(cls, vocab_size: int = 512, **overrides) -> "VideoXLProConfig":
        """A small model with the real model's structure, for tests and the CPU demo.

        32×32 frames, patch 4 → 8×8 vision grid resized to 6×6, DTS width 64, 2×2 pool → 9 tokens per group,
        a 2-layer LLM of width 128. ``vocab_size`` must cover the tokenizer used with it.
        """
        vision = SiglipVisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=4,
            hidden_act="gelu_pytorch_tanh",
            layer_norm_eps=1e-6,
        )
        text = Qwen2Config(
            vocab_size=vocab_size,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
        )
        defaults = dict(
            dts_grid=6,
            dts_norm_groups=8,
            dts_max_relative_position=4,
            recot_decoder_layers=1,
            selector_budget=256,
            chunk_frames=256,
        )
        defaults.update(overrides)
        return cls(vision_config=vision, text_config=text, **defaults)
