"""The `vbench` hook: VBench (github.com/Vchitect/VBench) in custom-input mode, in its own environment.

Setup, once, on a machine with the weights (VBench downloads them to its cache the first time; copy that folder to
offline machines):
    python -m venv /envs/vbench && /envs/vbench/bin/pip install vbench     # plus detectron2 for some dimensions
    eval.hooks=[vbench] +eval.hook_settings.vbench.python=/envs/vbench/bin/python \\
        +eval.hook_settings.vbench.cache_dir=/models/vbench_cache

Settings (eval.hook_settings.vbench): python (required), cache_dir (VBENCH_CACHE_DIR, default ~/.cache/vbench),
dimensions (default: the custom-input quality dimensions), device (default cuda if available there), and
missing_weights: "skip_dimension" (run the dimensions whose weights are present, name the others) or "skip".
Dimensions whose weights are missing are never started: VBench would try to download them (wget, git clone).
temporal_flickering needs no weights.

Scores: {dimension: VBench's mean score}, per video {dimension: score}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from train.eval.hooks import HookResult, HookSkipped, SubprocessHook, register_hook

#: dimensions VBench evaluates in custom-input mode (any prompt); the others need its own prompt suite
CUSTOM_DIMENSIONS = (
    "subject_consistency",
    "background_consistency",
    "motion_smoothness",
    "dynamic_degree",
    "aesthetic_quality",
    "imaging_quality",
    "temporal_flickering",
    "overall_consistency",
    "temporal_style",
    "human_action",
)
DEFAULT_DIMENSIONS = CUSTOM_DIMENSIONS[:7]  # VBench's "quality" dimensions
#: files each dimension loads from the cache folder (vbench/utils.py init_submodules with local=True)
WEIGHTS = {
    "subject_consistency": ("dino_model/facebookresearch_dino_main", "dino_model/dino_vitbase16_pretrain.pth"),
    "background_consistency": ("clip_model/ViT-B-32.pt",),
    "motion_smoothness": ("amt_model/amt-s.pth",),
    "dynamic_degree": ("raft_model/models/raft-things.pth",),
    "aesthetic_quality": ("clip_model/ViT-L-14.pt", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"),
    "imaging_quality": ("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",),
    "temporal_flickering": (),
    "overall_consistency": ("ViCLIP/ViClip-InternVid-10M-FLT.pth", "ViCLIP/bpe_simple_vocab_16e6.txt.gz"),
    "temporal_style": ("ViCLIP/ViClip-InternVid-10M-FLT.pth", "ViCLIP/bpe_simple_vocab_16e6.txt.gz"),
    "human_action": ("umt_model/l16_ptk710_ftk710_ftk400_f16_res224.pth",),
}


def missing_weights(cache_dir: Path, dimension: str) -> list[str]:
    return [rel for rel in WEIGHTS[dimension] if not (cache_dir / rel).exists()]


@register_hook
class VBenchHook(SubprocessHook):
    name = "vbench"
    tool = "VBench"
    runner = "vbench_runner.py"
    defaults: ClassVar[dict[str, Any]] = {
        "cache_dir": "~/.cache/vbench",
        "dimensions": list(DEFAULT_DIMENSIONS),
        "device": None,
        "missing_weights": "skip_dimension",
    }

    def preflight(self) -> dict[str, Any]:
        dims = list(self.settings["dimensions"] or [])
        bad = [d for d in dims if d not in CUSTOM_DIMENSIONS]
        if bad:
            raise ValueError(
                f"eval.hook_settings.vbench.dimensions: {bad} are not available in VBench's custom-input mode; "
                f"choose from {list(CUSTOM_DIMENSIONS)}"
            )
        if not dims:
            raise ValueError("eval.hook_settings.vbench.dimensions is empty")
        if self.settings["missing_weights"] not in ("skip_dimension", "skip"):
            raise ValueError("eval.hook_settings.vbench.missing_weights must be 'skip_dimension' or 'skip'")
        cache = Path(str(self.settings["cache_dir"])).expanduser()
        missing = {d: missing_weights(cache, d) for d in dims}
        missing = {d: m for d, m in missing.items() if m}
        self._skipped = missing
        if missing and (self.settings["missing_weights"] == "skip" or len(missing) == len(dims)):
            detail = "; ".join(f"{d}: {', '.join(m)}" for d, m in missing.items())
            raise HookSkipped(
                f"VBench weights missing under cache_dir={cache} (eval.hook_settings.vbench.cache_dir) for {detail}"
            )
        return {
            "dimensions": [d for d in dims if d not in missing],
            "cache_dir": str(cache),
            "device": self.settings["device"],
        }

    def run(self, videos, out_dir: Path) -> HookResult:
        result = super().run(videos, out_dir)
        skipped = getattr(self, "_skipped", {})
        if skipped and result.status == "ok":
            note = "skipped dimensions without weights: " + "; ".join(
                f"{d} ({', '.join(m)})" for d, m in skipped.items()
            )
            result.message = f"{result.message}; {note}" if result.message else note
        return result
