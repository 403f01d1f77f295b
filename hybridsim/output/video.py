"""Dataset video streams encoded as LeRobot 0.6 encodes them, so its readers, writers and tools treat
them as their own (docs/dataset.md "Videos").

- RGB: H.264 (libx264) yuv420p through PyAV, `add_stream(codec, fps, options={"g", "crf", "preset"})`
  exactly as `lerobot.datasets.video_utils` does. The settings are recorded in each feature's info
  (`video.g`, `video.crf`, ...), which LeRobot reads back to encode episodes it appends: the same
  encoder settings give the same frame reordering, so H.264 decode timestamps start at the same
  offset and concatenated files stay monotonic in either order.
- Depth (optional): LeRobot's depth-map video, HEVC Main 12 `gray12le`, lossless, holding 12-bit
  codes of log-quantised millimetres (`quantize_depth` below is LeRobot's formula).

`gop` is the keyframe interval: a decoder seeking to frame t decodes at most gop - 1 frames before
it. 2 is LeRobot's default (fast random access for training); a larger gop makes smaller files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hybridsim.output.writers import mux

CODECS = ("h264", "hevc", "libsvtav1")
DEPTH_QMAX = 4095  # 12-bit codes
MM_PER_METRE = 1000.0


class VideoError(ValueError):
    """Video settings that cannot be encoded, or a stream that does not match its settings."""


@dataclass
class VideoSettings:
    """Encoder settings of one video feature, as LeRobot's VideoEncoderConfig names them."""

    codec: str = "h264"
    gop: int = 2  # keyframe interval in frames (LeRobot: g)
    crf: int | None = 18
    preset: str | None = "veryfast"
    pix_fmt: str = "yuv420p"
    extra_options: dict[str, str] = field(default_factory=dict)
    depth: DepthQuantization | None = None  # set for a depth-map stream

    def __post_init__(self):
        if self.codec not in CODECS:
            raise VideoError(f"video codec '{self.codec}' is not one of {CODECS}")
        if not isinstance(self.gop, int) or isinstance(self.gop, bool) or self.gop < 1:
            raise VideoError(f"gop={self.gop!r} must be an integer >= 1 (frames between keyframes; LeRobot uses 2)")
        if self.crf is not None and not 0 <= self.crf <= 63:
            raise VideoError(f"crf={self.crf!r} must be in 0..63 (lower is better quality; LeRobot uses 30)")

    def codec_options(self) -> dict[str, str]:
        """The options LeRobot's VideoEncoderConfig.get_codec_options(as_strings=True) gives."""
        opts = {"g": str(self.gop)}
        if self.crf is not None:
            opts["crf"] = str(self.crf)
        if self.preset is not None:
            opts["preset"] = str(self.preset)
        if self.codec == "libsvtav1":
            opts["svtav1-params"] = "fast-decode=0"
        return {**opts, **{k: str(v) for k, v in self.extra_options.items() if k not in opts}}

    def info(self, width: int, height: int, fps: int) -> dict:
        """The feature's `info` entry, with the keys and values LeRobot 0.6 writes."""
        info = {"video.height": height, "video.width": width, "video.codec": self.codec,
                "video.pix_fmt": self.pix_fmt, "video.fps": int(fps), "video.channels": 1 if self.depth else 3,
                "has_audio": False, "video.g": self.gop, "video.crf": self.crf, "video.preset": self.preset,
                "video.fast_decode": 0, "video.video_backend": "pyav", "video.extra_options": dict(self.extra_options),
                "is_depth_map": self.depth is not None}
        if self.depth is not None:
            info.update({"depth_unit": "mm", "video.depth_min": self.depth.depth_min,
                         "video.depth_max": self.depth.depth_max, "video.shift": self.depth.shift,
                         "video.use_log": self.depth.use_log})
        return info


@dataclass(frozen=True)
class DepthQuantization:
    """LeRobot's depth quantiser (configs.video.DepthEncoderConfig defaults), metres."""

    depth_min: float = 0.01
    depth_max: float = 10.0
    shift: float = 3.5
    use_log: bool = True


