"""benchmarks/evidence.py: the target arithmetic, the runs' configs, and tiny end-to-end passes
(both arms trained, evaluated, reported and read back; the motivation table on a tiny COCO set
with real masks; the options part with two combinations)."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--n-train", "64", "--n-test", "32", "--batch-size", "32", "--epochs", "1",
        "--probe-images", "32"]


@pytest.fixture(scope="module")
def evidence():
    spec = importlib.util.spec_from_file_location("evidence", ROOT / "benchmarks" / "evidence.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["evidence"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("evidence", None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One folder of runs shared by the tests below (the options test reuses the runs of the
    effect test), with the built-in set's cache inside."""
    root = tmp_path_factory.mktemp("evidence")
    patch = pytest.MonkeyPatch()
    patch.setenv("SOLO_ICLMSR_CACHE", str(root / "cache"))
    patch.setenv("OMP_NUM_THREADS", "1")
    yield root
    patch.undo()


def _result(seed, fg, full=50.0, key="0.95"):
    return {"seed": seed, "knn": {key: {"full": full, "fg": fg, "decorrelated": 20.0}}}


def test_target_met_only_with_three_seeds_and_a_gain_above_the_pooled_std(evidence):
    base = [_result(s, fg) for s, fg in enumerate([20.0, 21.0, 22.0])]
    icl = [_result(s, fg) for s, fg in enumerate([24.0, 25.0, 26.0])]
    line = evidence._target_line("simclr", 0.95, "0.95", base, icl)
    assert "change +4.0 points" in line and "pooled std 1.0" in line
    assert "seed-paired +4.0 ± 0.0 over 3" in line and line.endswith(": MET")
    # the same gain over two seeds is not enough
    assert evidence._target_line("simclr", 0.95, "0.95", base[:2], icl[:2]).endswith("NOT MET")
    # a gain smaller than the spread of the arms is not enough
    noisy = [_result(s, fg) for s, fg in enumerate([10.0, 21.0, 32.0])]
    assert evidence._target_line("simclr", 0.95, "0.95", noisy, icl).endswith("NOT MET")
    # one seed per arm: no pooled std, no claim
    one = evidence._target_line("simclr", 0.95, "0.95", base[:1], icl[:1])
    assert "pooled std n/a" in one and one.endswith("NOT MET")


def test_clean_data_target_is_no_loss_over_half_a_point_on_any_test_set(evidence):
    base = [_result(0, 30.0, full=40.0, key="0")]
    assert evidence._target_line("byol", 0.0, "0", base,
                                 [_result(0, 29.6, full=41.0, key="0")]).endswith(": MET")
    lost = evidence._target_line("byol", 0.0, "0", base, [_result(0, 30.0, full=39.0, key="0")])
    assert "full -1.0" in lost and lost.endswith("NOT MET")


def test_criteria_thresholds(evidence):
    st = {"cross_image_cos_max": 0.5, "within_image_cos": 0.3,
          "explained_by_class_over_chance": 1.0, "explained_by_background_over_chance": 3.0}
    assert evidence.criteria(st) == (True, True)
    assert evidence.criteria(dict(st, cross_image_cos_max=0.51)) == (False, True)
    assert evidence.criteria(dict(st, within_image_cos=0.31)) == (False, True)
    assert evidence.criteria(dict(st, explained_by_background_over_chance=2.9)) == (True, False)


def test_the_arms_differ_in_iclmsr_only_and_the_scale_reaches_the_config(evidence, tiny):
    scale = evidence.SCALES["cpu"]
    icl = evidence.icl_run("simclr", 0.95, 1, evidence.OPTION_SETS["batch+nobias"])
    base = evidence.RunSpec("simclr", False, 0.95, 1)
    assert icl.name == "simclr-icl-rho0.95-s1-full-uni_over=batch-weight_bias=false"
    cfg = evidence.compose_run(scale, icl, tiny / "x")
    base_cfg = evidence.compose_run(scale, base, tiny / "x")
    assert cfg.iclmsr.enabled and cfg.iclmsr.uni_over == "batch" and cfg.iclmsr.weight_bias is False
    assert cfg.iclmsr.msr_width == scale.iclmsr["msr_width"] and cfg.seed == 1
    assert cfg.augmentations[0].rrc.crop_min_scale == scale.crop_min_scale
    assert list(cfg.backbone.kwargs.channels) == scale.backbone_kwargs["channels"]
    assert cfg.data.builtin.rho == 0.95 and cfg.data.builtin.n_train == scale.n_train
    diff = {k for k in cfg if cfg[k] != base_cfg[k]}
    assert diff <= {"iclmsr", "name"}
    assert evidence.parse_options(["iclmsr.weight_bias=false", "uni_over=batch"]) == \
        evidence.OPTION_SETS["batch+nobias"]


