"""Tests of solo_iclmsr.config: errors name the key, overrides, translation to solo-learn 1.0.2."""

from pathlib import Path

import pytest

from solo_iclmsr.config import (
    METHOD_ARGS,
    METHODS,
    compose,
    load_config,
    load_knn_config,
    load_linear_config,
    load_pretrain_config,
    solo_method_signatures,
    solo_transform_kwargs,
    to_linear_kwargs,
    to_method_kwargs,
    trainer_kwargs,
    validate_pretrain,
)
from solo_iclmsr.core.options import ICLMSROptions

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
CIFAR = CONFIGS / "pretrain" / "cifar10"


def minimal(**changes):
    """A small valid pre-training mapping."""
    cfg = {
        "method": "simclr",
        "backbone": {"name": "resnet18"},
        "data": {"dataset": "cifar10", "train_path": "./datasets"},
        "optimizer": {"name": "sgd", "lr": 0.3, "batch_size": 128},
        "augmentations": [{"crop_size": 32, "num_crops": 2}],
        "max_epochs": 20,
    }
    for dotted, value in changes.items():
        node = cfg
        keys = dotted.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return cfg


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("changes,pattern", [
    ({"optimzer": {}}, r"Unknown config key optimzer\. Did you mean optimizer\?"),
    ({"optimizer__learning_rate": 1.0}, r"Unknown config key optimizer\.learning_rate"),
    ({"data__datset": "x"}, r"data\.datset\. Did you mean data\.dataset\?"),
    ({"max_epoch": 3}, r"max_epoch\. Did you mean max_epochs\?"),
    ({"method_kwargs": {"temprature": 0.1}}, r"method_kwargs\.temprature\. Did you mean "
                                             r"method_kwargs\.temperature\?"),
    ({"method_kwargs": {"queue_size": 10}}, r"method_kwargs\.queue_size.*argument of .*nnclr"),
    ({"augmentations": [{"crop_size": 32, "num_crops": 2, "rcc": {}}]},
     r"augmentations\[0\]\.rcc\. Did you mean augmentations\[0\]\.rrc\?"),
])
def test_unknown_keys_name_key_and_suggestion(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        validate_pretrain(minimal(**changes))


@pytest.mark.parametrize("changes,pattern", [
    ({"optimizer__lr": -1.0}, r"optimizer\.lr=-1\.0 is invalid"),
    ({"optimizer__lr": "fast"}, r"optimizer\.lr='fast' is invalid: expected a number"),
    ({"optimizer__batch_size": 0}, r"optimizer\.batch_size=0 is invalid"),
    ({"optimizer__name": "rmsprop"}, r"optimizer\.name='rmsprop'.*sgd, lars, adam, adamw"),
    ({"max_epochs": 2.5}, r"max_epochs=2\.5 is invalid: expected an integer"),
    ({"devices": "gpu0"}, r"devices='gpu0' is invalid"),
    ({"precision": "fp8"}, r"precision='fp8' is invalid"),
    ({"data__dataset": "mnist"}, r"data\.dataset='mnist'.*cifar10"),
    ({"data__fraction": 1.5}, r"data\.fraction=1\.5"),
    ({"augmentations": [{"crop_size": 32, "num_crops": 2, "grayscale": {"prob": 2.0}}]},
     r"augmentations\[0\]\.grayscale\.prob=2\.0 is invalid"),
    ({"augmentations": [{"num_crops": 2}]}, r"augmentations\[0\]\.crop_size is required"),
    ({"method_kwargs": {"temperature": 0}}, r"method_kwargs\.temperature=0 is invalid"),
    ({"method_kwargs": {"proj_output_dim": 12.5}}, r"method_kwargs\.proj_output_dim=12\.5"),
    ({"optimizer__kwargs": {"eta": 0.1}}, r"optimizer\.kwargs\.eta.*optimizer\.name=sgd"),
    ({"scheduler__name": "step"}, r"scheduler\.lr_decay_steps is required"),
    ({"scheduler__warmup_epochs": 30}, r"scheduler\.warmup_epochs=30"),
    ({"backbone__name": "resnet81"}, r"backbone\.name='resnet81'.*Did you mean.*resnet18"),
    ({"backbone__name": "convnext_atto", "backbone__cifar": True}, r"backbone\.cifar=true"),
    ({"momentum": {"base_tau": 0.9}}, r"momentum is set but method=simclr"),
    ({"data__train_path": None}, r"data\.train_path is required"),
])
def test_type_and_range_errors_name_the_key(changes, pattern):
    with pytest.raises(ValueError, match=pattern) as info:
        validate_pretrain(minimal(**changes))
    assert "\n" not in str(info.value)


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError, match="barlow_twins, byol, .*wmse") as info:
        validate_pretrain(minimal(method="simclrr"))
    assert "Did you mean simclr" in str(info.value)


