"""Video output: latents/pixels in [-1, 1] -> uint8 frames -> mp4 (and a PNG contact sheet), written atomically."""
from __future__ import annotations

import numpy as np
import torch

from magcache_dist.errors import InputError
from magcache_dist.io.atomic import atomic_path


def to_frames(video: torch.Tensor) -> np.ndarray:
    """[C=3, F, H, W] in [-1, 1] -> [F, H, W, 3] uint8."""
    v = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return v.permute(1, 2, 3, 0).cpu().numpy()


def write_mp4(path: str, frames: np.ndarray, fps: int) -> None:
    import imageio.v2 as imageio

    with atomic_path(path) as tmp:
        imageio.mimwrite(tmp, list(frames), fps=fps, codec="libx264", quality=9, macro_block_size=1,
                         format="FFMPEG")


def read_mp4(path: str) -> np.ndarray:
    """The frames of a video file as [F, H, W, 3] uint8 RGB (through ffmpeg, as ``write_mp4`` writes them)."""
    import imageio.v2 as imageio

    with imageio.get_reader(path, format="FFMPEG") as reader:
        frames = [np.asarray(f)[..., :3] for f in reader]
    if not frames:
        raise InputError(f"{path}: the video holds no frames")
    return np.stack(frames)


def read_frames(path: str) -> np.ndarray:
    """[F, H, W, 3] uint8 RGB of a video file, or of an image file as one frame (an image model's output)."""
    if path.lower().endswith(".png"):
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))[None]
    return read_mp4(path)


def contact_sheet(frames: np.ndarray, cols: int = 8, scale: int = 2) -> np.ndarray:
    f, h, w, c = frames.shape
    rows = -(-f // cols)
    sheet = np.full((rows * (h + 2), cols * (w + 2), c), 255, dtype=np.uint8)
    for i, fr in enumerate(frames):
        r, cc = divmod(i, cols)
        sheet[r * (h + 2):r * (h + 2) + h, cc * (w + 2):cc * (w + 2) + w] = fr
    return sheet.repeat(scale, 0).repeat(scale, 1)


def write_png(path: str, image: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
