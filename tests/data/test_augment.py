"""Tests of the batch augmentation against solo-learn's entries and solo-learn's own per-image
pipeline (``FullTransformPipeline`` of ``NCropAugmentation(build_transform_pipeline(...))``)."""

import copy
import math
import random
import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image, ImageOps

from solo_iclmsr.data.augment import (
    ColorJitter,
    RandomGaussianBlur,
    ResizedCrop,
    blur_kernel_size,
    build_multiview_augmentation,
    mean_std,
)
from solo_iclmsr.data.builtin import BuiltinSpec, generate_builtin
from solo_source import SKIP_REASON, solo_source

OPS = ("color_jitter", "grayscale", "gaussian_blur", "solarization", "equalization", "horizontal_flip")

# solo-learn's cifar SimCLR entry: every key solo-learn reads is read (rrc on, jitter on).
SIMCLR_CIFAR = {
    "rrc": {"enabled": True, "crop_min_scale": 0.08, "crop_max_scale": 1.0},
    "color_jitter": {"prob": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1},
    "grayscale": {"prob": 0.2},
    "gaussian_blur": {"prob": 0.0},
    "solarization": {"prob": 0.0},
    "equalization": {"prob": 0.0},
    "horizontal_flip": {"prob": 0.5},
    "crop_size": 32,
    "num_crops": 2,
}


# Identity normalisation for a dataset solo-learn does not know (its rule: the entry's mean/std).
PLAIN = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


def entry(**changes):
    """A complete solo-learn entry with every op off (probability 0), one 32 px crop; ``changes``
    are merged into its sections (or replace top-level keys)."""
    out = {"rrc": {"enabled": True, "crop_min_scale": 0.08, "crop_max_scale": 1.0},
           **{op: {"prob": 0.0} for op in OPS}, "crop_size": 32, "num_crops": 1}
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = dict(out[key], **value)
        else:
            out[key] = value
    return out


def solo_pipeline(augmentations, dataset):
    """solo-learn's own per-image pipeline for the same entries, as its main_pretrain.py builds it."""
    from solo.data.pretrain_dataloader import FullTransformPipeline, NCropAugmentation, build_transform_pipeline

    entries = augmentations if OmegaConf.is_config(augmentations) else OmegaConf.create(augmentations)
    return FullTransformPipeline([NCropAugmentation(build_transform_pipeline(dataset, e), e.num_crops) for e in entries])


def solo_views(pipeline, images, seed=0):
    """Views of a uint8 batch (B, 3, H, W) by solo-learn's pipeline: a list of (B, 3, c, c), one per view."""
    random.seed(seed)  # solo's Gaussian blur draws sigma from Python's generator
    torch.manual_seed(seed)  # torchvision's draws
    per_image = [pipeline(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in images]
    return [torch.stack([views[i] for views in per_image]) for i in range(len(per_image[0]))]


@pytest.fixture
def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _binomial_ok(rate, p, n, z=4.0):
    """True when an observed rate is within z standard deviations of p (n draws)."""
    return abs(rate - p) <= z * math.sqrt(p * (1 - p) / n) + 1e-9


def test_crop_area_fraction_within_scale_and_replay(device):
    cfg = [entry(rrc={"crop_min_scale": 0.2, "crop_max_scale": 0.6}, crop_size=16)]
    aug = build_multiview_augmentation(cfg, "cifar10")
    torch.manual_seed(0)
    x = torch.randint(0, 256, (2000, 3, 64, 64), dtype=torch.uint8, device=device)
    (view,) = aug(x)
    pipe = aug.pipelines[0]
    params = pipe.last_params()
    boxes = params["crop"]["boxes"]  # (B, 4): x0, y0, w, h
    w, h = boxes[:, 2].float(), boxes[:, 3].float()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 64).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= 64).all()
    area = (w * h / (64 * 64)).cpu().numpy()
    # rounding w and h to whole pixels moves the area by at most ~2/64 of the scale
    assert area.min() >= 0.2 - 0.04 and area.max() <= 0.6 + 0.04, (area.min(), area.max())
    assert area.min() < 0.23 and area.max() > 0.57  # the whole range is used
    assert abs(area.mean() - 0.4) < 0.02  # U(0.2, 0.6)
    ratio = (w / h).cpu().numpy()
    assert ratio.min() >= 0.75 - 0.05 and ratio.max() <= 4 / 3 + 0.05
    replay = pipe(x.float() / 255, params=params)
    assert torch.equal(replay, view)


