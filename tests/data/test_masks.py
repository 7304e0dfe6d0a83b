"""Tests of the datasets with foreground masks: a tiny COCO set and folders of mask PNGs."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from solo_iclmsr.data import (
    NEUTRAL_GRAY,
    CocoMaskDataset,
    MaskFolderDataset,
    apply_variant,
    make_dataloader,
)

pytest.importorskip("pycocotools")
from pycocotools import mask as mask_utils  # noqa: E402

BACKGROUND = (20, 40, 60)


def expected_mask(ref: np.ndarray, size: int) -> np.ndarray:
    """Reference geometry: shorter side to ``size``, nearest pixel centre, centre crop."""
    h, w = ref.shape
    nh, nw = max(size, round(h * size / min(h, w))), max(size, round(w * size / min(h, w)))
    rows = np.minimum(np.floor((np.arange(nh) + 0.5) * h / nh).astype(int), h - 1)
    cols = np.minimum(np.floor((np.arange(nw) + 0.5) * w / nw).astype(int), w - 1)
    top, left = (nh - size) // 2, (nw - size) // 2
    return (ref[rows][:, cols] != 0)[top : top + size, left : left + size].astype(np.uint8)


def box(h, w, x0, y0, x1, y1):
    """Mask of pixels x0 <= x < x1, y0 <= y < y1 (what a COCO rectangle polygon covers)."""
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def rect_polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def uncompressed_rle(m):
    """COCO's uncompressed RLE: run lengths of the column-major pixels, starting with zeros."""
    flat = m.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": list(m.shape), "counts": [int(c) for c in counts]}