@pytest.mark.parametrize("block,pattern", [
    ({"n_strat": 4}, r"iclmsr\.n_strat\. Did you mean iclmsr\.n_strata\?"),
    ({"n_strata": 0}, r"iclmsr\.n_strata=0 is invalid"),
    ({"meta_grad": "first_order"}, r"iclmsr\.meta_grad='first_order'"),
])
def test_iclmsr_errors_name_iclmsr_key(block, pattern):
    with pytest.raises(ValueError, match=pattern):
        validate_pretrain(minimal(iclmsr=block))


def test_cross_checks_of_solo_asserts():
    with pytest.raises(ValueError, match=r"method_kwargs\.queue_size=1000.*multiple"):
        validate_pretrain(minimal(method="nnclr", method_kwargs={"queue_size": 1000}))
    with pytest.raises(ValueError, match=r"method_kwargs\.whitening_size=256"):
        validate_pretrain(minimal(method="wmse"))
    with pytest.raises(ValueError, match=r"warmup_teacher_temperature_epochs=50"):
        validate_pretrain(minimal(method="dino", scheduler={"warmup_epochs": 1}))


# ------------------------------------------------------------------ loading and overrides


def test_defaults_list_and_overrides(tmp_path):
    cfg = load_pretrain_config(CIFAR / "byol.yaml", [
        "optimizer.lr=0.5", "max_epochs=50", "+seed=7", "augmentations[0].crop_size=32",
        "iclmsr.n_strata=4", "method_kwargs.pred_hidden_dim=1024",
    ])
    assert cfg.optimizer.lr == 0.5 and cfg.trainer.max_epochs == 50 and cfg.seed == 7
    assert cfg.iclmsr.n_strata == 4 and isinstance(cfg.iclmsr, ICLMSROptions)
    assert cfg.method_kwargs["pred_hidden_dim"] == 1024
    assert len(cfg.augmentations) == 2  # asymmetric: two pipelines of one crop
    assert cfg.augmentations[1].solarization.prob == 0.2


def test_group_override_selects_another_file():
    cfg = load_pretrain_config(CIFAR / "byol.yaml", ["augmentations=symmetric"])
    assert len(cfg.augmentations) == 1 and cfg.augmentations[0].num_crops == 2


def test_delete_override_restores_default():
    cfg = load_pretrain_config(CIFAR / "simclr.yaml", ["~scheduler"])
    assert cfg.scheduler.name == "warmup_cosine" and cfg.scheduler.warmup_epochs == 10


def test_self_last_when_absent(tmp_path):
    (tmp_path / "augmentations").mkdir()
    (tmp_path / "augmentations" / "two.yaml").write_text("- crop_size: 32\n  num_crops: 2\n")
    (tmp_path / "base.yaml").write_text("max_epochs: 3\noptimizer: {name: sgd, lr: 0.1}\n")
    (tmp_path / "run.yaml").write_text(
        "defaults:\n  - base\n  - augmentations: two\n"
        "method: simclr\nmax_epochs: 9\ndata: {dataset: builtin}\nscheduler: {warmup_epochs: 1}\n")
    cfg = load_pretrain_config(tmp_path / "run.yaml")
    assert cfg.trainer.max_epochs == 9  # the file overrides its defaults (Hydra >= 1.1)
    assert cfg.num_large_crops == 2
    assert compose(tmp_path / "run.yaml")["optimizer"]["lr"] == 0.1


