from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cluster_app.errors import SpecError
from cluster_app.sync.codecs import CODECS, QuantCodec, get_codec

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(x=arrays(np.float32, st.integers(1, 9000), elements=finite))
@pytest.mark.parametrize("name", ["int8", "int4", "int2"])
def test_quantised_error_within_half_a_step_per_block(name, x):
    codec = get_codec(name)
    enc, residual = codec.encode(x)
    out = codec.decode(enc)
    assert out.shape == x.shape and out.dtype == np.float32
    pad = (-len(x)) % codec.block
    blocks = np.abs(np.pad(x, (0, pad))).reshape(-1, codec.block).max(axis=1)
    bound = np.repeat(blocks / codec.levels / 2, codec.block)[: len(x)]
    assert np.all(np.abs(out - x) <= bound * (1 + 1e-5) + 1e-30)
    # the residual is exactly what was dropped
    np.testing.assert_allclose(out + residual, x, rtol=1e-6, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(x=arrays(np.float32, st.integers(1, 500), elements=finite))
def test_fp16_relative_error(x):
    codec = get_codec("fp16")
    enc, _ = codec.encode(x)
    np.testing.assert_allclose(codec.decode(enc), x, rtol=2**-11, atol=6e-8)


def test_fp32_is_lossless_and_keeps_shape():
    x = np.random.default_rng(0).normal(size=(7, 3, 5)).astype(np.float32)
    enc, residual = get_codec("fp32").encode(x)
    assert residual is None
    np.testing.assert_array_equal(get_codec("fp32").decode(enc), x)


@pytest.mark.parametrize("name", ["fp16", "int8", "int4", "int2"])
def test_error_feedback_makes_the_running_sum_exact(name):
    # sending the same small delta many times: without feedback the quantised sum drifts,
    # with feedback the sum of what was sent tracks the true sum within one quantum
    codec = get_codec(name)
    rng = np.random.default_rng(1)
    x = (rng.normal(size=5000) * 1e-4).astype(np.float32)
    x[0] = 1.0  # one large value sets a coarse per-block scale
    sent, residual = np.zeros_like(x, dtype=np.float64), None
    for _ in range(2000):
        enc, residual = codec.encode(x, residual)
        sent += codec.decode(enc)
    true = 2000 * x.astype(np.float64)
    step = 1.0 / getattr(codec, "levels", 1024)
    assert np.abs(sent - true).max() <= step
    naive = 2000 * codec.decode(codec.encode(x)[0]).astype(np.float64)
    if name in ("int8", "int4"):  # (int2's one quantum, 1.0, exceeds these true sums)
        assert np.abs(naive - true).max() > 10 * np.abs(sent - true).max()
    if name == "int2":  # naive ternary drops every small value: all of their sum is lost
        assert np.all(naive[1 : codec.block] == 0) and np.abs(sent[1 : codec.block]).max() > 0.1


def test_payload_sizes():
    x = np.ones(10_000, np.float32)
    sizes = {n: c.encode(x)[0].nbytes for n, c in CODECS.items()}
    assert sizes["fp32"] == 40_000 and sizes["fp16"] == 20_000
    assert sizes["int8"] == 10_000 + 4 * 3  # 3 blocks of 4096 -> 3 float32 scales
    assert sizes["int4"] == 5_000 + 4 * 3  # two codes per byte
    assert sizes["int2"] == 2_500 + 4 * 3  # four codes per byte


@pytest.mark.parametrize("name", ["int8", "int4", "int2"])
def test_zero_block_encodes_to_zeros(name):
    # zero codes must be zero bytes: zarr then skips all-zero chunks entirely
    enc, _ = get_codec(name).encode(np.zeros(8192, np.float32))
    assert not enc.q.any() and not enc.scale.any()


@pytest.mark.parametrize("name", ["int4", "int2"])
def test_packed_codes_round_trip_every_level_at_odd_lengths(name):
    codec = get_codec(name)
    levels = np.arange(-codec.levels, codec.levels + 1, dtype=np.float32)
    x = np.tile(levels, 7)[: 4 * len(levels) + 1]  # odd length: the last byte is partial
    enc, residual = codec.encode(x)
    np.testing.assert_array_equal(codec.decode(enc), x)  # max|x| = levels: scale exactly 1
    assert not residual.any()


def test_unknown_codec_and_bad_levels():
    with pytest.raises(SpecError, match="unknown codec 'zip'; choose one of fp32, fp16, int8"):
        get_codec("zip")
    with pytest.raises(SpecError, match="levels=200"):
        QuantCodec("bad", levels=200)
    with pytest.raises(SpecError, match=r"levels=8 must be in \[1, 7\] for 4 bits"):
        QuantCodec("bad", levels=8, bits=4)
    with pytest.raises(SpecError, match="bits=3"):
        QuantCodec("bad", levels=1, bits=3)
