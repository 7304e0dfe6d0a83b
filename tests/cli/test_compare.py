"""``solo-iclmsr compare``: paired arms x seeds, each an ordinary run, resumable, with a report
that the run folders alone rebuild."""

import csv
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_data import write_image_folder

from solo_iclmsr.cli.compare import compare
from solo_iclmsr.compare.grid import equal_time_epochs, read_json, write_json
from solo_iclmsr.compare.report import collect, paired_difference, read_report

REPO = Path(__file__).resolve().parents[2]
BUILTIN = str(REPO / "configs" / "pretrain" / "builtin")
TINY = ["backbone.name=test_resnet", "optimizer.batch_size=16", "++data.builtin.n_train=64",
        "++data.builtin.n_test=32", "++data.builtin.image_size=16",
        "augmentations.0.crop_size=16", "data.num_workers=0", "++scheduler.warmup_epochs=0",
        "method_kwargs.proj_hidden_dim=32", "method_kwargs.proj_output_dim=16",
        "iclmsr.n_strata=2", "iclmsr.msr_width=4", "iclmsr.msr_depth=1", "accelerator=cpu",
        "max_epochs=1", "++diagnostics.images=16", "++diagnostics.every_n_steps=2"]


def _rows(out: Path):
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def _report_cells(report: str, section: str) -> dict:
    """{(arm, test set): cell} of the first table after the ``## <section>`` heading."""
    text = report[report.index(f"## {section}"):]
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = {}
    for line in lines[2:]:
        row = [c.strip() for c in line.strip("|").split("|")]
        if len(row) != len(header) or row[0] in ("arm", ""):
            break
        for name, cell in zip(header[1:], row[1:]):
            cells[(row[0], name)] = cell
    return cells


def test_two_arms_two_seeds_on_the_built_in_set(tmp_path):
    out = tmp_path / "grid"
    result = compare(BUILTIN, "simclr", str(out), TINY, seeds=[0, 1], eval=["knn", "linear"],
                     linear_epochs=1, jobs=2, quiet=True)
    assert result["failed"] == {}
    for arm in ("base", "iclmsr"):
        for seed in (0, 1):
            folder = out / "runs" / arm / f"seed{seed}"
            for name in ("spec.json", "config.yaml", "run.json", "eval.json"):
                assert (folder / name).exists(), (folder, name)
            assert list(folder.glob("simclr/*/args.json")) and list(folder.glob("simclr/*/*.ckpt"))
            assert list(folder.glob("simclr/*/metrics.csv"))
    for name in ("results.csv", "report.md", "report.png"):
        assert (out / name).stat().st_size > 100
    rows = _rows(out)
    assert {(r["arm"], r["seed"], r["test_set"]) for r in rows} == {
        (a, s, t) for a in ("base", "iclmsr") for s in ("0", "1")
        for t in ("full", "fg", "decorrelated")}
    assert {r["metric"] for r in rows} == {"knn5_top1", "knn5_top5", "knn20_top1",
                                           "knn20_top5", "linear_top1", "linear_top5"}
    # the report's numbers are those of results.csv
    report = (out / "report.md").read_text()
    for metric, section in (("knn5_top1", "knn5 top-1"), ("linear_top1", "linear top-1")):
        cells = _report_cells(report, section)
        for arm in ("base", "iclmsr"):
            for test in ("full", "fg", "decorrelated"):
                values = [float(r["value"]) for r in rows if r["arm"] == arm
                          and r["test_set"] == test and r["metric"] == metric]
                expected = f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f} (2)"
                assert cells[(arm, test)] == expected, (metric, arm, test)
        paired = report[report.index(f"## {section}"):]
        paired = paired[paired.index("Seed-paired"):]
        by_seed = {(r["arm"], r["seed"]): float(r["value"]) for r in rows
                   if r["metric"] == metric and r["test_set"] == "fg"}
        d, half, n = paired_difference([(by_seed[("iclmsr", s)], by_seed[("base", s)])
                                        for s in ("0", "1")])
        assert f"{d:+.1f} [{d - half:+.1f}, {d + half:+.1f}] (n=2)" in paired
    assert "torch " in report and "solo-learn 1.0.6+iclmsr" in report and "command:" in report
    assert "diag/grad_cos_msr_ct" in report  # the runs' diagnostics
    # results.csv and diagnostics.csv read back: the rows, and each arm's mean of its runs'
    # last logged metrics (a summary across grids needs no run folder)
    read_rows, means = read_report(out)
    collected, per_run = collect(out)
    assert read_rows == collected
    key = "diag/grad_cos_msr_ct"
    expected = statistics.mean(per_run[("iclmsr", s)][key] for s in (0, 1))
    assert means["iclmsr"][key] == pytest.approx(expected, rel=1e-12)
    assert key not in means.get("base", {})
    # the report from the run folders alone
    for name in ("results.csv", "diagnostics.csv", "report.md", "report.png", "compare.json"):
        (out / name).unlink()
    again = compare(BUILTIN, "simclr", str(out), report_only=True)
    assert again["failed"] == {}
    assert sorted(map(str, _rows(out))) == sorted(map(str, rows))


