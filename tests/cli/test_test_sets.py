"""``--test NAME=PATH`` and ``--test-suite in9 ROOT`` in ``compare``, ``knn`` and ``linear``: a grid
on a custom folder evaluates every run on every test set (k-NN and linear probe) and reports
the BG-Gap; a test set added to the finished grid is evaluated without training anything again;
a test folder that does not fit the training set is refused in one line before training."""

import csv
import json
import statistics
from pathlib import Path

from in9_tree import CLASSES, write_classes, write_in9

from solo_iclmsr import cli
from solo_iclmsr.cli.compare import compare
from solo_iclmsr.compare.report import paired_difference
from solo_iclmsr.data.test_sets import IN9_VARIANTS

REPO = Path(__file__).resolve().parents[2]
BUILTIN = str(REPO / "configs" / "pretrain" / "builtin")
TINY = ["backbone.name=test_resnet", "optimizer.batch_size=16", "augmentations.0.crop_size=16",
        "data.num_workers=0", "++scheduler.warmup_epochs=0", "method_kwargs.proj_hidden_dim=32",
        "method_kwargs.proj_output_dim=16", "iclmsr.n_strata=2", "iclmsr.msr_width=4",
        "iclmsr.msr_depth=1", "accelerator=cpu", "max_epochs=1", "++diagnostics.images=16",
        "++diagnostics.every_n_steps=2", "data.dataset=custom", "++data.val_path=null",
        "++data.image_size=16"]


def _custom(train: Path):
    return [*TINY, f"data.train_path='{train}'"]


def _rows(out: Path):
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def _files(folder: Path) -> dict:
    """{file: mtime} of what training wrote (checkpoints, run.json, the linear probe)."""
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")
            if p.is_file() and (p.suffix == ".ckpt" or p.name == "run.json")}


