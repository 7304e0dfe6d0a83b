"""Batch augmentations on the device, built from solo-learn's own ``augmentations`` entries.

solo-learn augments each image on the CPU, one PIL image at a time, inside the data loader. Here
the loader only yields raw ``uint8`` images, and :class:`MultiViewAugmentation` builds every view of
a whole batch at once on the batch's device, each sample drawing its own parameters. The raw image
travels with the views: :meth:`MultiViewAugmentation.raw_view` gives the batch resized to the first
crop size and normalised, which is what f_msr sees.

solo-learn is the one schema. :func:`build_multiview_augmentation` reads each entry of
``cfg.augmentations`` (an OmegaConf list, or plain dicts) with the keys and the conditions of
solo-learn's ``build_transform_pipeline`` (``solo/data/pretrain_dataloader.py``), and
``num_crops`` as solo-learn's ``main_pretrain.py`` does::

    - rrc: {enabled: True, crop_min_scale: 0.08, crop_max_scale: 1.0}
      color_jitter: {prob: 0.8, brightness: 0.4, contrast: 0.4, saturation: 0.2, hue: 0.1}
      grayscale: {prob: 0.2}
      gaussian_blur: {prob: 0.0}
      solarization: {prob: 0.0}
      equalization: {prob: 0.0}
      horizontal_flip: {prob: 0.5}
      crop_size: 32
      num_crops: 2
      # optional: mean: [r, g, b], std: [r, g, b]

Every key solo-learn reads is required (``crop_min_scale``/``crop_max_scale`` only when
``rrc.enabled``, the four jitter strengths only when ``color_jitter.prob`` is non-zero); other keys
are ignored, as solo-learn ignores them. Ops of probability 0 are left out. Each entry is also given
to solo-learn's ``build_transform_pipeline`` once, so a value that its torchvision transforms reject
(e.g. ``hue: 0.7``) is rejected here too. Normalisation statistics come from solo-learn's own
pipeline through :func:`mean_std`: its per-dataset table where the dataset is in it (an entry's
``mean``/``std`` are then ignored), else the entry's ``mean``/``std``, else ImageNet's. solo-learn's per-image pipeline for the same entries, the
reference of the tests and the benchmark, is solo-learn's ``FullTransformPipeline`` of
``NCropAugmentation(build_transform_pipeline(dataset, entry), entry.num_crops)``.

What a :class:`ViewPipeline` does, in solo-learn's order: random resized crop (torchvision's
sampling of box and ratio) resampled from the 8-bit image with torch's antialiased,
PIL-compatible kernel; conversion to float; colour jitter (torchvision's four steps, factors and
order drawn per sample); grayscale; Gaussian blur; solarization; equalization (Kornia's); flip;
normalisation. Each op is a small module with a parameter generator (documented shapes) and a
deterministic apply; every op works on the rows its probability selects only. The ops are plain
torch, batched, on any device. On the CPU the work is scheduled in cache-sized chunks of views
(see :class:`ViewPipeline`), which is what makes it fast there.

Differences from solo-learn's torchvision pipeline (all per-sample randomness is kept):
    * Precision: after the 8-bit crop every step works in float32; PIL rounds to 8 bits after
      every step (about half a level of difference per step). A float input is rounded to 8 bits
      first. On CUDA the crop resamples floats and rounds them (PIL's kernel, not bit-exact).
    * Random resized crop: torch's uint8 kernel agrees with PIL within one level except where the
      two clip an overshoot between their separable passes in another order.
    * Gaussian blur: solo blurs the PIL image with ``ImageFilter.GaussianBlur(radius=sigma)``
      (three box passes), sigma ~ U(0.1, 2.0) pixels. Here a separable Gaussian with reflect
      padding and ``min(blur_kernel_size(crop_size), 13)`` taps (3 at 32 px, the BYOL convention
      of about 10% of the side; at most 13, as taps beyond 3 sigma_max = 6 px carry < 0.3% of
      the weight), so at small crops large sigmas are truncated.
    * Colour jitter: the contrast step's mean luma is not rounded to an 8-bit level as PIL's is.
      The strengths must be numbers (torchvision also takes ``[min, max]`` pairs; solo-learn's
      files use numbers).
    * When ``rrc.enabled`` is false, solo resizes the shorter side to ``crop_size``; here the image
      is resized to ``crop_size x crop_size`` (identical for the square images the loaders of
      :mod:`solo_iclmsr.data` give).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BLUR_SIGMA",
    "BLUR_MAX_KERNEL",
    "mean_std",
    "build_multiview_augmentation",
    "blur_kernel_size",
    "ResizedCrop",
    "ColorJitter",
    "shift_hue_",
    "RandomGrayscale",
    "RandomGaussianBlur",
    "RandomSolarize",
    "RandomEqualize",
    "RandomHorizontalFlip",
    "ViewPipeline",
    "MultiViewAugmentation",
]


# solo-learn's sigma range for Gaussian blur, in pixels of the crop.
BLUR_SIGMA: Tuple[float, float] = (0.1, 2.0)
# Largest blur kernel used: taps up to 3 sigma_max = 6 px; further taps carry < 0.3% of the weight
# at sigma = 2 (PIL's own blur, three box passes, reaches about 7 px).
BLUR_MAX_KERNEL = 13

# The random ops of one entry, in solo-learn's order (each a section with a ``prob`` key).
_OPS: Tuple[str, ...] = (
    "color_jitter", "grayscale", "gaussian_blur", "solarization", "equalization", "horizontal_flip"
)

Stats = Tuple[Tuple[float, float, float], Tuple[float, float, float]]


# --------------------------------------------------------------------------------------------------
# Batch ops: each draws per-sample parameters for the whole batch, then applies them to any rows
# --------------------------------------------------------------------------------------------------

Params = Dict[str, torch.Tensor]

# Luma weights of PIL's "L" conversion (ITU-R 601-2), used by torchvision's and Kornia's grayscale.
_GRAY_WEIGHTS: Tuple[float, float, float] = (0.299, 0.587, 0.114)


def _draw_apply(batch_size: int, p: float, device: torch.device) -> torch.Tensor:
    """(B,) bool, each True with probability ``p`` (one uniform draw per sample)."""
    return torch.rand(batch_size, device=device) < p


def _uniform(batch_size: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    """(B,) float32 drawn from U(low, high)."""
    return torch.rand(batch_size, device=device) * (high - low) + low


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(n, 3, h, w) -> (n, 1, h, w) luma."""
    r, g, b = x.unbind(1)
    return (r * _GRAY_WEIGHTS[0]).add_(g, alpha=_GRAY_WEIGHTS[1]).add_(b, alpha=_GRAY_WEIGHTS[2]).unsqueeze(1)


