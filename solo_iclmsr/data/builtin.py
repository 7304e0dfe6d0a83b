"""A built-in, download-free dataset with a known confounder: shapes on class-correlated textures.

Each image shows one foreground shape (K classes of distinct silhouettes, random colour, size
40-70% of the image side, aspect jitter and position) on a textured background. There are K
background texture types (stripes of four orientations, checkers, noise blobs, gradients, rings,
dots, ...; random colours, frequency and phase). The background type is the confounder: with
probability ``rho`` it is the class's own type (type index = class index), otherwise a uniformly
random one of the K types, so a fraction ``rho + (1 - rho) / K`` of the images carry their class's
own texture.

Every image exists in three versions:
    * ``full``: the shape on its (class-correlated) background;
    * ``fg``: the same shape on a neutral gray (128) background (equal to ``full`` where the
      mask is on);
    * ``decorrelated`` (test split only): the same shape on a second background whose type is
      drawn independently of the class.

Generation is vectorised numpy, deterministic in ``seed`` (a ``SeedSequence([seed, split])``), and
cached once per parameter set under ``root`` (default ``~/.cache/solo_iclmsr/builtin``) as an
uncompressed ``.npz`` of uint8 arrays with a ``.sha256`` file beside it; a cache whose hash does not
match is regenerated.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Union

import numpy as np

__all__ = [
    "BuiltinSpec",
    "NEUTRAL_GRAY",
    "SHAPE_NAMES",
    "TEXTURE_NAMES",
    "DEFAULT_BUILTIN_ROOT",
    "generate_builtin",
    "load_builtin",
    "builtin_cache_path",
    "foreground_only",
]

# Bump when the generator's output changes, so old caches are not reused.
GENERATOR_VERSION = 1
NEUTRAL_GRAY = 128
DEFAULT_BUILTIN_ROOT = "~/.cache/solo_iclmsr/builtin"
_CHUNK = 2048
_SPLITS = {"train": 0, "test": 1}

# --------------------------------------------------------------------------------------------------
# Foreground silhouettes on normalised coordinates u, v in [-1, 1] (v points down).
# Each takes (u, v), both (n, H, W), and returns a bool mask (n, H, W).
# --------------------------------------------------------------------------------------------------


def _disk(u, v):
    return u * u + v * v <= 1.0


def _square(u, v):
    return np.maximum(np.abs(u), np.abs(v)) <= 0.85


def _triangle(u, v):
    return (v <= 0.8) & (np.abs(u) <= (v + 0.95) * 0.55)


def _plus(u, v):
    return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))


def _ring(u, v):
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.5**2)


def _diamond(u, v):
    return np.abs(u) + np.abs(v) <= 1.0


def _cross(u, v):
    box = np.maximum(np.abs(u), np.abs(v)) <= 0.9
    return box & ((np.abs(u - v) <= 0.4) | (np.abs(u + v) <= 0.4))


def _crescent(u, v):
    return (u * u + v * v <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.75**2)


def _tee(u, v):
    top = (v >= -0.95) & (v <= -0.45) & (np.abs(u) <= 0.95)
    return top | ((np.abs(u) <= 0.25) & (np.abs(v) <= 0.95))


def _frame(u, v):
    m = np.maximum(np.abs(u), np.abs(v))
    return (m <= 0.9) & (m >= 0.5)


def _ell(u, v):
    stem = (u >= -0.9) & (u <= -0.4) & (np.abs(v) <= 0.9)
    return stem | ((v >= 0.4) & (v <= 0.9) & (np.abs(u) <= 0.9))


def _hexagon(u, v):
    return (np.abs(v) <= 0.87) & (np.abs(u) * 0.87 + np.abs(v) * 0.5 <= 0.87)


def _star(u, v):
    r = np.sqrt(u * u + v * v)
    theta = np.arctan2(u, -v)
    return r <= 0.6 + 0.35 * np.cos(5 * theta)


def _eich(u, v):
    posts = (np.abs(u) >= 0.55) & (np.abs(u) <= 0.95) & (np.abs(v) <= 0.95)
    return posts | ((np.abs(v) <= 0.2) & (np.abs(u) <= 0.95))


def _arrow(u, v):
    shaft = (np.abs(v) <= 0.25) & (u >= -0.95) & (u <= 0.2)
    return shaft | ((u >= 0.1) & (np.abs(v) <= (0.95 - u) * 1.05))


def _half_disk(u, v):
    return (u * u + v * v <= 1.0) & (v >= -0.15)


_SHAPES: Dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "disk": _disk,
    "square": _square,
    "triangle": _triangle,
    "plus": _plus,
    "ring": _ring,
    "diamond": _diamond,
    "cross": _cross,
    "crescent": _crescent,
    "tee": _tee,
    "frame": _frame,
    "ell": _ell,
    "hexagon": _hexagon,
    "star": _star,
    "eich": _eich,
    "arrow": _arrow,
    "half_disk": _half_disk,
}
SHAPE_NAMES = tuple(_SHAPES)

# --------------------------------------------------------------------------------------------------
# Background textures on pixel-centre coordinates x, y in [0, 1): each returns a mixing weight
# t in [0, 1] of shape (n, H, W); the image is c1 * (1 - t) + c2 * t for two random colours.
# --------------------------------------------------------------------------------------------------

TEXTURE_NAMES = (
    "hstripes",
    "vstripes",
    "dstripes",
    "astripes",
    "checkers",
    "blobs",
    "lgradient",
    "rings",
    "dots",
    "speckle",
    "rgradient",
    "waves",
    "grid",
    "plaid",
    "smooth_noise",
    "plain",
)


def _texture_weights(kind: int, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Mixing weights of texture ``kind`` for ``n`` images: (n, size, size) float32 in [0, 1]."""
    g = (np.arange(size, dtype=np.float32) + 0.5) / size
    x = g[None, None, :]  # (1, 1, W)
    y = g[None, :, None]  # (1, H, 1)
    freq = rng.uniform(3.0, 6.0, size=(n, 1, 1)).astype(np.float32)  # cycles per image
    phase = rng.uniform(0.0, 2 * np.pi, size=(n, 1, 1)).astype(np.float32)
    two_pi = np.float32(2 * np.pi)
    name = TEXTURE_NAMES[kind]
    if name in ("hstripes", "vstripes", "dstripes", "astripes"):
        coord = {"hstripes": y + 0 * x, "vstripes": x + 0 * y, "dstripes": (x + y) * 0.7071,
                 "astripes": (x - y) * 0.7071}[name]
        return (np.sin(two_pi * freq * coord + phase) > 0).astype(np.float32)
    if name == "checkers":
        f = np.floor(freq)
        return ((np.floor(x * f + phase) + np.floor(y * f + phase)) % 2).astype(np.float32)
    if name in ("blobs", "smooth_noise"):
        low = rng.random((n, 5, 5), dtype=np.float32)
        t = _upsample_bilinear(low, size)
        return (t > 0.5).astype(np.float32) if name == "blobs" else t
    if name == "lgradient":
        a = rng.uniform(0.0, 2 * np.pi, size=(n, 1, 1)).astype(np.float32)
        t = (x - 0.5) * np.cos(a) + (y - 0.5) * np.sin(a)
        return np.clip(t / 0.7071 * 0.5 + 0.5, 0.0, 1.0)
    if name in ("rings", "rgradient"):
        cx, cy = (rng.uniform(0.2, 0.8, size=(2, n, 1, 1)).astype(np.float32))
        r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        if name == "rings":
            return (np.sin(two_pi * freq * r + phase) > 0).astype(np.float32)
        return np.clip(r / 0.9, 0.0, 1.0)
    if name == "dots":
        f = np.round(freq)
        fx, fy = (x * f) % 1.0 - 0.5, (y * f) % 1.0 - 0.5
        return (fx * fx + fy * fy < 0.09).astype(np.float32)
    if name == "speckle":
        return rng.random((n, size, size), dtype=np.float32)
    if name == "waves":
        return (np.sin(two_pi * freq * x + 1.5 * np.sin(two_pi * 2.0 * y + phase)) > 0).astype(np.float32)
    if name == "grid":
        f = np.round(freq)
        return (((x * f) % 1.0 < 0.25) | ((y * f) % 1.0 < 0.25)).astype(np.float32)
    if name == "plaid":
        return (0.5 + 0.25 * (np.sin(two_pi * freq * x + phase) + np.sin(two_pi * freq * y))).astype(
            np.float32
        )
    if name == "plain":
        return np.zeros((n, size, size), dtype=np.float32) + rng.normal(
            0.0, 0.04, size=(n, size, size)
        ).astype(np.float32).clip(-0.1, 0.1) + 0.1
    raise AssertionError(name)


