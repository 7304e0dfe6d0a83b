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
float, once per view. With CUDA (or on the device ``--device`` names), both batch pipelines also
run there, with the augmentation time as a fraction of one resnet18 training step (forward +
backward + SGD step on both views of the same batch); ``--no-cpu`` leaves the CPU columns out.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/augment.py [--batch 256] [--repeats 3]
    python benchmarks/augment.py --device cuda          # the device columns on a GPU
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

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


def measure(batch: int = 256, repeats: int = 3, sizes: Sequence[int] = (32, 224),
            device: Optional[str] = "auto", cpu_columns: bool = True) -> List[Dict]:
    """Images per second of every pipeline, one row per image size.

    ``device``: where the device columns run (the batch pipeline, Kornia and the aug / resnet18
    step fraction); ``auto``: CUDA when available, else none; ``None``: none. ``cpu_columns``:
    also solo-learn's per-image pipeline, the batch pipeline and Kornia on the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else None
    rows = []
    for size in sizes:
        cfg = simclr_config(size)
        dataset = "cifar10" if size <= 32 else "imagenet"
        g = torch.Generator().manual_seed(0)
        raw = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8,
                            generator=g)  # (B, 3, S, S)
        batch_aug = build_multiview_augmentation(cfg, dataset)
        kornia_aug = kornia_pipeline(cfg, *mean_std(dataset, cfg[0]))

        def kornia_views(images: torch.Tensor) -> list:
            x = images.float().div_(255.0)
            return [kornia_aug(x) for _ in range(cfg[0]["num_crops"])]

        row = {"size": size, "solo": None, "cpu": None, "kornia": None, "device": device,
               "dev": None, "kornia_dev": None, "frac": None}
        if cpu_columns:
            pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in raw]
            per_image = solo_pipeline(cfg, dataset)
            t_solo = best_time(lambda: [per_image(im) for im in pil], max(1, repeats - 1))
            t_cpu = best_time(lambda: batch_aug(raw), repeats)
            t_kornia = best_time(lambda: kornia_views(raw), max(1, repeats - 1))
            row.update(solo=batch / t_solo, cpu=batch / t_cpu, kornia=batch / t_kornia)
        if device is not None:
            import torchvision

            dev = torch.device(device)
            sync = dev.type == "cuda"
            raw_d = raw.to(dev)
            batch_aug.to(dev)
            kornia_aug.to(dev)
            t_dev = best_time(lambda: batch_aug(raw_d), repeats, sync=sync)
            t_kornia_dev = best_time(lambda: kornia_views(raw_d), repeats, sync=sync)
            net = torchvision.models.resnet18(num_classes=128).to(dev)
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
            views = batch_aug(raw_d)

            def step() -> None:
                loss = sum(net(v).float().pow(2).mean() for v in views)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            t_step = best_time(step, repeats, sync=sync)
            row.update(dev=batch / t_dev, kornia_dev=batch / t_kornia_dev, frac=t_dev / t_step)
        rows.append(row)
    return rows


def table(rows: List[Dict]) -> List[str]:
    """The markdown table of ``measure``'s rows: the CPU columns and the device columns that
    were measured (``n/a`` where a single value is missing)."""
    device = next((r["device"] for r in rows if r["device"]), None) or "CUDA"
    dev = device.upper() if device in ("cuda", "cpu") else device

    def rate(r: Dict, key: str) -> str:
        return f"{r[key]:.0f}" if r[key] else "n/a"

    def ratio(r: Dict, a: str, b: str) -> str:
        return f"{r[a] / r[b]:.1f}x" if r[a] and r[b] else "n/a"

    def frac(r: Dict) -> str:
        return f"{100 * r['frac']:.1f}%" if r["frac"] is not None else "n/a"

    columns = [("size", lambda r: f"{r['size']} px")]
    if any(r["cpu"] for r in rows) or not any(r["dev"] for r in rows):
        columns += [("solo-learn per image, CPU (img/s)", lambda r: rate(r, "solo")),
                    ("batch pipeline, CPU (img/s)", lambda r: rate(r, "cpu")),
                    ("ratio CPU", lambda r: ratio(r, "cpu", "solo")),
                    ("Kornia, CPU (img/s)", lambda r: rate(r, "kornia")),
                    ("batch pipeline / Kornia, CPU", lambda r: ratio(r, "cpu", "kornia"))]
    if any(r["dev"] for r in rows) or not any(r["cpu"] for r in rows):
        columns += [(f"batch pipeline, {dev} (img/s)", lambda r: rate(r, "dev")),
                    (f"Kornia, {dev} (img/s)", lambda r: rate(r, "kornia_dev")),
                    (f"batch pipeline / Kornia, {dev}", lambda r: ratio(r, "dev", "kornia_dev")),
                    (f"aug / resnet18 step, {dev}", frac)]
    lines = ["| " + " | ".join(name for name, _ in columns) + " |",
             "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(cell(r) for _, cell in columns) + " |")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="32,224", help="image sides, comma-separated")
    parser.add_argument("--device", default="auto",
                        help="where the device columns run: auto (cuda if available, else none), "
                             "cuda, cpu, or none")
    parser.add_argument("--no-cpu", action="store_true",
                        help="skip the CPU columns (solo-learn per image, batch pipeline, Kornia)")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    device = None if args.device == "none" else args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else None
    rows = measure(args.batch, args.repeats, [int(x) for x in args.sizes.split(",")], device,
                   cpu_columns=not args.no_cpu)
    name = torch.cuda.get_device_name() if device == "cuda" else (device or "cpu only")
    print(f"batch {args.batch}, 2 views per image (SimCLR), torch threads "
          f"{torch.get_num_threads()}, {name}, load average {load:.2f} at the start")
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
