"""The run folder's life: a finished run is never overwritten, and a resume uses the run's own config.

``train.out_dir`` holds one run: ``config.yaml`` (the config it was started with), ``last/``,
``best/`` and the logs. Starting a run there again would replace all of that, so it is refused
unless asked for (:func:`check_fresh`). ``--resume`` continues with the saved ``config.yaml``
(:func:`resume_config`): a config given with it may differ only in keys that can change
mid-run, each applied with a message; any other difference is listed and refused, since the
run would otherwise report values it does not use (a changed ``train.lr`` is not the rate the
restored optimiser and schedule continue with).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from .. import config as config_mod
from ..config import ExperimentCfg
from ..errors import ConfigError

__all__ = ["CHANGEABLE_ON_RESUME", "check_fresh", "clear_run", "config_diff", "is_run_dir", "load_run_config",
           "resume_config"]

RUN_FILES = ("config.yaml", "last", "best", ".last.old", "log.csv", "metrics.csv")

# Keys a resumed run may take from a new config: they change how long it runs, how often it
# reports and where it runs, not what the restored state means. A longer or shorter schedule
# is recomputed for the new total (the learning rate follows the new curve from this step).
CHANGEABLE_ON_RESUME = frozenset({
    "train.epochs", "train.max_steps", "train.log_every", "train.val_every", "train.val_every_steps",
    "train.save_every_steps", "train.early_stop_patience",
    "train.device", "train.tensorboard", "train.plots", "data.num_workers",
})


def is_run_dir(folder: str | Path) -> bool:
    """Whether ``folder`` already holds (part of) a run."""
    folder = Path(folder)
    return any((folder / name).exists() for name in RUN_FILES)


def check_fresh(out_dir: str | Path, *, overwrite: bool, clear: bool = True) -> None:
    """Refuse to start a new run over an earlier one unless ``overwrite``; with it, clear the old
    run (``clear=False``: only check, for the processes of a distributed run that do not write)."""
    out = Path(out_dir)
    if not is_run_dir(out):
        return
    if not overwrite:
        best = " (best/ holds its best model)" if (out / "best").exists() else ""
        raise ConfigError(f"train.out_dir {str(out)!r} already holds a run{best}; starting again would replace it. "
                          f"Use --resume to continue it, --overwrite to replace it, or another out_dir "
                          f"(--set train.out_dir={_next_free(out)})")
    if clear:
        clear_run(out)


def clear_run(out_dir: str | Path) -> None:
    """Remove an earlier run's checkpoints and logs from ``out_dir`` (what ``--overwrite`` asks for)."""
    out = Path(out_dir)
    for name in (*RUN_FILES, "tensorboard", "curves.png", "confusion.png", "class_iou.png", "report.html",
                 "predictions"):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _next_free(out: Path) -> str:
    for n in range(2, 1000):
        candidate = out.with_name(f"{out.name}-{n}")
        if not is_run_dir(candidate):
            return str(candidate)
    return f"{out}-new"


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and prefix.count(".") < 1:  # sections, then their keys (args stay whole)
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def config_diff(saved: ExperimentCfg, given: ExperimentCfg) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (saved value, given value)}`` for every key whose value differs."""
    a, b = _flatten(config_mod.to_dict(saved)), _flatten(config_mod.to_dict(given))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def resume_config(out_dir: str | Path, given: ExperimentCfg | None = None) -> ExperimentCfg:
    """The config to resume the run in ``out_dir`` with: its saved ``config.yaml``, plus the
    changeable keys that ``given`` sets differently (printed). Other differences are refused."""
    out = Path(out_dir)
    path = out / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"--resume: no checkpoint in {str(out)!r} ({path.name} does not exist there), so it holds "
                          f"no run to resume; run without --resume to start one")
    saved = config_mod.load(path)
    if given is None:
        return saved
    diff = {k: v for k, v in config_diff(saved, given).items() if k != "train.out_dir"}
    fixed = {k: v for k, v in diff.items() if k not in CHANGEABLE_ON_RESUME}
    if fixed:
        lines = "\n".join(f"  {k}: {old!r} in the run, {new!r} now" for k, old, new in
                          ((k, *v) for k, v in fixed.items()))
        raise ConfigError(f"--resume: the config differs from the run's own ({path}) in keys a resumed run cannot "
                          f"change:\n{lines}\nResume with the run's config (`pixelwise train {out} --resume`, or "
                          f"drop those --set), or start a new run in another out_dir (model.init_from: "
                          f"{out / 'last'} starts from its weights)")
    changes = {}
    for key, (old, new) in diff.items():
        section, name = key.split(".")
        changes.setdefault(section, {})[name] = new
        print(f"resume: {key} {old!r} -> {new!r} (from the given config)")
    if not changes:
        return saved
    return dataclasses.replace(saved, **{s: dataclasses.replace(getattr(saved, s), **kv) for s, kv in changes.items()})


def load_run_config(source: str | Path, overrides: list[str] | tuple[str, ...] = (), *,
                    resume: bool) -> ExperimentCfg:
    """The config ``pixelwise train SOURCE [--set ...] [--resume]`` runs with: the YAML file with
    its overrides, or with ``resume`` the run's own config (``SOURCE`` may be the run folder)
    plus the overrides :func:`resume_config` allows."""
    if resume and Path(source).is_dir():  # the run folder itself: its own config.yaml
        run = Path(source)
        return resume_config(run, config_mod.load(run / "config.yaml", [*overrides, f"train.out_dir={run}"]))
    given = config_mod.load(source, overrides)
    return resume_config(given.train.out_dir, given) if resume else given
