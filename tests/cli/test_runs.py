"""Whole runs of the command on the built-in dataset: pretrain, then solo's evaluations (k-NN,
linear), the stratum maps, the demo (a small compare); auto-resume, which resumes only a run of
the same training config, and a killed run that resumes where solo's checkpointer left it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from solo_iclmsr import cli

REPO = Path(__file__).resolve().parents[2]
BUILTIN = ["--config-path", str(REPO / "configs" / "pretrain" / "builtin"), "--config-name", "simclr"]
DATA = ["++data.builtin.n_train=64", "++data.builtin.n_test=32", "++data.builtin.image_size=16"]
TINY = ["backbone.name=test_resnet", "optimizer.batch_size=16", *DATA,
        "augmentations.0.crop_size=16", "data.num_workers=0", "++scheduler.warmup_epochs=0",
        "method_kwargs.proj_hidden_dim=32", "method_kwargs.proj_output_dim=16",
        "iclmsr.n_strata=2", "iclmsr.msr_width=4", "iclmsr.msr_depth=1", "accelerator=cpu",
        "++enable_progress_bar=False", "++diagnostics.images=16", "iclmsr.enabled=true"]


def _pretrain(capsys, *args):
    assert cli.main(["pretrain", *BUILTIN, *TINY, *args]) == 0, capsys.readouterr().err[-3000:]
    (checkpoint,) = sorted(Path("trained_models").glob("simclr/*/*.ckpt"))
    capsys.readouterr()
    return checkpoint


def test_pretrain_then_knn_linear_and_stratum_maps(tmp_path, capsys):
    checkpoint = _pretrain(capsys, "max_epochs=1")
    metrics = (checkpoint.parent / "metrics.csv").read_text()
    for key in ("train_msr_loss", "strata/cross_image_cos", "train_meta_grad_norm_ct_epoch",
                "strata_probe/explained_by_background_over_chance", "strata_probe/fg_share"):
        assert key in metrics, key

    assert cli.main(["knn", "--pretrained_checkpoint_dir", str(checkpoint.parent),
                     "--dataset", "builtin", "--k", "5", "--temperature", "0.07",
                     "--distance_function", "cosine", "--batch_size", "32"]) == 0
    out = capsys.readouterr().out
    for test_set in ("FULL", "FG", "DECORRELATED"):
        assert f"BACKBONE / {test_set}" in out
    assert out.count("Result k=5,cosine,T=0.07: acc@1=") == 3

    code = cli.main(["linear", "--config-path", str(REPO / "configs" / "linear" / "builtin"),
                     "--config-name", "linear", "backbone.name=test_resnet", *DATA,
                     "data.augmentations.crop_size=16", "max_epochs=1", "optimizer.batch_size=16",
                     "data.num_workers=0", "accelerator=cpu", "++enable_progress_bar=False",
                     f"pretrained_feature_extractor='{checkpoint}'"])
    assert code == 0, capsys.readouterr().err[-3000:]
    assert list(Path("trained_models").glob("linear/*/*.ckpt"))

    png = tmp_path / "strata.png"
    assert cli.main(["strata", "--checkpoint", str(checkpoint), "--out", str(png),
                     "--images", "3"]) == 0
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_linear_refuses_a_backbone_that_does_not_fit(tmp_path, capsys):
    checkpoint = _pretrain(capsys, "max_epochs=1")
    code = cli.main(["linear", "--config-path", str(REPO / "configs" / "linear" / "builtin"),
                     "--config-name", "linear", "backbone.name=resnet18", *DATA,
                     f"pretrained_feature_extractor='{checkpoint}'", "accelerator=cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "does not fit this model" in err


def test_the_demo_is_a_compare_that_prints_its_table(tmp_path, capsys):
    from solo_iclmsr.cli.demo import demo

    out = tmp_path / "demo"
    result = demo(str(out), [*DATA, "max_epochs=1", "optimizer.batch_size=16",
                             "augmentations.0.crop_size=16", "iclmsr.n_strata=2",
                             "iclmsr.msr_width=4", "iclmsr.msr_depth=1"], quiet=True)
    assert result["failed"] == {}
    printed = capsys.readouterr().out
    assert "| arm | full | fg | decorrelated |" in printed
    for arm in ("base", "iclmsr"):
        assert f"| {arm} |" in printed
        assert (out / "runs" / arm / "seed0" / "eval.json").exists()
    assert (out / "report.png").stat().st_size > 1000
    assert "knn5_top1" in (out / "results.csv").read_text()
    # run again: the runs are done, the table is printed again
    demo(str(out), [*DATA, "max_epochs=1", "optimizer.batch_size=16",
                    "augmentations.0.crop_size=16", "iclmsr.n_strata=2", "iclmsr.msr_width=4",
                    "iclmsr.msr_depth=1"], quiet=True)
    assert "| iclmsr |" in capsys.readouterr().out


def test_auto_resume_trains_a_new_model_for_a_changed_setting(capsys):
    """The built-in configs auto-resume; another lambda_msr or strata is a new run that names
    the keys that made it one, and the same command again resumes a run already complete."""
    def run(*overrides):
        code = cli.main(["pretrain", *BUILTIN, *TINY, "max_epochs=1", *overrides])
        out, err = capsys.readouterr()
        assert code == 0, err[-3000:]
        return out

    def lambdas():
        """lambda_msr of each checkpoint, from the args.json beside it."""
        return {c: json.loads((c.parent / "args.json").read_text())["iclmsr"]["lambda_msr"]
                for c in Path("trained_models").glob("simclr/*/*.ckpt")}

    run("++iclmsr.lambda_msr=1.0")
    out = run("++iclmsr.lambda_msr=0.25")
    assert "Resuming" not in out
    (line,) = [line for line in out.splitlines() if line.startswith("Not resuming")]
    assert line.endswith("differs in iclmsr.lambda_msr (1.0 -> 0.25); starting a new version "
                         "folder.")
    assert sorted(lambdas().values()) == [0.25, 1.0]

    (second,) = [c for c, value in lambdas().items() if value == 0.25]
    out = run("++iclmsr.lambda_msr=0.25")
    assert f"Resuming from previous checkpoint that matches specifications: '{second}'" in out
    assert f"run folder: {second.parent} (already complete:" in out
    assert "nothing was trained" in out and sorted(lambdas().values()) == [0.25, 1.0]

    run("++iclmsr.strata=frozen")
    out = run("++iclmsr.strata=random_fixed")
    assert "differs in iclmsr.strata ('frozen' -> 'random_fixed'); starting" in out
    assert len(lambdas()) == 4


def _cli(*args, cwd, env):
    return subprocess.run([sys.executable, "-m", "solo_iclmsr.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def _final_step(folder: Path) -> int:
    checkpoints = sorted(folder.glob("simclr/*/*.ckpt"), key=lambda p: p.stat().st_mtime)
    return int(torch.load(checkpoints[-1], map_location="cpu", weights_only=True)["global_step"])


def test_a_killed_run_resumes_to_the_same_number_of_steps(tmp_path):
    """Auto-resume finds the last epoch's checkpoint of the killed run (the same config); the
    resumed run ends after as many optimizer steps as one that was never interrupted."""
    env = dict(os.environ, OMP_NUM_THREADS="1", SOLO_ICLMSR_CACHE=str(tmp_path / "cache"))
    args = ["pretrain", *BUILTIN, *TINY, "max_epochs=3", "++data.builtin.n_train=128",
            "auto_resume.enabled=True"]
    straight = tmp_path / "straight"
    straight.mkdir()
    result = _cli(*args, cwd=straight, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = _final_step(straight / "trained_models")
    assert expected == 3 * (128 // 16)

    killed = tmp_path / "killed"
    killed.mkdir()
    process = subprocess.Popen([sys.executable, "-m", "solo_iclmsr.cli", *args], cwd=killed,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while (not list(killed.glob("trained_models/simclr/*/*ep=0.ckpt")) and process.poll() is None
           and time.time() < deadline):
        time.sleep(0.05)
    time.sleep(0.5)  # into the second epoch
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert _final_step(killed / "trained_models") < expected
    (left,) = killed.glob("trained_models/simclr/*/*.ckpt")

    resumed = _cli(*args, cwd=killed, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (f"Resuming from previous checkpoint that matches specifications: "
            f"'{left.relative_to(killed)}'") in resumed.stdout
    assert _final_step(killed / "trained_models") == expected