def test_each_op_changes_exactly_the_images_it_flags(device):
    """Rates of the drawn flags, and the images: each flagged row is the op's formula applied to
    the replay without that op, each unflagged row equals that replay."""
    n = 2000
    cfg = [entry(rrc={"enabled": False}, grayscale={"prob": 0.2}, solarization={"prob": 0.3},
                 horizontal_flip={"prob": 0.5},
                 color_jitter={"prob": 0.8, "brightness": 0.4, "contrast": 0.0, "saturation": 0.0, "hue": 0.0},
                 crop_size=8, **PLAIN)]
    aug = build_multiview_augmentation(cfg, "custom")
    pipe = aug.pipelines[0]
    torch.manual_seed(1)
    x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, device=device)  # crop = whole image
    (view,) = aug(x)
    params = pipe.last_params()
    flags = {name: params[name]["apply"] for name in ("grayscale", "solarization", "horizontal_flip", "color_jitter")}
    for name, p in [("grayscale", 0.2), ("solarization", 0.3), ("horizontal_flip", 0.5), ("color_jitter", 0.8)]:
        rate = flags[name].float().mean().item()
        assert _binomial_ok(rate, p, n), (name, rate, p)

    def without(name):
        """The same views, replayed with op ``name`` switched off for every row."""
        replay = {op: dict(values) for op, values in params.items()}
        replay[name]["apply"] = torch.zeros_like(replay[name]["apply"])
        return pipe(x, params=replay)

    def rows_changed(a, b):
        return (a != b).flatten(1).any(1)

    # grayscale: flagged rows have three equal channels, the others do not
    spread = (view.amax(1) - view.amin(1)).flatten(1).amax(1)  # (n,)
    gray = flags["grayscale"]
    assert (spread[gray] < 1e-6).all() and (spread[~gray] > 1e-2).all()
    # solarization: PIL's threshold (values >= 128 of 255 inverted) on the un-solarized replay
    plain, sol = without("solarization"), flags["solarization"]
    assert torch.allclose(view[sol], torch.where(plain[sol] >= 0.5, 1 - plain[sol], plain[sol]), atol=1e-6)
    assert torch.allclose(view[~sol], plain[~sol], atol=1e-6)
    bright = sol & (plain.flatten(1).amax(1) > 0.51)  # rows with values the threshold inverts
    assert bright.sum() > 0.9 * sol.sum() and rows_changed(view[bright], plain[bright]).all()
    # flip: flagged rows are mirror images of the unflipped replay
    plain, flip = without("horizontal_flip"), flags["horizontal_flip"]
    assert torch.allclose(view[flip], plain[flip].flip(-1), atol=1e-6)
    assert torch.allclose(view[~flip], plain[~flip], atol=1e-6)
    assert rows_changed(view[flip], plain[flip]).all()
    # brightness: rows jittered but neither gray nor solarized are clamp(f * x) of the replay
    plain, jit = without("color_jitter"), flags["color_jitter"]
    factor = params["color_jitter"]["brightness"].view(-1, 1, 1, 1)
    only = jit & ~gray & ~sol
    assert only.sum() > 500
    assert torch.allclose(view[only], (plain[only] * factor[only]).clamp(0, 1), atol=1e-6)
    assert torch.allclose(view[~jit], plain[~jit], atol=1e-6)
    visible = jit & ((factor.flatten() - 1).abs() > 0.01)
    assert rows_changed(view[visible], plain[visible]).all()


def test_solarization_threshold_matches_pil():
    cfg = [entry(rrc={"enabled": False}, solarization={"prob": 1.0}, crop_size=4, **PLAIN)]
    aug = build_multiview_augmentation(cfg, "custom")
    values = torch.arange(256, dtype=torch.uint8)
    x = values.view(1, 1, 16, 16).expand(1, 3, 16, 16)[:, :, :4, :4].contiguous()  # 0..63
    x = torch.cat([x, x + 64, x + 128, x + 192])  # (4, 3, 4, 4): all 256 values
    (view,) = aug(x)
    pil = np.stack([np.asarray(ImageOps.solarize(Image.fromarray(im.permute(1, 2, 0).numpy()))) for im in x])
    pil = pil.transpose(0, 3, 1, 2)  # (4, 3, 4, 4)
    assert np.abs(view.numpy() * 255 - pil).max() < 1e-3


