"""benchmarks/evidence.py, built on ``solo-iclmsr compare``: the grids' configs, the targets
across grids, and tiny end-to-end passes (a built-in grid with the precondition arm and equal
time, read back without training; the 2x2 table on a tiny COCO set with real masks)."""

import csv
import importlib.util
import json
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "++data.builtin.n_train=64", "--set", "++data.builtin.n_test=32",
        "--set", "optimizer.batch_size=32", "--set", "max_epochs=1",
        "--set", "++diagnostics.images=32", "--set", "++diagnostics.every_n_epochs=1",
        "--seeds", "0"]


@pytest.fixture(scope="module")
def evidence(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("evidence", ROOT / "benchmarks" / "evidence.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["evidence"] = module
    spec.loader.exec_module(module)
    root = tmp_path_factory.mktemp("evidence")
    patch = pytest.MonkeyPatch()
    patch.setenv("SOLO_ICLMSR_CACHE", str(root / "cache"))
    patch.setenv("OMP_NUM_THREADS", "1")
    patch.setattr(module, "RESULTS", root / "results")
    patch.chdir(root)
    yield module
    patch.undo()
    sys.modules.pop("evidence", None)


def test_the_arms_differ_in_what_they_name_and_the_scale_reaches_the_config(evidence):
    from solo_iclmsr.compare.grid import Arm, Grid, config_changes, default_arms, flat_config
    from solo_iclmsr.config import compose

    scale = evidence.SCALES["cpu"]
    overrides = evidence.grid_overrides(scale, "byol", 0.95)
    grid = Grid(str(evidence.CONFIGS), "byol", overrides, [0], default_arms("byol"), Path("x"),
                {}, name="byol-builtin")
    cfgs = {arm.name: compose(str(evidence.CONFIGS), "byol", grid.spec(arm, 1).overrides)
            for arm in [*grid.arms, Arm.parse("base_fg", evidence.ARMS["base_fg"])]}
    base = flat_config(cfgs["base"])
    assert config_changes(base, flat_config(cfgs["iclmsr"])) == [
        "iclmsr.enabled (False -> True)",
        "name ('byol-builtin-base-seed1' -> 'byol-builtin-iclmsr-seed1')"]
    assert {c.split(" ")[0] for c in config_changes(base, flat_config(cfgs["base_fg"]))} == {
        "data.builtin.variant", "name"}
    cfg = cfgs["iclmsr"]
    assert cfg.max_epochs == scale.methods["byol"].epochs and cfg.seed == 1
    assert cfg.optimizer.lr == scale.methods["byol"].lr and cfg.data.builtin.rho == 0.95
    assert list(cfg.backbone.kwargs.channels) == [16, 32, 48, 96]
    assert cfg.method_kwargs.pred_hidden_dim == 512 and cfg.iclmsr.msr_width == 32
    assert cfg.diagnostics.every_n_steps == 16


def _results(evidence, values):
    """GridResults of a built-in grid from {(arm, seed): fg 5-NN}."""
    from solo_iclmsr.compare.report import Row

    g = evidence.GridResults(evidence.GridSpec("simclr", 0.95), Path("/nonexistent"))
    for (arm, seed), value in values.items():
        g.rows.append(Row(arm, seed, "fg", "knn5_top1", value, 10.0, 0.1, 0.1, 10, 4))
        g.values.setdefault(("knn5_top1", arm, "fg"), {})[seed] = value
    return g


def test_the_gain_target_needs_three_seeds_and_a_gain_above_the_pooled_std(evidence):
    gain = {**{("base", s): v for s, v in enumerate([20.0, 21.0, 22.0])},
            **{("iclmsr", s): v for s, v in enumerate([24.0, 25.0, 26.0])}}
    lines, verdict = evidence.effect_section({"simclr-rho0.95": _results(evidence, gain)})
    assert verdict["gains"] == [("simclr", 4.0, 1.0, 3)]
    assert any("0 of 1" not in line and "+4.0 vs pooled std 1.0" in line for line in lines)
    noisy = {**gain, ("base", 0): 10.0, ("base", 2): 32.0}
    _, verdict = evidence.effect_section({"simclr-rho0.95": _results(evidence, noisy)})
    (_, d, pooled, n), = verdict["gains"]
    assert d < pooled  # the same mean gain, but inside the spread of the arms: not met
    target = next(line for line in evidence.effect_section(
        {"g": _results(evidence, noisy)})[0] if "at least 3 of the 5" in line)
    assert target.endswith("NOT MET")


def test_the_ablation_verdict_compares_the_learned_strata_with_each_fixed_arm_present(evidence):
    learned = {("iclmsr", s): v for s, v in enumerate([15.0, 16.0, 17.0])}
    only_random = {**learned, **{("random_fixed", s): v for s, v in enumerate([11.0, 12.5, 14.0])}}
    line, _ = evidence.ablation_verdict({"g": _results(evidence, only_random)})
    assert "learned - random_fixed +3.5" in line and "frozen" not in line
    assert line.endswith("the learned strata beat random_fixed by >= 1 point: yes")
    both = {**only_random, **{("frozen", s): v for s, v in enumerate([15.0, 16.5, 16.5])}}
    line, _ = evidence.ablation_verdict({"g": _results(evidence, both)})
    assert "learned - frozen +0.0" in line and line.endswith("add nothing at this scale")
    assert evidence.ablation_verdict({"g": _results(evidence, learned)}) == []


def test_a_grid_trained_with_other_overrides_than_the_scale_now_gives_is_listed(evidence,
                                                                              tmp_path):
    scale = evidence.SCALES["cpu"]
    assert evidence.run_epochs(scale, "simclr") == scale.methods["simclr"].epochs
    assert evidence.run_epochs(scale, "simclr", ["++max_epochs=8"]) == 8
    trained = evidence.grid_overrides(scale, "simclr", 0.95, 4)
    (tmp_path / "compare.json").write_text(json.dumps({"command": shlex.join(
        ["solo-iclmsr", "compare", "--config-path", "c", "--config-name", "simclr", "--out", "o",
         "--arm", "base_fg", "++data.builtin.variant=fg max_epochs=99", "--jobs", "1", *trained])}))
    g = evidence.GridResults(evidence.GridSpec("simclr", 0.95), tmp_path)
    assert evidence.command_overrides(g.command) == evidence.override_values(trained)

    def listed(now):
        return [line for line in evidence.not_run({"simclr-rho0.95": g}, {"simclr-rho0.95": now})
                if "trained with" in line]

    assert listed(trained) == []  # an arm's overrides are not the grid's
    now = evidence.grid_overrides(scale, "simclr", 0.95, 8)
    assert listed([*now, "++data.builtin.n_train=7168"]) == [
        "  * simclr-rho0.95: trained with data.builtin.n_train=3584, diagnostics.every_n_epochs=4, "
        "max_epochs=4; the scale now gives data.builtin.n_train=7168, "
        "diagnostics.every_n_epochs=8, max_epochs=8"]


def _body(summary: str) -> str:
    """The summary without its header bullets (the command and the time it was written)."""
    return summary[summary.index("## 1."):]


def _mtimes(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_a_tiny_grid_runs_its_arms_reports_and_reads_back(evidence):
    args = ["--grids", "simclr-rho0.95", *TINY, "--out", "runs"]
    monkey = pytest.MonkeyPatch()
    grid = evidence.GridSpec("simclr", 0.95, ("base_fg", "uniform"))
    monkey.setattr(evidence, "GRIDS", (grid,))
    try:
        # a part of the grid first: one extra arm, no equal time; the summary says what is missing
        assert evidence.main([*args, "--arms", "base_fg", "--no-equal-time"]) == 0
        runs = Path("runs") / "simclr-rho0.95"
        rows = list(csv.DictReader(open(runs / "results.csv")))
        assert {r["arm"] for r in rows} == {"base", "iclmsr", "base_fg"}
        summary = (evidence.RESULTS / "evidence.md").read_text()
        assert "* not run" in summary and "simclr-rho0.95: base_equal_time, uniform" in summary
        first = _mtimes(runs / "runs")
        # then the whole grid: the finished runs reused, the missing arms added
        assert evidence.main(args) == 0
        assert {k: v for k, v in _mtimes(runs / "runs").items() if k in first} == first
        rows = list(csv.DictReader(open(runs / "results.csv")))
        assert {r["arm"] for r in rows} == {"base", "iclmsr", "base_fg", "uniform",
                                            "base_equal_time"}
        summary = (evidence.RESULTS / "evidence.md").read_text()
        assert "* not run" not in summary
        for heading in ("## 1. Precondition", "## 2. ICL-MSR against the base method",
                        "## 3. Which part of ICL-MSR", "## 5. The first-order reading",
                        "## 6. Stratum maps"):
            assert heading in summary, heading
        fg = next(float(r["value"]) for r in rows if r["arm"] == "base_fg"
                  and r["test_set"] == "fg" and r["metric"] == "knn5_top1")
        assert "| simclr | 0.95 |" in summary and f"{fg:.1f}" in summary
        assert (evidence.RESULTS / "evidence" / "simclr-rho0.95" / "report.md").exists()
        assert (evidence.RESULTS / "evidence_strata.png").stat().st_size > 1000
        before = _mtimes(runs / "runs")
        assert evidence.main([*args, "--report-only"]) == 0
        assert _mtimes(runs / "runs") == before  # nothing trained or evaluated again
        # the run folders gone (another machine): the summary from the committed reports alone
        committed = evidence.RESULTS / "evidence" / "simclr-rho0.95"
        assert {"results.csv", "diagnostics.csv", "compare.json"} <= {
            p.name for p in committed.iterdir()}
        shutil.rmtree(runs)
        assert evidence.main([*args, "--report-only"]) == 0
        again = (evidence.RESULTS / "evidence.md").read_text()
        assert _body(again) == _body(summary) and "## 6. Stratum maps" in again
    finally:
        monkey.undo()


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


def test_the_2x2_table_on_a_coco_set_with_real_masks(evidence):
    pytest.importorskip("pycocotools")
    from PIL import Image

    from solo_iclmsr.runs.checkpoints import load_pretrained
    from solo_iclmsr.compare.grid import read_json
    from solo_iclmsr.data.loaders import evaluation_sets
    from solo_iclmsr.data.masks import CocoMaskDataset, held_out_split
    from solo_iclmsr.evaluation import extract_features, knn_accuracy

    annotations, images = _write_coco(Path("coco"), n=20)
    assert evidence.main(["--grids", "", "--masks", "coco", "--annotations", str(annotations),
                          "--image-root", str(images), *TINY, "--set",
                          "optimizer.batch_size=4", "--out", "runs-masked"]) == 0
    fg = CocoMaskDataset(str(annotations), str(images), image_size=32, variant="fg")
    train, test = held_out_split(fg.labels)
    assert (len(train), len(test)) == (16, 4) and not set(train) & set(test)
    # the fg training images, written as an ImageFolder tree of PNGs
    files = sorted(Path("runs-masked", "_masked", "fg").glob("*/*.png"))
    assert len(files) == 16 and {f.parent.name for f in files} == {"0000", "0001"}
    for f in files[:3]:
        _, expected, label = fg[int(f.stem)]
        png = torch.from_numpy(np.asarray(Image.open(f))).permute(2, 0, 1)
        assert torch.equal(png, expected) and int(f.parent.name) == label
    grid = Path("runs-masked", "masked")
    rows = list(csv.DictReader(open(grid / "results.csv")))
    assert {r["test_set"] for r in rows} == {"full", "fg", "bg"}
    # the score of base_fg on the fg test images: the bank is its own (fg) training images
    folder = grid / "runs" / "base_fg" / "seed0"
    model, cfg = load_pretrained(folder / read_json(folder / "run.json")["checkpoint"])
    bank_set, tests = evaluation_sets(cfg)
    bank, bank_labels = extract_features(model.backbone, bank_set)
    feats, labels = extract_features(model.backbone, tests["fg"])
    stored = next(float(r["value"]) for r in rows if r["arm"] == "base_fg"
                  and r["test_set"] == "fg" and r["metric"] == "knn5_top1")
    assert stored == pytest.approx(knn_accuracy(bank["feats"], bank_labels, feats["feats"],
                                                labels, 5).top1)
    summary = (evidence.RESULTS / "evidence.md").read_text()
    assert "On the dataset with real masks" in summary
    assert "| base_fg |" in summary.split("On the dataset with real masks")[1]
