"""What each model family is, as data: one frozen `FamilySpec` per family, registered by name.

The ground floor of the library (it imports nothing of ours and nothing heavy): every layer that used to keep its own
table keyed by family name (latent geometry, attention sink, Hub id, guidance default, pipeline classes, text fields,
tiny sizes, image conditioning) reads it here. Behaviour stays in its layer: the transformer adapter in
`radial/models/<module>.py`, the VAE and text encoders in `data/encoders/<module>.py`, named by `module` and
`encoder_class` below. Adding a family: one `FamilySpec` entry, an adapter file, an encoder file and its configs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LatentGeometry:
    """VAE compression and transformer patch size of a family, and the clip it was trained on (its "1x")."""

    family: str
    temporal_factor: int
    spatial_factor: int
    latent_channels: int
    patch_t: int
    patch_hw: int
    base_frames: int
    base_height: int
    base_width: int
    fps: int
    # The VAE's frame rule: frames = k * temporal_factor + first_frames encode to k * chunk_latents + first_latents
    # latent frames. The causal VAEs (1, 1, 1): k*t+1 -> k+1; MiniMax-H3's chunked one (5, 5, 2): 17k+5 -> 5k+2.
    first_frames: int = 1
    chunk_latents: int = 1
    first_latents: int = 1

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a clip; the VAE needs frames = k * temporal_factor + first_frames (k*t+1 for most)."""
        t, first = self.temporal_factor, self.first_frames
        if frames < first or (frames - first) % t:
            lower = max(first, (frames - first) // t * t + first)
            raise ValueError(
                f"{self.family}: frames must be k*{t}+{first} (the VAE's rule), got {frames}; "
                f"nearest valid: {lower} or {lower + t}"
            )
        return ((frames - first) // t * self.chunk_latents + self.first_latents) // self.patch_t

    def pixel_frames(self, latent_frames: int) -> int:
        """Pixel frames that encode to `latent_frames` latent frames (ValueError where none do)."""
        k, rest = divmod(latent_frames * self.patch_t - self.first_latents, self.chunk_latents)
        if k < 0 or rest:
            raise ValueError(
                f"{self.family}: {latent_frames} latent frames is no k*{self.chunk_latents}+{self.first_latents}"
            )
        return k * self.temporal_factor + self.first_frames

    def scaled_frames(self, multiple: int) -> int:
        """Pixel frames of `multiple` x the base clip, the latent frames beyond the first chunk scaled (Wan 81 ->
        161 -> 321; MiniMax-H3 124 -> 243 -> 481)."""
        base = self.latent_frames(self.base_frames) * self.patch_t - self.first_latents
        return self.pixel_frames((multiple * base + self.first_latents) // self.patch_t)

    def longest_frames(self, frames: int) -> int:
        """The most valid pixel frames not above `frames` (0: none)."""
        if frames < self.first_frames:
            return 0
        return (frames - self.first_frames) // self.temporal_factor * self.temporal_factor + self.first_frames

    def tokens_per_frame(self, height: int, width: int) -> int:
        """Tokens per latent frame after the VAE and the transformer's spatial patchify."""
        step = self.spatial_factor * self.patch_hw
        if height % step or width % step or height <= 0 or width <= 0:
            raise ValueError(
                f"{self.family}: height and width must be positive multiples of {step}, got {height}x{width}"
            )
        return (height // step) * (width // step)


@dataclass(frozen=True)
class ImageEncoderSpec:
    """The image encoder of a family's image-to-video pipeline folder: transformers classes and subfolders."""

    encoder_class: str
    encoder_dir: str
    processor_class: str
    processor_dir: str
    layout: str  # the folder to name in errors


@dataclass(frozen=True)
class FamilySpec:
    """Everything about a model family that is data; `None` fields mean "the family has none" (no I2V, no pooled
    text), never "unknown"."""

    name: str
    title: str  # the model's own name, for messages
    module: str  # radial/models/<module>.py (the adapter) and data/encoders/<module>.py (the encoders)
    encoder_class: str  # the FamilyEncoders class in data/encoders/<module>.py
    geometry: LatentGeometry
    sink: bool  # the radial mask keeps key frame 0 dense (Wan's attention sink; not in HunyuanVideo's code)
    hub_repo: str  # the diffusers repository of the reference checkpoint (what to download for model=<name>)
    guidance_scale: float  # the pipeline's default guidance for train.generate
    pipeline_class: str  # the text-to-video diffusers pipeline (sampling, LoRA export)
    detect_pipelines: bool  # its pipeline classes name this family (False: told apart from the folder's contents)
    text_fields: tuple[str, ...]  # the text states its datasets hold (the encoders produce exactly these)
    configs: tuple[str, ...]  # configs/model/<name>.yaml that train it (model.family=<name> where they name another)
    tiny_text_dim: int  # text hidden size of the tiny text encoder = the tiny transformer's text dim
    # What a family may not have (the defaults: it has none).
    tiny_pooled_dim: int | None = None  # hidden size of the tiny pooled-text encoder (HunyuanVideo's CLIP)
    image_pipeline_class: str | None = None  # the image-to-video diffusers pipeline
    i2v_latents: tuple[int, ...] | None = None  # leading dims of an I2V dataset's image_latents (None: no I2V)
    i2v_fields: tuple[str, ...] = ()  # image fields its I2V datasets must hold besides image_latents
    image_encoder: ImageEncoderSpec | None = None  # the I2V folder's image encoder (None: the latents alone condition)
    tiny_image_dim: int | None = None  # hidden size of the tiny image encoder = the tiny I2V transformer's image dim
    comfy_radial_nodes: bool = False  # ComfyUI's radial-attention nodes (RadialAttn, WanVideoWrapper) run its models
    pipeline_text_masks: bool = True  # its pipelines take the text attention masks (prompt_attention_mask, ...)
    # Its pipelines' guidance_scale is the guidance distilled into the transformer; real classifier-free guidance is
    # true_cfg_scale, and the pipelines always take a negative prompt (HunyuanVideo).
    true_cfg: bool = False
    # Latent streams denoised together with the video (MiniMax-H3's sound track, "audio_latents"): its datasets hold
    # them, the trainer noises them at the video's noise level and adds their flow loss (train.step).
    joint_latents: tuple[str, ...] = ()


_WAN_GEOMETRY = dict(temporal_factor=4, spatial_factor=8, latent_channels=16, patch_t=1, patch_hw=2)
#: what the three Wan families share: adapter and encoder files, sink, pipelines, text states, tiny text size
_WAN_DIT = dict(
    module="wan",
    encoder_class="WanEncoders",
    sink=True,
    pipeline_class="WanPipeline",
    image_pipeline_class="WanImageToVideoPipeline",
    text_fields=("prompt_embeds",),
    tiny_text_dim=32,
    comfy_radial_nodes=True,
    pipeline_text_masks=False,
)

FAMILIES: dict[str, FamilySpec] = {
    s.name: s
    for s in (
        FamilySpec(
            name="wan",
            title="Wan2.1",
            geometry=LatentGeometry("wan", **_WAN_GEOMETRY, base_frames=81, base_height=480, base_width=832, fps=16),
            hub_repo="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
            guidance_scale=5.0,
            detect_pipelines=True,
            configs=("wan", "wan_full", "tiny_wan"),
            tiny_image_dim=24,
            i2v_latents=(20,),  # 4 mask + 16 first-frame latent channels
            i2v_fields=(),  # image_embeds (CLIP states) for Wan2.1 I2V-14B only
            image_encoder=ImageEncoderSpec(
                "CLIPVisionModel",
                "image_encoder",
                "CLIPImageProcessor",
                "image_processor",
                "a Wan2.1 I2V diffusers folder (Wan-AI/Wan2.1-I2V-14B-480P-Diffusers layout)",
            ),  # fmt: skip
            **_WAN_DIT,
        ),
        # Wan2.2 A14B keeps the Wan2.1 VAE; its two experts are WanPipeline's transformer and transformer_2.
        FamilySpec(
            name="wan22",
            title="Wan2.2 A14B",
            geometry=LatentGeometry("wan22", **_WAN_GEOMETRY, base_frames=81, base_height=480, base_width=832, fps=16),
            hub_repo="Wan-AI/Wan2.2-T2V-A14B-Diffusers",
            guidance_scale=4.0,
            detect_pipelines=False,
            configs=("wan22", "tiny_wan"),
            i2v_latents=(20,),
            **_WAN_DIT,
        ),
        # Wan2.2 TI2V-5B: its own 16x-spatial, 48-channel VAE; the first frame is a clean latent frame (no channels).
        FamilySpec(
            name="wan22_ti2v",
            title="Wan2.2 TI2V",
            geometry=LatentGeometry("wan22_ti2v", 4, 16, 48, 1, 2, 121, 704, 1280, 24),
            hub_repo="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
            guidance_scale=5.0,
            detect_pipelines=False,
            configs=("wan22", "tiny_wan"),
            i2v_latents=(48, 1),
            i2v_fields=("first_frame_mask",),
            **_WAN_DIT,
        ),
        FamilySpec(
            name="hunyuan",
            title="HunyuanVideo",
            module="hunyuan",
            encoder_class="HunyuanEncoders",
            geometry=LatentGeometry("hunyuan", 4, 8, 16, 1, 2, 129, 720, 1280, 24),
            sink=False,
            hub_repo="hunyuanvideo-community/HunyuanVideo",
            guidance_scale=6.0,
            pipeline_class="HunyuanVideoPipeline",
            detect_pipelines=True,
            text_fields=("prompt_embeds", "pooled_prompt_embeds"),
            configs=("hunyuan", "hunyuan_full", "tiny_hunyuan"),
            tiny_text_dim=32,
            tiny_pooled_dim=16,
            true_cfg=True,
        ),
        # HunyuanVideo-1.5: a 16x, 32-channel VAE and patch size 1 (480p x 121 frames at 1x).
        FamilySpec(
            name="hunyuan15",
            title="HunyuanVideo-1.5",
            module="hunyuan15",
            encoder_class="Hunyuan15Encoders",
            geometry=LatentGeometry("hunyuan15", 4, 16, 32, 1, 1, 121, 480, 848, 24),
            sink=False,
            # I2V: the I2V pipeline's docstring names hunyuanvideo-community/HunyuanVideo-1.5-480p_i2v (not verified)
            hub_repo="hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-480p_t2v",
            guidance_scale=6.0,
            pipeline_class="HunyuanVideo15Pipeline",
            image_pipeline_class="HunyuanVideo15ImageToVideoPipeline",
            detect_pipelines=True,
            text_fields=("prompt_embeds", "prompt_embeds_2"),  # Qwen2.5-VL states, ByT5 states of the quoted text
            configs=("hunyuan15", "hunyuan15_full", "tiny_hunyuan15"),
            tiny_text_dim=32,
            tiny_image_dim=16,
            i2v_latents=(33,),  # 32 first-frame latent channels + 1 mask channel
            i2v_fields=("image_embeds",),
            image_encoder=ImageEncoderSpec(
                "SiglipVisionModel",
                "image_encoder",
                "SiglipImageProcessor",
                "feature_extractor",
                "a HunyuanVideo-1.5 I2V diffusers folder (HunyuanVideo15ImageToVideoPipeline layout)",
            ),  # fmt: skip
        ),
        FamilySpec(
            name="mochi",
            title="Mochi-1",
            module="mochi",
            encoder_class="MochiEncoders",
            geometry=LatentGeometry("mochi", 6, 8, 12, 1, 2, 163, 480, 848, 30),
            sink=False,
            hub_repo="genmo/mochi-1-preview",
            guidance_scale=4.5,
            pipeline_class="MochiPipeline",
            detect_pipelines=True,
            text_fields=("prompt_embeds",),
            configs=("mochi", "mochi_full", "tiny_mochi"),
            tiny_text_dim=32,
        ),
        # MiniMax-H3 (T2VA): a chunked VAE (17 frames -> 5 latent frames, 16x spatial, 24 channels; 17k+5 frames ->
        # 5k+2 latent frames), 768x1344 x 124 frames (5 s at 24 fps) at 1x, the stereo sound track denoised jointly.
        FamilySpec(
            name="h3",
            title="MiniMax-H3",
            module="minimax_h3",
            encoder_class="MiniMaxH3Encoders",
            geometry=LatentGeometry(
                "h3", 17, 16, 24, 1, 2, 124, 768, 1344, 24, first_frames=5, chunk_latents=5, first_latents=2
            ),
            sink=False,
            hub_repo="MiniMaxAI/MiniMax-H3",
            guidance_scale=1.0,  # guidance-distilled: one forward per step, no guider
            pipeline_class="MiniMaxH3ModularPipeline",
            detect_pipelines=True,
            text_fields=("prompt_embeds",),  # Qwen3-VL hidden_states[50]
            configs=("h3", "h3_full", "tiny_h3"),
            tiny_text_dim=32,
            joint_latents=("audio_latents",),
        ),
    )
}


def family_spec(name: str) -> FamilySpec:
    """The spec of a family by name; a ValueError listing the known names for any other."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]


def geometry(family: str) -> LatentGeometry:
    """The latent geometry of a family by name, with a clear error for unknown names."""
    return family_spec(family).geometry


def pipeline_families() -> dict[str, str]:
    """diffusers pipeline class -> the family it names (families told apart by folder contents are left out)."""
    out: dict[str, str] = {}
    for spec in FAMILIES.values():
        if spec.detect_pipelines:
            for cls in (spec.pipeline_class, spec.image_pipeline_class):
                if cls is not None:
                    out[cls] = spec.name
    return out


#: the latent geometry of every family by name (kept for `radial.geometry`'s users)
GEOMETRY: dict[str, LatentGeometry] = {name: spec.geometry for name, spec in FAMILIES.items()}