def test_a_grid_evaluates_every_run_on_every_test_set_and_adds_one_later(tmp_path):
    in9 = write_in9(tmp_path / "in9")
    a = write_classes(tmp_path / "A", per_class=2, seed=7)
    b = write_classes(tmp_path / "B", classes=CLASSES[:3], per_class=2, seed=8)
    out = tmp_path / "grid"
    args = dict(seeds=[0], eval=["knn", "linear"], knn_k=[5], linear_epochs=1, quiet=True,
                test_suites=[("in9", str(in9))])
    result = compare(BUILTIN, "simclr", str(out), _custom(in9 / "in9l" / "train"),
                     tests=[f"A={a}", f"B={b}"], **args)
    assert result["failed"] == {}
    tests = {"A", "B", *IN9_VARIANTS}
    rows = _rows(out)
    metrics = {"knn5_top1", "knn5_top5", "linear_top1", "linear_top5"}
    assert {(r["arm"], r["test_set"], r["metric"]) for r in rows} == {
        (arm, t, m) for arm in ("base", "iclmsr") for t in tests for m in metrics}
    assert all(float(r["eval_seconds"]) > 0 for r in rows)
    # the report: a column per test set, the BG-Gap of every arm and its paired difference
    report = (out / "report.md").read_text()
    header = next(line for line in report[report.index("## knn5 top-1"):].splitlines()
                  if line.startswith("| arm"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["arm", *IN9_VARIANTS, "A", "B"]
    value = {(r["arm"], r["test_set"], r["metric"]): float(r["value"]) for r in rows}
    gap = report[report.index("## Background gap (ImageNet-9)"):]
    for metric, name in (("knn5_top1", "knn5"), ("linear_top1", "linear")):
        gaps = {arm: value[(arm, "mixed_same", metric)] - value[(arm, "mixed_rand", metric)]
                for arm in ("base", "iclmsr")}
        for arm in ("base", "iclmsr"):
            assert (f"| {arm} | {name} | {value[(arm, 'only_fg', metric)]:.1f} (1) | "
                    f"{value[(arm, 'mixed_same', metric)]:.1f} (1) | "
                    f"{value[(arm, 'mixed_rand', metric)]:.1f} (1) | {gaps[arm]:.1f} (1) |") in gap
        d, _, n = paired_difference([(gaps["iclmsr"], gaps["base"])])
        fg, _, _ = paired_difference([(value[("iclmsr", "only_fg", metric)],
                                       value[("base", "only_fg", metric)])])
        assert f"| iclmsr | {name} | {fg:+.1f} (n=1) | {d:+.1f} (n=1) |" in gap
    assert (out / "report.png").stat().st_size > 10000

    # a test set added to the finished grid: evaluated by the k-NN and the probe already
    # trained; nothing is trained again and what was evaluated stays as it was
    trained = _files(out / "runs")
    assert len([p for p in trained if "linear" in p.parts]) == 2  # one probe per run
    c = write_classes(tmp_path / "C", per_class=2, seed=9)
    again = compare(BUILTIN, "simclr", str(out), _custom(in9 / "in9l" / "train"),
                    tests=[f"A={a}", f"B={b}", f"C={c}"], **args)
    assert again["failed"] == {}
    assert _files(out / "runs") == trained
    new = {(r["arm"], r["test_set"], r["metric"]): float(r["value"]) for r in _rows(out)}
    assert set(new) == set(value) | {(arm, "C", m) for arm in ("base", "iclmsr") for m in metrics}
    assert all(new[key] == v for key, v in value.items())
    evaluated = json.loads((out / "runs" / "base" / "seed0" / "eval.json").read_text())
    assert evaluated["test_paths"]["C"] == str(c.resolve())
    # the report from the run folders alone
    (out / "report.md").unlink()
    assert compare(BUILTIN, "simclr", str(out), report_only=True)["failed"] == {}
    assert "| mixed_next | A | B | C |" in (out / "report.md").read_text()


def test_bad_test_folders_are_refused_before_training(tmp_path, capsys):
    train = write_classes(tmp_path / "train", per_class=16)
    wrong = write_classes(tmp_path / "wrong", classes=("00_dog", "99_cat"), per_class=1)
    broken = write_classes(tmp_path / "broken", per_class=1)
    (broken / CLASSES[2] / "x.jpg").write_bytes(b"\x00" * 10)
    out = tmp_path / "grid"
    base = ["compare", "--config-path", BUILTIN, "--config-name", "simclr", "--out", str(out),
            "--eval", "knn", "--quiet"]
    for extra, overrides, message in (
            (["--test", f"w={wrong}"], _custom(train), "its class folders '99_cat' are not"),
            (["--test", f"b={broken}"], _custom(train), f"cannot read image {broken}"),
            (["--test", f"val={wrong}"], _custom(train), "one of the runs' own test versions"),
            (["--test-suite", "in9", str(train)], _custom(train), "no ImageNet-9 variant"),
            (["--test", f"b={train}"], ["accelerator=cpu"], "the built-in dataset has no class")):
        assert cli.main([*base, *extra, *overrides]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, (extra, err)
    assert not (out / "runs").exists()  # nothing was trained


def test_knn_and_linear_ask_a_checkpoint_the_same_questions(tmp_path, capsys):
    in9 = write_in9(tmp_path / "in9", variants=("only_fg", "mixed_same", "mixed_rand"))
    train = in9 / "in9l" / "train"
    a = write_classes(tmp_path / "A", per_class=2, seed=7)
    assert cli.main(["pretrain", "--config-path", BUILTIN, "--config-name", "simclr",
                     *_custom(train), "++enable_progress_bar=False"]) == 0
    (checkpoint,) = sorted(Path("trained_models").glob("simclr/*/*.ckpt"))
    capsys.readouterr()
    tests = ["--test", f"A={a}", "--test-suite", "in9", str(in9)]
    assert cli.main(["knn", "--pretrained_checkpoint_dir", str(checkpoint.parent), "--dataset",
                     "custom", "--train_data_path", str(train), "--k", "5", "--batch_size", "8",
                     "--num_workers", "0", *tests]) == 0
    captured = capsys.readouterr()
    for name in ("A", "ONLY_FG", "MIXED_SAME", "MIXED_RAND"):
        assert f"### BACKBONE / {name} ###" in captured.out
    assert captured.out.count("Result k=5,cosine,T=0.07: acc@1=") == 4
    assert "[evaluate] features of mixed_rand: 10/10 images" in captured.err

    code = cli.main(["linear", "--config-path", str(REPO / "configs" / "linear" / "builtin"),
                     "--config-name", "linear", "backbone.name=test_resnet", "data.dataset=custom",
                     f"data.train_path='{train}'", "~data.augmentations", "~data.builtin",
                     "max_epochs=1", "optimizer.batch_size=16", "data.num_workers=0",
                     "accelerator=cpu", "++enable_progress_bar=False",
                     f"pretrained_feature_extractor='{checkpoint}'", *tests])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    for name in ("A", "only_fg", "mixed_same", "mixed_rand"):
        assert f"linear / {name}: acc@1=" in captured.out
    # the probe trained at the pretraining run's crop (16 px), not solo's 224
    (args,) = Path("trained_models").glob("linear/*/args.json")
    assert json.loads(args.read_text())["data"]["augmentations"]["crop_size"] == 16
    # a test folder of other classes: one line, before the probe trains
    wrong = write_classes(tmp_path / "wrong", classes=("zebra",), per_class=1)
    code = cli.main(["linear", "--config-path", str(REPO / "configs" / "linear" / "builtin"),
                     "--config-name", "linear", "backbone.name=test_resnet", "data.dataset=custom",
                     f"data.train_path='{train}'", "~data.builtin", "accelerator=cpu",
                     f"pretrained_feature_extractor='{checkpoint}'", "--test", f"w={wrong}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "'zebra' are not classes" in err
    assert len(list(Path("trained_models").glob("linear/*/*.ckpt"))) == 1
