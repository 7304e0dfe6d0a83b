"""Tests of the built-in shapes-on-textures dataset: determinism, cache, confounder statistics."""

import math

import numpy as np
import pytest

from solo_iclmsr.data.builtin import (
    NEUTRAL_GRAY,
    BuiltinSpec,
    builtin_cache_path,
    foreground_only,
    generate_builtin,
    load_builtin,
)

SMALL = BuiltinSpec(n_train=3000, n_test=1000, seed=11)


def test_same_seed_same_bytes_other_seed_differs():
    a = generate_builtin(SMALL, "train")
    b = generate_builtin(SMALL, "train")
    c = generate_builtin(BuiltinSpec(n_train=3000, n_test=1000, seed=12), "train")
    assert a["full"].tobytes() == b["full"].tobytes()
    assert np.array_equal(a["mask"], b["mask"]) and np.array_equal(a["labels"], b["labels"])
    assert (a["full"] != c["full"]).mean() > 0.5
    assert a["full"].dtype == np.uint8 and a["full"].shape == (3000, 3, 32, 32)


def test_64px_and_classes_balanced():
    d = generate_builtin(BuiltinSpec(image_size=64, num_classes=16, n_train=320, n_test=32), "test")
    assert d["full"].shape == (32, 3, 64, 64) and d["decorrelated"].shape == (32, 3, 64, 64)
    counts = np.bincount(generate_builtin(SMALL, "train")["labels"], minlength=10)
    assert counts.tolist() == [300] * 10


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_background_type_matches_class_at_rate_rho(rho):
    k, n = 10, 3000
    d = generate_builtin(BuiltinSpec(rho=rho, n_train=n, n_test=10, seed=3), "train")
    p = rho + (1 - rho) / k
    rate = (d["bg_type"] == d["labels"]).mean()
    assert abs(rate - p) <= 4 * math.sqrt(p * (1 - p) / n), (rate, p)


def test_decorrelated_background_is_independent_of_class():
    d = generate_builtin(SMALL, "test")
    n = len(d["labels"])
    rate = (d["bg_type_decorrelated"] == d["labels"]).mean()
    assert abs(rate - 0.1) <= 4 * math.sqrt(0.09 / n), rate
    own = (d["bg_type"] == d["labels"]).mean()
    assert own > 0.85  # rho = 0.9 by default: 0.91 expected


def test_fg_only_and_decorrelated_agree_with_full_on_the_mask():
    d = generate_builtin(SMALL, "test")
    m = d["mask"][:, None].astype(bool).repeat(3, 1)  # (N, 3, S, S)
    fg = foreground_only(d["full"], d["mask"])
    assert np.array_equal(fg[m], d["full"][m])
    assert (fg[~m] == NEUTRAL_GRAY).all()
    assert np.array_equal(d["decorrelated"][m], d["full"][m])
    assert (d["decorrelated"][~m] != d["full"][~m]).mean() > 0.5  # a new background
    cover = d["mask"].mean((1, 2))  # foreground share of each image
    assert 0.05 < cover.min() and cover.max() < 0.6 and 0.15 < cover.mean() < 0.35


def test_cache_roundtrip_and_corrupted_cache_regenerates(tmp_path):
    spec = BuiltinSpec(n_train=500, n_test=100, seed=4)
    first = load_builtin(spec, "train", tmp_path)
    path = builtin_cache_path(spec, "train", tmp_path)
    hash_file = path.with_name(path.name + ".sha256")
    assert path.exists() and len(hash_file.read_text().strip()) == 64
    mtime = path.stat().st_mtime_ns
    again = load_builtin(spec, "train", tmp_path)
    assert path.stat().st_mtime_ns == mtime  # read, not rewritten
    assert np.array_equal(again["full"], first["full"])
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # flip one byte inside the image data
    path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="does not match its sha256; regenerating"):
        fixed = load_builtin(spec, "train", tmp_path)
    assert np.array_equal(fixed["full"], first["full"])
    with np.load(path) as z:
        assert np.array_equal(z["full"], first["full"])


def test_invalid_spec_names_the_field():
    with pytest.raises(ValueError, match=r"rho=1\.5 is invalid: expected a value in \[0, 1\]"):
        BuiltinSpec(rho=1.5)
    with pytest.raises(ValueError, match=r"num_classes=17 is invalid"):
        BuiltinSpec(num_classes=17)
    with pytest.raises(ValueError, match=r"split='val' is invalid"):
        generate_builtin(SMALL, "val")
