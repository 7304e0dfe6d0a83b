"""benchmarks/evidence.py: the target arithmetic, the scale's augmentation changes, and one tiny
end-to-end pass (both arms trained, evaluated and reported)."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def evidence():
    spec = importlib.util.spec_from_file_location("evidence", ROOT / "benchmarks" / "evidence.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["evidence"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("evidence", None)


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


def test_scale_augmentation_changes_reach_every_view(evidence):
    scale = evidence.SCALES["cpu"]
    run = evidence.RunSpec("simclr", True, 0.95, 0)
    raw, cfg = evidence.compose(scale, run)
    assert cfg.iclmsr.enabled and cfg.backbone.name == scale.backbone
    for aug in raw.augmentations:
        assert aug.rrc.crop_min_scale == scale.crop_min_scale
        for key, value in scale.augment.items():
            section, name = key.split(".")
            assert aug[section][name] == value
    # the arms differ in iclmsr.enabled (and the run's name) only
    base_raw, _ = evidence.compose(scale, evidence.RunSpec("simclr", False, 0.95, 0))
    diff = {k for k in raw if raw[k] != base_raw[k]}
    assert diff <= {"iclmsr", "name"}


def test_tiny_effect_run_trains_both_arms_and_reports(evidence, tmp_path, monkeypatch):
    monkeypatch.setenv("SOLO_ICLMSR_CACHE", str(tmp_path / "cache"))
    out, results = tmp_path / "runs", tmp_path / "results"
    args = ["--scale", "cpu", "--only", "effect", "--methods", "simclr", "--rhos", "0",
            "--seeds", "1", "--n-train", "128", "--n-test", "64", "--epochs", "1",
            "--out", str(out), "--results", str(results)]
    assert evidence.main(args) == 0
    report = (results / "evidence.md").read_text()
    assert "| simclr | 0 | base | 1 |" in report and "| simclr | 0 | +ICL-MSR | 1 |" in report
    assert "simclr, rho 0: 5-NN change" in report
    assert (results / "evidence_effect.png").stat().st_size > 0
    for arm in ("base", "icl"):
        assert (out / f"simclr-{arm}-rho0-s0-full" / "result.json").exists()
    # a second call trains nothing and reads the finished runs back
    assert evidence.main(args + ["--report-only"]) == 0
    assert "Runs trained by this command: 0; results read: 2." in (results / "evidence.md").read_text()