def paint(h, w, parts):
    """An RGB image: BACKGROUND with each (mask, colour) painted in order."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = BACKGROUND
    for m, colour in parts:
        img[m.astype(bool)] = colour
    return img


@pytest.fixture
def coco(tmp_path):
    """Five images, categories dog (7), cat (3), bird (5): labels cat 0, bird 1, dog 2."""
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    refs, images, anns = {}, [], []

    def add_image(img_id, h, w, parts):
        name = f"img{img_id}.png"
        Image.fromarray(paint(h, w, parts)).save(images_dir / name)
        images.append({"id": img_id, "file_name": name, "height": h, "width": w})

    def add_ann(ann_id, img_id, cat, segmentation, area=None, crowd=0):
        ann = {"id": ann_id, "image_id": img_id, "category_id": cat, "segmentation": segmentation,
               "iscrowd": crowd, "bbox": [0, 0, 1, 1]}
        if area is not None:
            ann["area"] = area
        anns.append(ann)

    # image 10 (48 x 64): a dog rectangle (no area field) and a smaller L-shaped cat
    dog = box(48, 64, 8, 6, 40, 30)
    cat = box(48, 64, 44, 30, 60, 38) | box(48, 64, 52, 38, 60, 44)
    add_image(10, 48, 64, [(dog, (200, 30, 30)), (cat, (30, 200, 30))])
    add_ann(1, 10, 7, rect_polygon(8, 6, 40, 30))
    add_ann(2, 10, 3, [[44, 30, 60, 30, 60, 44, 52, 44, 52, 38, 44, 38]], area=176.0)
    refs[10] = {"dog": dog, "cat": cat}
    # image 20 (30 x 40): a bird rectangle and a larger crowd region of dogs (uncompressed RLE)
    bird = box(30, 40, 4, 4, 16, 20)
    crowd = box(30, 40, 24, 2, 36, 28)
    add_image(20, 30, 40, [(bird, (30, 30, 200)), (crowd, (200, 200, 30))])
    add_ann(3, 20, 5, rect_polygon(4, 4, 16, 20), area=192.0)
    add_ann(4, 20, 7, uncompressed_rle(crowd), area=312.0, crowd=1)
    refs[20] = {"bird": bird, "crowd": crowd}
    # image 30 (50 x 50): a disk of a cat as compressed RLE and a tiny bird
    yy, xx = np.mgrid[:50, :50]
    disk = (((yy - 24.5) ** 2 + (xx - 22.5) ** 2) < 15**2).astype(np.uint8)
    tiny = box(50, 50, 44, 44, 47, 47)
    rle = mask_utils.encode(np.asfortranarray(disk))
    add_image(30, 50, 50, [(disk, (250, 250, 250)), (tiny, (30, 30, 200))])
    add_ann(5, 30, 3, {"size": [50, 50], "counts": rle["counts"].decode()}, area=float(disk.sum()))
    add_ann(6, 30, 5, rect_polygon(44, 44, 47, 47), area=9.0)
    refs[30] = {"cat": disk, "bird": tiny}
    # image 40 (32 x 32): no instance
    add_image(40, 32, 32, [])
    # image 50 (32 x 32): one tiny dog (4 pixels, 0.4% of the image)
    speck = box(32, 32, 10, 10, 12, 12)
    add_image(50, 32, 32, [(speck, (200, 30, 30))])
    add_ann(7, 50, 7, rect_polygon(10, 10, 12, 12), area=4.0)
    refs[50] = {"dog": speck}

    data = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}, {"id": 5, "name": "bird"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path, images_dir, refs


def check_variants(ds, index):
    """fg / bg are the full image where the mask is on / off and gray 128 elsewhere."""
    variant, ds.variant = ds.variant, "full"
    _, full, label = ds[index]
    m = ds.mask(index).bool()
    assert m.dtype == torch.bool and m.any() and (~m).any()
    for name in ("fg", "bg"):
        ds.variant = name
        _, img, label2 = ds[index]
        keep = m if name == "fg" else ~m
        assert label2 == label and img.dtype == torch.uint8
        assert torch.equal(img[:, keep], full[:, keep])
        assert (img[:, ~keep] == NEUTRAL_GRAY).all()
    ds.variant = variant


def test_coco_defaults_labels_masks_and_skipping(coco):
    path, images_dir, refs = coco
    ds = CocoMaskDataset(path, images_dir, image_size=24)
    assert ds.classes == ["cat", "bird", "dog"] and ds.category_ids == [3, 5, 7]
    # image 40 has no instance and is skipped; the largest instance gives the label
    assert ds.image_ids == [10, 20, 30, 50]
    assert ds.labels.tolist() == [2, 1, 0, 2] and ds.labels.dtype == np.int64
    index, img, label = ds[0]
    assert (index, label) == (0, 2) and img.shape == (3, 24, 24) and img.dtype == torch.uint8
    # masks: union of the non-crowd instances, resized and centre-cropped like the image
    unions = {10: refs[10]["dog"] | refs[10]["cat"], 20: refs[20]["bird"],
              30: refs[30]["cat"] | refs[30]["bird"], 50: refs[50]["dog"]}
    for k, img_id in enumerate(ds.image_ids):
        m = ds.mask(k)
        assert m.dtype == torch.uint8 and m.shape == (24, 24) and set(m.unique().tolist()) <= {0, 1}
        assert np.array_equal(m.numpy(), expected_mask(unions[img_id], 24)), img_id
    # 48 x 64 -> 24 x 32: every second pixel centre (rows/cols 1, 3, ...), then columns 4..27
    assert np.array_equal(ds.mask(0).numpy(), unions[10][1::2, 1::2][:, 4:28])
    # the crowd region of image 20 is background
    crowd = expected_mask(refs[20]["crowd"], 24)
    assert crowd.sum() > 50 and not (ds.mask(1).numpy() & crowd).any()


def test_coco_mask_aligned_with_image_without_interpolation(coco):
    path, images_dir, refs = coco
    ds = CocoMaskDataset(path, images_dir, image_size=48)  # 48 x 64: only the centre crop
    _, img, _ = ds[0]
    m = ds.mask(0).numpy().astype(bool)
    drawn = np.asarray(Image.open(images_dir / "img10.png"))[:, 8:56].transpose(2, 0, 1)
    assert np.array_equal(img.numpy(), drawn)
    assert np.array_equal(m, (refs[10]["dog"] | refs[10]["cat"])[:, 8:56].astype(bool))
    pixels = {tuple(p) for p in img.numpy()[:, m].T.tolist()}
    assert pixels == {(200, 30, 30), (30, 200, 30)}  # only the objects' colours under the mask
    assert {tuple(p) for p in img.numpy()[:, ~m].T.tolist()} == {BACKGROUND}


@pytest.mark.parametrize("size", [24, 40])
def test_coco_fg_and_bg_variants(coco, size):
    path, images_dir, _ = coco
    for variant in ("full", "fg", "bg"):
        ds = CocoMaskDataset(path, images_dir, image_size=size, variant=variant)
        for k in range(len(ds)):
            check_variants(ds, k)
    fg = CocoMaskDataset(path, images_dir, image_size=size, variant="fg")
    full = CocoMaskDataset(path, images_dir, image_size=size)
    m = fg.mask(2).bool()
    assert torch.equal(fg[2][1][:, m], full[2][1][:, m]) and (fg[2][1][:, ~m] == 128).all()


def test_coco_category_filter_foreground_modes_and_crowd(coco):
    path, images_dir, refs = coco
    ds = CocoMaskDataset(path, images_dir, image_size=32, categories=["cat", "bird"])
    assert ds.classes == ["cat", "bird"] and ds.category_ids == [3, 5]
    assert ds.image_ids == [10, 20, 30] and ds.labels.tolist() == [0, 1, 0]  # image 50: dogs only
    assert np.array_equal(ds.mask(0).numpy(), expected_mask(refs[10]["cat"], 32))  # the dog is background
    only_bird = CocoMaskDataset(path, images_dir, image_size=32, categories=[5])
    assert only_bird.classes == ["bird"] and only_bird.image_ids == [20, 30]
    assert only_bird.labels.tolist() == [0, 0]
    assert np.array_equal(only_bird.mask(1).numpy(), expected_mask(refs[30]["bird"], 32))

    label_fg = CocoMaskDataset(path, images_dir, image_size=32, foreground="label")
    assert np.array_equal(label_fg.mask(2).numpy(), expected_mask(refs[30]["cat"], 32))  # no tiny bird
    largest = CocoMaskDataset(path, images_dir, image_size=32, foreground="largest")
    assert np.array_equal(largest.mask(0).numpy(), expected_mask(refs[10]["dog"], 32))
    assert largest.labels.tolist() == [2, 1, 0, 2]

    crowd = CocoMaskDataset(path, images_dir, image_size=32, include_crowd=True)
    assert crowd.labels.tolist() == [2, 2, 0, 2]  # the crowd of dogs is now the largest instance
    both = refs[20]["bird"] | refs[20]["crowd"]
    assert np.array_equal(crowd.mask(1).numpy(), expected_mask(both, 32))


def test_coco_empty_images_and_min_area(coco):
    path, images_dir, _ = coco
    ds = CocoMaskDataset(path, images_dir, image_size=16, keep_empty=True)
    assert ds.image_ids == [10, 20, 30, 40, 50] and ds.labels.tolist() == [2, 1, 0, -1, 2]
    assert ds.mask(3).sum() == 0
    _, img, label = CocoMaskDataset(path, images_dir, image_size=16, keep_empty=True, variant="fg")[3]
    assert label == -1 and (img == NEUTRAL_GRAY).all()
    big = CocoMaskDataset(path, images_dir, image_size=16, min_fg_area=0.01)
    assert big.image_ids == [10, 20, 30]  # image 50's dog covers 4 / 1024 pixels
    assert CocoMaskDataset(path, images_dir, image_size=16, min_fg_area=0.003).image_ids == [10, 20, 30, 50]
    with pytest.raises(ValueError, match=r"leaves no image .*min_fg_area=0\.9.*expected at least one image"):
        CocoMaskDataset(path, images_dir, image_size=16, min_fg_area=0.9)


def test_coco_subset_and_dataloader(coco):
    path, images_dir, _ = coco
    ds = CocoMaskDataset(path, images_dir, image_size=20, variant="bg", fraction=0.5, seed=0)
    assert len(ds) == 3 and sorted(ds.labels.tolist()) == [0, 1, 2]  # one of the two dogs
    index, images, labels = next(iter(make_dataloader(ds, batch_size=3, shuffle=False, pin_memory=False)))
    assert index.tolist() == [0, 1, 2] and images.shape == (3, 3, 20, 20) and images.dtype == torch.uint8
    assert labels.tolist() == ds.labels.tolist()
    for k in range(3):
        assert (images[k][:, ds.mask(k).bool()] == NEUTRAL_GRAY).all()


def test_coco_errors_are_one_line_and_name_the_file(coco, tmp_path, monkeypatch):
    path, images_dir, _ = coco

    def raises(exc, match, *args, **kwargs):
        with pytest.raises(exc, match=match) as err:
            CocoMaskDataset(*args, **kwargs)
        assert "\n" not in str(err.value)

    raises(FileNotFoundError, r"nothing\.json does not exist: expected a COCO instances JSON", tmp_path / "nothing.json", images_dir)
    raises(FileNotFoundError, r"no_images does not exist: expected the folder of the images of instances\.json, each at .*no_images/<file_name>",
           path, tmp_path / "no_images")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    raises(ValueError, r"cannot read COCO annotations .*broken\.json: .*expected a COCO instances JSON", broken, images_dir)
    raises(ValueError, r"category 'zebra' is not in .*instances\.json: expected ids or names among \['bird', 'cat', 'dog'\]",
           path, images_dir, categories=["cat", "zebra"])
    raises(ValueError, r"variant='blurred' is invalid: expected one of \['full', 'fg', 'bg'\]", path, images_dir, variant="blurred")
    raises(ValueError, r"foreground='box' is invalid", path, images_dir, foreground="box")

    # an unreadable image fails when read, naming the file
    (images_dir / "img20.png").write_bytes(b"this is not a png")
    ds = CocoMaskDataset(path, images_dir, image_size=16)
    with pytest.raises(OSError, match=r"cannot read image .*img20\.png"):
        ds[1]
    assert ds.mask(1).sum() > 0  # the mask comes from the JSON alone
    # an image of another size than the JSON says
    Image.new("RGB", (20, 20)).save(images_dir / "img30.png")
    with pytest.raises(ValueError, match=r"image .*img30\.png is 20x20 \(HxW\) but .*instances\.json gives 50x50"):
        ds[2]
    # a listed image that is missing fails at construction
    (images_dir / "img50.png").unlink()
    raises(FileNotFoundError, r"image .*img50\.png listed in .*instances\.json not found", path, images_dir)

    monkeypatch.setitem(sys.modules, "pycocotools", None)
    raises(ImportError, r"^CocoMaskDataset needs pycocotools: pip install pycocotools$", path, images_dir)


# --------------------------------------------------------------------------------------------------
# Folders of images with mask PNGs
# --------------------------------------------------------------------------------------------------

def _write_pair(img_path, mask_path, h, w, ref, colour, mask_mode="L"):
    """Writes an image (colour where ``ref`` is on) and its mask PNG in ``mask_mode``."""
    img_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(paint(h, w, [(ref, colour)])).save(img_path)
    if mask_mode == "L":
        Image.fromarray(ref * 255).save(mask_path)
    elif mask_mode == "P":  # palette indices 0 / 3, index 0 painted white
        im = Image.frombytes("P", (w, h), (ref * 3).astype(np.uint8).tobytes())
        im.putpalette([255, 255, 255] + [0, 0, 0] * 255)
        im.save(mask_path)
    else:  # RGB with an opaque black background
        Image.fromarray(np.stack([ref * 7, ref * 0, ref * 0, np.full_like(ref, 255)], -1), mode="RGBA").save(mask_path)


def _blobs(seed, h, w):
    rng = np.random.default_rng(seed)
    x0, y0 = rng.integers(2, w // 3), rng.integers(2, h // 3)
    return box(h, w, x0, y0, x0 + w // 2, y0 + h // 2) | box(h, w, 1, h - 5, 5, h - 1)


def test_mask_folder_beside_images(tmp_path):
    root = tmp_path / "data"
    refs = {}
    for c, (cls, colour) in enumerate({"ant": (255, 0, 0), "bee": (0, 255, 0)}.items()):
        for i, mode in enumerate(["L", "P", "RGBA"]):
            h, w = 30 + 4 * i, 40 - 3 * i
            ref = _blobs(10 * c + i, h, w)
            _write_pair(root / cls / f"{cls}{i}.png", root / cls / f"{cls}{i}_mask.png", h, w, ref, colour, mode)
            refs[(cls, i)] = ref
    ds = MaskFolderDataset(root, image_size=20, variant="fg")
    assert len(ds) == 6 and ds.classes == ["ant", "bee"]  # the mask files are not images
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert all(not p.stem.endswith("_mask") for p, _ in ds.samples)
    for k, (img_path, label) in enumerate(ds.samples):
        cls, i = img_path.parent.name, int(img_path.stem[-1])
        m = ds.mask(k)
        assert m.dtype == torch.uint8 and m.shape == (20, 20)
        assert np.array_equal(m.numpy(), expected_mask(refs[(cls, i)], 20)), img_path
        _, img, lab = ds[k]
        assert lab == label and (img[:, ~m.bool()] == NEUTRAL_GRAY).all()
        check_variants(ds, k)


def test_mask_folder_parallel_tree_and_flat(tmp_path):
    root, masks = tmp_path / "images", tmp_path / "masks"
    refs = []
    for i in range(3):
        ref = _blobs(i, 24, 32)
        _write_pair(root / "cls" / f"x{i}.png", masks / "cls" / f"x{i}.png", 24, 32, ref, (9, 99, 199))
        refs.append(ref)
    ds = MaskFolderDataset(root, image_size=24, masks_root=masks, variant="bg")
    assert len(ds) == 3 and ds.classes == ["cls"] and ds.labels.tolist() == [0, 0, 0]
    for k in range(3):
        m = ds.mask(k).numpy().astype(bool)
        assert np.array_equal(m, refs[k][:, 4:28].astype(bool))  # 24 x 32: centre crop only
        _, img, _ = ds[k]
        assert (img[:, m] == NEUTRAL_GRAY).all()
        assert {tuple(p) for p in img.numpy()[:, ~m].T.tolist()} == {BACKGROUND}
        check_variants(ds, k)

    flat, flat_masks = tmp_path / "flat", tmp_path / "flat_masks"
    for i in range(2):
        _write_pair(flat / f"f{i}.png", flat_masks / f"f{i}_m.png", 16, 16, refs[i][:16, :16], (250, 0, 250))
    fl = MaskFolderDataset(flat, image_size=16, masks_root=flat_masks, mask_suffix="_m")
    assert fl.labels.tolist() == [-1, -1] and fl[1][2] == -1
    assert np.array_equal(fl.mask(1).numpy(), refs[1][:16, :16])


def test_mask_folder_errors_name_the_files(tmp_path):
    root = tmp_path / "data"
    ref = _blobs(0, 20, 20)
    _write_pair(root / "a" / "a0.png", root / "a" / "a0_mask.png", 20, 20, ref, (1, 2, 3))
    Image.new("RGB", (20, 20)).save(root / "a" / "a1.png")

    def raises(exc, match, *args, **kwargs):
        with pytest.raises(exc, match=match) as err:
            MaskFolderDataset(*args, **kwargs)
        assert "\n" not in str(err.value)

    raises(FileNotFoundError, r"mask of image .*a[/\\]a1\.png not found: expected .*a[/\\]a1_mask\.png", root, 16)
    raises(FileNotFoundError, r"nowhere does not exist: expected .*<class>/<name>\.<ext> with its mask .*<class>/<name>_mask\.png",
           tmp_path / "nowhere", 16)
    raises(FileNotFoundError, r"no_masks does not exist: expected .*no_masks/<class>/<name>\.png", root, 16,
           masks_root=tmp_path / "no_masks")
    raises(ValueError, r"mask_suffix='' is invalid with masks beside the images", root, 16, mask_suffix="")
    (tmp_path / "empty").mkdir()
    raises(FileNotFoundError, r"empty holds no images .*expected .*empty/<class>/<name>", tmp_path / "empty", 16)

    (root / "a" / "a1_mask.png").write_bytes(b"\x89PNG broken")
    ds = MaskFolderDataset(root, image_size=16, variant="fg")
    assert np.array_equal(ds.mask(0).numpy(), expected_mask(ref, 16))
    with pytest.raises(OSError, match=r"cannot read mask .*a1_mask\.png"):
        ds.mask(1)
    with pytest.raises(OSError, match=r"cannot read mask .*a1_mask\.png"):
        ds[1]
    Image.fromarray(np.ones((10, 20), np.uint8)).save(root / "a" / "a1_mask.png")
    with pytest.raises(ValueError, match=r"mask .*a1_mask\.png is 10x20 \(HxW\) but its image .*a1\.png is 20x20"):
        ds.mask(1)


def test_apply_variant_rejects_unknown_variant():
    img = torch.arange(3 * 4 * 4, dtype=torch.uint8).reshape(3, 4, 4)
    mask = torch.zeros(4, 4, dtype=torch.uint8)
    mask[1:3, 1:3] = 1
    assert torch.equal(apply_variant(img, mask, "full"), img)
    bg = apply_variant(img, mask, "bg")
    assert (bg[:, 1:3, 1:3] == 128).all() and bg[0, 0, 0] == img[0, 0, 0] and bg[2, 3, 3] == img[2, 3, 3]
    with pytest.raises(ValueError, match=r"variant='decorrelated' is invalid: expected one of \['full', 'fg', 'bg'\]"):
        apply_variant(img, mask, "decorrelated")
