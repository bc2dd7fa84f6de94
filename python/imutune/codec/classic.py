"""Classic baselines of the learned codec: float32, float16, int16 + zstd, delta + zstd, uniform k-bit + zstd.

Every method maps a stream (S, C) float32 to bytes and back; the bytes are a
complete, self-describing upload (a 12-byte header: magic ``b"IMC1"``,
method id, k, C and S, then the method's side information and payload), so
``len(encode(x))`` is the measured size the benchmark reports.

=============== ======== ===========================================================================
method          lossless payload
=============== ======== ===========================================================================
``float32``     yes      raw little-endian float32, channel-major
``float16``     no       IEEE half precision, channel-major
``int16-zstd``  no       int16 codes at sensor resolution (full scale per channel: accelerometer
                         ``acc_full_scale_g``, gyroscope ``gyr_full_scale_rad_s``, other channels
                         the stream's max ``|x|``, stored), delta along time, zstd
``delta-zstd``  yes      the float32 bit patterns as uint32, delta along time (mod 2**32), zstd
``kbit-zstd``   no       uniform k-bit codes between each channel's min and max (stored as float32),
                         delta along time, zstd; k = 2 .. 16
=============== ======== ===========================================================================

Delta coding of integer codes is lossless and only helps zstd on smooth
sensor signals. zstd is ``zstandard`` at ``zstd_level`` (default 19).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _validation as V

__all__ = ["ClassicCodec", "CLASSIC_METHODS", "parse_classic"]

CLASSIC_METHODS = ("float32", "float16", "int16-zstd", "delta-zstd", "kbit-zstd")
_MAGIC = b"IMC1"
_IDS = {m: i for i, m in enumerate(CLASSIC_METHODS)}


@dataclass(frozen=True)
class ClassicCodec:
    """One classic method (see the module docstring)."""

    method: str = "int16-zstd"
    bits: int = 8                        # k of "kbit-zstd" (2 .. 16); ignored by the other methods
    zstd_level: int = 19                 # zstandard compression level
    acc_full_scale_g: float = 8.0        # int16 full scale of channels named acc* (a typical +-8 g watch IMU)
    gyr_full_scale_rad_s: float = 34.906585  # int16 full scale of channels named gyr* (+-2000 deg/s)

    def __post_init__(self) -> None:
        V.check_choice("method", self.method, CLASSIC_METHODS)
        if self.method == "kbit-zstd" and not (isinstance(self.bits, int) and 2 <= self.bits <= 16):
            raise ValueError(f"bits of kbit-zstd must be an integer in [2, 16], got {self.bits!r}")
        V.check_positive("acc_full_scale_g", self.acc_full_scale_g)
        V.check_positive("gyr_full_scale_rad_s", self.gyr_full_scale_rad_s)

    @property
    def name(self) -> str:
        return f"{self.bits}-bit+zstd" if self.method == "kbit-zstd" else self.method

    @property
    def lossless(self) -> bool:
        return self.method in ("float32", "delta-zstd")

    def encode(self, values: np.ndarray, *, channels: tuple[str, ...] | None = None) -> bytes:
        """Encode a stream (S, C) float32 (physical units); ``channels`` names pick the int16 full scale.

        Raises
        ------
        ValueError
            If ``values`` is not a non-empty (S, C) array of finite values, or ``channels`` has
            another length than C.
        """
        v = V.check_array_2d("values", values)
        if v.shape[0] == 0:
            raise ValueError("values is empty; expected at least one sample")
        v = np.ascontiguousarray(v, dtype=np.float32)
        V.check_finite_array("values", v)
        if channels is not None and len(channels) != v.shape[1]:
            raise ValueError(f"channels has {len(channels)} names, values has {v.shape[1]} columns")
        return self._compute_encode(v, channels)

    def _compute_encode(self, v: np.ndarray, channels) -> bytes:
        S, C = v.shape
        head = _MAGIC + bytes([_IDS[self.method], self.bits if self.method == "kbit-zstd" else 0, C, 0]) + \
            int(S).to_bytes(4, "little")
        vc = np.ascontiguousarray(v.T)                                    # (S, C) -> (C, S) channel-major
        if self.method == "float32":
            return head + vc.astype("<f4").tobytes()
        if self.method == "float16":
            return head + vc.astype("<f2").tobytes()
        if self.method == "delta-zstd":
            u = vc.view(np.uint32)
            d = np.concatenate([u[:, :1], np.diff(u, axis=1)], axis=1).astype("<u4")   # mod 2**32
            return head + self._zstd(d.tobytes())
        if self.method == "int16-zstd":
            fs = self._full_scale(v, channels)
            codes = np.clip(np.rint(vc / fs[:, None] * 32767.0), -32768, 32767).astype(np.int64)
            return head + fs.astype("<f4").tobytes() + self._zstd(_delta_codes(codes))
        lo, hi = vc.min(axis=1), vc.max(axis=1)
        levels = (1 << self.bits) - 1
        span = np.where(hi > lo, hi - lo, 1.0).astype(np.float64)
        codes = np.rint((vc - lo[:, None]) / span[:, None] * levels).astype(np.int64)
        return head + np.concatenate([lo, hi]).astype("<f4").tobytes() + self._zstd(_delta_codes(codes))

    def decode(self, data: bytes) -> np.ndarray:
        """Decode bytes written by :meth:`encode` (any method) to (S, C) float32.

        Raises
        ------
        ValueError
            If the bytes are not a classic stream or are truncated.
        """
        import zstandard

        if len(data) < 12 or data[:4] != _MAGIC:
            raise ValueError(f"bytes are not a classic codec stream (magic {bytes(data[:4])!r}, expected {_MAGIC!r})")
        method = CLASSIC_METHODS[data[4]] if data[4] < len(CLASSIC_METHODS) else None
        if method is None:
            raise ValueError(f"classic stream has unknown method id {data[4]}")
        bits, C, S = data[5], data[6], int.from_bytes(data[8:12], "little")
        body = data[12:]
        try:
            if method in ("float32", "float16"):
                dt = "<f4" if method == "float32" else "<f2"
                vc = np.frombuffer(body, dtype=dt).reshape(C, S).astype(np.float32)
            elif method == "delta-zstd":
                d = np.frombuffer(zstandard.ZstdDecompressor().decompress(body), "<u4").reshape(C, S)
                vc = np.cumsum(d.astype(np.uint32), axis=1, dtype=np.uint32).view(np.float32)
            elif method == "int16-zstd":
                fs = np.frombuffer(body[:4 * C], "<f4").astype(np.float64)
                codes = _undelta_codes(zstandard.ZstdDecompressor().decompress(body[4 * C:]), C, S)
                vc = (codes * fs[:, None] / 32767.0).astype(np.float32)
            else:
                side = np.frombuffer(body[:8 * C], "<f4").astype(np.float64)
                lo, hi = side[:C], side[C:]
                codes = _undelta_codes(zstandard.ZstdDecompressor().decompress(body[8 * C:]), C, S)
                span = np.where(hi > lo, hi - lo, 0.0)
                vc = (lo[:, None] + codes * span[:, None] / ((1 << bits) - 1)).astype(np.float32)
        except (ValueError, zstandard.ZstdError) as e:
            raise ValueError(f"classic {method} stream is truncated or corrupt ({type(e).__name__}: {e})") from e
        return np.ascontiguousarray(vc.T)                                 # (C, S) -> (S, C)

    def _full_scale(self, v: np.ndarray, channels) -> np.ndarray:
        fs = np.maximum(np.abs(v).max(axis=0), 1e-12).astype(np.float64)
        for i, name in enumerate(channels or ()):
            n = name.lower()
            if n.startswith("acc"):
                fs[i] = self.acc_full_scale_g
            elif n.startswith("gyr"):
                fs[i] = self.gyr_full_scale_rad_s
        return fs

    def _zstd(self, raw: bytes) -> bytes:
        import zstandard

        return zstandard.ZstdCompressor(level=self.zstd_level).compress(raw)


def _delta_codes(codes: np.ndarray) -> bytes:
    """Integer codes (C, S) -> delta along time as int32 bytes (first column kept)."""
    d = np.concatenate([codes[:, :1], np.diff(codes, axis=1)], axis=1)
    return d.astype("<i4").tobytes()


def _undelta_codes(raw: bytes, C: int, S: int) -> np.ndarray:
    d = np.frombuffer(raw, "<i4").reshape(C, S).astype(np.int64)
    return np.cumsum(d, axis=1).astype(np.float64)


def parse_classic(name: str) -> ClassicCodec:
    """``"float32"``, ``"float16"``, ``"int16-zstd"``, ``"delta-zstd"`` or ``"kbit-zstd:K"`` -> codec.

    Raises
    ------
    ValueError
        If the name is none of those.
    """
    if name.startswith("kbit-zstd:"):
        try:
            return ClassicCodec("kbit-zstd", bits=int(name.split(":", 1)[1]))
        except ValueError:
            raise ValueError(f"classic method {name!r}: expected kbit-zstd:K with an integer K in 2..16") from None
    if name not in CLASSIC_METHODS or name == "kbit-zstd":
        raise ValueError(f"classic method {name!r} is unknown; expected one of float32, float16, int16-zstd, "
                         "delta-zstd, kbit-zstd:K")
    return ClassicCodec(name)