def _knn_from_checkpoint(evidence, folder, variant, test):
    """5-NN fg of a built-in run, recomputed from its checkpoint with the project's API."""
    from solo_iclmsr.cli.checkpoints import load_pretrained
    from solo_iclmsr.data.loaders import builtin_eval_sets
    from solo_iclmsr.evaluation import extract_features, knn_accuracy

    done = json.loads((folder / "done.json").read_text())
    model, cfg = load_pretrained(done["checkpoint"])
    train, tests = builtin_eval_sets(cfg, variant)
    bank, bank_labels = extract_features(model.backbone, train)
    feats, labels = extract_features(model.backbone, tests[test])
    return knn_accuracy(bank["feats"], bank_labels, feats["feats"], labels, 5).top1


def test_tiny_effect_run_trains_both_arms_and_reports(evidence, tiny):
    out, results = tiny / "runs", tiny / "results"
    args = ["--only", "effect", "--methods", "simclr", "--rhos", "0.95", "--seeds", "1", *TINY,
            "--out", str(out), "--results", str(results)]
    assert evidence.main(args) == 0
    report = (results / "evidence.md").read_text()
    assert "| simclr | 0.95 | base | 1 |" in report and "| simclr | 0.95 | +ICL-MSR | 1 |" in report
    assert "simclr, rho 0.95: fg-test 5-NN change" in report
    assert (results / "evidence_effect.png").stat().st_size > 0
    base = json.loads((out / "simclr-base-rho0.95-s0-full" / "result.json").read_text())
    icl = json.loads((out / "simclr-icl-rho0.95-s0-full" / "result.json").read_text())
    assert base["steps"] == icl["steps"] == 2  # 64 images, batch 32, one epoch
    # the stored score is the one the checkpoint gives
    assert base["knn"]["0.95"]["fg"] == pytest.approx(
        _knn_from_checkpoint(evidence, out / base["run"], "full", "fg"))
    for r in (base, icl):
        for probe in ("knn", "linear"):
            assert set(r[probe]["0.95"]) == set(evidence.TESTS)
            assert all(0.0 <= v <= 100.0 for v in r[probe]["0.95"].values())
    assert "strata" not in base
    st = icl["strata"]
    assert st["probe_images"] == 32 and 0.0 < st["fg_share_uniform"] < 1.0
    assert -1.0 <= st["cross_image_cos"] <= st["cross_image_cos_max"] <= 1.0 + 1e-6
    assert st["explained_by_class"] >= 0 and st["explained_by_background_over_chance"] >= 0
    assert (st["image_dependent"], st["content_aligned"]) == evidence.criteria(st)
    assert icl["metrics"]["train_meta_grad_norm_ct"] > 0
    assert icl["metrics"]["train_meta_grad_norm_uni"] > 0
    assert f"| {icl['run']} | {icl['metrics']['train_msr_loss']:.3f} |" in report
    runs = json.loads((results / "evidence_runs.json").read_text())
    assert {r["run"] for r in runs} == {base["run"], icl["run"]}
    # a second call trains nothing and reads the finished runs back
    assert evidence.main(args + ["--report-only"]) == 0
    again = (results / "evidence.md").read_text()
    assert "Runs trained by this command: 0; results read: 2." in again
    assert again.split("## 2.")[1] == report.split("## 2.")[1]


def test_options_part_runs_two_combinations(evidence, tiny):
    out, results = tiny / "runs", tiny / "results-options"
    args = ["--only", "options", "--methods", "simclr", "--rhos", "0.95", "--seeds", "1",
            "--combinations", "paper,batch+features", *TINY, "--out", str(out),
            "--results", str(results)]
    before = {p.parent.name for p in out.glob("*/result.json")}
    assert evidence.main(args) == 0
    report = (results / "evidence.md").read_text()
    # finished runs (those of the effect test, when it ran first) are reused
    trained = 3 - len(before & {"simclr-base-rho0.95-s0-full", "simclr-icl-rho0.95-s0-full"})
    assert f"Runs trained by this command: {trained};" in report
    name = "simclr-icl-rho0.95-s0-full-msr_input=features-uni_over=batch"
    combo = json.loads((out / name / "result.json").read_text())
    args_json = next((out / name).glob("simclr/*/args.json"))
    cfg = json.loads(args_json.read_text())
    assert cfg["iclmsr"]["msr_input"] == "features" and cfg["iclmsr"]["uni_over"] == "batch"
    assert combo["options"] == {"msr_input": "features", "uni_over": "batch"}
    assert "### simclr, rho 0.95" in report
    for row in ("| paper | 1 |", "| batch+features | 1 |", "| base (ICL-MSR off) | 1 |"):
        assert row in report
    st = combo["strata"]
    line = next(x for x in report.splitlines() if x.startswith("| batch+features |"))
    assert f"| {st['cross_image_cos_max']:.2f} | {st['within_image_cos']:.2f} |" in line
    assert f"{combo['knn']['0.95']['fg']:.1f}" in line


