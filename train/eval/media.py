"""Validation samples to the trackers: frame strips to TensorBoard, mp4 files to wandb."""

from __future__ import annotations


def log_media(acc, records: list[dict], step: int) -> None:
    """Frame strips to TensorBoard, mp4 files to wandb (main process; failures are printed, not raised); the records
    lose their frames."""
    from radial.generation import frame_strip

    for tracker in getattr(acc, "trackers", []):
        for r in records:
            try:
                if tracker.name == "tensorboard" and r.get("_frames") is not None:
                    strip = frame_strip(r["_frames"])
                    tracker.tracker.add_image(f"val/{r['name']}", strip, step, dataformats="HWC")
                elif tracker.name == "wandb" and r.get("files", {}).get("video"):
                    import wandb

                    video = wandb.Video(r["files"]["video"], caption=r.get("prompt"), format="mp4")
                    tracker.tracker.log({f"val/{r['name']}": video}, step=step)
            except Exception as e:  # noqa: BLE001 - media logging must not stop training
                acc.print(f"could not log {r['name']} to {tracker.name}: {type(e).__name__}: {e}")
    for r in records:
        r.pop("_frames", None)
