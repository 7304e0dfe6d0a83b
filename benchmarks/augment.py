"""Images per second: the batch pipeline versus solo-learn's own per-image pipeline and Kornia.

Same SimCLR config (solo-learn's cifar / imagenet SimCLR augmentations, two crops), batch 256, at
32 px and 224 px. The per-image reference is solo-learn's own pipeline, built as its
``main_pretrain.py`` builds it (``FullTransformPipeline`` of ``NCropAugmentation(
build_transform_pipeline(dataset, entry), entry.num_crops)`` from ``solo.data.pretrain_dataloader``):
torchvision v1 transforms on PIL images, one image at a time (here in the main process, no loader
workers). The batch pipeline (``solo_iclmsr.data.augment.MultiViewAugmentation``) takes the uint8
batch and makes both views at once. Kornia: its ``AugmentationSequential`` of the same ops
(``kornia_pipeline``: random resized crop, colour jitter, grayscale, blur, solarization, flip,
normalisation), built as a new user would from the documentation, run on the batch converted to
float, once per view. With CUDA, both batch pipelines also run there, with the augmentation time
as a fraction of one resnet18 training step (forward + backward + SGD step on both views of the
same batch).

Usage:
    OMP_NUM_THREADS=1 python benchmarks/augment.py [--batch 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable, Dict, List

import torch
from omegaconf import OmegaConf
from PIL import Image
from solo.data.pretrain_dataloader import FullTransformPipeline, NCropAugmentation, build_transform_pipeline

from solo_iclmsr.data.augment import build_multiview_augmentation, mean_std


def simclr_config(crop_size: int) -> List[Dict]:
    """solo-learn's SimCLR augmentations (blur 0 at 32 px as for CIFAR, 0.5 at 224 px)."""
    return [
        {
            "rrc": {"enabled": True, "crop_min_scale": 0.08, "crop_max_scale": 1.0},
            "color_jitter": {"prob": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1},
            "grayscale": {"prob": 0.2},
            "gaussian_blur": {"prob": 0.0 if crop_size <= 32 else 0.5},
            "solarization": {"prob": 0.0 if crop_size <= 32 else 0.1},
            "equalization": {"prob": 0.0},
            "horizontal_flip": {"prob": 0.5},
            "crop_size": crop_size,
            "num_crops": 2,
        }
    ]


def solo_pipeline(augmentations: List[Dict], dataset: str) -> FullTransformPipeline:
    """solo-learn's own per-image pipeline for the entries, as its main_pretrain.py builds it."""
    entries = OmegaConf.create(augmentations)
    return FullTransformPipeline(
        [NCropAugmentation(build_transform_pipeline(dataset, e), e.num_crops) for e in entries]
    )


def kornia_pipeline(augmentations: List[Dict], mean, std) -> torch.nn.Module:
    """Kornia's ``AugmentationSequential`` of the first entry's ops (one view per call)."""
    import kornia.augmentation as K

    e = augmentations[0]
    cj, size = e["color_jitter"], e["crop_size"]
    ops = [K.RandomResizedCrop((size, size), scale=(e["rrc"]["crop_min_scale"],
                                                    e["rrc"]["crop_max_scale"])),
           K.ColorJitter(cj["brightness"], cj["contrast"], cj["saturation"], cj["hue"],
                         p=cj["prob"]),
           K.RandomGrayscale(p=e["grayscale"]["prob"])]
    if e["gaussian_blur"]["prob"] > 0:
        ops.append(K.RandomGaussianBlur((23, 23), (0.1, 2.0), p=e["gaussian_blur"]["prob"]))
    if e["solarization"]["prob"] > 0:
        ops.append(K.RandomSolarize(0.0, 0.0, p=e["solarization"]["prob"]))
    ops += [K.RandomHorizontalFlip(p=e["horizontal_flip"]["prob"]),
            K.Normalize(torch.tensor(mean), torch.tensor(std))]
    return K.AugmentationSequential(*ops)


def best_time(fn: Callable[[], object], repeats: int, sync: bool = False) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    b = args.batch
    rows = []
    for size in (32, 224):
        cfg = simclr_config(size)
        dataset = "cifar10" if size == 32 else "imagenet"
        g = torch.Generator().manual_seed(0)
        raw = torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=g)  # (B, 3, S, S)
        pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in raw]
        per_image = solo_pipeline(cfg, dataset)
        batch_aug = build_multiview_augmentation(cfg, dataset)
        kornia_aug = kornia_pipeline(cfg, *mean_std(dataset, cfg[0]))

        def kornia_views(images: torch.Tensor) -> list:
            x = images.float().div_(255.0)
            return [kornia_aug(x) for _ in range(cfg[0]["num_crops"])]

        t_solo = best_time(lambda: [per_image(im) for im in pil], max(1, args.repeats - 1))
        t_cpu = best_time(lambda: batch_aug(raw), args.repeats)
        t_kornia = best_time(lambda: kornia_views(raw), max(1, args.repeats - 1))
        row = {"size": size, "solo": b / t_solo, "cpu": b / t_cpu, "kornia": b / t_kornia,
               "cuda": None, "kornia_cuda": None, "frac": None}
        if torch.cuda.is_available():
            import torchvision

            dev = torch.device("cuda")
            raw_d = raw.to(dev)
            t_gpu = best_time(lambda: batch_aug(raw_d), args.repeats, sync=True)
            t_kornia_gpu = best_time(lambda: kornia_views(raw_d), args.repeats, sync=True)
            net = torchvision.models.resnet18(num_classes=128).to(dev)
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
            views = batch_aug(raw_d)

            def step() -> None:
                loss = sum(net(v).float().pow(2).mean() for v in views)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            t_step = best_time(step, args.repeats, sync=True)
            row.update(cuda=b / t_gpu, kornia_cuda=b / t_kornia_gpu, frac=t_gpu / t_step)
        rows.append(row)

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu only"
    print(f"batch {b}, 2 views per image (SimCLR), torch threads {torch.get_num_threads()}, {device}, "
          f"load average {load:.2f} at the start")
    print("| size | solo-learn per image, CPU (img/s) | batch pipeline, CPU (img/s) | ratio CPU "
          "| Kornia, CPU (img/s) | batch pipeline / Kornia, CPU | batch pipeline, CUDA (img/s) "
          "| Kornia, CUDA (img/s) | batch pipeline / Kornia, CUDA | aug / resnet18 step |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        def rate(key: str) -> str:
            return f"{r[key]:.0f}" if r[key] else "n/a"

        cuda_ratio = f"{r['cuda'] / r['kornia_cuda']:.1f}x" if r["cuda"] else "n/a"
        frac = f"{100 * r['frac']:.1f}%" if r["frac"] is not None else "n/a"
        print(f"| {r['size']} px | {r['solo']:.0f} | {r['cpu']:.0f} | {r['cpu'] / r['solo']:.1f}x "
              f"| {r['kornia']:.0f} | {r['cpu'] / r['kornia']:.1f}x | {rate('cuda')} "
              f"| {rate('kornia_cuda')} | {cuda_ratio} | {frac} |")


if __name__ == "__main__":
    main()
