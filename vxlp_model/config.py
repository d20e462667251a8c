"""``VideoXLProConfig``: the HF configuration of the whole Video-XL-Pro model (SPEC §1–5; RELEASED.md).

Only the architecture and the inference defaults live here. Training-only settings (SGM masking ratio, the keep
ratio range drawn in training, loss weights) are arguments of the training code (:mod:`vxlp_model.train`), and
prompt settings (time text format, system prompt, pixel preprocessing) belong to the processor
(:class:`vxlp_model.VideoXLProProcessor`). Nothing in the model caches a config value: every call reads the
config (or its own call arguments) afresh.

Presets: :meth:`VideoXLProConfig.real` (the released Video-XL-Pro-3B geometry: SigLIP so400m-patch14-384 with its
last layer removed, 26 layers, + Qwen2.5-3B) and :meth:`VideoXLProConfig.tiny` (a small model for tests and the
CPU demo).
"""

from __future__ import annotations

from typing import Literal

from transformers import PreTrainedConfig, Qwen2Config, SiglipVisionConfig
from transformers.configuration_utils import SubConfigSpec

TOKEN_LAYOUTS = ("frame_major", "released")
SELECTOR_IMPLS = ("vxlp", "released_v2", "released_v1", "none")
SELECTOR_MODES = ("off", "ratio", "budget")

# Keys only the first (pre-issue-6) layout wrote into config.json; their presence marks a legacy config.
LEGACY_CONFIG_KEYS = (
    "sgm_mask_ratio",
    "sgm_pool",
    "sgm_score_loss_weight",
    "selector_ratio_min",
    "selector_ratio_max",
    "selector_distill_weight",
    "selector_distill_temperature",
    "image_mean",
    "image_std",
    "system_prompt",
    "time_format",
)