def _upsample_bilinear(low: np.ndarray, size: int) -> np.ndarray:
    """(n, h, w) -> (n, size, size) bilinear (align_corners=True)."""
    n, h, w = low.shape
    ys = np.linspace(0, h - 1, size, dtype=np.float32)
    xs = np.linspace(0, w - 1, size, dtype=np.float32)
    y0 = np.minimum(np.floor(ys).astype(int), h - 2)
    x0 = np.minimum(np.floor(xs).astype(int), w - 2)
    wy = (ys - y0)[None, :, None]
    wx = (xs - x0)[None, None, :]
    a = low[:, y0][:, :, x0]
    b = low[:, y0][:, :, x0 + 1]
    c = low[:, y0 + 1][:, :, x0]
    d = low[:, y0 + 1][:, :, x0 + 1]
    return (a * (1 - wx) + b * wx) * (1 - wy) + (c * (1 - wx) + d * wx) * wy


def _render_backgrounds(types: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Backgrounds of the given types: (n,) int -> (n, size, size, 3) float32 in [0, 255]."""
    n = len(types)
    c1 = rng.uniform(0, 255, size=(n, 1, 1, 3)).astype(np.float32)
    c2 = rng.uniform(0, 255, size=(n, 1, 1, 3)).astype(np.float32)
    # keep the two colours of a texture apart so its pattern stays visible
    close = np.abs(c1 - c2).sum(-1, keepdims=True) < 150
    c2 = np.where(close, 255 - c1, c2)
    t = np.empty((n, size, size), dtype=np.float32)
    for kind in np.unique(types):
        idx = np.nonzero(types == kind)[0]
        t[idx] = _texture_weights(int(kind), len(idx), size, rng)
    t = t[..., None]  # (n, H, W, 1)
    return c1 * (1 - t) + c2 * t


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV (each (n,), in [0, 1]) to RGB (n, 3) in [0, 1]."""
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack(
        [np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], 0
    )  # (6, n, 3)
    return table[i, np.arange(len(h))]


def _render_foregrounds(labels: np.ndarray, size: int, rng: np.random.Generator):
    """Shape masks and colours: labels (n,) -> mask (n, H, W) bool, colour (n, 3) float32 0-255."""
    n = len(labels)
    side = rng.uniform(0.4, 0.7, size=n) * size  # bounding-box side in pixels
    aspect = rng.uniform(0.85, 1.15, size=n)
    half_w = side * np.sqrt(aspect) / 2
    half_h = side / np.sqrt(aspect) / 2
    half_w, half_h = np.minimum(half_w, size / 2 - 0.5), np.minimum(half_h, size / 2 - 0.5)
    cx = rng.uniform(half_w, size - half_w)
    cy = rng.uniform(half_h, size - half_h)
    colour = _hsv_to_rgb(rng.random(n), rng.uniform(0.5, 1.0, n), rng.uniform(0.6, 1.0, n)) * 255
    g = np.arange(size, dtype=np.float32) + 0.5
    u = (g[None, None, :] - cx[:, None, None]) / half_w[:, None, None]  # (n, 1, W)
    v = (g[None, :, None] - cy[:, None, None]) / half_h[:, None, None]  # (n, H, 1)
    u, v = np.broadcast_arrays(u.astype(np.float32), v.astype(np.float32))  # (n, H, W)
    mask = np.zeros((n, size, size), dtype=bool)
    for k in np.unique(labels):
        idx = np.nonzero(labels == k)[0]
        mask[idx] = _SHAPES[SHAPE_NAMES[int(k)]](u[idx], v[idx])
    return mask, colour.astype(np.float32)


@dataclass(frozen=True)
class BuiltinSpec:
    """Parameters of the built-in dataset; they (and the generator version) key its cache.

    Attributes:
        image_size: side of the images in pixels (32 default, 64 optional; any size >= 16 works).
        num_classes: K, the number of shape classes and of background types (2 to 16).
        rho: probability that an image's background type is its class's own type.
        seed: seed of the generator.
        n_train: number of training images (balanced over classes).
        n_test: number of test images (balanced over classes).
    """

    image_size: int = 32
    num_classes: int = 10
    rho: float = 0.9
    seed: int = 0
    n_train: int = 50000
    n_test: int = 10000

    def __post_init__(self) -> None:
        if not (isinstance(self.image_size, int) and self.image_size >= 16):
            raise ValueError(f"image_size={self.image_size!r} is invalid: expected an integer >= 16")
        if not (isinstance(self.num_classes, int) and 2 <= self.num_classes <= len(SHAPE_NAMES)):
            raise ValueError(
                f"num_classes={self.num_classes!r} is invalid: expected an integer in [2, {len(SHAPE_NAMES)}]"
            )
        if not 0.0 <= self.rho <= 1.0:
            raise ValueError(f"rho={self.rho!r} is invalid: expected a value in [0, 1]")
        for name in ("n_train", "n_test"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: expected an integer >= 1")

    def key(self) -> str:
        """Readable, unique cache folder name for these parameters."""
        blob = json.dumps({**asdict(self), "version": GENERATOR_VERSION}, sort_keys=True)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
        return f"s{self.image_size}_k{self.num_classes}_rho{self.rho:g}_seed{self.seed}_{digest}"


def generate_builtin(spec: BuiltinSpec, split: str) -> Dict[str, np.ndarray]:
    """Generates one split in memory (no cache).

    Args:
        spec: dataset parameters.
        split: ``"train"`` or ``"test"``.

    Returns:
        A dict of arrays, N = ``spec.n_train`` or ``spec.n_test``, S = ``spec.image_size``:
        ``full`` (N, 3, S, S) uint8, ``mask`` (N, S, S) uint8 in {0, 1}, ``labels`` (N,) int64,
        ``bg_type`` (N,) int64, and for the test split ``decorrelated`` (N, 3, S, S) uint8 and
        ``bg_type_decorrelated`` (N,) int64. The foreground-only version is
        ``where(mask, full, 128)`` (see :func:`foreground_only`).

    Raises:
        ValueError: for an unknown split.
    """
    if split not in _SPLITS:
        raise ValueError(f"split={split!r} is invalid: expected one of {sorted(_SPLITS)}")
    n = int(spec.n_train if split == "train" else spec.n_test)
    k, s = spec.num_classes, spec.image_size
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, _SPLITS[split]]))
    labels = rng.permutation(np.arange(n) % k).astype(np.int64)  # balanced classes
    own = rng.random(n) < spec.rho
    bg_type = np.where(own, labels, rng.integers(0, k, n)).astype(np.int64)
    decorrelate = split == "test"
    bg_decor = rng.integers(0, k, n).astype(np.int64) if decorrelate else None
    out = {
        "full": np.empty((n, 3, s, s), np.uint8),
        "mask": np.empty((n, s, s), np.uint8),
        "labels": labels,
        "bg_type": bg_type,
    }
    if decorrelate:
        out["decorrelated"] = np.empty((n, 3, s, s), np.uint8)
        out["bg_type_decorrelated"] = bg_decor
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        mask, colour = _render_foregrounds(labels[sl], s, rng)  # (c, S, S), (c, 3)
        fg = np.broadcast_to(colour[:, None, None, :], mask.shape + (3,))  # (c, S, S, 3)
        m = mask[..., None]
        bg = _render_backgrounds(bg_type[sl], s, rng)  # (c, S, S, 3)
        out["full"][sl] = np.where(m, fg, bg).round().clip(0, 255).astype(np.uint8).transpose(0, 3, 1, 2)
        out["mask"][sl] = mask
        if decorrelate:
            bg2 = _render_backgrounds(bg_decor[sl], s, rng)
            img = np.where(m, fg, bg2).round().clip(0, 255).astype(np.uint8)
            out["decorrelated"][sl] = img.transpose(0, 3, 1, 2)
    return out