# ------------------------------------------------------------------ translation


def test_simclr_translation():
    cfg = load_pretrain_config(CIFAR / "simclr.yaml")
    kw = to_method_kwargs(cfg)
    assert kw["encoder"] == "resnet18" and kw["backbone_args"] == {"cifar": True}
    assert kw["timm_backbone"] == {"name": "resnet18", "cifar": True}
    assert kw["optimizer"] == "sgd" and kw["lars"] is True
    assert kw["eta_lars"] == 0.02 and kw["grad_clip_lars"] is True
    assert kw["exclude_bias_n_norm"] is True
    assert kw["extra_optimizer_args"] == {"momentum": 0.9}
    assert kw["lr"] == pytest.approx(0.4) and kw["classifier_lr"] == pytest.approx(0.1)
    assert kw["num_classes"] == 10 and kw["max_epochs"] == 1000 and kw["batch_size"] == 256
    assert (kw["num_large_crops"], kw["num_small_crops"]) == (2, 0)
    assert (kw["proj_hidden_dim"], kw["proj_output_dim"], kw["temperature"]) == (2048, 256, 0.2)
    assert kw["supervised"] is False
    assert kw["scheduler"] == "warmup_cosine" and kw["warmup_epochs"] == 10
    assert "base_tau_momentum" not in kw
    expected = {"encoder", "num_classes", "backbone_args", "max_epochs", "batch_size",
                "optimizer", "lars", "lr", "weight_decay", "classifier_lr", "exclude_bias_n_norm",
                "accumulate_grad_batches", "extra_optimizer_args", "scheduler", "min_lr",
                "warmup_start_lr", "warmup_epochs", "num_large_crops", "num_small_crops",
                "eta_lars", "grad_clip_lars", "lr_decay_steps", "knn_eval", "knn_k"}
    assert expected <= set(kw)


def test_lr_scales_with_global_batch():
    cfg = load_pretrain_config(CIFAR / "simclr.yaml", ["optimizer.batch_size=128",
                                                        "devices=[0,1,2,3]"])
    assert to_method_kwargs(cfg)["lr"] == pytest.approx(0.4 * 128 * 4 / 256)
    assert to_method_kwargs(cfg, world_size=1)["lr"] == pytest.approx(0.4 * 128 / 256)


def test_byol_translation_has_momentum():
    kw = to_method_kwargs(load_pretrain_config(CIFAR / "byol.yaml"))
    assert (kw["base_tau_momentum"], kw["final_tau_momentum"], kw["momentum_classifier"]) == \
        (0.99, 1.0, False)
    assert kw["pred_hidden_dim"] == 4096 and kw["weight_decay"] == 1e-5
    assert (kw["num_large_crops"], kw["num_small_crops"]) == (2, 0)


def test_swav_translation():
    kw = to_method_kwargs(load_pretrain_config(CIFAR / "swav.yaml"))
    assert kw["queue_size"] == 3840 and kw["epoch_queue_starts"] == 50
    assert kw["freeze_prototypes_epochs"] == 2 and kw["sk_iters"] == 3
    assert kw["lr"] == pytest.approx(0.6) and kw["weight_decay"] == 1e-6


def test_dino_translation():
    kw = to_method_kwargs(load_pretrain_config(CONFIGS / "pretrain" / "imagenet100" / "dino.yaml"))
    assert kw["base_tau_momentum"] == 0.9995 and kw["num_prototypes"] == 4096
    assert kw["warmup_teacher_temperature_epochs"] == 50 and kw["freeze_last_layer"] == 1
    assert kw["backbone_args"] == {"cifar": False}
    assert (kw["num_large_crops"], kw["num_small_crops"]) == (2, 0)
    assert kw["lr"] == pytest.approx(0.3 * 128 * 2 / 256)
    assert kw["num_classes"] == 100