def test_same_seed_same_views_and_uint8_equals_float(device):
    aug = build_multiview_augmentation([SIMCLR_CIFAR, dict(SIMCLR_CIFAR, crop_size=16, num_crops=1)], "cifar10")
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device=device)
    torch.manual_seed(7)
    a = aug(x)
    torch.manual_seed(7)
    b = aug(x)
    torch.manual_seed(7)
    c = aug(x.float() / 255)
    torch.manual_seed(8)
    d = aug(x)
    assert len(a) == 3 and aug.num_crops == [2, 1] and aug.crop_sizes == [32, 16]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert all(torch.allclose(u, v, atol=1e-5) for u, v in zip(a, c))
    assert (a[0] - d[0]).abs().max().item() > 0.5
    assert (a[0] - a[1]).abs().max().item() > 0.5  # the two crops of one pipeline differ


def _assert_same_distribution(ours, theirs, z=4.0):
    """Per channel, the views' mean value and their mean within-view std agree with solo-learn's
    within ``z`` standard errors of the difference (standard errors from the spread over views:
    the two pipelines draw their parameters independently)."""
    for name, stat in (("mean", lambda v: v.mean((2, 3))), ("std", lambda v: v.std((2, 3)))):
        a, b = stat(ours), stat(theirs)  # (N, 3) per view and channel
        diff = a.mean(0) - b.mean(0)
        se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
        assert (diff.abs() < z * se).all(), (name, diff, se)
        assert (se < 0.1).all(), (name, se)  # enough views for the test to mean something


def test_views_match_solo_pipeline_shapes_dtypes_ranges():
    cfgs = [SIMCLR_CIFAR, dict(SIMCLR_CIFAR, crop_size=16, num_crops=3, solarization={"prob": 0.2},
                                  gaussian_blur={"prob": 0.5})]
    data = generate_builtin(BuiltinSpec(n_train=160, n_test=16, seed=3), "train")
    x = torch.from_numpy(data["full"])  # (160, 3, 32, 32) uint8
    aug = build_multiview_augmentation(cfgs, "cifar10")
    torch.manual_seed(0)
    ours = aug(x)
    theirs = solo_views(solo_pipeline(cfgs, "cifar10"), x)
    assert [tuple(v.shape) for v in ours] == [tuple(v.shape) for v in theirs] == [(160, 3, 32, 32)] * 2 + [(160, 3, 16, 16)] * 3
    assert all(v.dtype == torch.float32 for v in ours + theirs)
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in mean_std("cifar10"))
    lo, hi = (0 - mean) / std, (1 - mean) / std
    for o, t in zip(ours, theirs):
        for v in (o, t):
            assert (v >= lo - 1e-4).all() and (v <= hi + 1e-4).all()
        _assert_same_distribution(o, t)


@pytest.mark.parametrize(
    "name, dataset, image_size, n_images",
    [("cifar/augmentations/symmetric.yaml", "cifar10", 32, 256),
     ("imagenet-100/augmentations/asymmetric.yaml", "imagenet100", 64, 64)],
)
def test_views_of_solo_shipped_augmentation_files(name, dataset, image_size, n_images):
    source = solo_source()
    if source is None:
        pytest.skip(SKIP_REASON)
    cfg = OmegaConf.load(source / "scripts" / "pretrain" / name)
    aug = build_multiview_augmentation(cfg, dataset)
    # crop sizes, counts, crop scales and per-op probabilities as the file says
    assert aug.num_crops == [e.num_crops for e in cfg] and aug.crop_sizes == [e.crop_size for e in cfg]
    for e, pipe in zip(cfg, aug.pipelines):
        assert pipe.crop.random == e.rrc.enabled
        assert pipe.crop.scale == (e.rrc.crop_min_scale, e.rrc.crop_max_scale)
        assert set(pipe.ops) == {op for op in OPS if e[op].prob > 0}
        for op in pipe.ops:
            assert pipe.ops[op].p == e[op].prob, op
        jitter = pipe.ops["color_jitter"]
        assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (
            e.color_jitter.brightness, e.color_jitter.contrast, e.color_jitter.saturation, e.color_jitter.hue)
        n = 20000
        params = pipe.generate_parameters(n, 64, 64, torch.device("cpu"))
        for op in pipe.ops:
            rate = params[op]["apply"].float().mean().item()
            assert _binomial_ok(rate, e[op].prob, n), (op, rate, e[op].prob)
    # the views, against solo-learn's own pipeline on the same images (noise: every crop of it has
    # the same statistics, so few views pin the distribution down)
    x = torch.randint(0, 256, (n_images, 3, image_size, image_size), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(5))
    torch.manual_seed(0)
    ours = aug(x)
    theirs = solo_views(solo_pipeline(cfg, dataset), x)
    shapes = [(n_images, 3, e.crop_size, e.crop_size) for e in cfg for _ in range(e.num_crops)]
    assert [tuple(v.shape) for v in ours] == [tuple(v.shape) for v in theirs] == shapes
    for o, t in zip(ours, theirs):
        _assert_same_distribution(o, t)


