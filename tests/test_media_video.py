"""Image and video writers/readers of mmtok.media: round trips within codec tolerance, errors."""

import av
import numpy as np
import pytest
import torch
from PIL import Image

from mmtok.media import (
    MediaFileError,
    image_grid,
    read_image,
    read_video,
    write_png,
    write_png_grid,
    write_video,
)


def _moving_square(*, channels: int, frames: int = 9, height: int = 32, width: int = 48) -> torch.Tensor:
    """FloatTensor [C, T, H, W] in [0, 1]: a bright square sliding right over a smooth background."""
    video = torch.zeros(channels, frames, height, width)
    ramp = torch.linspace(0.1, 0.6, width)
    for t in range(frames):
        video[:, t] = ramp
        video[0, t, 8:20, 2 * t:2 * t + 12] = 1.0
    if channels == 3:
        video[2] = 0.3
    return video


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / ((a - b) ** 2).mean()))


# ----------------------------------------------------------------------------- png


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_round_trip_is_exact_for_uint8(tmp_path, channels):
    rng = np.random.default_rng(channels)
    pixels = rng.integers(0, 256, size=(channels, 5, 7), dtype=np.uint8)
    path = write_png(tmp_path / "deep" / "x.png", pixels)
    with Image.open(path) as image:
        assert image.mode == {1: "L", 3: "RGB", 4: "RGBA"}[channels] and image.size == (7, 5)
        stored = np.asarray(image)
    np.testing.assert_array_equal(stored.reshape(5, 7, channels), np.moveaxis(pixels, 0, -1))
    assert write_png(tmp_path / "again.png", pixels).read_bytes() == path.read_bytes()


def test_png_float_values_are_mapped_from_value_range(tmp_path):
    image = torch.tensor([[[-1.0, 0.0, 1.0, 2.0]]])  # [1, 1, 4]
    path = write_png(tmp_path / "x.png", image, value_range=(-1.0, 1.0))
    np.testing.assert_array_equal(np.asarray(Image.open(path)), [[0, 128, 255, 255]])
    back = read_image(path, channels=1)
    assert back.shape == (1, 1, 4) and back.dtype == torch.float32
    torch.testing.assert_close(back * 2 - 1, image.clamp(-1, 1), atol=1 / 255 + 1e-6, rtol=0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        write_png(tmp_path / "nan.png", torch.tensor([[float("nan")]]))
    with pytest.raises(ValueError, match=r"\[H, W\] or \[C, H, W\]"):
        write_png(tmp_path / "bad.png", torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="floats or uint8"):
        write_png(tmp_path / "int.png", np.zeros((4, 4), dtype=np.int64))


def test_image_grid_places_every_image(tmp_path):
    images = torch.stack([torch.full((1, 3, 4), i * 51 / 255) for i in range(5)])  # [5, 1, 3, 4]
    grid = image_grid(images, nrow=3, padding=1, pad_value=7)
    assert grid.shape == (2 * 4 + 1, 3 * 5 + 1, 1) and grid.dtype == np.uint8
    for i in range(5):
        top, left = 1 + (i // 3) * 4, 1 + (i % 3) * 5
        assert (grid[top:top + 3, left:left + 4] == i * 51).all()
    assert (grid[0] == 7).all() and (grid[5:8, 11:15] == 7).all()  # padding and the empty last cell
    mixed = image_grid([torch.zeros(1, 2, 2), torch.ones(3, 2, 2)], padding=0)
    assert mixed.shape == (2, 4, 3) and (mixed[:, :2] == 0).all() and (mixed[:, 2:] == 255).all()
    path = write_png_grid(tmp_path / "grid.png", images, nrow=3, padding=1, pad_value=7)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), grid[..., 0])
    with pytest.raises(ValueError, match="share one size"):
        image_grid([torch.zeros(1, 2, 2), torch.zeros(1, 3, 2)])
    with pytest.raises(ValueError, match="is empty"):
        image_grid([])