# ------------------------------------------------------------------------------------------
# a tiny COCO-format set: squares (category 1) and triangles (category 2) on noise
# ------------------------------------------------------------------------------------------
def _write_coco(root: Path, n: int = 16, size: int = 40):
    from PIL import Image, ImageDraw

    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(n):
        cat = 1 + i % 2
        x0, y0 = (int(v) for v in rng.integers(4, 14, 2))
        s = int(rng.integers(16, 24))
        poly = ([x0, y0, x0 + s, y0, x0 + s, y0 + s, x0, y0 + s] if cat == 1
                else [x0, y0 + s, x0 + s, y0 + s, x0 + s // 2, y0])
        img = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        ImageDraw.Draw(img).polygon(poly, fill=(230, 40, 40) if cat == 1 else (40, 40, 230))
        img.save(images_dir / f"{i:03d}.png")
        images.append({"id": i + 1, "file_name": f"{i:03d}.png", "height": size, "width": size})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": cat, "segmentation": [poly],
                     "iscrowd": 0, "bbox": [x0, y0, s, s]})
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": 1, "name": "square"}, {"id": 2, "name": "triangle"}]}))
    return path, images_dir


def test_motivation_on_a_coco_set_with_real_masks(evidence, tiny):
    pytest.importorskip("pycocotools")
    from PIL import Image

    from solo_iclmsr.cli.checkpoints import load_pretrained
    from solo_iclmsr.data.augment import mean_std
    from solo_iclmsr.data.loaders import EvalImages
    from solo_iclmsr.evaluation import extract_features, knn_accuracy
    from torch.utils.data import Subset

    annotations, images = _write_coco(tiny / "coco")
    out, results = tiny / "runs-masked", tiny / "results-masked"
    args = ["--only", "motivation", "--masks", "coco", "--annotations", str(annotations),
            "--image-root", str(images), "--test-fraction", "0.25", "--batch-size", "4",
            "--epochs", "1", "--out", str(out), "--results", str(results)]
    assert evidence.main(args) == 0
    source = evidence.MaskSource("coco", str(images), str(annotations), test_fraction=0.25)
    train_idx, test_idx = source.split()
    assert (len(train_idx), len(test_idx)) == (12, 4) and not set(train_idx) & set(test_idx)
    # the fg variant of the training images, written as an ImageFolder tree of PNGs
    tree = out / "_masked" / f"{source.tag}-fg"
    files = sorted(tree.glob("*/*.png"))
    assert len(files) == 12 and {f.parent.name for f in files} == {"0000", "0001"}
    fg = source.dataset("fg")
    for f in files[:3]:
        i = int(f.stem)
        _, expected, label = fg[i]
        png = torch.from_numpy(np.asarray(Image.open(f))).permute(2, 0, 1)
        assert torch.equal(png, expected) and int(f.parent.name) == label
        outside = fg.mask(i) == 0
        assert outside.any() and bool((png[:, outside] == 128).all())
    full_run = json.loads((out / f"simclr-base-{source.tag}-s0-full" / "result.json").read_text())
    fg_run = json.loads((out / f"simclr-base-{source.tag}-s0-fg" / "result.json").read_text())
    assert full_run["n_train"] == 12 and full_run["n_test"] == 4 and full_run["num_classes"] == 2
    assert full_run["majority"] == 50.0 and fg_run["steps"] == 3  # 12 images, batch 4
    # the stored score is the one the checkpoint gives on the masked set's fg test images
    model, cfg = load_pretrained(json.loads((out / fg_run["run"] / "done.json").read_text())
                                 ["checkpoint"])
    assert cfg.data.dataset == "custom" and Path(cfg.data.train_path) == tree
    stats = (int(cfg.augmentations[0].crop_size), *mean_std("custom", cfg.augmentations[0]))
    bank, bank_labels = extract_features(model.backbone, EvalImages(Subset(fg, train_idx), *stats))
    test, labels = extract_features(model.backbone, EvalImages(Subset(fg, test_idx), *stats))
    assert fg_run["knn"]["masked"]["fg"] == pytest.approx(
        knn_accuracy(bank["feats"], bank_labels, test["feats"], labels, 5).top1)
    assert set(fg_run["knn"]["masked"]) == set(evidence.MASK_TESTS)
    report = (results / "evidence.md").read_text()
    assert f"1b. Motivation on real masks: coco set `{source.tag}`" in report
    row = next(x for x in report.splitlines() if x.startswith("| 5-NN |"))
    cells = [float(c) for c in row.strip("| \n").split(" | ")[1:]]
    knn_full, knn_fg = full_run["knn"]["masked"], fg_run["knn"]["masked"]
    assert cells == pytest.approx([round(knn_full[t], 1) for t in evidence.MASK_TESTS]
                                  + [round(knn_fg[t], 1) for t in evidence.MASK_TESTS])
    assert "## 1. Motivation: the 2x2 table" not in report  # no built-in runs in this folder