def test_multicrop_and_adam_translation():
    cfg = load_pretrain_config(CONFIGS / "pretrain" / "imagenet100" / "wmse.yaml")
    kw = to_method_kwargs(cfg)
    assert (kw["num_large_crops"], kw["num_small_crops"]) == (2, 6)
    assert kw["optimizer"] == "adam" and kw["lars"] is False
    assert kw["extra_optimizer_args"] == {"betas": [0.9, 0.999], "eps": 1e-8, "amsgrad": False}
    transforms, crops = solo_transform_kwargs(cfg)
    assert crops == [2, 6] and [t["crop_size"] for t in transforms] == [224, 96]


def test_vit_gets_crop_size_as_img_size():
    cfg = load_pretrain_config(CONFIGS / "pretrain" / "stl10" / "simclr.yaml",
                               ["backbone.name=vit_tiny_patch16_224"])
    kw = to_method_kwargs(cfg)
    assert kw["timm_backbone"] == {"name": "vit_tiny_patch16_224", "cifar": False, "img_size": 96}
    assert kw["encoder"] == "vit_tiny_patch16_224"
    assert kw["backbone_args"] == {"cifar": False, "img_size": 96}


def test_trainer_kwargs():
    cfg = load_pretrain_config(CIFAR / "simclr.yaml", ["+limit_train_batches=5"])
    kw = trainer_kwargs(cfg)
    assert kw["max_epochs"] == 1000 and kw["devices"] == [0] and kw["precision"] == "16-mixed"
    assert kw["strategy"] == "ddp" and kw["sync_batchnorm"] is True
    assert kw["limit_train_batches"] == 5


def test_linear_and_knn_configs():
    lin = load_linear_config(CONFIGS / "linear" / "cifar10" / "linear.yaml",
                             ["pretrained_feature_extractor=run.ckpt"])
    kw = to_linear_kwargs(lin)
    assert lin.pretrained_feature_extractor == "run.ckpt"
    assert kw["optimizer"] == "sgd" and kw["lars"] is False and kw["lr"] == pytest.approx(0.1)
    assert kw["scheduler"] == "step" and kw["lr_decay_steps"] == [60, 80]
    assert kw["num_classes"] == 10 and kw["crop_size"] == 32
    assert kw["timm_backbone"] == {"name": "resnet18", "cifar": True}
    knn = load_knn_config(CONFIGS / "knn" / "knn.yaml", ["knn.k=[5]"])
    assert knn.knn.k == (5,) and knn.data.crop_size == 32
    with pytest.raises(ValueError, match=r"knn\.distance_function\[0\]='manhattan'"):
        load_knn_config(CONFIGS / "knn" / "knn.yaml", ["knn.distance_function=[manhattan]"])
    assert isinstance(load_config(CONFIGS / "knn" / "knn.yaml"), type(knn))


def test_custom_dataset_needs_num_classes(tmp_path):
    path = CONFIGS / "pretrain" / "custom" / "simclr.yaml"
    with pytest.raises(ValueError, match=r"data\.num_classes is required"):
        to_method_kwargs(load_pretrain_config(path))
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    cfg = load_pretrain_config(path, [f"data.train_path={tmp_path}"])
    assert to_method_kwargs(cfg)["num_classes"] == 3


def test_method_table_matches_solo_sources():
    """The table of 1.0.2 constructor arguments agrees with the installed sources (read, not
    imported)."""
    signatures = solo_method_signatures()
    if not signatures:
        pytest.skip("solo-learn sources not installed")
    assert set(signatures) == set(METHODS)
    for method, args in signatures.items():
        table = METHOD_ARGS[method]
        assert set(args) == set(table), method
        for name, default in args.items():
            expected = table[name].default
            expected = list(expected) if isinstance(expected, tuple) else expected
            assert default == expected, (method, name)
