"""`python -m radial.mask`: build a radial mask for a model and video size, print its numbers, draw it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from radial.errors import USER_ERRORS, cli_errors
from radial.families import GEOMETRY, geometry
from radial.mask.build import check_layout, radial_block_mask_numpy
from radial.mask.options import MaskOptions
from radial.mask.plot import frame_block_edges, save_mask_png
from radial.mask.stats import density_text, mask_stats


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m radial.mask",
        description="Radial Attention block mask: frames, tokens, density, ideal speed-up, and a picture.",
    )
    p.add_argument("--model", default="wan", choices=sorted(GEOMETRY), help="model family (VAE, patch size, sink)")
    size = p.add_argument_group("video size (pixels; converted as the family's VAE and patchify do)")
    size.add_argument("--frames", type=int, help="pixel frames, k*temporal_factor+1 (e.g. 81, 161, 321 for Wan)")
    size.add_argument("--height", type=int, help="pixel height")
    size.add_argument("--width", type=int, help="pixel width")
    latent = p.add_argument_group("or the latent layout directly")
    latent.add_argument("--latent-frames", type=int, help="latent frames after the VAE")
    latent.add_argument("--tokens-per-frame", type=int, help="tokens per latent frame after patchify")
    p.add_argument("--text-tokens", type=int, default=0, help="text tokens after the video tokens (joint attention)")
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--decay-factor", type=float, default=1.0)
    p.add_argument("--sink", action=argparse.BooleanOptionalAction, default=None, help="key frame 0 dense")
    p.add_argument("--decay-adjacent", action="store_true", help="narrow adjacent frame pairs too (sparser)")
    p.add_argument("--out", default="outputs/mask", help="output path stem: writes STEM.png (and STEM.npy)")
    p.add_argument("--npy", action="store_true", help="also write the mask as a .npy bool array")
    p.add_argument("--no-png", action="store_true", help="skip the picture")
    p.add_argument("--debug", action="store_true", help="full tracebacks for errors (also RADIAL_DEBUG=1)")
    return p


def _layout(args: argparse.Namespace) -> tuple[int, int]:
    geo = geometry(args.model)
    frames = args.latent_frames
    tpf = args.tokens_per_frame
    if frames is None:
        frames = geo.latent_frames(args.frames if args.frames is not None else geo.base_frames)
    if tpf is None:
        h = args.height if args.height is not None else geo.base_height
        w = args.width if args.width is not None else geo.base_width
        tpf = geo.tokens_per_frame(h, w)
    return frames, tpf


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The layout and option checks raise ValueError naming the option: one-line errors, exit 2.
    with cli_errors(args.debug, expected=(*USER_ERRORS, ValueError)):
        frames, tpf = _layout(args)
        check_layout(frames, tpf, args.text_tokens)
        opts = MaskOptions.create(
            block_size=args.block_size,
            decay_factor=args.decay_factor,
            model=args.model,
            sink=args.sink,
            decay_adjacent=args.decay_adjacent,
        )
    start = time.perf_counter()
    mask = radial_block_mask_numpy(frames, tpf, opts, args.text_tokens)
    elapsed = time.perf_counter() - start
    seq = frames * tpf + args.text_tokens
    stats = mask_stats(mask, seq, opts.block_size)
    geo = geometry(args.model)
    print(f"model            {args.model} (sink {'on' if opts.sink else 'off'}, decay {opts.decay_factor})")
    print(f"latent frames    {frames} (pixel frames {geo.pixel_frames(frames)})")
    print(f"tokens/frame     {tpf}")
    print(f"tokens           {seq} ({frames * tpf} video + {args.text_tokens} text)")
    print(f"blocks           {mask.shape[0]} x {mask.shape[1]} of {opts.block_size}, kept {stats.kept_blocks}")
    print(f"block density    {stats.block_density:.4f} (kept blocks; the sparse layers', dense ones not counted)")
    print(f"token density    {stats.token_density:.4f} (kept token pairs: what the FLOPs scale with)")
    print(f"ideal speed-up   {stats.ideal_speedup:.2f}x attention FLOPs")
    print(f"built in         {elapsed * 1e3:.1f} ms")
    out = Path(args.out)
    if not args.no_png:
        title = f"{args.model}: {frames} frames x {tpf} tokens (+{args.text_tokens} text), {density_text(stats.block_density)}"
        edges = frame_block_edges(frames, tpf, opts.block_size)
        print(f"picture          {save_mask_png(mask, out.with_suffix('.png'), title=title, frame_edges=edges)}")
    if args.npy:
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out.with_suffix(".npy"), mask)
        print(f"array            {out.with_suffix('.npy')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
