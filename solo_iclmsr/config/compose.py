"""Configs composed as solo-learn's scripts compose them: Hydra, from a folder and a name.

``solo-iclmsr pretrain --config-path DIR --config-name NAME [overrides]`` composes exactly what
``main_pretrain.py --config-path DIR --config-name NAME [overrides]`` composes (the same
defaults lists, the same override grammar: ``key=value``, ``+key=value``, ``++key=value``,
``~key``), through Hydra's compose API so that errors come back as one line.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from omegaconf import DictConfig, OmegaConf

from solo_iclmsr.config.names import unknown_name

__all__ = ["compose", "config_files"]


def config_files(folder: Path) -> list:
    """Names of the primary configs of a folder (``.yaml``, and ``.yml`` which Hydra skips)."""
    return sorted(p.stem for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


@contextlib.contextmanager
def _own_hydra() -> Iterator[None]:
    """Inside a Hydra application (a job of ``solo-iclmsr compare``), Hydra's global state is the
    application's: it is set aside while a config is composed, then put back."""
    from hydra.core.global_hydra import GlobalHydra

    state = GlobalHydra.instance()
    running = state.hydra if state.is_initialized() else None
    if running is not None:
        state.clear()
    try:
        yield
    finally:
        if running is not None:
            state.clear()
            state.initialize(running)


def compose(config_path: str, config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The composed config, with solo's ``OmegaConf.set_struct(cfg, False)`` applied.

    A primary config ending in ``.yml`` (solo ships ``imagenet-100/all4one.yml``, which Hydra's
    own loader cannot find) is read through a mirror of its folder.

    Raises:
        ValueError: one line for a missing folder or config (with the nearest names), a
            malformed override or an override of a key the config lacks.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    folder = Path(os.path.expanduser(str(config_path))).resolve()
    if not folder.is_dir():
        raise ValueError(f"--config-path {config_path} is not a folder: give the folder of the "
                         f"config, e.g. scripts/pretrain/cifar/.")
    name = str(config_name)
    for ext in (".yaml", ".yml"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    if not (folder / f"{name}.yaml").is_file() and not (folder / f"{name}.yml").is_file():
        raise ValueError(unknown_name("--config-name", name, config_files(folder),
                                      f"in {config_path}"))
    with tempfile.TemporaryDirectory() as mirror:
        root = folder
        if not (folder / f"{name}.yaml").is_file():
            root = Path(mirror)
            for entry in folder.iterdir():
                (root / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
            (root / f"{name}.yaml").symlink_to(folder / f"{name}.yml")
        try:
            with _own_hydra(), initialize_config_dir(config_dir=str(root), version_base="1.2"):
                cfg = hydra_compose(config_name=name, overrides=list(overrides))
        except (HydraException, MissingConfigException, OmegaConfBaseException) as error:
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            raise ValueError(f"config {config_path}/{name}: {' '.join(lines[:2])}") from None
    OmegaConf.set_struct(cfg, False)
    return cfg
