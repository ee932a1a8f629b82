"""The shipped tiny-video model: weights, presets, a short generation against the plan, and its data set."""
import json
import os
import re

import pytest
import torch

from magcache_dist import schedule as schedule_cli
from magcache_dist.cache import get_preset, preset_names
from magcache_dist.cache.teacache import load_coefficients
from magcache_dist.config import load_config
from magcache_dist.families.base import make_family
from magcache_dist.parallel.dims import solo_context
from magcache_dist.run import run_job
from models.loading import load_state_dict_strict, read_tensors
from models.tiny_text import VOCAB, TinyTextEncoder
from models.wan import WanModel, get_config
from tests.support import ROOT
from tools.tinydata import ProceduralVideos, caption_words

WEIGHTS = os.path.join(ROOT, "models", "weights", "tiny-video.safetensors")
DEFAULT = os.path.join(ROOT, "configs", "default.yaml")


def test_shipped_weights_load_strictly():
    assert os.path.getsize(WEIGHTS) <= 20 * 1024 * 1024
    sd = read_tensors(WEIGHTS)
    cfg = get_config("tiny-video")
    load_state_dict_strict(WanModel(cfg), {k: v for k, v in sd.items() if not k.startswith("text_encoder.")},
                           "shipped DiT")
    text = TinyTextEncoder.for_model("tiny-video")
    load_state_dict_strict(text, sd, "shipped text encoder", prefix="text_encoder.")
    assert all(torch.isfinite(v.float()).all() for v in sd.values())


def test_text_encoder_broadcast_ignores_padding():
    """The caption-wide term added to every token is a mean over real tokens only: a short prompt encodes the same
    alone and padded in a batch with a longer one, and its padded positions stay zero."""
    cfg = get_config("tiny-video")
    torch.manual_seed(0)
    text = TinyTextEncoder.for_model("tiny-video").eval()
    assert text.pool is not None and len(text.layers) == 2
    with torch.no_grad():
        alone = text.encode(["a red circle"])  # [1, 3, D]
        both = text.encode(["a red circle", "a big blue square moves left"])  # [2, 6, D]
        assert alone.shape == (1, 3, cfg.text_dim) and both.shape == (2, 6, cfg.text_dim)
        torch.testing.assert_close(both[0, :3], alone[0], rtol=1e-5, atol=1e-5)
        assert torch.all(both[0, 3:] == 0)
        assert text.encode([""]).shape == (1, 0, cfg.text_dim)  # the empty prompt: an all-zero context


def test_default_config_is_the_shipped_model():
    cfg = load_config(DEFAULT)
    assert cfg.model.name == "tiny-video" and os.path.samefile(os.path.join(ROOT, cfg.model.ckpt), WEIGHTS)
    assert cfg.cache.mode == "magcache" and cfg.cache.magcache.preset == "tiny-video"
    model, text = make_family(cfg).build("cpu")  # strict load through the family
    assert model.cfg == get_config("tiny-video") and not model.training and not text.training


def test_shipped_presets_load():
    assert "tiny-video" in preset_names()
    p = get_preset("tiny-video")
    cfg = load_config(DEFAULT)
    assert p.table.branches == ["cond", "uncond"] and p.table.num_steps == cfg.sampler.num_steps
    assert p.table.meta["model"] == "tiny-video"
    assert p.table.ratios["cond"][0] == 1.0 and all(0.0 < r < 5.0 for r in p.table.ratios["cond"])
    coefficients, meta = load_coefficients("tiny-video")
    assert len(coefficients) == meta["degree"] + 1 and meta["model"] == "tiny-video"


