"""Real bitstreams of the learned codec: range coding with ``constriction`` and the ``.imz`` container.

The rounded latents of every segment are entropy-coded with
``constriction.stream.queue.RangeEncoder`` under the codec's integer
frequency tables (:class:`imutune.codec.model.EntropyTables`; one
``constriction.stream.model.Categorical`` per latent channel, built from
exact ratios of the integers, so encoder and decoder share bit-identical
models). Per segment, channel by channel: the T' symbols of channel ``l``,
then the values of the escaped ones (uniform over the int16 range; latents
are clipped to it). After the last segment the segment count is coded
(uniform over ``2**24``) as an end sentinel, so a payload that holds more or
fewer segments than its header says is refused.

``.imz`` container (all integers little-endian)::

    offset  size  field
    0       4     magic b"IMZ1"
    4       16    codec id: the first 128 bits of the encoding codec's SHA-256
                  (:func:`imutune.codec.model.codec_hash`)
    20      2     H: uint16, length of the compressed header
    22      H     header: UTF-8 JSON, zstd-compressed with a raw-content dictionary
                  (the codec's header template: its contract in canonical JSON and its
                  header hints, the class names and units of its training data:
                  ``LearnedCodec.header_hints``), so the full contract, and class names
                  and units equal to the hints, cost a few bytes per stream
    22 + H  4 W   payload: W uint32 words of the range coder

Header JSON fields: ``format`` (``"imutune.imz"``), ``version`` (1),
``contract`` (channels, sample rate, segment samples, normalization, latent
shape, layout: :func:`imutune.codec.model.codec_contract`), ``n_segments``,
``n_samples`` (stream length before padding the last segment),
``payload_words`` (W), ``payload_crc32`` and ``recording`` (``user``,
``name``, ``class_names``, ``labels_rle``: per-sample labels as
``[label, run length]`` pairs, and ``units``: the channel -> unit mapping the
recording declares in ``meta["units"]``, or null). The codec id is checked before the header is
read, so a stream from another codec is refused by name.

The decoder refuses, with a ``ValueError`` naming the stream: a file that is
not ``.imz``; a header or payload shorter than recorded (truncated); a
payload whose CRC differs; a stream from another codec (hash or contract
mismatch); a segment count that disagrees with the header or with
``n_samples``. The encoder refuses NaN/Inf input. Files are written
atomically (:mod:`imutune._io`), so nothing half-written is left behind.
"""
from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .. import _validation as V
from .._io import write_bytes_atomic
from ..data.recordings import Recording
from .model import ESCAPE_BITS, EntropyTables, LearnedCodec, codec_contract, codec_hash

__all__ = ["IMZ_MAGIC", "LatentCoder", "StreamEncoder", "encode_values", "encode_recording", "decode_stream",
           "decode_latents", "read_container", "pack_container", "codec_id", "close_stream", "write_imz", "read_imz", "segment_values",
           "DecodedStream", "rate_estimate_bits"]

IMZ_MAGIC = b"IMZ1"
_FORMAT = "imutune.imz"
_VERSION = 1
_COUNT_BITS = 24
_ID_BYTES = 16
_FIXED = 4 + _ID_BYTES + 2
_ESC_OFFSET = 1 << (ESCAPE_BITS - 1)


# --------------------------------------------------------------------------- entropy coding of latents


class LatentCoder:
    """Range-codes integer latents of shape (L, T') per segment under fixed integer tables."""

    def __init__(self, tables: EntropyTables) -> None:
        import constriction

        m = constriction.stream.model
        self.tables = tables
        self.offsets = np.asarray(tables.offsets, np.int64)
        self.n = [int(f.size) - 1 for f in tables.freqs]
        self.models = [m.Categorical(tables.probabilities(c), perfect=False) for c in range(len(tables.freqs))]
        self.escape = m.Uniform(1 << ESCAPE_BITS)
        self.count = m.Uniform(1 << _COUNT_BITS)

    def encode_segment(self, encoder, y: np.ndarray) -> None:
        """Append the symbols of one segment's integer latents ``y`` (L, T') to ``encoder``."""
        for c, model in enumerate(self.models):
            idx = y[c].astype(np.int64) - self.offsets[c]
            esc = (idx < 0) | (idx >= self.n[c])
            if esc.any():
                encoder.encode(np.where(esc, self.n[c], idx).astype(np.int32), model)
                raw = np.clip(y[c][esc].astype(np.int64) + _ESC_OFFSET, 0, (1 << ESCAPE_BITS) - 1)
                encoder.encode(raw.astype(np.int32), self.escape)
            else:
                encoder.encode(idx.astype(np.int32), model)

    def decode_segment(self, decoder, latent_samples: int) -> np.ndarray:
        """Read one segment's integer latents (L, T') int64 from ``decoder``."""
        out = np.empty((len(self.models), latent_samples), np.int64)
        for c, model in enumerate(self.models):
            idx = np.asarray(decoder.decode(model, latent_samples), np.int64)
            esc = idx == self.n[c]
            vals = idx + self.offsets[c]
            if esc.any():
                raw = np.asarray(decoder.decode(self.escape, int(esc.sum())), np.int64)
                vals[esc] = raw - _ESC_OFFSET
            out[c] = vals
        return out


