"""``build_task(cfg)``: the task object a config trains (``registry.TASKS``)."""

from __future__ import annotations

from ..config import ExperimentCfg
from ..errors import ConfigError
from ..registry import INSTANCE_MODELS, TASKS
from . import instance as _instance  # noqa: F401  (registers "instance")
from . import semantic as _semantic  # noqa: F401  (registers "semantic")
from .base import Task


def task_name(cfg: ExperimentCfg) -> str:
    """``cfg.task``, or for ``auto`` the task of the model: instance for an instance model, else semantic."""
    if cfg.task == "auto":
        return "instance" if cfg.model.name in INSTANCE_MODELS else "semantic"
    return cfg.task


def build_task(cfg: ExperimentCfg) -> Task:
    """The registered task for ``cfg`` (see :func:`task_name`); a model that does not fit the
    named task is an error naming both."""
    name = task_name(cfg)
    if name not in TASKS:
        raise ConfigError(f"config key 'task' is {name!r}; valid tasks: auto, {', '.join(sorted(TASKS))}")
    is_instance_model = cfg.model.name in INSTANCE_MODELS
    if (name == "instance") != is_instance_model:
        kind = "an instance" if is_instance_model else "a semantic"
        raise ConfigError(f"task {name!r} cannot train model {cfg.model.name!r}, {kind} model; set task: auto "
                          f"or pick a model of that task")
    return TASKS[name](cfg)