def test_short_generation_matches_the_plan(tmp_path, capsys):
    """A reduced-step generation on the shipped weights skips exactly what the schedule command prints."""
    steps, thresh, k, retention = 8, 0.24, 3, 0.2
    cfg = load_config(DEFAULT, [f"output_dir={tmp_path}", "progress=false", "save_video=false",
                                f"sampler.num_steps={steps}", f"cache.magcache.thresh={thresh}",
                                f"cache.magcache.K={k}",
                                f"cache.magcache.retention={retention}", "video.frames=8"])
    report = run_job(cfg, solo_context())
    assert schedule_cli.main(["--preset", "tiny-video", "--steps", str(steps), "--thresh", str(thresh), "--K", str(k),
                          "--retention", str(retention), "--branch-sync", "joint"]) == 0
    planned = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["branch_sync"] == planned["branch_sync"] == "joint"  # generate.py's default
    assert report["skipped_steps"] == planned["skipped_steps"]
    assert report["computed_calls"] == planned["computed_calls"] < report["total_calls"] == 2 * steps
    latents = torch.load(os.path.join(tmp_path, "latents.pt"), weights_only=True)
    assert latents.shape == (1, 3, 8, 32, 32) and torch.isfinite(latents).all()  # 2x pixel autoencoder latents
    video = make_family(load_config(DEFAULT)).decode(latents)
    assert video.shape == (1, 3, 8, 64, 64) and float(video.abs().max()) <= 1.0


def test_procedural_data_is_deterministic():
    a, b = ProceduralVideos(seed=3), ProceduralVideos(seed=3)
    for i in (0, 7, 123):
        va, ca = a[i]
        vb, cb = b[i]
        assert ca == cb and torch.equal(va, vb)
        assert va.shape == (3, 16, 64, 64) and va.dtype == torch.float32
        assert float(va.min()) >= -1.0 and float(va.max()) <= 1.0
    batch, captions = a.batch(5, 3)
    assert torch.equal(batch[1], a[6][0]) and captions[2] == a[7][1]
    other = ProceduralVideos(seed=4)
    assert any(a.spec(i) != other.spec(i) for i in range(8))


def test_captions_use_only_vocab_words():
    vocab = set(VOCAB)
    assert caption_words() <= vocab
    data = ProceduralVideos(seed=0)
    seen = set()
    for i in range(300):
        caption = data.spec(i).caption()
        words = re.findall(r"[a-z]+", caption)
        assert words and set(words) <= vocab, caption
        seen.update(words)
    # every motion appears in a few hundred samples
    assert {"left", "right", "up", "down", "bounces", "grows", "shrinks"} <= seen


def test_shapes_actually_move():
    """A 'moves right' clip's foreground centroid goes right; 'grows' gains area."""
    from tools.tinydata.procedural import VideoSpec, render

    v = render(VideoSpec("red", "circle", "right", "big", 0.5, 0.5, 1.0))
    fg = (v[0] > 0).float()  # red channel is high only on the shape, [F, H, W]
    xs = torch.arange(64).float()
    cx = (fg.sum(1) * xs).sum(-1) / fg.sum((1, 2))
    assert cx[-1] - cx[0] > 20
    g = render(VideoSpec("blue", "square", "grows", "small", 0.5, 0.5, 1.0))
    area = (g[2] > 0).float().sum((1, 2))
    assert area[-1] > 4 * area[0]


def test_judge_reads_the_data_set_back():
    """The prompt-adherence judge names colour, shape, size and motion of real data clips without a miss."""
    from tools.tinydata import ProceduralVideos
    from tools.tinydata.judge import judge

    data, misses = ProceduralVideos(seed=7), []
    for i in range(140):
        video, caption = data[i]
        j = judge(video, caption)
        if not j["all"]:
            misses.append((caption, j["seen"]))
    assert misses == []


def test_judge_notices_a_wrong_caption_and_an_empty_video():
    from tools.tinydata.judge import describe, judge
    from tools.tinydata.procedural import VideoSpec, render

    video = render(VideoSpec("red", "circle", "right", "big", 0.5, 0.2, 1.0))
    seen = describe(video)
    assert (seen["colour"], seen["shape"], seen["size"], seen["motion"]) == ("red", "circle", "big", "right")
    assert seen["dx"] > 20 and abs(seen["dy"]) < 1
    j = judge(video, "a small blue square moves left")
    assert j["verdict"] == dict(colour=False, shape=False, size=False, motion=False) and not j["all"]
    still = render(VideoSpec("green", "triangle", "right", "small", 0.5, 0.5, 0.0))  # speed 0: does not move
    assert describe(still)["motion"] == "still" and describe(still)["shape"] == "triangle"
    blank = torch.full_like(video, float(video.amin()))  # background only
    assert describe(blank)["colour"] is None and not judge(blank, "a red circle grows")["all"]