def segment_values(values: np.ndarray, segment_samples: int) -> np.ndarray:
    """Cut a (S, C) stream into non-overlapping segments (N, C, T), N = ceil(S / T); the last segment
    is padded by repeating the final sample."""
    S, C = values.shape
    n = -(-S // segment_samples)
    pad = n * segment_samples - S
    v = np.concatenate([values, np.repeat(values[-1:], pad, axis=0)]) if pad else values
    return np.ascontiguousarray(v.reshape(n, segment_samples, C).transpose(0, 2, 1))  # (S', C) -> (N, C, T)


class StreamEncoder:
    """Encode a stream segment by segment (as the phone does) into one range-coded payload.

    Parameters
    ----------
    codec : LearnedCodec
    encoder : backend, optional
        Anything with ``run(x (N, C, T) float32) -> (N, L*T') float32`` rounded latents: an
        ``OnnxBackend`` / ``PteBackend`` of the exported encoder; the eager
        :class:`~imutune.codec.model.EncoderGraph` by default.
    """

    def __init__(self, codec: LearnedCodec, *, encoder: Any = None) -> None:
        import constriction

        self.codec = codec
        self.coder = LatentCoder(codec.tables)
        self.range_encoder = constriction.stream.queue.RangeEncoder()
        self.n_segments = 0
        self._L, self._Tl = codec.config.latent_channels, codec.config.latent_samples
        if encoder is None:
            graph = codec.encoder_graph()

            def run(x: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    return graph(torch.from_numpy(x)).numpy()
            self._run = run
        else:
            self._run = encoder.run

    def latents(self, segments: np.ndarray) -> np.ndarray:
        """Integer latents (N, L, T') int64 of raw segments (N, C, T) float32."""
        flat = np.asarray(self._run(np.ascontiguousarray(segments, dtype=np.float32)))
        return np.rint(flat).astype(np.int64).reshape(-1, self._L, self._Tl)   # (N, L*T') -> (N, L, T')

    def push_segment(self, segment: np.ndarray) -> None:
        """Encode one raw segment (C, T) float32 in physical units."""
        self.push_latents(self.latents(segment[None])[0])

    def push_latents(self, y: np.ndarray) -> None:
        """Entropy-code one segment's integer latents (L, T')."""
        self.coder.encode_segment(self.range_encoder, y)
        self.n_segments += 1

    def finish(self) -> np.ndarray:
        """Close the payload (end sentinel: the segment count) and return its uint32 words."""
        if self.n_segments >= (1 << _COUNT_BITS):
            raise ValueError(f"a stream holds at most {(1 << _COUNT_BITS) - 1} segments, got {self.n_segments}")
        self.range_encoder.encode(np.array([self.n_segments], np.int32), self.coder.count)
        return np.asarray(self.range_encoder.get_compressed(), dtype="<u4")


def _labels_rle(labels: np.ndarray) -> list[list[int]]:
    if labels.size == 0:
        return []
    change = np.flatnonzero(np.diff(labels)) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [labels.size]]))
    return [[int(labels[s]), int(n)] for s, n in zip(starts, lengths)]


