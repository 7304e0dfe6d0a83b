"""Tests of the batch augmentation against its config and solo-learn's torchvision pipeline."""

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image, ImageOps

from solo_iclmsr.augment import (
    DATASET_MEAN_STD,
    ColorJitter,
    RandomGaussianBlur,
    ResizedCrop,
    blur_kernel_size,
    build_multiview_augmentation,
    build_torchvision_pipeline,
    parse_augmentations,
)
from solo_iclmsr.data.builtin import BuiltinSpec, generate_builtin

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


@pytest.fixture
def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _binomial_ok(rate, p, n, z=4.0):
    """True when an observed rate is within z standard deviations of p (n draws)."""
    return abs(rate - p) <= z * math.sqrt(p * (1 - p) / n) + 1e-9


def test_crop_area_fraction_within_scale_and_replay(device):
    cfg = [{"rrc": {"crop_min_scale": 0.2, "crop_max_scale": 0.6}, "crop_size": 16, "num_crops": 1}]
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


def test_op_rates_match_probabilities(device):
    n = 2000
    cfg = [
        {
            "rrc": {"enabled": False},
            "grayscale": {"prob": 0.2},
            "solarization": {"prob": 0.3},
            "horizontal_flip": {"prob": 0.5},
            "color_jitter": {"prob": 0.8, "brightness": 0.4},
            "crop_size": 8,
            "num_crops": 1,
            "mean": [0.0, 0.0, 0.0],
            "std": [1.0, 1.0, 1.0],
        }
    ]
    aug = build_multiview_augmentation(cfg)
    torch.manual_seed(1)
    (view,) = aug(torch.rand(n, 3, 8, 8, device=device))
    probs = {k: v["apply"].float().mean().item() for k, v in aug.pipelines[0].last_params().items() if "apply" in v}
    for name, p in [("grayscale", 0.2), ("solarization", 0.3), ("horizontal_flip", 0.5), ("color_jitter", 0.8)]:
        assert _binomial_ok(probs[name], p, n), (name, probs[name], p)


def test_flip_and_grayscale_effects_on_images(device):
    n = 2000
    cfg = [{"rrc": {"enabled": False}, "grayscale": {"prob": 0.2}, "horizontal_flip": {"prob": 0.5},
            "crop_size": 8, "num_crops": 1, "mean": [0.0] * 3, "std": [1.0] * 3}]
    aug = build_multiview_augmentation(cfg)
    ramp = torch.linspace(0.1, 0.9, 8, device=device)
    x = torch.stack([ramp.expand(8, 8), ramp.expand(8, 8) * 0.5, 1 - ramp.expand(8, 8)])[None].repeat(n, 1, 1, 1)
    torch.manual_seed(2)
    (view,) = aug(x)
    gray = view.max(1).values - view.min(1).values  # (B, 8, 8)
    gray_rate = (gray.amax((1, 2)) < 1e-5).float().mean().item()
    # the red ramp rises left to right; grayscale keeps it rising (0.299 + 0.587 / 2 - 0.114 > 0)
    flipped = (view[:, 0, :, 0] > view[:, 0, :, -1]).float().mean().item()
    assert (view[:, 0, :, 0] != view[:, 0, :, -1]).all()
    assert _binomial_ok(gray_rate, 0.2, n), gray_rate
    assert _binomial_ok(flipped, 0.5, n), flipped


def test_solarization_threshold_matches_pil():
    cfg = [{"rrc": {"enabled": False}, "solarization": {"prob": 1.0}, "crop_size": 4, "num_crops": 1,
            "mean": [0.0] * 3, "std": [1.0] * 3}]
    aug = build_multiview_augmentation(cfg)
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
    assert len(a) == 3
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert all(torch.allclose(u, v, atol=1e-5) for u, v in zip(a, c))
    assert (a[0] - d[0]).abs().max().item() > 0.5
    assert (a[0] - a[1]).abs().max().item() > 0.5  # the two crops of one pipeline differ


