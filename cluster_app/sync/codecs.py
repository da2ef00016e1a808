"""Lossy delta codecs with error feedback, as small policy objects (numpy only).

A codec turns one float32 leaf into an :class:`Encoded` payload and back. Each ``encode`` takes
the sender's *residual* (what earlier quantisation dropped), adds it to the new delta before
quantising, and returns the new residual, so the error is sent later instead of lost: error
feedback, which is what lets lossy compression converge like the uncompressed run.

Quantised codecs work on fixed blocks of ``block`` elements of the flattened leaf, each with its
own float32 scale (``max|x| / levels``). Sub-byte codecs pack their two's-complement codes
(``8 // bits`` per byte), so zero stays the all-zero byte: zstd, applied by the store,
entropy-codes the many near-zero values, and blocks that quantise to all zeros are never written
(zarr skips chunks equal to the fill value).

=========  =======================  ==================================================
codec      payload per element      worst-case error per element (before feedback)
=========  =======================  ==================================================
fp32       4 bytes                  0
fp16       2 bytes                  ~2**-11 relative (fp16 rounding)
int8       1 byte (+ scales)        scale / 2 = max|block| / 254
int4       4 bits, 15 levels        scale / 2 = max|block| / 14
int3       4 bits, 7 levels         scale / 2 = max|block| / 6 (zstd codes ~1.5 bits)
int2       2 bits, 3 levels         scale / 2 = max|block| / 2 (ternary)
=========  =======================  ==================================================

(+ one float32 scale per ``block`` elements for the quantised codecs.)
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from cluster_app.errors import SpecError

__all__ = ["CODECS", "Codec", "Encoded", "Fp16Codec", "Fp32Codec", "QuantCodec", "get_codec"]


@dataclass(frozen=True)
class Encoded:
    """One encoded leaf: ``q`` (flat payload), per-block ``scale`` (or None), original shape."""

    q: np.ndarray
    scale: np.ndarray | None
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return self.q.nbytes + (0 if self.scale is None else self.scale.nbytes)


class Codec(abc.ABC):
    """Base: ``encode(x, residual) -> (Encoded, new_residual)``, ``decode(Encoded) -> x``."""

    name = "codec"
    block = 4096

    @abc.abstractmethod
    def encode(
        self, x: np.ndarray, residual: np.ndarray | None = None
    ) -> tuple[Encoded, np.ndarray | None]:
        """Quantise ``x + residual``; return the payload and the new residual."""

    @abc.abstractmethod
    def decode(self, enc: Encoded) -> np.ndarray:
        """The float32 array a payload stands for."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Fp32Codec(Codec):
    """Lossless baseline: the float32 values themselves; no residual."""

    name = "fp32"

    def encode(self, x, residual=None):
        x = np.asarray(x, np.float32)
        return Encoded(x.ravel().copy(), None, x.shape), None

    def decode(self, enc):
        return enc.q.astype(np.float32).reshape(enc.shape)


class Fp16Codec(Codec):
    """Half precision with error feedback."""

    name = "fp16"

    def encode(self, x, residual=None):
        v = np.asarray(x, np.float32).ravel()
        if residual is not None:
            v = v + residual.ravel()
        q = v.astype(np.float16)
        return Encoded(q, None, np.shape(x)), (v - q.astype(np.float32)).reshape(np.shape(x))

    def decode(self, enc):
        return enc.q.astype(np.float32).reshape(enc.shape)