def _header_dictionary(codec: LearnedCodec) -> Any:
    """zstd raw-content dictionary: a header template holding the codec's contract and header hints
    (class names and units of its training data; hashed content only)."""
    import zstandard

    rec: dict[str, Any] = {"user": "subject", "name": "", "class_names": [], "labels_rle": [[0, 0]]}
    hints = codec.header_hints
    if hints:   # the training data's class names and units, in the order close_stream writes them
        rec = {"user": "subject", "name": "", "class_names": list(hints.get("class_names", [])),
               "labels_rle": [[0, 0]], "units": hints.get("units")}
    template = {"format": _FORMAT, "version": _VERSION, "contract": codec_contract(codec), "n_segments": 0,
                "n_samples": 0, "payload_words": 0, "payload_crc32": 0, "recording": rec}
    raw = json.dumps(template, separators=(",", ":")).encode("utf-8")
    return zstandard.ZstdCompressionDict(raw, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def codec_id(codec: LearnedCodec) -> bytes:
    """The 16-byte codec id written at offset 4 of every ``.imz`` stream."""
    return bytes.fromhex(codec_hash(codec)[:2 * _ID_BYTES])


def pack_container(header: dict[str, Any], payload: bytes, codec: LearnedCodec) -> bytes:
    """Bytes of an ``.imz`` container for ``codec``: magic, codec id, header length, header, payload."""
    import zstandard

    body = {k: v for k, v in header.items() if k != "codec_id"}
    zc = zstandard.ZstdCompressor(level=19, dict_data=_header_dictionary(codec), write_checksum=False,
                                  write_content_size=True, write_dict_id=False)
    h = zc.compress(json.dumps(body, separators=(",", ":")).encode("utf-8"))
    if len(h) >= 1 << 16:
        raise ValueError(f"compressed header has {len(h)} bytes; expected < 65536 (too many label changes?)")
    return IMZ_MAGIC + codec_id(codec) + len(h).to_bytes(2, "little") + h + payload


def read_container(data: bytes, codec: LearnedCodec, *, where: str = "stream") -> tuple[dict[str, Any], bytes]:
    """Split ``.imz`` bytes into (header dict, payload bytes), checking magic, codec id, lengths and CRC.

    The returned header has ``codec_id`` (hex) added.

    Raises
    ------
    ValueError
        If the magic is wrong, the stream comes from another codec, the header or payload is
        truncated or corrupt, or a header field is missing.
    """
    import zstandard

    if len(data) < _FIXED or data[:4] != IMZ_MAGIC:
        raise ValueError(f"{where} is not an .imz stream: it starts with {bytes(data[:4])!r} and has {len(data)} "
                         f"bytes; expected magic {IMZ_MAGIC!r} and at least {_FIXED} bytes")
    got_id, mine = bytes(data[4:20]).hex(), codec_id(codec).hex()
    if got_id != mine:
        raise ValueError(f"{where} was encoded by codec {got_id!r}, but this codec is {mine!r}; decode it with "
                         "the codec that wrote it")
    h_len = int.from_bytes(data[20:22], "little")
    if _FIXED + h_len > len(data):
        raise ValueError(f"{where} is truncated: its header needs {h_len} bytes but only {len(data) - _FIXED} follow")
    try:
        zd = zstandard.ZstdDecompressor(dict_data=_header_dictionary(codec))
        header = json.loads(zd.decompress(bytes(data[_FIXED:_FIXED + h_len])).decode("utf-8"))
    except Exception as e:
        raise ValueError(f"{where} has a corrupt header ({type(e).__name__}: {e})") from e
    need = ("format", "version", "contract", "n_segments", "n_samples", "payload_words", "payload_crc32",
            "recording")
    missing = [k for k in need if not isinstance(header, dict) or k not in header]
    if missing or header.get("format") != _FORMAT:
        raise ValueError(f"{where} header lacks fields {missing} or has another format; expected an {_FORMAT!r} "
                         f"header with {list(need)}")
    payload = bytes(data[_FIXED + h_len:])
    want = 4 * int(header["payload_words"])
    if len(payload) < want:
        raise ValueError(f"{where} is truncated: its payload has {len(payload)} bytes, the header records {want}")
    if len(payload) > want:
        raise ValueError(f"{where} has {len(payload) - want} bytes after the payload the header records ({want} "
                         "bytes); expected exactly one stream")
    if zlib.crc32(payload) != int(header["payload_crc32"]):
        raise ValueError(f"{where} payload fails its CRC-32 check (corrupt stream)")
    header["codec_id"] = got_id
    return header, payload


def encode_values(codec: LearnedCodec, values: np.ndarray, *, labels: np.ndarray | None = None,
                  class_names: Sequence[str] = ("unlabeled",), user: str = "", name: str = "",
                  units: dict | None = None, encoder: Any = None) -> bytes:
    """Encode a continuous stream into ``.imz`` bytes.

    Parameters
    ----------
    codec : LearnedCodec
    values : np.ndarray
        Array of shape (S, C), float32, physical units, the codec's channels in order, at its
        sample rate.
    labels : np.ndarray, optional
        Array of shape (S,), int64 per-sample labels (-1: unlabeled); all -1 by default.
    class_names, user, name, units
        Recording metadata carried in the header (``units``: channel -> unit, e.g. ``{"acc_x": "g"}``).
    encoder : backend, optional
        Exported encoder backend (see :class:`StreamEncoder`); eager torch by default.

    Returns
    -------
    bytes
        The ``.imz`` container (see the module docstring).

    Raises
    ------
    ValueError
        If ``values`` is not (S, C) with the codec's C, is empty, or holds NaN/Inf; if labels do not
        fit.
    """
    where = f"values of {name!r}" if name else "values"
    v = V.check_array_2d("values", values, n_cols=len(codec.channels), where=name or "")
    if v.shape[0] == 0:
        raise ValueError(f"{where} is empty; expected at least one sample")
    v = np.ascontiguousarray(v, dtype=np.float32)
    V.check_finite_array("values", v, where=name or "")
    lab = np.full(v.shape[0], -1, np.int64) if labels is None else \
        V.check_labels("labels", labels, len(class_names), where=name or "")
    if lab.shape[0] != v.shape[0]:
        raise ValueError(f"labels has {lab.shape[0]} entries, values {v.shape[0]} samples; expected one per sample")
    if units is not None and not isinstance(units, dict):
        units = dict(zip(codec.channels, units))
    return _compute_encode(codec, v, lab, tuple(str(c) for c in class_names), str(user), str(name), units, encoder)


def _compute_encode(codec, v, lab, class_names, user, name, units, encoder) -> bytes:
    segs = segment_values(v, codec.segment_samples)                       # (S, C) -> (N, C, T)
    enc = StreamEncoder(codec, encoder=encoder)
    for y in enc.latents(segs):
        enc.push_latents(y)
    return close_stream(enc, n_samples=v.shape[0], labels=lab, class_names=class_names, user=user, name=name,
                        units=units)


def close_stream(enc: StreamEncoder, *, n_samples: int, labels: np.ndarray, class_names: Sequence[str],
                 user: str, name: str, units: dict | None = None) -> bytes:
    """Finish a :class:`StreamEncoder` and wrap its payload in the ``.imz`` container."""
    words = enc.finish()
    payload = words.tobytes()
    header = {"format": _FORMAT, "version": _VERSION, "contract": codec_contract(enc.codec),
              "n_segments": int(enc.n_segments), "n_samples": int(n_samples),
              "payload_words": int(words.size), "payload_crc32": zlib.crc32(payload),
              "recording": {"user": str(user), "name": str(name), "class_names": [str(c) for c in class_names],
                            "labels_rle": _labels_rle(np.asarray(labels, np.int64)),
                            "units": None if units is None else {str(k): str(u) for k, u in units.items()}}}
    return pack_container(header, payload, enc.codec)


def encode_recording(codec: LearnedCodec, recording: Recording, *, encoder: Any = None) -> bytes:
    """Encode a :class:`~imutune.data.recordings.Recording` (channels and sample rate must be the codec's).

    Raises
    ------
    ValueError
        If the recording's channels or sample rate differ from the codec's contract.
    """
    if tuple(recording.channels) != tuple(codec.channels):
        raise ValueError(f"recording {recording.name!r} has channels {list(recording.channels)}; the codec "
                         f"expects {list(codec.channels)}")
    if not np.isclose(recording.sample_rate_hz, codec.sample_rate_hz, rtol=1e-9):
        raise ValueError(f"recording {recording.name!r} is sampled at {recording.sample_rate_hz} Hz; the codec "
                         f"expects {codec.sample_rate_hz} Hz (resample first)")
    units = recording.meta.get("units") if isinstance(recording.meta, dict) else None
    return encode_values(codec, recording.values, labels=recording.labels, class_names=recording.class_names,
                         user=recording.user, name=recording.name, units=units, encoder=encoder)


@dataclass(frozen=True, eq=False)
class DecodedStream:
    """What :func:`decode_stream` returns: the recording, the integer latents and the sizes."""

    recording: Recording
    latents: np.ndarray          # (N, L, T') int64
    header: dict
    payload_bytes: int
    file_bytes: int


def decode_latents(codec: LearnedCodec, data: bytes, *, where: str = "stream") -> tuple[dict, np.ndarray]:
    """Check an ``.imz`` stream against ``codec`` and range-decode its latents.

    Returns
    -------
    (header, latents)
        The header dict and integer latents (N, L, T') int64.

    Raises
    ------
    ValueError
        See the module docstring: not ``.imz``, truncated, corrupt, another codec's stream, or a
        segment count that disagrees with the header.
    """
    import constriction

    header, payload = read_container(data, codec, where=where)
    contract = codec_contract(codec)
    if header["contract"] != contract:
        diff = sorted(k for k in set(contract) | set(header["contract"])
                      if contract.get(k) != header["contract"].get(k))
        raise ValueError(f"{where}: header contract differs from the codec's in {diff}")
    n_seg, n_samples = int(header["n_segments"]), int(header["n_samples"])
    T = codec.segment_samples
    if n_samples < 1 or n_seg != -(-n_samples // T):
        raise ValueError(f"{where}: header records {n_seg} segments for {n_samples} samples; expected "
                         f"ceil({n_samples} / {T}) = {-(-max(n_samples, 0) // T)}")
    coder = LatentCoder(codec.tables)
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    dec = constriction.stream.queue.RangeDecoder(words)
    Tl = codec.config.latent_samples
    try:
        lat = np.stack([coder.decode_segment(dec, Tl) for _ in range(n_seg)])  # (N, L, T')
        count = int(np.asarray(dec.decode(coder.count, 1))[0])
    except Exception as e:  # the coder ran out of data: fewer segments than the header says
        raise ValueError(f"{where}: the payload holds fewer segments than the header's {n_seg} "
                         f"({type(e).__name__}: {e})") from e
    if count != n_seg or not dec.maybe_exhausted():
        raise ValueError(f"{where}: the payload's segment count disagrees with the header's {n_seg} segments "
                         f"(end sentinel reads {count}{'' if dec.maybe_exhausted() else ', data left over'})")
    return header, lat


def decode_stream(codec: LearnedCodec, data: bytes, *, where: str = "stream") -> DecodedStream:
    """Decode ``.imz`` bytes to a :class:`~imutune.data.recordings.Recording` in physical units.

    The decoded recording has the header's user, name (suffix ``"_decoded"`` is not added), class
    names and labels; ``meta = {"decoded_from": "imz", "codec_id": ..., "units": ...}`` (units if the header has them). Raises ``ValueError``
    as :func:`decode_latents`.
    """
    header, lat = decode_latents(codec, data, where=where)
    values = _synthesize(codec, lat)[: int(header["n_samples"])]
    rec = header["recording"]
    labels = np.concatenate([np.full(int(n), int(lv), np.int64) for lv, n in rec["labels_rle"]]) \
        if rec["labels_rle"] else np.zeros(0, np.int64)
    if labels.shape[0] != values.shape[0]:
        raise ValueError(f"{where}: header labels cover {labels.shape[0]} samples, the stream has {values.shape[0]}")
    meta = {"decoded_from": "imz", "codec_id": header["codec_id"]}
    if rec.get("units"):
        meta["units"] = dict(rec["units"])
    recording = Recording(values, labels, codec.sample_rate_hz, codec.channels, tuple(rec["class_names"]),
                          rec["user"], rec["name"], meta)
    return DecodedStream(recording, lat, header, 4 * int(header["payload_words"]), len(data))


@torch.no_grad()
def _synthesize(codec: LearnedCodec, lat: np.ndarray, batch: int = 512) -> np.ndarray:
    """Integer latents (N, L, T') -> physical stream (N * T, C) float32."""
    model = codec.model.eval()
    outs = [model.synthesis(torch.from_numpy(lat[s:s + batch].astype(np.float32))).numpy()
            for s in range(0, lat.shape[0], batch)]
    x = np.concatenate(outs)                                              # (N, C, T) normalized
    x = x * codec.normalizer.std[None, :, None] + codec.normalizer.mean[None, :, None]
    return np.ascontiguousarray(x.transpose(0, 2, 1).reshape(-1, x.shape[1]), dtype=np.float32)  # (N, C, T) -> (N*T, C)


@torch.no_grad()
def rate_estimate_bits(codec: LearnedCodec, values: np.ndarray) -> float:
    """The learned model's rate estimate ``-sum(log2 likelihood)`` of the rounded latents of a (S, C)
    stream (continuous density, not the integer tables), in bits."""
    segs = segment_values(np.asarray(values, np.float32), codec.segment_samples)
    xn = codec.normalizer(segs)
    out = codec.model.eval()(torch.from_numpy(xn), noise=False)
    return float(out["bits"])


def write_imz(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``.imz`` bytes atomically."""
    return write_bytes_atomic(path, data)


def read_imz(path: str | os.PathLike) -> bytes:
    """Read an ``.imz`` file (FileNotFoundError / ValueError naming it if absent or empty)."""
    return V.check_file(path, what="codec stream", suffixes=(".imz",)).read_bytes()