def depth_settings(gop: int = 2) -> VideoSettings:
    """LeRobot's depth encoder defaults: HEVC Main 12, gray12le, lossless."""
    return VideoSettings(codec="hevc", gop=gop, crf=30, preset=None, pix_fmt="gray12le",
                         extra_options={"x265-params": "lossless=1"}, depth=DepthQuantization())


def quantize_depth(depth_mm: np.ndarray, q: DepthQuantization) -> np.ndarray:  # [H, W] mm -> [H, W] uint16 codes
    """LeRobot's `quantize_depth` for millimetre input (float32 math, same rounding)."""
    d = np.asarray(depth_mm).astype(np.float32)
    lo, hi, shift = (np.float32(v * MM_PER_METRE) for v in (q.depth_min, q.depth_max, q.shift))
    if q.use_log:
        log_min, log_max = math.log(float(lo + shift)), math.log(float(hi + shift))
        norm = (np.log(d + shift) - log_min) / (log_max - log_min)
    else:
        norm = (d - lo) / (hi - lo)
    return np.rint(norm * DEPTH_QMAX).clip(0, DEPTH_QMAX).astype(np.uint16)


def dequantize_depth(codes: np.ndarray, q: DepthQuantization) -> np.ndarray:  # [..., H, W] -> float32 mm
    """Inverse of `quantize_depth`, in millimetres (clamped to [depth_min, depth_max])."""
    if q.use_log:
        log_min, log_max = math.log(q.depth_min + q.shift), math.log(q.depth_max + q.shift)
        m = np.exp(codes.astype(np.float32) * ((log_max - log_min) / DEPTH_QMAX) + log_min) - q.shift
    else:
        m = codes.astype(np.float32) * ((q.depth_max - q.depth_min) / DEPTH_QMAX) + q.depth_min
    return np.clip(m, q.depth_min, q.depth_max) * MM_PER_METRE


class StreamWriter:
    """Frames -> one mp4 stream with `settings`: RGB uint8 [H, W, 3], or depth uint16 mm [H, W]."""

    def __init__(self, path: str | Path, fps: int, width: int, height: int, settings: VideoSettings):
        import av

        self.path, self.settings = Path(path), settings
        self.width, self.height = width, height  # of the frames given; odd RGB sizes are padded by one pixel
        pad = 0 if settings.depth is not None else 1
        self.enc_width, self.enc_height = width + (width % 2) * pad, height + (height % 2) * pad
        self._container = av.open(str(self.path), mode="w")
        self._stream = self._container.add_stream(settings.codec, int(fps), options=settings.codec_options())
        self._stream.pix_fmt = settings.pix_fmt
        self._stream.width, self._stream.height = self.enc_width, self.enc_height
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        import av

        want = (self.height, self.width) if self.settings.depth is not None else (self.height, self.width, 3)
        if image.shape != want:
            raise VideoError(f"{self.path.name}: frame shape {image.shape} != {want}")
        if self.settings.depth is not None:
            codes = quantize_depth(image, self.settings.depth)
            frame = av.VideoFrame(self.width, self.height, self.settings.pix_fmt)
            stride = frame.planes[0].line_size // 2
            np.frombuffer(frame.planes[0], dtype=np.uint16).reshape(self.height, stride)[:, : self.width] = codes
        else:
            if (self.enc_width, self.enc_height) != (self.width, self.height):
                image = np.pad(image, ((0, self.enc_height - self.height), (0, self.enc_width - self.width), (0, 0)),
                               mode="edge")
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        mux(self._container, self._stream, frame)
        self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        mux(self._container, self._stream, None)
        self._container.close()
        self._container = None


def decode_frames(path: str | Path, t0: float = 0.0, t1: float = math.inf, fps: float = 1.0,
                  depth: DepthQuantization | None = None) -> np.ndarray:
    """Frames of `path` whose time lies in [t0, t1) (half a frame of slack): [T, H, W, 3] uint8, or
    [T, H, W] float32 millimetres for a depth stream."""
    import av

    half = 0.5 / fps
    out = []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            if t0 - half <= f.time < t1 - half:
                out.append(f.to_ndarray(format="rgb24") if depth is None else
                           dequantize_depth(f.to_ndarray(format="gray12le"), depth))
    return np.stack(out)