class QuantCodec(Codec):
    """Symmetric uniform quantisation to ``2 * levels + 1`` values per block, in ``bits`` bits
    per element (int8 payload for 8 bits, packed uint8 for 4 or 2)."""

    def __init__(self, name: str, levels: int, bits: int = 8, block: int = 4096) -> None:
        if bits not in (2, 4, 8):
            raise SpecError(f"bits={bits} must be 2, 4 or 8")
        if not 1 <= levels <= 2 ** (bits - 1) - 1:
            raise SpecError(
                f"levels={levels} must be in [1, {2 ** (bits - 1) - 1}] for {bits} bits"
            )
        if block % (8 // bits):
            raise SpecError(f"block={block} must be a multiple of {8 // bits}")
        self.name, self.levels, self.bits, self.block = name, levels, bits, block

    def __repr__(self) -> str:
        return (
            f"QuantCodec({self.name!r}, levels={self.levels}, bits={self.bits}, block={self.block})"
        )

    def _pack(self, q: np.ndarray) -> np.ndarray:
        """Codes in [-levels, levels] -> ``8 // bits`` two's-complement codes per byte."""
        if self.bits == 8:
            return q
        per = 8 // self.bits
        u = (np.pad(q, (0, (-len(q)) % per)).astype(np.uint8) & ((1 << self.bits) - 1)).reshape(
            -1, per
        )
        out = u[:, 0].copy()
        for j in range(1, per):
            out |= u[:, j] << (self.bits * j)
        return out

    def _unpack(self, packed: np.ndarray, n: int) -> np.ndarray:
        if self.bits == 8:
            return packed
        per, mask, sign = 8 // self.bits, (1 << self.bits) - 1, 1 << (self.bits - 1)
        u = np.stack([(packed >> (self.bits * j)) & mask for j in range(per)], axis=1).ravel()[:n]
        return ((u ^ sign).astype(np.int8) - np.int8(sign)).astype(np.int8)

    def _blocks(self, v: np.ndarray) -> np.ndarray:
        pad = (-len(v)) % self.block
        return np.pad(v, (0, pad)).reshape(-1, self.block)

    def encode(self, x, residual=None):
        shape = np.shape(x)
        flat = np.asarray(x, np.float32).ravel()
        res = None if residual is None else np.asarray(residual, np.float32).ravel()
        n = len(flat)
        q = np.empty(n, np.int8)
        scale = np.empty(-(-n // self.block), np.float32)
        new_res = np.empty(n, np.float32)
        # a slab of blocks at a time bounds the temporaries (~5 floats per element of a slab)
        slab = self.block * 64
        for lo in range(0, n, slab):
            v = flat[lo : lo + slab] + (0.0 if res is None else res[lo : lo + slab])
            b = self._blocks(v)
            s = np.abs(b).max(axis=1) / self.levels
            qs = np.clip(np.rint(b / np.where(s > 0, s, 1.0)[:, None]), -self.levels, self.levels)
            k = lo // self.block
            scale[k : k + len(s)] = s
            q[lo : lo + len(v)] = qs.ravel()[: len(v)]
            new_res[lo : lo + len(v)] = v - (qs * s[:, None]).ravel()[: len(v)]
        return Encoded(self._pack(q), scale, shape), new_res.reshape(shape)

    def decode(self, enc):
        n = int(np.prod(enc.shape, dtype=np.int64))
        q = self._unpack(enc.q, n).astype(np.float32)
        q = np.pad(q, (0, (-n) % self.block)).reshape(-1, self.block)
        assert enc.scale is not None  # encode() always stores a quantised payload's scales
        return (q * enc.scale[:, None]).ravel()[:n].reshape(enc.shape)


CODECS: dict[str, Codec] = {
    "fp32": Fp32Codec(),
    "fp16": Fp16Codec(),
    "int8": QuantCodec("int8", levels=127),
    "int4": QuantCodec("int4", levels=7, bits=4),
    "int3": QuantCodec("int3", levels=3, bits=4),
    "int2": QuantCodec("int2", levels=1, bits=2),
}


def get_codec(name: str) -> Codec:
    """The codec registered under ``name`` (fp32, fp16, int8, int4, int3, int2)."""
    try:
        return CODECS[name]
    except KeyError:
        raise SpecError(f"unknown codec {name!r}; choose one of {', '.join(CODECS)}") from None