def foreground_only(full: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The foreground on neutral gray: (N, 3, S, S) uint8, (N, S, S) -> (N, 3, S, S) uint8."""
    return np.where(mask[:, None].astype(bool), full, np.uint8(NEUTRAL_GRAY))


def builtin_cache_path(spec: BuiltinSpec, split: str, root: Optional[Union[str, Path]] = None) -> Path:
    """Path of the cached ``.npz`` of one split (its hash lies beside it as ``.npz.sha256``).

    Args:
        spec: dataset parameters.
        split: ``"train"`` or ``"test"``.
        root: cache root; ``None`` for ``$SOLO_ICLMSR_CACHE/builtin`` when that variable is set,
            else :data:`DEFAULT_BUILTIN_ROOT` (``~`` is expanded).

    Returns:
        ``root / spec.key() / f"{split}.npz"``.
    """
    if root is None:
        env = os.environ.get("SOLO_ICLMSR_CACHE")
        root = os.path.join(env, "builtin") if env else DEFAULT_BUILTIN_ROOT
    return Path(os.path.expanduser(str(root))) / spec.key() / f"{split}.npz"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def load_builtin(
    spec: BuiltinSpec, split: str, root: Optional[Union[str, Path]] = None
) -> Dict[str, np.ndarray]:
    """Loads one split from the cache, generating (or regenerating) it when needed.

    The cache is valid when ``<split>.npz`` exists and its sha256 equals the one recorded in
    ``<split>.npz.sha256``; otherwise the split is generated, written atomically and hashed.

    Args:
        spec: dataset parameters.
        split: ``"train"`` or ``"test"``.
        root: cache root; ``None`` for ``~/.cache/solo_iclmsr/builtin``.

    Returns:
        The arrays of :func:`generate_builtin`.
    """
    path = builtin_cache_path(spec, split, root)
    hash_path = path.with_name(path.name + ".sha256")
    if path.exists() and hash_path.exists():
        if _sha256(path) == hash_path.read_text().strip():
            with np.load(path) as z:
                return {name: z[name] for name in z.files}
        warnings.warn(f"builtin cache {path} does not match its sha256; regenerating it", stacklevel=2)
    data = generate_builtin(spec, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **data)
    digest = _sha256(tmp)
    os.replace(tmp, path)
    hash_path.write_text(digest + "\n")
    spec_path = path.parent / "spec.json"
    if not spec_path.exists():
        spec_path.write_text(json.dumps({**asdict(spec), "version": GENERATOR_VERSION}, indent=2) + "\n")
    return data