class VideoXLProConfig(PreTrainedConfig):
    """Configuration of :class:`vxlp_model.VideoXLProForConditionalGeneration`.

    Sub-configs: ``vision_config`` (``SiglipVisionConfig``) and ``text_config`` (``Qwen2Config``).

    Vision (SPEC §1, RELEASED.md §2): the tower runs all ``vision_config.num_hidden_layers`` SigLIP layers; the
    features are the output of the last one, before any post-layernorm (the released tower is so400m with its
    27th layer removed: 26 layers). The vision grid (``image_size // patch_size``, 27) is bilinearly resized in
    float32 to ``dts_grid`` (24).

    DTS (SPEC §2): ``frames_per_group`` (4) frames → 1 frame's worth of tokens; ``dts_norm_groups`` (32),
    ``dts_norm_eps`` (1e-6); ``dts_max_relative_position`` (64: tables of 129 rows); ``token_layout``:
    ``"frame_major"`` (clean default) or ``"released"`` (the released ``view(G, C, 4, 24, 24)`` layout, where the
    DTS time axis is ``channel mod 4``); ``transposed_rel_k`` (the released transposed key term).

    ReCoT (SPEC §3): ``recot_decoder_layers`` spatial+temporal block pairs in the reconstruction decoder; 0 builds
    neither the decoder nor the SGM queries (an inference-only model, e.g. a converted released checkpoint).
    ``sgm_num_temp_queries`` / ``sgm_num_spatial_queries`` (2 each).

    Projector and pooling: ``pool_size`` (2: 2×2 average pool, 24×24 → 12×12 = 144 tokens per group).

    Selector (SPEC §4, RELEASED.md §4): ``selector_impl``:

    - ``"vxlp"``: our design — window attention of each group's visual tokens over its time tokens (with a
      residual), the query is the user's text only (never the answer), no rotary embedding on the inputs;
    - ``"released_v2"``: the released Video-XL-Pro-3B selector (WindowTimeToTokenAttention, text query from every
      prompt token outside the video block, RoPE on the video block's embeddings, score injection after RoPE,
      ``k = int(N·r)`` rounded down to a multiple of 16);
    - ``"released_v1"``: the paper-era selector (score on the visual tokens themselves, RoPE on them, budget);
    - ``"none"``: no selector at all (Video-XL-2): every visual token reaches the LLM.

    Inference defaults, each overridable per call: ``selector_mode`` (``off`` | ``ratio`` | ``budget``),
    ``selector_budget`` (budget mode, a multiple of 16: for ``vxlp`` every token of the video block that reaches the
    LLM — visual tokens and the time text of their groups —, for the released implementations the visual tokens),
    ``selector_keep_ratio`` (keep ratio in ratio mode). ``selector_num_heads`` (4) heads of the selector's window attention.

    Compression inside the LLM (SPEC §8; :mod:`vxlp_model.llm_compression`), composable with the DTS and with
    each other: ``llm_compression`` (``"none"`` | ``"vst"``: Video-XL's visual summarization tokens, windows of
    ``vst_window_groups`` groups, one summary token per ``vst_ratio`` raw tokens (1 = none), per window by content
    change if ``vst_dynamic_ratio`` | ``"lp_comp"``: XComp's layer-wise shrinking of each group's tokens down to
    ``lp_comp_final_tokens`` at the last layer) and ``frame_selection`` (``"selector"``: the ``selector_impl``
    above, today's behaviour | ``"none"``: every group | ``"qc_comp"``: XComp's question-conditioned group choice
    from the LLM's attention over segments of ``qc_segment_groups`` groups, within the selector's mode / budget /
    ratio). ``llm_compression = "vst"`` adds ``summary_embed_tokens`` and per-layer ``summary_{q,k,v,o}_proj``.

    Prompt splice: ``video_token_id`` (151654 ``<|vision_pad|>``: the visual placeholder). Encoding:
    ``chunk_frames`` frames go through vision + DTS at a time (a multiple of ``frames_per_group``).
    """

    model_type = "video_xl_pro"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=SiglipVisionConfig),
        "text_config": SubConfigSpec(config_class=Qwen2Config),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    frames_per_group: int = 4
    dts_grid: int = 24
    dts_norm_groups: int = 32
    dts_norm_eps: float = 1e-6
    dts_max_relative_position: int = 64
    token_layout: Literal["frame_major", "released"] = "frame_major"
    transposed_rel_k: bool = False
    recot_decoder_layers: int = 4
    sgm_num_temp_queries: int = 2
    sgm_num_spatial_queries: int = 2
    pool_size: int = 2
    selector_impl: Literal["vxlp", "released_v2", "released_v1", "none"] = "vxlp"
    selector_mode: Literal["off", "ratio", "budget"] = "budget"
    selector_budget: int = 9600
    selector_keep_ratio: float = 0.85
    selector_num_heads: int = 4
    video_token_id: int = 151654
    chunk_frames: int = 64
    llm_compression: Literal["none", "vst", "lp_comp"] = "none"
    frame_selection: Literal["none", "selector", "qc_comp"] = "selector"
    vst_window_groups: int = 10
    vst_ratio: int = 8
    vst_dynamic_ratio: bool = False
    lp_comp_final_tokens: int = 1
    qc_segment_groups: int = 8
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        legacy = {k: kwargs.pop(k) for k in list(kwargs) if k in LEGACY_CONFIG_KEYS}
        legacy_feature_layer = kwargs.pop("vision_feature_layer", None)
        super().__post_init__(**kwargs)
        if legacy:
            self._migrate_legacy(legacy_feature_layer)
        elif legacy_feature_layer not in (None, -1):
            raise ValueError(
                "vision_feature_layer is not a setting of this layout: the features are the last SigLIP layer's "
                f"output; build vision_config with the layers you need (got vision_feature_layer={legacy_feature_layer})"
            )
        self.tie_word_embeddings = bool(self.text_config.tie_word_embeddings)
        self.validate_vxlp()

    def _migrate_legacy(self, feature_layer: int | None) -> None:
        """Read a config written by the first vxlp layout (see :mod:`vxlp_model.legacy`).

        That layout built all ``num_hidden_layers`` SigLIP layers and took ``hidden_states[vision_feature_layer]``
        (always -2); the new tower stops at the feature layer, so the layer count drops accordingly. Its
        training-only keys are dropped here.
        """
        if feature_layer is not None:
            n = self.vision_config.num_hidden_layers
            keep = n + 1 + feature_layer if feature_layer < 0 else feature_layer
            if not 1 <= keep <= n:
                raise ValueError(f"legacy vision_feature_layer {feature_layer} is out of range for {n} SigLIP layers")
            self.vision_config.num_hidden_layers = keep

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

    @property
    def has_recot(self) -> bool:
        """Whether the ReCoT decoder and the SGM queries are built (``recot_decoder_layers > 0``)."""
        return self.recot_decoder_layers > 0

    def validate_vxlp(self) -> None:
        """Raise ``ValueError`` naming the field for inconsistent settings."""
        c = self.dts_channels
        if self.token_layout not in TOKEN_LAYOUTS:
            raise ValueError(f"token_layout must be one of {TOKEN_LAYOUTS}, got {self.token_layout!r}")
        if self.selector_impl not in SELECTOR_IMPLS:
            raise ValueError(f"selector_impl must be one of {SELECTOR_IMPLS}, got {self.selector_impl!r}")
        validate_selector_args(self.selector_mode, self.selector_budget, self.selector_keep_ratio)
        from .llm_compression import validate_compression_args

        validate_compression_args(
            self.llm_compression, self.frame_selection, self.vst_ratio, self.vst_window_groups, self.lp_comp_final_tokens, self.qc_segment_groups
        )
        if self.frames_per_group < 1:
            raise ValueError(f"frames_per_group must be >= 1, got {self.frames_per_group}")
        if c % self.dts_norm_groups:
            raise ValueError(f"dts_norm_groups ({self.dts_norm_groups}) must divide the vision hidden size {c}")
        if self.token_layout == "released" and c % self.frames_per_group:
            raise ValueError(f"token_layout='released' needs frames_per_group to divide the hidden size {c}")
        if self.dts_grid < 1 or self.pool_size < 1 or self.dts_grid % self.pool_size:
            raise ValueError(f"pool_size ({self.pool_size}) must divide dts_grid ({self.dts_grid})")
        if self.chunk_frames < self.frames_per_group or self.chunk_frames % self.frames_per_group:
            raise ValueError(
                f"chunk_frames ({self.chunk_frames}) must be a positive multiple of frames_per_group ({self.frames_per_group})"
            )
        if self.recot_decoder_layers < 0:
            raise ValueError(f"recot_decoder_layers must be >= 0, got {self.recot_decoder_layers}")
        if self.hidden_size % self.selector_num_heads:
            raise ValueError(f"selector_num_heads ({self.selector_num_heads}) must divide hidden size {self.hidden_size}")
        if self.vision_config.num_hidden_layers < 1:
            raise ValueError("vision_config.num_hidden_layers must be >= 1")

    # ------------------------------------------------------------------ presets
    @classmethod
    def real(cls, **overrides) -> "VideoXLProConfig":
        """The released Video-XL-Pro-3B geometry: so400m-patch14-384 with 26 layers + Qwen2.5-3B (RELEASED.md §2)."""
        vision = SiglipVisionConfig(
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=26,
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
            pad_token_id=151643,
        )
        return cls(vision_config=vision, text_config=text, **overrides)

    @classmethod
    def tiny(cls, vocab_size: int = 512, **overrides) -> "VideoXLProConfig":
        """A small model with the real model's structure, for tests and the CPU demo.

        32×32 frames, patch 4 → 8×8 vision grid resized to 6×6, DTS width 64, 2×2 pool → 9 tokens per group,
        one SigLIP layer, a 2-layer LLM of width 128. ``vocab_size`` must cover the tokenizer used with it.
        """
        vision = SiglipVisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
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


def validate_selector_args(mode, budget, keep_ratio) -> None:
    """Check selector call arguments; raises ``ValueError`` naming the argument."""
    if mode not in SELECTOR_MODES:
        raise ValueError(f"selector_mode must be one of {SELECTOR_MODES}, got {mode!r}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 16 or budget % 16:
        raise ValueError(f"selector_budget must be a positive multiple of 16, got {budget!r}")
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not 0.0 < float(keep_ratio) <= 1.0:
        raise ValueError(f"selector_keep_ratio must be in (0, 1], got {keep_ratio!r}")