def test_a_custom_folder_is_evaluated_on_its_validation_set(tmp_path):
    train = write_image_folder(tmp_path / "data" / "train", classes=2, per_class=16, size=16)
    val = write_image_folder(tmp_path / "data" / "val", classes=2, per_class=4, size=16, seed=1)
    out = tmp_path / "grid"
    result = compare(BUILTIN, "simclr", str(out), [
        *TINY, "data.dataset=custom", f"data.train_path='{train}'", f"++data.val_path='{val}'",
        "++data.image_size=16"], seeds=[0, 1], eval=["knn"], knn_k=[5], quiet=True)
    assert result["failed"] == {}
    rows = _rows(out)
    assert {r["test_set"] for r in rows} == {"val"}
    assert {(r["arm"], r["seed"]) for r in rows} == {(a, s) for a in ("base", "iclmsr")
                                                     for s in ("0", "1")}


def _mtimes(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_a_grid_killed_mid_run_finishes_without_retraining(tmp_path):
    """A real ``kill -9`` of the command while its second run trains; the same command then
    trains only what is missing: the finished run's files are untouched, the killed run resumes
    from its last checkpoint."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "grid"
    args = [sys.executable, "-m", "solo_iclmsr.cli", "compare", "--config-path", BUILTIN,
            "--config-name", "simclr", "--out", str(out), "--eval", "knn", "--quiet", *TINY,
            "max_epochs=6", "++data.builtin.n_train=128"]
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    second = out / "runs" / "iclmsr" / "seed0"
    deadline = time.time() + 600
    while (not list(second.glob("simclr/*/*ep=1.ckpt")) and process.poll() is None
           and time.time() < deadline):
        time.sleep(0.05)
    assert process.poll() is None, "the grid ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(1.0)
    first = out / "runs" / "base" / "seed0"
    assert (first / "eval.json").exists() and not (second / "run.json").exists()
    for pattern in (f"runs_root='{out / 'runs'}'", f"checkpoint.dir='{out / 'runs'}"):
        left = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
        assert left.split() == [], f"a process of the grid outlived the killed command: {pattern}"
    before = _mtimes(first)
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _mtimes(first) == before, "a finished run was trained or evaluated again"
    run = read_json(second / "run.json")
    assert run["resumed_from"] and run["global_step"] == 6 * (128 // 16)
    assert (second / "eval.json").exists()


def test_a_changed_arm_is_refused_and_force_reruns_it(tmp_path, capsys):
    from solo_iclmsr import cli

    out = tmp_path / "grid"
    base = ["compare", "--config-path", BUILTIN, "--config-name", "simclr", "--out", str(out),
            "--eval", "knn", "--knn-k", "5", "--quiet", *TINY]
    assert cli.main([*base, "--arm", "soft", "++iclmsr.weight_head=softmax"]) == 0
    capsys.readouterr()
    before = _mtimes(out / "runs" / "base")
    changed = [*base, "--arm", "soft", "++iclmsr.weight_head=softmax ++iclmsr.weight_temperature=0.5"]
    assert cli.main(changed) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "soft/seed0 was run with another config" in err
    assert "iclmsr.weight_temperature (1.0 -> 0.5)" in err and "--force" in err
    assert cli.main([*changed, "--force"]) == 0
    assert _mtimes(out / "runs" / "base") == before  # unchanged arms are not rerun
    assert len(list((out / "runs" / "soft").glob("seed0.replaced-*"))) == 1  # the old run kept
    spec = read_json(out / "runs" / "soft" / "seed0" / "spec.json")
    assert "++iclmsr.weight_temperature=0.5" in spec["overrides"]


def test_equal_time_scales_the_epochs_by_the_recorded_step_times(tmp_path, monkeypatch):
    """base_equal_time: the base arm's max_epochs times the per-step time ratio of the seed's
    finished base and iclmsr runs (here recorded by hand: 0.1 and 0.35 s per step)."""
    from solo_iclmsr.cli import compare as compare_module

    out = tmp_path / "grid"
    launched = []
    monkeypatch.setattr(compare_module, "_run", lambda root, keys, *a: launched.append(keys))
    monkeypatch.setattr(compare_module, "write_report", lambda *a, **k: {}, raising=False)
    import solo_iclmsr.compare.report as report_module

    monkeypatch.setattr(report_module, "write_report", lambda *a, **k: {})
    for arm, step in (("base", 0.1), ("iclmsr", 0.35)):
        folder = out / "runs" / arm / "seed0"
        folder.mkdir(parents=True)
        write_json(folder / "run.json", {"max_epochs": 2, "seconds_per_step": step})
    compare(BUILTIN, "simclr", str(out), [*TINY, "max_epochs=2"], seeds=[0], equal_time=True,
            eval=["knn"])
    assert launched[-1] == ["base_equal_time/seed0"]
    spec = read_json(out / "runs" / "base_equal_time" / "seed0" / "spec.json")
    assert "++max_epochs=7" in spec["overrides"]  # round(2 * 0.35 / 0.1)
    assert spec["derived"]["iclmsr_seconds_per_step"] == 0.35
    assert "++iclmsr.enabled=false" in spec["overrides"]
    assert equal_time_epochs(100, 1.0, 3.04) == 304 and equal_time_epochs(4, 1.0, 0.5) == 4


def test_the_submitit_local_launcher_runs_the_grid(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    out = tmp_path / "grid"
    result = compare(BUILTIN, "simclr", str(out), TINY, seeds=[0], eval=["knn"], knn_k=[5],
                     launcher="submitit_local", quiet=True)
    assert result["failed"] == {}
    assert list((out / "launcher").glob("*/.submitit/*"))  # submitit's own job folders
    assert {r["arm"] for r in _rows(out)} == {"base", "iclmsr"}


def test_bad_arguments_fail_in_one_line(tmp_path, capsys):
    from solo_iclmsr import cli

    base = ["compare", "--config-path", BUILTIN, "--config-name", "simclr", "--out",
            str(tmp_path / "g"), *TINY]
    for extra, message in (
            (["--arm", "iclmsr", "++iclmsr.n_strata=3"], "--arm iclmsr: that arm exists"),
            (["--arm", "a/b", "++iclmsr.n_strata=3"], "--arm 'a/b': an arm's name"),
            (["--arm", "x", "nonsense"], "'nonsense' is not an override"),
            (["--arm", "x", "++iclmsr.n_stratta=3"], "arm x: iclmsr.n_stratta is an unknown key"),
            (["--seeds", "0", "0"], "give distinct seeds"),
            (["--jobs", "2", "--launcher", "basic"], "the basic launcher runs one job")):
        assert cli.main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, (extra, err)
    assert not re.search("Traceback", err)


def test_a_grid_of_ddp_runs(tmp_path, monkeypatch):
    """Runs with ``strategy=ddp devices=2`` (2 CPU processes): each run's pretrain is a process of
    its own, so Lightning's launcher starts rank 1 by running that command, not the grid's job;
    the evaluation runs on one device."""
    monkeypatch.setenv("PL_DISABLE_FORK", "1")
    out = tmp_path / "grid"
    result = compare(BUILTIN, "simclr", str(out), [*TINY, "++data.builtin.n_train=64",
                                                   "devices=2", "++strategy=ddp",
                                                   "optimizer.batch_size=8"],
                     eval=["knn"], knn_k=[5], quiet=True)
    assert result["failed"] == {}
    for arm in ("base", "iclmsr"):
        run = read_json(out / "runs" / arm / "seed0" / "run.json")
        assert run["global_step"] == 64 // (2 * 8)  # the global batch: 8 images on each rank
    assert {r["arm"] for r in _rows(out)} == {"base", "iclmsr"}