def _take(params: Params, rows: torch.Tensor) -> Params:
    """The parameters of some rows: every (B, ...) tensor indexed by ``rows`` (m,)."""
    return {k: v[rows] for k, v in params.items()}


def _on_rows(
    x: torch.Tensor, apply: torch.Tensor, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Runs ``fn(x[idx], idx)`` on the rows where ``apply`` is True only.

    Args:
        x: (n, 3, h, w); the selected rows are written back in place.
        apply: (n,) bool.
        fn: maps the selected rows (m, 3, h, w) and their indices (m,) to new rows of that shape;
            it may work in place on the rows it is given.

    Returns:
        ``x`` with the selected rows replaced, or ``fn``'s result when every row is selected.
    """
    idx = apply.nonzero().squeeze(1)
    if idx.numel() == 0:
        return x
    if idx.numel() == x.shape[0]:
        return fn(x, idx)
    return x.index_copy_(0, idx, fn(x.index_select(0, idx), idx))


class ResizedCrop(nn.Module):
    """Random resized crop (torchvision's sampling) or a plain resize, from uint8 images.

    Parameters (:meth:`generate_parameters`): ``boxes`` (B, 4) int64, ``(x0, y0, w, h)`` of the crop
    in source pixels. With ``random=True`` they follow ``torchvision.transforms.RandomResizedCrop``:
    ten tries of an area fraction ~ U(scale) and a log-uniform aspect ratio in [3/4, 4/3], the first
    that fits wins, with a uniform integer position; otherwise a centre crop of clamped ratio. With
    ``random=False`` every box is the whole image.

    :meth:`forward` resizes each crop with ``F.interpolate(antialias=True)`` on 8-bit channels-last
    images, torch's PIL-compatible resampler (one call per view: each view has its own box size), so
    the views are 8-bit like solo-learn's PIL crops.

    Args:
        size: side of the output views.
        scale: range of the crop area as a fraction of the image area.
        random: random resized crop if True, a resize of the whole image if False.
        resample: ``"bicubic"`` (solo's) or ``"bilinear"``.
    """

    def __init__(
        self, size: int, scale: Tuple[float, float], random: bool = True, resample: str = "bicubic"
    ) -> None:
        super().__init__()
        self.size, self.scale, self.random, self.resample = size, scale, random, resample
        self.log_ratio = (math.log(3 / 4), math.log(4 / 3))

    def generate_parameters(self, batch_size: int, height: int, width: int, device: torch.device) -> Params:
        if not self.random:
            whole = torch.tensor([0, 0, width, height], device=device)
            return {"boxes": whole.expand(batch_size, 4).clone()}
        tries = 10
        area = height * width * _uniform(batch_size * tries, *self.scale, device).view(batch_size, tries)
        ratio = torch.exp(_uniform(batch_size * tries, *self.log_ratio, device).view(batch_size, tries))
        w = torch.sqrt(area * ratio).round().long()  # (B, 10)
        h = torch.sqrt(area / ratio).round().long()
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = fits.long().argmax(1, keepdim=True)  # first try that fits (0 when none fits)
        w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
        # fallback, as torchvision: the largest centred crop whose ratio is clamped to [3/4, 4/3]
        in_ratio = width / height
        if in_ratio < 3 / 4:
            fw, fh = width, int(round(width / (3 / 4)))
        elif in_ratio > 4 / 3:
            fw, fh = int(round(height * (4 / 3))), height
        else:
            fw, fh = width, height
        ok = fits.any(1)
        w = torch.where(ok, w, torch.full_like(w, fw))
        h = torch.where(ok, h, torch.full_like(h, fh))
        u = torch.rand(batch_size, 2, device=device)
        x0 = torch.where(ok, (u[:, 0] * (width - w + 1)).long(), torch.full_like(w, (width - fw) // 2))
        y0 = torch.where(ok, (u[:, 1] * (height - h + 1)).long(), torch.full_like(h, (height - fh) // 2))
        return {"boxes": torch.stack([x0, y0, w, h], 1)}

    def forward(
        self, images: torch.Tensor, params: Params, sources: Sequence[int], flip: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Crops and resizes some views.

        Args:
            images: uint8 (B, 3, H, W), preferably channels-last.
            params: ``boxes`` (n, 4) of these views.
            sources: n row indices into ``images``.
            flip: optional (n,) bool, views to mirror left-right (:class:`RandomHorizontalFlip`'s
                ``apply``): cheapest here, on each 8-bit view as it is made.

        Returns:
            uint8 (n, 3, size, size) (channels-last on the CPU).
        """
        s = self.size
        crops = []
        flips = flip.tolist() if flip is not None else [False] * len(sources)
        for (x0, y0, w, h), src, mirror in zip(params["boxes"].tolist(), sources, flips):
            crop = images[src : src + 1, :, y0 : y0 + h, x0 : x0 + w]
            if (h, w) != (s, s):
                if crop.device.type != "cpu":  # CUDA resamples floats; round as the 8-bit CPU kernel
                    crop = F.interpolate(crop.float(), size=(s, s), mode=self.resample, antialias=True)
                    crop = crop.round_().clamp_(0, 255).to(torch.uint8)
                else:
                    crop = F.interpolate(crop, size=(s, s), mode=self.resample, antialias=True)
            crops.append(crop.flip(-1) if mirror else crop)
        return torch.cat(crops)


class ColorJitter(nn.Module):
    """torchvision's ``ColorJitter`` in a random order per sample, on a float batch in [0, 1].

    Parameters: ``apply`` (B,) bool; ``brightness``, ``contrast``, ``saturation`` (B,) factors ~
    U(max(0, 1 - v), 1 + v); ``hue`` (B,) shift in turns ~ U(-h, h); ``order`` (B, 4) int64, a
    permutation of (0 brightness, 1 contrast, 2 saturation, 3 hue) per sample, as torchvision's
    ``randperm(4)`` per image. A step whose strength is 0 is skipped, as torchvision does.

    The steps are torchvision's tensor formulas, each clamped to [0, 1]: brightness ``f x``;
    contrast ``f x + (1 - f) mean(gray(x))``; saturation ``f x + (1 - f) gray(x)``; hue: the HSV hue
    plus ``hue`` turns. The hue step keeps V = max and S, so it needs only max, chroma = max - min
    and the hexagonal hue ``H`` in [0, 6): each channel is ``max - chroma * clamp(min(k, 4 - k),
    0, 1)`` with ``k = (n + H) mod 6``, n = 5, 3, 1 for R, G, B (the closed form of HSV -> RGB).
    Rows that share an order are processed together (one pass per step).

    Args:
        brightness, contrast, saturation: strengths (>= 0).
        hue: strength in [0, 0.5].
        p: probability of jittering a sample.
    """

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float, p: float) -> None:
        super().__init__()
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation
        self.hue, self.p = hue, p
        self.steps = [i for i, v in enumerate((brightness, contrast, saturation, hue)) if v > 0]

    def generate_parameters(self, batch_size: int, device: torch.device) -> Params:
        def factor(v: float) -> torch.Tensor:
            return _uniform(batch_size, max(0.0, 1.0 - v), 1.0 + v, device)

        return {
            "apply": _draw_apply(batch_size, self.p, device),
            "brightness": factor(self.brightness),
            "contrast": factor(self.contrast),
            "saturation": factor(self.saturation),
            "hue": _uniform(batch_size, -self.hue, self.hue, device),
            "order": torch.rand(batch_size, 4, device=device).argsort(1),
        }

    @staticmethod
    def order_key(order: torch.Tensor) -> torch.Tensor:
        """(B, 4) permutations -> (B,) int64 code in [0, 256), equal for equal orders."""
        return (order * torch.tensor([64, 16, 4, 1], device=order.device)).sum(1)

    def forward(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """Jitters the rows of ``x`` (n, 3, h, w) selected by ``apply``, in place; returns ``x``."""
        return _on_rows(x, params["apply"], lambda rows, idx: self._jitter(rows, _take(params, idx)))

    def _jitter(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        keys = self.order_key(params["order"])
        codes = keys.unique()
        if codes.numel() > 1:  # mixed orders: one group per order
            for code in codes:
                x = _on_rows(x, keys == code, lambda rows, idx: self._jitter(rows, _take(params, idx)))
            return x
        view = (-1, 1, 1, 1)
        for step in params["order"][0].tolist():
            if step not in self.steps:
                continue
            if step == 0:
                x.mul_(params["brightness"].view(view)).clamp_(0.0, 1.0)
            elif step == 1:
                f = params["contrast"].view(view)
                # mean of the luma = luma of the channel means
                mean = x.mean((2, 3)) @ x.new_tensor(_GRAY_WEIGHTS)  # (n,)
                mean = mean.view(view)
                x.mul_(f).add_((1.0 - f) * mean).clamp_(0.0, 1.0)
            elif step == 2:
                f = params["saturation"].view(view)
                gray = _gray(x).mul_(1.0 - f)
                x.mul_(f).add_(gray).clamp_(0.0, 1.0)
            else:
                shift_hue_(x, params["hue"])
        return x


def shift_hue_(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Adds ``shift`` turns to the HSV hue of each image, in place (torchvision's ``adjust_hue``).

    A hue shift keeps V = max and S (so chroma = max - min): with the hexagonal hue ``H`` in
    [0, 6), HSV -> RGB is ``R = min + chroma * s(H - 3)``, ``G = max - chroma * s(H - 2)``,
    ``B = max - chroma * s(H - 4)`` with ``s(d) = clamp(|d| - 1, 0, 1)``.

    Args:
        x: float (n, 3, h, w) in [0, 1].
        shift: (n,) hue shifts in turns (0.5 = 180 degrees).

    Returns:
        ``x``.
    """
    r, g, b = x.unbind(1)
    maxc = x.amax(1)
    minc = x.amin(1)
    chroma = maxc - minc
    # hexagonal hue times chroma, with torchvision's tie order (red, then green, then blue);
    # float masks: cheaper than torch.where on the CPU
    is_r = (maxc == r).float()
    is_g = (maxc == g).float().mul_(1.0 - is_r)
    is_b = (1.0 - is_r).sub_(is_g)
    num = (g - b).mul_(is_r)
    num.addcmul_((b - r).add_(chroma, alpha=2.0), is_g).addcmul_((r - g).add_(chroma, alpha=4.0), is_b)
    hue6 = num.div_(chroma.clamp_min(1e-12)).add_(6.0 * shift.view(-1, 1, 1))  # grey: chroma 0
    hue6.sub_(torch.floor(hue6 / 6.0).mul_(6.0))  # into [0, 6)
    torch.addcmul(minc, (hue6 - 3.0).abs_().sub_(1.0).clamp_(0.0, 1.0), chroma, out=x[:, 0])
    torch.addcmul(maxc, (hue6 - 2.0).abs_().sub_(1.0).clamp_(0.0, 1.0), chroma, value=-1.0, out=x[:, 1])
    torch.addcmul(maxc, hue6.sub_(4.0).abs_().sub_(1.0).clamp_(0.0, 1.0), chroma, value=-1.0, out=x[:, 2])
    return x


class _RowOp(nn.Module):
    """A random op applied with probability ``p`` to each sample, on the selected rows only.

    Parameters: ``apply`` (B,) bool. Subclasses give ``transform(rows) -> rows`` for (m, 3, H, W).
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def generate_parameters(self, batch_size: int, device: torch.device) -> Params:
        return {"apply": _draw_apply(batch_size, self.p, device)}

    def transform(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        return _on_rows(x, params["apply"], lambda rows, idx: self.transform(rows))


class RandomGrayscale(_RowOp):
    """Luma in all three channels."""

    def transform(self, rows: torch.Tensor) -> torch.Tensor:
        return _gray(rows).expand_as(rows).contiguous()


def blur_kernel_size(crop_size: int) -> int:
    """Odd Gaussian kernel size: 23 at 224 px, scaled linearly with the crop, at least 3.

    Args:
        crop_size: side of the view in pixels.

    Returns:
        An odd kernel side (3 at 32 px, 11 at 96 px, 23 at 224 px).
    """
    k = max(3, int(round(23 * crop_size / 224)))
    return k if k % 2 == 1 else k + 1


class RandomGaussianBlur(nn.Module):
    """Separable Gaussian blur with a per-sample sigma, reflect padding, a fixed kernel size.

    Parameters: ``apply`` (B,) bool; ``sigma`` (B,) float ~ U(0.1, 2.0) pixels.

    Args:
        kernel_size: odd kernel side (see :func:`blur_kernel_size`).
        p: probability of blurring a sample.
    """

    def __init__(self, kernel_size: int, p: float) -> None:
        super().__init__()
        self.kernel_size, self.p = kernel_size, p

    def generate_parameters(self, batch_size: int, device: torch.device) -> Params:
        return {
            "apply": _draw_apply(batch_size, self.p, device),
            "sigma": _uniform(batch_size, *BLUR_SIGMA, device),
        }

    def kernels(self, sigma: torch.Tensor) -> torch.Tensor:
        """(m,) sigmas -> (m, kernel_size) normalised 1-D Gaussian kernels."""
        half = self.kernel_size // 2
        pos = torch.arange(-half, half + 1, device=sigma.device, dtype=torch.float32)
        k = torch.exp(-(pos**2) / (2 * sigma.view(-1, 1) ** 2))
        k = k / k.sum(1, keepdim=True)
        # weights below 1e-12 (sigma near 0.1) become 0: denormal products make the CPU convolution
        # several times slower
        return k.masked_fill_(k < 1e-12, 0.0)

    def _blur_rows(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        m, c, h, w = x.shape
        half = self.kernel_size // 2
        weight = self.kernels(sigma).repeat_interleave(c, 0).view(m * c, 1, -1, 1)  # (m*3, 1, k, 1)
        # pad once, then two valid convolutions: explicit padding is several times faster on the
        # CPU than conv2d's own, and (k, 1) then (1, k) kernels need no transposes
        x = F.pad(x.reshape(1, m * c, h, w), (half, half, half, half), mode="reflect")
        x = F.conv2d(x, weight, groups=m * c)  # (1, m*3, h, w + 2 half)
        x = F.conv2d(x, weight.view(m * c, 1, 1, -1), groups=m * c)  # (1, m*3, h, w)
        return x.view(m, c, h, w)

    def forward(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        return _on_rows(x, params["apply"], lambda rows, idx: self._blur_rows(rows, params["sigma"][idx]))


class RandomSolarize(_RowOp):
    """Values >= 0.5 become 1 - x, i.e. ``min(x, 1 - x)`` (PIL's threshold 128 on 8-bit values)."""

    def transform(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.minimum(rows, 1.0 - rows)


class RandomEqualize(_RowOp):
    """Histogram equalization per channel (Kornia's ``equalize``)."""

    def transform(self, rows: torch.Tensor) -> torch.Tensor:
        import kornia  # only this op needs it

        return kornia.enhance.equalize(rows)


class RandomHorizontalFlip(_RowOp):
    """Mirrors left-right. (:class:`ViewPipeline` passes ``apply`` to :class:`ResizedCrop`
    instead, which mirrors the 8-bit views as it makes them.)"""

    def transform(self, rows: torch.Tensor) -> torch.Tensor:
        return rows.flip(-1)


# --------------------------------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------------------------------


class ViewPipeline(nn.Module):
    """One pipeline: crop, then colour, grayscale, blur, solarize, equalize, flip, normalise, each
    sample with its own parameters.

    :meth:`generate_parameters` draws every op's parameters for the whole batch (from torch's global
    generator, on the images' device); :meth:`forward` applies them. The parameters of the last call
    are :meth:`last_params`, and ``pipeline(images, params=pipeline.last_params())`` replays it.

    Work is scheduled for the CPU: views are cropped first (everything after runs at crop size;
    the flip is applied to the 8-bit crops, which is exact as every later op commutes with it),
    grouped by colour-jitter order and blur flag (so a chunk runs each colour step once, and blurs
    all or none of its rows), and processed in chunks of about ``chunk_bytes`` of float data,
    which stay in cache and reuse memory instead of faulting in fresh pages for every op on a
    large batch. Every op touches only its selected rows. On other devices a chunk is a whole
    group. Chunking and grouping do not change any value.

    Args:
        crop: the crop (random resized crop or resize) to ``crop.size`` pixels.
        ops: the random ops, keyed by solo-learn's section names (``color_jitter``,
            ``grayscale``, ``gaussian_blur``, ``solarization``, ``equalization``,
            ``horizontal_flip``), applied in solo-learn's order; absent ones are left out.
        mean: per-channel mean used by the final normalisation.
        std: per-channel std used by the final normalisation.
        chunk_bytes: size of a chunk of float views on the CPU.

    Example:
        >>> pipe = ViewPipeline(ResizedCrop(8, (0.08, 1.0)), {"grayscale": RandomGrayscale(0.2)},
        ...                     (0.5,) * 3, (0.25,) * 3)
        >>> pipe(torch.rand(4, 3, 16, 16)).shape
        torch.Size([4, 3, 8, 8])
    """

    def __init__(
        self,
        crop: ResizedCrop,
        ops: Mapping[str, nn.Module],
        mean: Sequence[float],
        std: Sequence[float],
        chunk_bytes: int = 8 << 20,
    ) -> None:
        super().__init__()
        for name in ops:
            if name not in _OPS:
                raise ValueError(f"ops[{name!r}] is invalid: expected one of {list(_OPS)}")
        self.crop = crop
        self.chunk_bytes = chunk_bytes
        self.ops = nn.ModuleDict({name: ops[name] for name in _OPS if name in ops})
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self._params: Optional[Dict[str, Params]] = None

    @property
    def crop_size(self) -> int:
        """Side of the square views in pixels."""
        return self.crop.size

    def generate_parameters(
        self, batch_size: int, height: int, width: int, device: torch.device
    ) -> Dict[str, Params]:
        """Every op's parameters for ``batch_size`` views of (height, width) images.

        Returns:
            ``{"crop": {"boxes": (B, 4)}, "color_jitter": {...}, ...}``, one entry per op present,
            each a dict of (B, ...) tensors as documented by the op.
        """
        params = {"crop": self.crop.generate_parameters(batch_size, height, width, device)}
        for name, op in self.ops.items():
            params[name] = op.generate_parameters(batch_size, device)
        return params

    def last_params(self) -> Dict[str, Params]:
        """The parameters drawn (or replayed) by the last call, as :meth:`generate_parameters`."""
        if self._params is None:
            raise RuntimeError("last_params() is unavailable: the pipeline has not been called yet")
        return self._params

    def _chunks(self, params: Dict[str, Params], batch_size: int, device: torch.device) -> List[torch.Tensor]:
        """Row indices of each chunk: rows sorted by colour-jitter order and blur flag, so that in a
        chunk all rows share one jitter order and all or none are blurred, split into chunks."""
        key = torch.zeros(batch_size, dtype=torch.long, device=device)
        if "color_jitter" in params:  # 0 without jitter, else 1 + the order's code
            jitter = params["color_jitter"]
            key += jitter["apply"].long() * (1 + ColorJitter.order_key(jitter["order"]))
        if "gaussian_blur" in params:
            key = key * 2 + params["gaussian_blur"]["apply"].long()
        key, rows = key.sort(stable=True)
        counts = torch.unique_consecutive(key, return_counts=True)[1].tolist()
        c = self.crop_size
        step = max(1, self.chunk_bytes // (3 * c * c * 4)) if device.type == "cpu" else batch_size
        chunks, start = [], 0
        for count in counts:
            chunks.extend(rows[start : start + count].split(step))
            start += count
        return chunks

    def forward(
        self, images: torch.Tensor, params: Optional[Dict[str, Params]] = None, num_crops: int = 1
    ) -> torch.Tensor:
        """Augments a batch.

        Args:
            images: (B, 3, H, W), uint8 or float in [0, 1] (rounded to 8 bits, the crop
                resamples 8-bit images as PIL does).
            params: :meth:`last_params` of an earlier call, to replay it exactly.
            num_crops: views per image; view ``j * B + i`` is of image ``i``.

        Returns:
            Normalised views, float32 (num_crops * B, 3, crop_size, crop_size).
        """
        images = _to_uint8(images).contiguous(memory_format=torch.channels_last)
        b, _, h, w = images.shape
        n = num_crops * b
        if params is None:
            params = self.generate_parameters(n, h, w, images.device)
        self._params = params
        c = self.crop_size
        out = _empty_views(n, c, images.device)
        # the module's constants follow the images, wherever the module itself lives
        std, mean = self.std.to(images.device), self.mean.to(images.device)
        scale, bias = 1.0 / std, -mean / std
        for rows in self._chunks(params, n, images.device):
            # the flip commutes with every later op (pixelwise, or symmetric as the blur and its
            # padding), so it is applied to the 8-bit crops, where it costs least
            flip = params["horizontal_flip"]["apply"][rows] if "horizontal_flip" in params else None
            x = self.crop(images, {"boxes": params["crop"]["boxes"][rows]}, (rows % b).tolist(), flip)  # uint8
            x = x.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)  # (m, 3, c, c)
            for name, op in self.ops.items():
                if name != "horizontal_flip":
                    x = op(x, _take(params[name], rows))
            out.index_copy_(0, rows, torch.addcmul(bias, x, scale, out=x))  # (x - mean) / std
        return out


def _empty_views(n: int, size: int, device: torch.device) -> torch.Tensor:
    """Uninitialised float32 (n, 3, size, size). On the CPU the memory comes from numpy, which
    advises transparent huge pages for large arrays: a batch of 224 px views is hundreds of MB,
    and faulting it in 4 KiB pages costs as much as the colour jitter."""
    if device.type != "cpu":
        return torch.empty(n, 3, size, size, device=device)
    return torch.from_numpy(np.empty((n, 3, size, size), dtype=np.float32))


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8, or float in [0, 1] rounded to 8 bits -> uint8."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images.shape={tuple(images.shape)} is invalid: expected (B, 3, H, W)")
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ValueError(f"images.dtype={images.dtype} is invalid: expected uint8 or a float type")
    return images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def _to_float01(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 in [0, 255] or float in [0, 1] -> float32 in [0, 1]."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images.shape={tuple(images.shape)} is invalid: expected (B, 3, H, W)")
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise ValueError(f"images.dtype={images.dtype} is invalid: expected uint8 or a float type")
    return images



class MultiViewAugmentation(nn.Module):
    """All views of a raw batch, in solo-learn's order, made on the batch's device.

    For pipelines ``P1 .. Pm`` with ``num_crops`` ``n1 .. nm``, :meth:`forward` returns
    ``[P1(x) x n1, P2(x) x n2, ...]``: every crop of pipeline 1, then of pipeline 2, and so on, as
    solo-learn's ``FullTransformPipeline`` of ``NCropAugmentation`` does. The ``num_crops`` views
    of one pipeline come from one call (each view draws its own parameters). Randomness comes from
    torch's global generator, so ``torch.manual_seed(s)`` before a call fixes the views.

    Args:
        pipelines: one :class:`ViewPipeline` per entry of the config.
        num_crops: how many views each pipeline makes of every image.

    Example:
        >>> entry = {"rrc": {"enabled": True, "crop_min_scale": 0.08, "crop_max_scale": 1.0},
        ...          "color_jitter": {"prob": 0.0}, "grayscale": {"prob": 0.0},
        ...          "gaussian_blur": {"prob": 0.0}, "solarization": {"prob": 0.0},
        ...          "equalization": {"prob": 0.0}, "horizontal_flip": {"prob": 0.5},
        ...          "crop_size": 16, "num_crops": 2}
        >>> aug = build_multiview_augmentation([entry], "cifar10")
        >>> views = aug(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8))
        >>> len(views), views[0].shape, aug.raw_view(torch.zeros(4, 3, 32, 32)).shape
        (2, torch.Size([4, 3, 16, 16]), torch.Size([4, 3, 16, 16]))
    """

    def __init__(self, pipelines: Sequence[ViewPipeline], num_crops: Sequence[int]) -> None:
        super().__init__()
        if not pipelines:
            raise ValueError("pipelines=[] is invalid: expected at least one pipeline")
        if len(num_crops) != len(pipelines):
            raise ValueError(
                f"num_crops={list(num_crops)} is invalid: expected one count per pipeline ({len(pipelines)})"
            )
        self.pipelines = nn.ModuleList(pipelines)
        self.num_crops: List[int] = [int(n) for n in num_crops]

    @property
    def num_views(self) -> int:
        """Total number of views per image (sum of ``num_crops``)."""
        return sum(self.num_crops)

    @property
    def crop_sizes(self) -> List[int]:
        """Side of each pipeline's views in pixels."""
        return [p.crop_size for p in self.pipelines]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        """Makes every view of a raw batch.

        Args:
            images: raw batch, uint8 (or float in [0, 1]), shape (B, 3, H, W), on any device.

        Returns:
            ``num_views`` float tensors of shape (B, 3, crop_size_i, crop_size_i), normalised, on
            the device of ``images``.
        """
        images = _to_uint8(images).contiguous(memory_format=torch.channels_last)
        out: List[torch.Tensor] = []
        for n, pipeline in zip(self.num_crops, self.pipelines):
            out.extend(pipeline(images, num_crops=n).chunk(n, dim=0))
        return out

    @torch.no_grad()
    def raw_view(self, images: torch.Tensor) -> torch.Tensor:
        """The un-augmented batch at the first pipeline's crop size, normalised (f_msr's input).

        Args:
            images: raw batch, uint8 (or float in [0, 1]), shape (B, 3, H, W).

        Returns:
            Float tensor (B, 3, c, c) with c the first ``crop_size``, normalised with the first
            pipeline's statistics (:func:`mean_std` of the first entry). Downscaling is
            antialiased bilinear.
        """
        x = _to_float01(images)
        first = self.pipelines[0]
        c = first.crop_size
        if x.shape[-2:] != (c, c):
            x = F.interpolate(x, size=(c, c), mode="bilinear", align_corners=False, antialias=True)
        return (x - first.mean.to(x.device)) / first.std.to(x.device)


# --------------------------------------------------------------------------------------------------
# solo-learn's entries: reading keys, normalisation statistics
# --------------------------------------------------------------------------------------------------


def _as_entry(entry: Any, where: str) -> Any:
    """An OmegaConf ``DictConfig`` as solo-learn reads it (plain mappings are converted; a
    ``DictConfig`` is used as it is, so its interpolations still resolve)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(entry, DictConfig):
        return entry
    if isinstance(entry, Mapping):
        return OmegaConf.create(dict(entry))
    raise ValueError(f"{where}={entry!r} is invalid: expected a mapping (one pipeline)")


def _read(entry: Any, key: str, where: str, reader: str = "build_transform_pipeline") -> Any:
    """``entry.<key>`` (a dotted path) as solo-learn reads it, or a one-line error naming the key."""
    from omegaconf import DictConfig

    node = entry
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            raise ValueError(f"{where}.{key} is missing: solo-learn's {reader} reads it")
        node = node[part]
    return node


def _number(value: Any, key: str, where: str) -> float:
    """A number read from the entry, as a float (one-line error otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}.{key}={value!r} is invalid: expected a number")
    return float(value)


def _count(value: Any, key: str, where: str) -> int:
    """A count read from the entry (an integer >= 1; one-line error otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}.{key}={value!r} is invalid: expected an integer >= 1")
    return value


def _triple(value: Any, key: str, where: str) -> Tuple[float, float, float]:
    """A normalisation statistic as 3 floats (a single number applies to every channel)."""
    values = [value] if isinstance(value, (int, float)) else list(value)
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise ValueError(f"{where}.{key}={value!r} is invalid: expected 3 numbers, one per channel")
    if key == "std" and any(v <= 0 for v in values):
        raise ValueError(f"{where}.{key}={value!r} is invalid: expected values > 0")
    return (float(values[0]), float(values[1]), float(values[2]))


def mean_std(dataset: Optional[str], entry: Any = None, where: str = "augmentations[0]") -> Stats:
    """Normalisation statistics of a pipeline, taken from solo-learn's own pipeline.

    solo-learn's ``build_transform_pipeline`` normalises with its per-dataset table (cifar10,
    cifar100, stl10, imagenet100, imagenet) and, for any other dataset, with the entry's ``mean``
    and ``std`` (ImageNet's where they are absent). It reads nothing else for the normalisation,
    so this builds solo-learn's pipeline from ``dataset`` and the entry's ``mean``/``std`` alone
    (every op off) and reads its ``Normalize`` transform. A ``mean``/``std`` of ``None`` is taken
    as unset. Used by the training views, by :meth:`MultiViewAugmentation.raw_view` (f_msr's
    input) and by evaluation.

    Args:
        dataset: solo-learn's ``data.dataset`` (e.g. ``"cifar10"``, ``"custom"``, ``"builtin"``).
        entry: one ``augmentations`` entry, or any mapping with optional ``mean``/``std``
            (plain or OmegaConf); ``None`` for none.
        where: the entry's name in errors.

    Returns:
        ``(mean, std)``, each a tuple of 3 floats.

    Raises:
        ValueError: a ``mean``/``std`` that is not 3 numbers (or one), or a ``std`` <= 0.

    Example:
        >>> mean_std("cifar10")
        ((0.4914, 0.4822, 0.4465), (0.247, 0.2435, 0.2616))
        >>> mean_std("builtin", {"mean": [0.5] * 3, "std": [0.25] * 3})
        ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    """
    from omegaconf import OmegaConf
    from solo.data.pretrain_dataloader import build_transform_pipeline
    from torchvision import transforms

    probe: Dict[str, Any] = {"crop_size": 1, "rrc": {"enabled": False}}
    probe.update({op: {"prob": 0.0} for op in _OPS})
    if entry is not None:
        given = _as_entry(entry, where)
        for key in ("mean", "std"):
            if key in given and given[key] is not None:
                value = given[key]
                probe[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    pipeline = build_transform_pipeline(dataset, OmegaConf.create(probe))
    normalize = [t for t in pipeline.transforms if isinstance(t, transforms.Normalize)]
    if len(normalize) != 1:
        raise RuntimeError(
            f"solo-learn's build_transform_pipeline gave {len(normalize)} Normalize transforms, expected 1"
        )
    return _triple(normalize[0].mean, "mean", where), _triple(normalize[0].std, "std", where)


def _solo_accepts(dataset: Optional[str], entry: Any, where: str) -> None:
    """Builds solo-learn's pipeline for the entry once: what its transforms reject fails here."""
    from solo.data.pretrain_dataloader import build_transform_pipeline

    try:
        build_transform_pipeline(dataset, entry)
    except (ValueError, TypeError) as error:
        reason = " ".join(str(error).split())
        raise ValueError(f"{where} is rejected by solo-learn's build_transform_pipeline: {reason}") from None


def build_multiview_augmentation(
    augmentations: Any, dataset: Optional[str] = None, resample: str = "bicubic"
) -> MultiViewAugmentation:
    """The device augmentation of solo-learn's ``augmentations`` list.

    Each entry is read as solo-learn's ``build_transform_pipeline`` reads it, plus ``num_crops``
    (see the module docstring): ``crop_size``; ``rrc.enabled`` and, when it is true,
    ``rrc.crop_min_scale`` and ``rrc.crop_max_scale``; ``color_jitter.prob`` and, when it is not
    0, ``brightness``, ``contrast``, ``saturation``, ``hue``; ``grayscale.prob``,
    ``gaussian_blur.prob``, ``solarization.prob``, ``equalization.prob``,
    ``horizontal_flip.prob``. Ops of probability 0 are left out. Normalisation is
    :func:`mean_std` of ``dataset`` and the entry.

    Args:
        augmentations: ``cfg.augmentations`` (an OmegaConf list) or a list of plain dicts.
        dataset: solo-learn's ``data.dataset``, for the normalisation statistics.
        resample: crop interpolation, ``"bicubic"`` (solo-learn's) or ``"bilinear"``.

    Returns:
        A :class:`MultiViewAugmentation`; move it with ``.to(device)`` if you like (it holds only
        small constant buffers, the views land on the images' device anyway).

    Raises:
        ValueError: one line naming the key, e.g. ``augmentations[1].grayscale.prob is missing``,
            or naming the entry solo-learn's own pipeline rejects.
    """
    from omegaconf import ListConfig

    if resample not in ("bicubic", "bilinear"):
        raise ValueError(f"resample={resample!r} is invalid: expected 'bicubic' or 'bilinear'")
    if not isinstance(augmentations, (ListConfig, list, tuple)) or len(augmentations) == 0:
        raise ValueError(f"augmentations={augmentations!r} is invalid: expected a non-empty list of pipelines")
    pipelines, num_crops = [], []
    for i in range(len(augmentations)):
        where = f"augmentations[{i}]"
        entry = _as_entry(augmentations[i], where)
        crop_size = _count(_read(entry, "crop_size", where), "crop_size", where)
        if _read(entry, "rrc.enabled", where):
            scale = tuple(_number(_read(entry, f"rrc.{k}", where), f"rrc.{k}", where)
                          for k in ("crop_min_scale", "crop_max_scale"))
            crop = ResizedCrop(crop_size, scale, random=True, resample=resample)
        else:
            crop = ResizedCrop(crop_size, (1.0, 1.0), random=False, resample=resample)
        ops: Dict[str, nn.Module] = {}
        for name in _OPS:
            p = _read(entry, f"{name}.prob", where)
            if not p:  # solo-learn's test: a probability of 0 leaves the op out
                continue
            p = _number(p, f"{name}.prob", where)
            if name == "color_jitter":
                strengths = [_number(_read(entry, f"color_jitter.{k}", where), f"color_jitter.{k}", where)
                             for k in ("brightness", "contrast", "saturation", "hue")]
                ops[name] = ColorJitter(*strengths, p=p)
            elif name == "gaussian_blur":
                ops[name] = RandomGaussianBlur(min(blur_kernel_size(crop_size), BLUR_MAX_KERNEL), p)
            else:
                ops[name] = {"grayscale": RandomGrayscale, "solarization": RandomSolarize,
                             "equalization": RandomEqualize, "horizontal_flip": RandomHorizontalFlip}[name](p)
        num_crops.append(_count(_read(entry, "num_crops", where, "main_pretrain.py"), "num_crops", where))
        _solo_accepts(dataset, entry, where)
        pipelines.append(ViewPipeline(crop, ops, *mean_std(dataset, entry, where)))
    return MultiViewAugmentation(pipelines, num_crops)