def test_views_match_torchvision_pipeline_shapes_dtypes_ranges():
    cfgs = [SIMCLR_CIFAR, dict(SIMCLR_CIFAR, crop_size=16, num_crops=3, solarization={"prob": 0.2},
                                  gaussian_blur={"prob": 0.5})]
    data = generate_builtin(BuiltinSpec(n_train=256, n_test=16, seed=3), "train")
    x = torch.from_numpy(data["full"])  # (256, 3, 32, 32) uint8
    aug = build_multiview_augmentation(cfgs, "cifar10")
    tv = build_torchvision_pipeline(cfgs, "cifar10")
    torch.manual_seed(0)
    ours = aug(x)
    per_image = [tv(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in x]
    theirs = [torch.stack([views[i] for views in per_image]) for i in range(len(per_image[0]))]
    assert [tuple(v.shape) for v in ours] == [tuple(v.shape) for v in theirs] == [(256, 3, 32, 32)] * 2 + [(256, 3, 16, 16)] * 3
    assert all(v.dtype == torch.float32 for v in ours + theirs)
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in DATASET_MEAN_STD["cifar10"])
    lo, hi = (0 - mean) / std, (1 - mean) / std
    for o, t in zip(ours, theirs):
        for v in (o, t):
            assert (v >= lo - 1e-4).all() and (v <= hi + 1e-4).all()
        # same distribution of values: per-channel mean and std agree
        om, tm = o.mean((0, 2, 3)), t.mean((0, 2, 3))
        os_, ts = o.std((0, 2, 3)), t.std((0, 2, 3))
        assert (om - tm).abs().max().item() < 0.15, (om, tm)
        assert ((os_ / ts) - 1).abs().max().item() < 0.15, (os_, ts)


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
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in DATASET_MEAN_STD["cifar10"])
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


@pytest.mark.parametrize(
    "entry, match",
    [
        ({"color_jitter": {"prob": 1.5}}, r"augmentations\[0\]\.color_jitter\.prob=1\.5 is invalid: expected a value in \[0, 1\]"),
        ({"color_jiter": {"prob": 0.5}}, r"augmentations\[0\]\.color_jiter is not a valid key: did you mean 'color_jitter'\?"),
        ({"rrc": {"crop_min_scal": 0.2}}, r"augmentations\[0\]\.rrc\.crop_min_scal .* did you mean 'crop_min_scale'\?"),
        ({"rrc": {"crop_min_scale": 0.9, "crop_max_scale": 0.5}}, r"crop_min_scale=0\.9 is invalid: expected a value <= rrc\.crop_max_scale=0\.5"),
        ({"crop_size": 0}, r"augmentations\[0\]\.crop_size=0 is invalid: expected an integer >= 1"),
        ({"color_jitter": {"hue": 0.7}}, r"color_jitter\.hue=0\.7 is invalid: expected a value in \[0, 0\.5\]"),
        ({"std": [0.2, 0.0, 0.2]}, r"augmentations\[0\]\.std=\[0\.2, 0\.0, 0\.2\] is invalid"),
    ],
)
def test_config_errors_name_the_key(entry, match):
    cfg = dict({"crop_size": 32, "num_crops": 2}, **entry)
    with pytest.raises(ValueError, match=match):
        parse_augmentations([cfg])


def test_missing_key_and_omegaconf_input():
    with pytest.raises(ValueError, match=r"augmentations\[1\]\.num_crops is missing"):
        parse_augmentations([SIMCLR_CIFAR, {"crop_size": 32}])
    views = parse_augmentations(OmegaConf.create([SIMCLR_CIFAR]))
    assert views[0].color_jitter_prob == 0.8 and views[0].hue == 0.1 and views[0].num_crops == 2
    assert views[0].grayscale_prob == 0.2 and views[0].crop_min_scale == 0.08