def test_training_is_seeded_and_resumes_bit_for_bit(tmp_path):
    """tools/train_tiny.py: 4 steps straight equal 2 steps + --resume to 4 (same batches, noise, optimizer)."""
    import importlib.util

    from safetensors.torch import load_file

    spec = importlib.util.spec_from_file_location("train_tiny", os.path.join(ROOT, "tools", "train_tiny.py"))
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    common = ["--batch", "2", "--warmup", "2", "--ckpt-every", "2"]
    straight, split = tmp_path / "straight.safetensors", tmp_path / "split.safetensors"
    assert train.main(common + ["--steps", "4", "--work", str(tmp_path / "a"), "--out", str(straight)]) == 0
    assert train.main(common + ["--steps", "2", "--work", str(tmp_path / "b"), "--out", str(tmp_path / "x.st")]) == 0
    assert train.main(common + ["--steps", "4", "--work", str(tmp_path / "b"), "--out", str(split), "--resume"]) == 0
    a, b = load_file(str(straight)), load_file(str(split))
    assert a.keys() == b.keys() and any(k.startswith("text_encoder.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = WanModel(get_config("tiny-video"))
    assert not torch.equal(a["head.head.weight"], fresh.state_dict()["head.head.weight"])  # it did train


@pytest.mark.parametrize("prompt", ["a big red circle moves right", "a small red circle moves left",
                                    "a small blue square moves up", "a big yellow circle moves down",
                                    "a big white circle bounces", "a yellow triangle grows",
                                    "a magenta circle shrinks"])
def test_shipped_model_draws_the_prompted_colour_and_motion(prompt, tmp_path):
    """The demo job (MagCache on, seed 0) draws one object in the caption's colour that moves as the caption says,
    as the judge reads it back (one prompt per motion; the judge makes no error on the data set).

    A resizing object is drawn in at least 12 of the 16 frames: the model leaves out the smallest ones (radius under
    ~6 px at the start of "grows" / the end of "shrinks"), which the data has. Shape and size are at chance for the
    shipped model (benchmarks/results/adherence.json) and are not asserted.
    """
    from tools.tinydata.judge import describe, parse_caption

    cfg = load_config(DEFAULT, [f"output_dir={tmp_path}", "progress=false", "save_video=false", f"prompt={prompt!r}"])
    report = run_job(cfg, solo_context())
    assert report["computed_calls"] < report["total_calls"]
    video = make_family(cfg).decode(torch.load(os.path.join(tmp_path, "latents.pt"), weights_only=True))[0]
    seen, want = describe(video), parse_caption(prompt)
    assert (seen["colour"], seen["motion"]) == (want["colour"], want["motion"])
    assert seen["frames_with_object"] >= (12 if want["motion"] in ("grows", "shrinks") else 16)


def test_coordinate_channels_and_their_errors():
    from models.wan_coords import WanCoordModel, coordinate_channels

    c = coordinate_channels((2, 3, 4, 3, 5))
    assert c.shape == (2, 3, 4, 3, 5)
    torch.testing.assert_close(c[0, 0, :, 0, 0], torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))  # frame
    assert torch.equal(c[1, 1, 0, :, 0], torch.tensor([-1.0, 0.0, 1.0]))  # row
    assert torch.equal(c[0, 2, 3, 2], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))  # column
    assert torch.equal(coordinate_channels((1, 3, 1, 2, 2))[0, 0], torch.zeros(1, 2, 2))  # one frame: 0
    model = WanCoordModel(get_config("tiny-video"))
    with pytest.raises(ValueError, match="latents have 6 channels; this model takes 3"):
        model(torch.zeros(1, 6, 2, 8, 8), torch.tensor([500.0]), torch.zeros(1, 2, 64))
    with pytest.raises(ValueError, match="coord_channels=3"):
        WanCoordModel(get_config("tiny"))


