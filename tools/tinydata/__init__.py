"""Training data generated in code (the embedded demo model's procedural video set)."""
from tools.tinydata.procedural import ProceduralVideos, VideoSpec, caption_words

__all__ = ["ProceduralVideos", "VideoSpec", "caption_words"]