def test_read_image_converts_gray_rgba_palette_and_16_bit(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray).save(tmp_path / "gray.png")
    rgb = read_image(tmp_path / "gray.png", channels=3)
    assert rgb.shape == (3, 3, 4)
    torch.testing.assert_close(rgb, torch.from_numpy(gray / 255.0).float().expand(3, 3, 4))

    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, [[255, 0], [51, 255]]
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    composited = read_image(tmp_path / "rgba.png")  # colour x alpha: over black
    torch.testing.assert_close(composited[0], torch.tensor([[200, 0], [40, 200]]) / 255.0, atol=1e-6, rtol=0)
    assert float(composited[1:].abs().max()) == 0.0

    colour = np.random.default_rng(0).integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "rgb.png")
    luma = read_image(tmp_path / "rgb.png", channels=1)
    expected = np.asarray(Image.fromarray(colour).convert("L")) / 255.0  # Pillow's own RGB -> L
    assert luma.shape == (1, 6, 5) and np.abs(luma[0].numpy() - expected).max() <= 1 / 255 + 1e-6

    Image.fromarray(colour).convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(tmp_path / "pal.png")
    assert read_image(tmp_path / "pal.png").shape == (3, 6, 5)
    Image.fromarray(np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)).save(tmp_path / "deep.png")
    deep = read_image(tmp_path / "deep.png", channels=1)
    torch.testing.assert_close(deep[0], torch.tensor([[0, 65535], [32768, 1000]]) / 65535.0)


