"""Learned sensor codec: analysis/synthesis transforms, a factorized entropy model, the codec bundle.

The codec compresses the continuous stream cut into non-overlapping segments of
``segment_samples`` samples (not the overlapping classifier windows). Per
segment, in normalized units ``(x - mean) / std``:

* analysis transform ``g_a``: strided ``Conv1d`` layers, (N, C, T) -> latent
  ``y`` of shape (N, L, T / prod(strides));
* quantization: ``y + u``, ``u ~ U(-1/2, 1/2)`` while training (additive
  uniform noise, the differentiable proxy), ``round(y)`` at inference
  (Ballé, Laparra, Simoncelli, "End-to-end optimized image compression",
  ICLR 2017, Sec. 2);
* entropy model: a factorized prior, one learned non-parametric density per
  latent channel (Ballé, Minnen, Singh, Hwang, Johnston, "Variational image
  compression with a scale hyperprior", ICLR 2018, Sec. 2 and Appendix 6.1);
  the likelihood of an integer ``k`` is ``c(k + 1/2) - c(k - 1/2)`` with
  ``c`` the learned cumulative; rate in bits is ``-sum(log2(likelihood))``;
* synthesis transform ``g_s``: transposed convs back to (N, C, T).

For real bitstreams (:mod:`imutune.codec.bitstream`) each channel's learned
density is quantized once to integer frequencies (:class:`EntropyTables`,
16-bit precision, an escape symbol for values outside the tabulated support),
so encoder and decoder use bit-identical models.

A :class:`LearnedCodec` is the trained model plus its preprocessing contract
(channels, sample rate, segment length, normalization) and tables; it is saved
as ``codec.safetensors`` + ``codec.json`` and identified by
:func:`codec_hash`.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import _validation as V
from .._io import sha256_bytes, write_bytes_atomic, write_json_atomic
from ..signal.windows import Normalizer

__all__ = ["CodecConfig", "FactorizedPrior", "SensorCodec", "EncoderGraph", "EntropyTables", "LearnedCodec",
           "build_tables", "new_codec", "codec_hash", "codec_contract", "save_codec", "load_codec", "TABLE_PRECISION_BITS",
           "ESCAPE_BITS"]

#: Integer frequencies of every table sum to ``2 ** TABLE_PRECISION_BITS``.
TABLE_PRECISION_BITS = 16
#: An escaped latent value is coded with a uniform model over ``2 ** ESCAPE_BITS`` values (int16 range).
ESCAPE_BITS = 16
_CODEC_FORMAT = "imutune.codec"
_CODEC_VERSION = 1


@dataclass(frozen=True)
class CodecConfig:
    """Architecture of the learned codec."""

    in_channels: int = 6                   # C, sensor channels
    segment_samples: int = 100             # T, samples per codec segment (2 s at 50 Hz)
    hidden_channels: int = 24              # width of the conv layers
    latent_channels: int = 8               # L, latent channels
    strides: tuple[int, ...] = (2, 2)      # temporal downsampling per analysis layer
    kernel_size: int = 5                   # conv kernel in samples (odd)
    prior_filters: tuple[int, ...] = (3, 3, 3)  # hidden sizes of the per-channel density (Ballé 2018, App. 6.1)
    likelihood_bound: float = 1e-9         # likelihood floor in the rate term
    latent_gain: float = 8.0               # init only: last analysis conv scaled by this, first synthesis conv by 1/this
    table_support: int = 1024              # tables cover integers in [-support, support] before tail trimming
    table_tail_mass: float = 1e-7          # probability mass left to the escape symbol on each side

    def __post_init__(self) -> None:
        V.check_int_at_least("in_channels", self.in_channels, 1)
        V.check_int_at_least("segment_samples", self.segment_samples, 4)
        V.check_int_at_least("hidden_channels", self.hidden_channels, 1)
        V.check_int_at_least("latent_channels", self.latent_channels, 1)
        V.check_int_at_least("table_support", self.table_support, 1)
        V.check_positive("latent_gain", self.latent_gain, where="CodecConfig")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd integer >= 1, got {self.kernel_size!r}")
        if not self.strides or any(int(s) < 1 for s in self.strides):
            raise ValueError(f"strides must be a non-empty tuple of integers >= 1, got {self.strides!r}")
        if self.segment_samples % self.downsampling:
            raise ValueError(f"segment_samples={self.segment_samples} must be divisible by prod(strides)="
                             f"{self.downsampling} (strides {tuple(self.strides)})")
        V.check_fraction("table_tail_mass", self.table_tail_mass, high_closed=False)
        V.check_fraction("likelihood_bound", self.likelihood_bound, high_closed=False)

    @property
    def downsampling(self) -> int:
        """prod(strides): samples per latent position."""
        return int(np.prod([int(s) for s in self.strides]))

    @property
    def latent_samples(self) -> int:
        """T' = T / prod(strides), latent positions per segment."""
        return self.segment_samples // self.downsampling

    @classmethod
    def from_dict(cls, d: dict) -> "CodecConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class FactorizedPrior(nn.Module):
    """Per-channel non-parametric density of Ballé et al. (ICLR 2018, Appendix 6.1).

    The cumulative of channel ``c`` is ``sigmoid(f_K(... f_1(x)))`` with
    ``f_k(x) = h_k(softplus(H_k) x + b_k)`` and ``h_k(x) = x + tanh(a_k) * tanh(x)``
    (the last layer without ``h``): monotone by construction.
    """

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0,
                 likelihood_bound: float = 1e-9) -> None:
        super().__init__()
        self.channels = int(channels)
        self.likelihood_bound = float(likelihood_bound)
        dims = (1, *[int(f) for f in filters], 1)
        scale = init_scale ** (1.0 / (len(dims) - 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(dims) - 1):
            init = math.log(math.expm1(1.0 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.empty(channels, dims[i + 1], 1).uniform_(-0.5, 0.5)))
            if i < len(dims) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def logits_cumulative(self, v: torch.Tensor) -> torch.Tensor:
        """Logit of the cumulative at ``v`` of shape (L, 1, M); returns (L, 1, M)."""
        x = v
        for i, (m, b) in enumerate(zip(self.matrices, self.biases)):
            x = torch.matmul(F.softplus(m), x) + b                        # (L, d_i, M) -> (L, d_{i+1}, M)
            if i < len(self.factors):
                x = x + torch.tanh(self.factors[i]) * torch.tanh(x)
        return x

    def likelihood(self, y: torch.Tensor) -> torch.Tensor:
        """Probability mass of the unit interval around each element of ``y`` (N, L, T'); same shape."""
        n, c, t = y.shape
        v = y.permute(1, 0, 2).reshape(c, 1, n * t)                      # (N, L, T') -> (L, 1, N*T')
        lower = self.logits_cumulative(v - 0.5)
        upper = self.logits_cumulative(v + 0.5)
        sign = -torch.sign(lower + upper).detach()                       # evaluate in the tail with more precision
        lik = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        lik = lik.reshape(c, n, t).permute(1, 0, 2)                      # (L, 1, N*T') -> (N, L, T')
        return lik.clamp_min(self.likelihood_bound)

    @torch.no_grad()
    def cdf_at(self, points: np.ndarray) -> np.ndarray:
        """Cumulative of every channel at ``points`` (M,); returns (L, M) float64."""
        v = torch.as_tensor(np.asarray(points, np.float32)).reshape(1, 1, -1).expand(self.channels, 1, -1)
        return torch.sigmoid(self.logits_cumulative(v.contiguous()).double()).reshape(self.channels, -1).numpy()


def _conv(c_in: int, c_out: int, k: int, stride: int = 1) -> nn.Conv1d:
    return nn.Conv1d(c_in, c_out, k, stride, k // 2)


class SensorCodec(nn.Module):
    """Analysis transform, factorized prior and synthesis transform on normalized segments."""

    def __init__(self, config: CodecConfig = CodecConfig()) -> None:
        super().__init__()
        self.config = config
        c, h, k, L = config.in_channels, config.hidden_channels, config.kernel_size, config.latent_channels
        layers: list[nn.Module] = []
        c_prev = c
        for s in config.strides:
            layers += [_conv(c_prev, h, k, int(s)), nn.ReLU()]
            c_prev = h
        layers.append(_conv(c_prev, L, k))
        self.analysis = nn.Sequential(*layers)
        syn: list[nn.Module] = [_conv(L, h, k), nn.ReLU()]
        for s in reversed(config.strides):
            s = int(s)
            syn += [nn.ConvTranspose1d(h, h, s, s), nn.ReLU(), _conv(h, h, k), nn.ReLU()] if s > 1 else \
                   [_conv(h, h, k), nn.ReLU()]
        syn.append(_conv(h, c, k))
        self.synthesis = nn.Sequential(*syn)
        self.prior = FactorizedPrior(L, config.prior_filters, likelihood_bound=config.likelihood_bound)
        if config.latent_gain != 1.0:   # start with a finer effective quantization step (init only)
            with torch.no_grad():
                last, first = self.analysis[-1], self.synthesis[0]
                last.weight.mul_(config.latent_gain)
                last.bias.mul_(config.latent_gain)
                first.weight.div_(config.latent_gain)

    def quantize(self, y: torch.Tensor, *, noise: bool) -> torch.Tensor:
        """``y + U(-1/2, 1/2)`` if ``noise`` (training), else ``round(y)``."""
        if noise:
            return y + torch.empty_like(y).uniform_(-0.5, 0.5)
        return torch.round(y)

    def forward(self, x: torch.Tensor, *, noise: bool | None = None) -> dict[str, torch.Tensor]:
        """Code normalized segments ``x`` of shape (N, C, T).

        Returns ``{"x_hat": (N, C, T), "y_hat": (N, L, T'), "bits": scalar tensor}``; ``noise``
        defaults to ``self.training``.
        """
        noise = self.training if noise is None else noise
        y = self.analysis(x)                                             # (N, C, T) -> (N, L, T')
        y_hat = self.quantize(y, noise=noise)
        bits = -torch.log2(self.prior.likelihood(y_hat)).sum()
        return {"x_hat": self.synthesis(y_hat), "y_hat": y_hat, "bits": bits}


class EncoderGraph(nn.Module):
    """The phone-side encoder: raw segments (N, C, T) in physical units -> rounded latents (N, L * T').

    Normalization is a depthwise 1x1 ``Conv1d`` (weight ``1/std``, bias ``-mean/std``) so the
    whole graph is convs and elementwise ops (the Conv1d -> Conv2d rewrite of
    :func:`imutune.deploy.export.conv1d_as_conv2d` applies); the output is flattened
    channel-major, ``out[n, l * T' + t] = round(y[n, l, t])``, as float32.
    """

    def __init__(self, codec: SensorCodec, mean: np.ndarray, std: np.ndarray) -> None:
        import copy

        super().__init__()
        c = codec.config.in_channels
        norm = nn.Conv1d(c, c, 1, groups=c, bias=True)
        with torch.no_grad():
            norm.weight.copy_(torch.as_tensor(1.0 / np.asarray(std, np.float32)).reshape(c, 1, 1))
            norm.bias.copy_(torch.as_tensor(-np.asarray(mean, np.float32) / np.asarray(std, np.float32)))
        self.net = nn.Sequential(norm, *copy.deepcopy(codec.analysis))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(torch.round(self.net(x)), 1)               # (N, L, T') -> (N, L*T')


@dataclass(frozen=True, eq=False)
class EntropyTables:
    """Integer frequency tables of the latent channels.

    ``offsets`` (L,) int64: the integer coded by symbol 0 of channel ``l``;
    ``freqs``: L arrays of int64, each of length ``n_l + 1`` and sum
    ``2 ** TABLE_PRECISION_BITS``: symbols ``0 .. n_l - 1`` code the integers
    ``offsets[l] .. offsets[l] + n_l - 1``; symbol ``n_l`` is the escape
    (the value then follows with a uniform 16-bit model).
    """

    offsets: np.ndarray
    freqs: tuple[np.ndarray, ...]

    def probabilities(self, channel: int) -> np.ndarray:
        """Float64 probabilities of channel ``channel`` (exact ratios of the integer frequencies)."""
        f = self.freqs[channel]
        return f.astype(np.float64) / float(f.sum())

    def bits(self, y_int: np.ndarray) -> float:
        """Ideal code length in bits of integer latents (N, L, T') under these tables (escapes included)."""
        total = 0.0
        for c in range(len(self.freqs)):
            p = self.probabilities(c)
            n = p.size - 1
            idx = y_int[:, c, :].astype(np.int64).ravel() - int(self.offsets[c])
            esc = (idx < 0) | (idx >= n)
            idx = np.where(esc, n, idx)
            total += float(-np.log2(p[idx]).sum()) + ESCAPE_BITS * int(esc.sum())
        return total


def build_tables(prior: FactorizedPrior, config: CodecConfig) -> EntropyTables:
    """Quantize each channel's learned density to integer frequencies (16-bit precision).

    The pmf of integer ``k`` is ``c(k + 1/2) - c(k - 1/2)`` on ``[-support, support]``; the support
    is trimmed to the integers between the ``table_tail_mass`` quantiles, the mass outside goes to
    the escape symbol, and every symbol keeps a frequency of at least 1.
    """
    R = int(config.table_support)
    ks = np.arange(-R, R + 1)
    cdf = prior.cdf_at(np.concatenate([ks - 0.5, [R + 0.5]]))          # (L, 2R + 2)
    total = 1 << TABLE_PRECISION_BITS
    offsets, freqs = [], []
    for c in range(cdf.shape[0]):
        cc = np.maximum.accumulate(cdf[c])
        pmf = np.diff(cc)                                               # (2R + 1,)
        lo = int(np.searchsorted(cc[1:], config.table_tail_mass))       # first k with cdf(k + 1/2) >= tail
        hi = int(np.searchsorted(cc[:-1], 1.0 - config.table_tail_mass))  # last k with cdf(k - 1/2) < 1 - tail
        lo, hi = min(lo, 2 * R), max(min(hi, 2 * R), lo)
        p = pmf[lo:hi + 1]
        esc = max(1.0 - float(p.sum()), 0.0)
        probs = np.concatenate([p, [esc]])
        n = probs.size
        if n > total // 2:
            raise ValueError(f"latent channel {c} needs {n} table entries; expected at most {total // 2} "
                             "(the learned density is too wide for 16-bit tables)")
        probs = probs / probs.sum()
        f = np.floor(probs * (total - n)).astype(np.int64) + 1            # every symbol >= 1
        f[int(np.argmax(f))] += total - int(f.sum())
        offsets.append(int(ks[lo]))
        freqs.append(f)
    return EntropyTables(np.asarray(offsets, np.int64), tuple(freqs))


@dataclass(frozen=True, eq=False)
class LearnedCodec:
    """A trained codec with its preprocessing contract and integer entropy tables."""

    model: SensorCodec
    channels: tuple[str, ...]
    sample_rate_hz: float
    normalizer: Normalizer
    tables: EntropyTables
    info: dict = field(default_factory=dict)   # training mode, lambda, beta, loss history, provenance
    #: Typical ``.imz`` header content, part of the codec's identity (hashed): ``class_names`` (list of str)
    #: and ``units`` (channel -> unit) of the training data. The header dictionary holds them, so an upload
    #: with the same class names and units stores them in a few bytes (empty: none, as before).
    header_hints: dict = field(default_factory=dict)

    @property
    def config(self) -> CodecConfig:
        return self.model.config

    @property
    def segment_samples(self) -> int:
        return self.model.config.segment_samples

    @property
    def segment_s(self) -> float:
        return self.segment_samples / self.sample_rate_hz

    def encoder_graph(self) -> EncoderGraph:
        """The exportable encoder (raw (N, C, T) -> rounded latents (N, L*T'))."""
        return EncoderGraph(self.model, self.normalizer.mean, self.normalizer.std)

    def with_tables(self) -> "LearnedCodec":
        """A copy whose tables are rebuilt from the current prior (after training)."""
        return LearnedCodec(self.model, self.channels, self.sample_rate_hz, self.normalizer,
                            build_tables(self.model.prior, self.config), dict(self.info), dict(self.header_hints))

    def with_header_hints(self, class_names: Sequence[str] | None = None,
                          units: dict | Sequence[str | None] | None = None) -> "LearnedCodec":
        """A copy whose ``.imz`` header dictionary holds these class names and units (channel -> unit, or one
        unit per channel); a new codec identity (:func:`codec_hash` covers the hints).

        Raises
        ------
        ValueError
            If ``units`` is a sequence whose length is not the number of channels, or names an unknown channel.
        """
        return LearnedCodec(self.model, self.channels, self.sample_rate_hz, self.normalizer, self.tables,
                            dict(self.info), _hints(class_names, units, self.channels))


def _hints(class_names, units, channels) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if class_names:
        out["class_names"] = [str(c) for c in class_names]
    if units is not None and not isinstance(units, dict):
        units = list(units)
        if len(units) != len(channels):
            raise ValueError(f"header hint units has {len(units)} entries; expected {len(channels)} (one per "
                             f"channel {list(channels)})")
        units = dict(zip(channels, units))
    if units:
        unknown = sorted(set(units) - set(channels))
        if unknown:
            raise ValueError(f"header hint units name channels {unknown}; the codec has {list(channels)}")
        if all(units.get(c) is not None for c in channels):
            out["units"] = {str(c): str(units[c]) for c in channels}
    return out


def codec_contract(codec: LearnedCodec) -> dict[str, Any]:
    """The preprocessing contract every ``.imz`` header carries: channels, sample rate, segment length,
    normalization (float32 values), latent shape and layout (``"NCT segments, edge-padded"``:
    non-overlapping channel-first segments of the stream, the last one padded by repeating the final
    sample)."""
    return {"channels": list(codec.channels), "sample_rate_hz": float(codec.sample_rate_hz),
            "segment_samples": int(codec.segment_samples), "latent_channels": int(codec.config.latent_channels),
            "latent_samples": int(codec.config.latent_samples),
            "norm_mean": _f32_list(codec.normalizer.mean), "norm_std": _f32_list(codec.normalizer.std),
            "layout": "NCT segments, edge-padded"}


def _f32_list(a: np.ndarray) -> list[float]:
    """Shortest decimals that round-trip each float32 (compact JSON, exact on reload)."""
    return [float(str(v)) for v in np.asarray(a, np.float32)]


def _state_bytes(codec: LearnedCodec) -> bytes:
    from safetensors.torch import save as st_save

    state = {f"model.{k}": v.detach().cpu().contiguous() for k, v in codec.model.state_dict().items()}
    state["tables.offsets"] = torch.as_tensor(codec.tables.offsets, dtype=torch.int64)
    for c, f in enumerate(codec.tables.freqs):
        state[f"tables.freqs.{c}"] = torch.as_tensor(f, dtype=torch.int64)
    return st_save(state)


def _meta(codec: LearnedCodec) -> dict[str, Any]:
    meta = {"format": _CODEC_FORMAT, "version": _CODEC_VERSION, "config": asdict(codec.config),
            "contract": codec_contract(codec)}
    if codec.header_hints:                     # absent when empty: codecs saved before hints keep their hash
        meta["header_hints"] = codec.header_hints
    return meta


def codec_hash(codec: LearnedCodec) -> str:
    """Hex SHA-256 identifying a codec: its weights, tables, config and contract.

    Two codecs share a hash only if they code bit-identically; the ``.imz`` decoder refuses a
    stream whose header carries another hash.
    """
    meta = json.dumps(_meta(codec), sort_keys=True).encode("utf-8")
    return sha256_bytes(_state_bytes(codec) + b"\0" + meta)


def save_codec(codec: LearnedCodec, out_dir: str | os.PathLike) -> Path:
    """Write ``codec.safetensors`` (weights and tables) and ``codec.json`` (config, contract, hash,
    info) into ``out_dir``, atomically; returns the folder."""
    out = Path(out_dir)
    write_bytes_atomic(out / "codec.safetensors", _state_bytes(codec))
    write_json_atomic(out / "codec.json", {**_meta(codec), "sha256": codec_hash(codec), "info": codec.info})
    return out


def load_codec(path: str | os.PathLike) -> LearnedCodec:
    """Read a codec folder (or its ``codec.json``) written by :func:`save_codec`.

    Raises
    ------
    FileNotFoundError
        If the folder, ``codec.json`` or ``codec.safetensors`` is missing.
    ValueError
        If the metadata is incomplete, the weights do not fit the config, or the recomputed hash
        differs from the recorded one (the files were changed or mixed).
    """
    from safetensors.torch import load_file

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"codec {str(p)!r} does not exist; expected a folder with codec.json and "
                                "codec.safetensors (written by imutune codec train)")
    folder = p if p.is_dir() else p.parent
    meta_path = V.check_file(folder / "codec.json", what="codec metadata")
    weights_path = V.check_file(folder / "codec.safetensors", what="codec weights")
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != _CODEC_FORMAT:
            raise KeyError(f"format is {meta.get('format')!r}, expected {_CODEC_FORMAT!r}")
        config = CodecConfig.from_dict(meta["config"])
        contract = meta["contract"]
        norm = Normalizer(np.asarray(contract["norm_mean"], np.float32), np.asarray(contract["norm_std"], np.float32))
        channels = tuple(contract["channels"])
        sr = float(contract["sample_rate_hz"])
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"codec metadata {str(meta_path)!r} is incomplete or invalid ({type(e).__name__}: {e})") from e
    try:
        state = load_file(str(weights_path))
        model = SensorCodec(config)
        model.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
        offsets = state["tables.offsets"].numpy().astype(np.int64)
        freqs = tuple(state[f"tables.freqs.{c}"].numpy().astype(np.int64) for c in range(config.latent_channels))
    except Exception as e:
        raise ValueError(f"codec weights {str(weights_path)!r} do not match the config in {str(meta_path)!r} "
                         f"({type(e).__name__}: {e})") from e
    model.eval()
    hints = meta.get("header_hints") or {}
    if not isinstance(hints, dict):
        raise ValueError(f"codec metadata {str(meta_path)!r}: header_hints is {type(hints).__name__}; expected an "
                         "object with class_names and units")
    codec = LearnedCodec(model, channels, sr, norm, EntropyTables(offsets, freqs), meta.get("info", {}), hints)
    h = codec_hash(codec)
    if meta.get("sha256") != h:
        raise ValueError(f"codec {str(folder)!r}: recorded sha256 {meta.get('sha256')!r} differs from the files' "
                         f"{h!r}; codec.json and codec.safetensors do not belong together")
    return codec


def new_codec(config: CodecConfig, channels: tuple[str, ...], sample_rate_hz: float, normalizer: Normalizer, *,
              seed: int = 0, info: dict | None = None, header_hints: dict | None = None) -> LearnedCodec:
    """An untrained codec (seeded init) with tables from its initial prior."""
    if len(channels) != config.in_channels:
        raise ValueError(f"channels has {len(channels)} names {list(channels)}; config.in_channels is "
                         f"{config.in_channels}")
    V.check_positive("sample_rate_hz", sample_rate_hz)
    torch.manual_seed(seed)
    model = SensorCodec(config).eval()
    return LearnedCodec(model, tuple(channels), float(sample_rate_hz), normalizer,
                        build_tables(model.prior, config), dict(info or {}),
                        _hints((header_hints or {}).get("class_names"), (header_hints or {}).get("units"), channels))