def _tv_jitter(img, b, c, s, h, order):
    """torchvision's functional colour steps on one float image, in the given order."""
    import torchvision.transforms.functional as TF

    steps = [lambda x: TF.adjust_brightness(x, b), lambda x: TF.adjust_contrast(x, c),
             lambda x: TF.adjust_saturation(x, s), lambda x: TF.adjust_hue(x, h)]
    for i in order:
        img = steps[i](img)
    return img


def test_color_jitter_matches_torchvision_for_fixed_factors():
    torch.manual_seed(4)
    n = 24
    x = torch.rand(n, 3, 12, 12)
    x[:, :, :2] = 0.5  # grey pixels (zero chroma)
    x[:, 1, 2:4] = x[:, 0, 2:4]  # red/green ties
    jitter = ColorJitter(0.4, 0.4, 0.2, 0.1, p=1.0)
    params = jitter.generate_parameters(n, x.device)
    params["order"][:8] = torch.tensor([3, 1, 0, 2])  # a group sharing one order, the rest mixed
    ours = jitter(x.clone(), params)
    for i in range(n):
        f = {k: params[k][i].item() for k in ("brightness", "contrast", "saturation", "hue")}
        ref = _tv_jitter(x[i], f["brightness"], f["contrast"], f["saturation"], f["hue"], params["order"][i].tolist())
        # torchvision's luma weights are 0.2989/0.587/0.114, ours PIL's 0.299/0.587/0.114
        assert (ours[i] - ref).abs().max().item() < 2e-4, i
    # each step alone, with extreme factors
    for step, factor in [(0, 1.4), (1, 0.6), (2, 0.0), (3, 0.5), (3, -0.37)]:
        p = {k: torch.ones(n) for k in ("brightness", "contrast", "saturation")}
        p.update(apply=torch.ones(n, dtype=torch.bool), hue=torch.zeros(n), order=torch.tensor([step] + [i for i in range(4) if i != step]).expand(n, 4))
        p[["brightness", "contrast", "saturation", "hue"][step]] = torch.full((n,), factor)
        one = ColorJitter(*[0.5 if i == step else 0.0 for i in range(4)], p=1.0)
        neutral = [factor if i == step else (0.0 if i == 3 else 1.0) for i in range(4)]
        ref = torch.stack([_tv_jitter(im, *neutral, [step]) for im in x])
        assert (one(x.clone(), p) - ref).abs().max().item() < 2e-4, (step, factor)


def test_color_jitter_draws_torchvision_ranges_and_per_sample_orders():
    torch.manual_seed(5)
    n = 4000
    params = ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8).generate_parameters(n, torch.device("cpu"))
    for key, (lo, hi) in [("brightness", (0.6, 1.4)), ("contrast", (0.6, 1.4)), ("saturation", (0.8, 1.2)), ("hue", (-0.1, 0.1))]:
        v = params[key]
        assert v.min() >= lo and v.max() <= hi and v.min() < lo + 0.01 and v.max() > hi - 0.01, key
    assert (params["order"].sort(1).values == torch.arange(4)).all()  # permutations
    first = torch.bincount(params["order"][:, 0], minlength=4).float() / n
    assert all(_binomial_ok(r, 0.25, n) for r in first.tolist()), first
    assert ColorJitter.order_key(params["order"]).unique().numel() == 24


def test_gaussian_blur_matches_kornia_and_truncation_is_small():
    import kornia

    torch.manual_seed(6)
    x = torch.rand(4, 3, 40, 40)
    sigma = torch.tensor([0.1, 0.7, 1.3, 2.0])
    for k in (3, 13):
        ours = RandomGaussianBlur(k, 1.0)(x.clone(), {"apply": torch.ones(4, dtype=torch.bool), "sigma": sigma})
        ref = torch.cat([kornia.filters.gaussian_blur2d(x[i : i + 1], (k, k), (s, s), border_type="reflect")
                         for i, s in enumerate(sigma.tolist())])
        assert (ours - ref).abs().max().item() < 1e-5, k
    full = kornia.filters.gaussian_blur2d(x, (23, 23), (2.0, 2.0), border_type="reflect")
    ours = RandomGaussianBlur(13, 1.0)(x.clone(), {"apply": torch.ones(4, dtype=torch.bool), "sigma": torch.full((4,), 2.0)})
    assert (ours - full).abs().max().item() < 3e-3  # 13 taps instead of 23 at the largest sigma