def test_read_image_errors_name_the_file(tmp_path):
    good = write_png(tmp_path / "good.png", np.random.default_rng(0).integers(0, 256, (3, 64, 64), dtype=np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "text.png"
    text.write_text("not an image\n")
    for path, message in ((truncated, "cannot decode image"), (text, "cannot decode image"),
                          (tmp_path / "missing.png", "does not exist")):
        with pytest.raises(MediaFileError, match=message) as error:
            read_image(path)
        assert str(error.value).startswith(str(path))
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        read_image(good, channels=4)


# ----------------------------------------------------------------------------- video


def test_mp4_gray_round_trip_and_bytes_are_deterministic(tmp_path):
    video = _moving_square(channels=1)
    path = write_video(tmp_path / "v" / "gray.mp4", video, fps=8)
    back, fps = read_video(path, channels=1)
    assert back.shape == video.shape and fps == 8.0
    assert float((back - video).abs().max()) <= 0.05 and _psnr(back, video) > 35
    assert write_video(tmp_path / "again.mp4", video, fps=8).read_bytes() == path.read_bytes()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
    junk = [np.random.bytes(1000 * (j + 1)) for j in range(200)]  # x264 once read uninitialised memory
    del junk
    assert write_video(tmp_path / "after.mp4", video, fps=8).read_bytes() == path.read_bytes()
    rgb, _ = read_video(path, channels=3)  # yuv -> rgb24 and yuv -> gray round differently
    torch.testing.assert_close(rgb, back.expand(3, -1, -1, -1), atol=1 / 255 + 1e-6, rtol=0)
    first, _ = read_video(path, channels=1, max_frames=4)
    torch.testing.assert_close(first, back[:, :4])


def test_mp4_rgb_round_trip_within_codec_tolerance(tmp_path):
    video = _moving_square(channels=3)
    back, fps = read_video(write_video(tmp_path / "rgb.mp4", video, fps=12.5, crf=10), channels=3)
    assert back.shape == video.shape and fps == 12.5
    assert _psnr(back, video) > 30  # chroma is subsampled (yuv420p), so sharp colour edges blur
    assert float((back - video).abs().mean()) < 0.02


def test_gif_round_trips(tmp_path):
    gray = _moving_square(channels=1)
    path = write_video(tmp_path / "gray.gif", gray, fps=10)
    back, fps = read_video(path, channels=1)
    assert fps == 10.0 and back.shape == gray.shape
    assert float((back - gray).abs().max()) <= 0.5 / 255 + 1e-6  # exact up to the uint8 rounding
    few = torch.zeros(3, 4, 6, 8)
    few[0, :, :3], few[1, :, 3:], few[2, 1::2, :, :4] = 1.0, 0.5, 0.25  # 6 colours
    back, _ = read_video(write_video(tmp_path / "few.gif", few, fps=5), channels=3)
    assert float((back - few).abs().max()) <= 0.5 / 255 + 1e-6  # one palette holds every colour
    smooth = _moving_square(channels=3)
    path = write_video(tmp_path / "rgb.gif", smooth, fps=10)
    back, _ = read_video(path, channels=3)
    assert _psnr(back, smooth) > 30  # a 256-colour median-cut palette
    assert write_video(tmp_path / "rgb2.gif", smooth, fps=10).read_bytes() == path.read_bytes()


def test_npz_video_is_exact(tmp_path):
    video = (torch.arange(2 * 3 * 5 * 4) % 256).to(torch.uint8).reshape(2 * 3, 5, 4)[None].expand(3, -1, -1, -1)
    path = write_video(tmp_path / "x.npz", video, fps=7)
    with np.load(path) as data:
        assert data["frames"].shape == (6, 5, 4, 3) and float(data["fps"]) == 7.0
    back, fps = read_video(path)
    assert fps == 7.0
    torch.testing.assert_close(back, video.float() / 255.0)
    assert write_video(tmp_path / "y.npz", video, fps=7).read_bytes() == path.read_bytes()


def test_write_video_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="even frame size"):
        write_video(tmp_path / "odd.mp4", torch.zeros(1, 2, 5, 6), fps=10)
    with pytest.raises(ValueError, match="suffix must be one of"):
        write_video(tmp_path / "x.avi", torch.zeros(1, 2, 4, 4), fps=10)
    with pytest.raises(ValueError, match=r"\[T, H, W\] or \[C, T, H, W\]"):
        write_video(tmp_path / "x.mp4", torch.zeros(2, 2, 4, 4), fps=10)
    with pytest.raises(ValueError, match="fps must be > 0"):
        write_video(tmp_path / "x.mp4", torch.zeros(1, 2, 4, 4), fps=0)


def _ts(path, *, height, width, frames):
    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((height, width), 90, np.uint8),
                                                                   format="gray")))
        container.mux(stream.encode(None))
    return path.read_bytes()


def test_read_video_errors_name_the_file(tmp_path):
    good = write_video(tmp_path / "good.mp4", _moving_square(channels=1), fps=8)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.webm"
    garbage.write_text("not a video\n")
    empty_npz = tmp_path / "empty.npz"
    np.savez(empty_npz, frames=np.zeros((0, 4, 4), np.uint8), fps=np.float64(5))
    no_frames = tmp_path / "no_frames.mp4"
    with av.open(str(no_frames), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()
        container.mux(stream.encode(None))
    bad_npz = tmp_path / "bad.npz"
    np.savez(bad_npz, frames=np.zeros((2, 4, 4), np.float32))
    resized = tmp_path / "resized.ts"  # a stream whose frame size changes after 3 frames
    resized.write_bytes(_ts(tmp_path / "a.ts", height=32, width=32, frames=3)
                        + _ts(tmp_path / "b.ts", height=16, width=24, frames=3))
    cases = [
        (truncated, "cannot decode video"), (garbage, "cannot decode video"), (empty_npz, "0 frames"),
        (no_frames, "no video stream"), (bad_npz, "must be uint8"), (tmp_path / "missing.mp4", "does not exist"),
        (resized, r"frame 3 is 16x24 \(H x W\), frame 0 is 32x32"),
    ]
    for path, message in cases:
        with pytest.raises(MediaFileError, match=message) as error:
            read_video(path)
        assert str(error.value).startswith(str(path))
