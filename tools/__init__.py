"""Scripts that make files the project ships, run from the checkout as modules (``python -m tools.<name>``):

- ``train_tiny``: the embedded tiny-video weights (models/weights/tiny-video.safetensors), on ``tinydata``'s
  procedural videos (``tinydata.judge`` reads a video's colour, shape, size and motion back);
- ``fit_teacache``: TeaCache's rescaling polynomial for tiny-video (magcache_dist/cache/data/tiny-video-teacache.json)
  and docs/teacache_fit.png;
- ``plot_calibration``: a calibration file drawn as the MagCache paper does (docs/tiny_video_magnitude.png);
- ``online_predictor``: why online MagCache predicts in sigma (docs/online_predictor.png);
- ``make_wan_checkpoint``: a random Wan2.1 DiT checkpoint at real size in either layout (for benchmarks/load_memory.py).
"""