def test_crop_resamples_like_pil():
    import torchvision.transforms.functional as TF

    torch.manual_seed(8)
    x = torch.randint(0, 256, (3, 3, 48, 40), dtype=torch.uint8)
    boxes = torch.tensor([[3, 5, 20, 30], [0, 0, 40, 48], [10, 2, 30, 9]])  # x0, y0, w, h
    crop = ResizedCrop(24, (0.08, 1.0))
    ours = crop(x.contiguous(memory_format=torch.channels_last), {"boxes": boxes}, [0, 1, 2])
    for i, (x0, y0, w, h) in enumerate(boxes.tolist()):
        pil = Image.fromarray(x[i].permute(1, 2, 0).numpy())
        ref = np.asarray(TF.resized_crop(pil, y0, x0, h, w, [24, 24], TF.InterpolationMode.BICUBIC))
        diff = np.abs(ours[i].permute(1, 2, 0).numpy().astype(int) - ref.astype(int))
        # within one level, except where the two kernels clip an overshoot between their two
        # separable passes in a different order (a few pixels of this noise image)
        assert (diff <= 1).mean() > 0.97 and diff.mean() < 0.5, (i, diff.max(), diff.mean())


def test_chunking_does_not_change_views():
    cfg = [dict(SIMCLR_CIFAR, crop_size=16, gaussian_blur={"prob": 0.5}, solarization={"prob": 0.3})]
    aug = build_multiview_augmentation(cfg, "cifar10")
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    torch.manual_seed(9)
    a = aug(x)
    aug.pipelines[0].chunk_bytes = 1  # one view per chunk
    torch.manual_seed(9)
    b = aug(x)
    assert all(torch.allclose(u, v, atol=1e-5) for u, v in zip(a, b))


def test_raw_view_is_resized_normalised_input():
    aug = build_multiview_augmentation([dict(SIMCLR_CIFAR, crop_size=16)], "cifar10")
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    raw = aug.raw_view(x)
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in mean_std("cifar10"))
    # PIL's antialiased bilinear reduction, on 8-bit values (so within one level of 255)
    pil = [np.asarray(Image.fromarray(im.permute(1, 2, 0).numpy()).resize((16, 16), Image.BILINEAR)) for im in x]
    expected = (torch.from_numpy(np.stack(pil)).permute(0, 3, 1, 2).float() / 255 - mean) / std
    assert raw.shape == (4, 3, 16, 16)
    assert ((raw - expected) * std).abs().max().item() <= 1.01 / 255
    same = build_multiview_augmentation([SIMCLR_CIFAR], "cifar10").raw_view(x)
    assert torch.allclose(same, (x.float() / 255 - mean) / std)
    assert aug.num_views == 2


def test_blur_kernel_sizes_are_odd_and_scaled():
    assert [blur_kernel_size(s) for s in (32, 64, 96, 224, 448)] == [3, 7, 11, 23, 47]


def test_ops_of_probability_zero_are_left_out_as_in_solo():
    from solo.data.pretrain_dataloader import build_transform_pipeline

    everything = entry(color_jitter={"prob": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1},
                       **{op: {"prob": 0.5} for op in OPS[1:]})
    for cfg in (entry(), SIMCLR_CIFAR, everything):
        (pipe,) = build_multiview_augmentation([cfg], "cifar10").pipelines
        assert list(pipe.ops) == [op for op in OPS if cfg[op]["prob"] > 0]
        # solo's Compose: the crop, its random ops, ToTensor, Normalize
        assert len(build_transform_pipeline("cifar10", OmegaConf.create(cfg)).transforms) == len(pipe.ops) + 3


def _leaf_keys(mapping, prefix=""):
    for key, value in mapping.items():
        if isinstance(value, dict):
            yield from _leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _without(mapping, dotted):
    out = copy.deepcopy(mapping)
    *parents, last = dotted.split(".")
    node = out
    for part in parents:
        node = node[part]
    del node[last]
    return out


@pytest.mark.parametrize("cfg", [SIMCLR_CIFAR, entry(rrc={"enabled": False})], ids=["all-read", "rrc-off-jitter-off"])
def test_required_keys_are_the_keys_solo_requires(cfg):
    """Removing a key fails here (one line naming it) exactly when solo-learn's own
    ``build_transform_pipeline`` fails without it; ``num_crops`` is read by its main_pretrain.py."""
    from solo.data.pretrain_dataloader import build_transform_pipeline

    assert len(build_multiview_augmentation([cfg], "cifar10").pipelines) == 1
    required = []
    for key in _leaf_keys(cfg):
        broken = _without(cfg, key)
        try:
            build_transform_pipeline("cifar10", OmegaConf.create(broken))
            solo_requires = key == "num_crops"
        except Exception:
            solo_requires = True
        if solo_requires:
            required.append(key)
            with pytest.raises(ValueError, match=rf"^augmentations\[1\]\.{re.escape(key)} is missing") as error:
                build_multiview_augmentation([cfg, broken], "cifar10")
            assert "\n" not in str(error.value)
        else:
            assert len(build_multiview_augmentation([cfg, broken], "cifar10").pipelines) == 2
    if cfg is SIMCLR_CIFAR:  # every key of a fully read entry is required
        assert sorted(required) == sorted(_leaf_keys(cfg))
    else:  # solo does not read the scales of a disabled crop nor the strengths of jitter off
        assert "rrc.crop_min_scale" not in required and "rrc.enabled" in required
    # keys solo does not know are ignored, as solo ignores them
    assert len(build_multiview_augmentation([dict(cfg, colour_jitter={"prob": 1.0})], "cifar10").pipelines) == 1


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"crop_size": 0}, r"^augmentations\[0\]\.crop_size=0 is invalid: expected an integer >= 1$"),
        ({"num_crops": 1.5}, r"^augmentations\[0\]\.num_crops=1\.5 is invalid: expected an integer >= 1$"),
        ({"grayscale": {"prob": "often"}}, r"^augmentations\[0\]\.grayscale\.prob='often' is invalid: expected a number$"),
        ({"color_jitter": {"hue": 0.7}},
         r"^augmentations\[0\] is rejected by solo-learn's build_transform_pipeline: hue values should be between"),
        ({"color_jitter": {"brightness": -0.4}},
         r"^augmentations\[0\] is rejected by solo-learn's build_transform_pipeline: .*brightness.*non negative"),
        ({"std": [0.2, 0.0, 0.2]}, r"^augmentations\[0\]\.std=\[0\.2, 0\.0, 0\.2\] is invalid: expected values > 0$"),
        ({"mean": [0.5, 0.5]}, r"^augmentations\[0\]\.mean=\[0\.5, 0\.5\] is invalid: expected 3 numbers"),
    ],
)
def test_value_errors_are_one_line_naming_the_key(changes, match):
    cfg = copy.deepcopy(SIMCLR_CIFAR)
    for key, value in changes.items():
        cfg[key] = dict(cfg[key], **value) if isinstance(value, dict) else value
    with pytest.raises(ValueError, match=match) as error:
        build_multiview_augmentation([cfg], "custom")
    assert "\n" not in str(error.value)


def test_list_errors_and_omegaconf_input_with_interpolation():
    for bad in ([], SIMCLR_CIFAR, "symmetric"):
        with pytest.raises(ValueError, match=r"^augmentations=.* is invalid: expected a non-empty list of pipelines$"):
            build_multiview_augmentation(bad, "cifar10")
    with pytest.raises(ValueError, match=r"^augmentations\[1\]=3 is invalid: expected a mapping"):
        build_multiview_augmentation([SIMCLR_CIFAR, 3], "cifar10")
    with pytest.raises(ValueError, match=r"^resample='nearest' is invalid"):
        build_multiview_augmentation([SIMCLR_CIFAR], "cifar10", resample="nearest")
    # an entry of a whole config: interpolations resolve against the config's root
    root = OmegaConf.create({"size": 16, "augmentations": [dict(SIMCLR_CIFAR, crop_size="${size}")]})
    aug = build_multiview_augmentation(root.augmentations, "cifar10")
    (pipe,) = aug.pipelines
    assert aug.crop_sizes == [16] and aug.num_crops == [2]
    assert pipe.ops["color_jitter"].hue == 0.1 and pipe.ops["grayscale"].p == 0.2 and pipe.crop.scale == (0.08, 1.0)
