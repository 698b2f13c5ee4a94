"""Model folders on the Hugging Face Hub: ``hf://org/name`` sources, offline first.

A source ``hf://ORG/NAME[/SUBFOLDER][@REVISION]`` names a Hub model repository that holds a
pixelwise model folder (``config.json`` + ``model.safetensors``, as :func:`pixelwise.hub.save_model`
writes it), at its top level or in ``SUBFOLDER``. :func:`fetch` turns it into a local folder:

1. **the local cache first**: a snapshot already in the huggingface_hub cache (``HF_HUB_CACHE``,
   else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``) is used without any request, so a
   model fetched once loads on a machine with no network;
2. **then the Hub**, only for a source the cache does not hold (or with ``PIXELWISE_HUB_REFRESH=1``,
   which asks the Hub whether the revision moved), unless ``HF_HUB_OFFLINE=1``: then a cache
   miss is an error that says how to fill the cache.

Only the model folder's own files are downloaded (:data:`MODEL_FILES`), never the rest of a repository.
Private and gated repositories use the token huggingface_hub finds (``HF_TOKEN`` or ``hf auth login``).

:func:`push` uploads a model folder to a Hub repository (created if missing). The
huggingface_hub package is the ``[hub]`` extra; nothing here imports it before it is needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .optional import require

PREFIX = "hf://"
# What a model folder may hold: the two files that make it, the people's card, exported graphs.
MODEL_FILES = ("config.json", "model.safetensors", "README.md", "model.onnx", "model.int8.onnx", "pipeline.onnx",
               "model.xml", "model.bin", "model.int8.xml", "model.int8.bin")
REQUIRED = ("config.json", "model.safetensors")
_TRUE = ("1", "on", "yes", "true")


@dataclass(frozen=True)
class HubSource:
    """A parsed ``hf://`` source.

    Attributes:
        repo_id: ``"org/name"``.
        subfolder: the folder inside the repository holding the model ("" for its top level).
        revision: a branch, tag or commit hash (None: the default branch).
    """

    repo_id: str
    subfolder: str = ""
    revision: str | None = None

    def __str__(self) -> str:
        sub = f"/{self.subfolder}" if self.subfolder else ""
        rev = f"@{self.revision}" if self.revision else ""
        return f"{PREFIX}{self.repo_id}{sub}{rev}"

    def patterns(self, files: tuple[str, ...]) -> list[str]:
        """``allow_patterns`` for these file names inside :attr:`subfolder`."""
        return [f"{self.subfolder}/{f}" if self.subfolder else f for f in files]


def is_remote(source: object) -> bool:
    """True for a string (or path-like) that starts with ``hf://``."""
    return isinstance(source, (str, os.PathLike)) and os.fspath(source).startswith(PREFIX)


def parse(source: str | os.PathLike) -> HubSource:
    """Split ``hf://ORG/NAME[/SUB/FOLDER][@REVISION]``; a malformed source fails with the form to use."""
    text = os.fspath(source)
    body = text[len(PREFIX):] if text.startswith(PREFIX) else text
    path, _, revision = body.partition("@")
    parts = [p for p in path.split("/") if p]
    if len(parts) < 2 or (_ and not revision) or any(p in (".", "..") for p in parts):
        raise ConfigError(f"{text!r} is not a Hub model source; write hf://ORG/NAME, optionally with a folder "
                          f"inside the repository and a revision: hf://ORG/NAME/FOLDER@v1.0")
    return HubSource("/".join(parts[:2]), "/".join(parts[2:]), revision or None)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set: read the cache, never the network.

    Read at call time, not at import (huggingface_hub reads it once when it is imported)."""
    return _flag("HF_HUB_OFFLINE") or _flag("TRANSFORMERS_OFFLINE")


def cache_dir() -> Path:
    """The huggingface_hub cache folder, as the environment names it now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def _complete(folder: Path, files: tuple[str, ...]) -> bool:
    return all((folder / f).is_file() for f in files)


def fetch(source: str | os.PathLike, *, files: tuple[str, ...] = MODEL_FILES,
          required: tuple[str, ...] = REQUIRED) -> Path:
    """The local folder holding ``source``'s files: from the cache, else downloaded (see the module docstring).

    ``files``: the names (in the source's folder) to fetch when they exist; ``required``: the ones
    that must. Returns the snapshot folder (its subfolder, if the source names one)."""
    ref = parse(source)
    hub = require("huggingface_hub", f"the Hub model source {source}")
    errors = require("huggingface_hub.errors", f"the Hub model source {source}")
    common = {"repo_id": ref.repo_id, "revision": ref.revision, "cache_dir": str(cache_dir()),
              "allow_patterns": ref.patterns(files), "library_name": "pixelwise"}
    if not _flag("PIXELWISE_HUB_REFRESH"):
        try:
            folder = Path(hub.snapshot_download(**common, local_files_only=True)) / ref.subfolder
            if _complete(folder, required):
                return folder
        except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, FileNotFoundError):
            pass
    if offline():
        raise ConfigError(f"{ref} is not in the local Hub cache ({cache_dir()}) and HF_HUB_OFFLINE is set; "
                          f"fetch it once on a machine with network (unset HF_HUB_OFFLINE, or run "
                          f"`hf download {ref.repo_id}`{f' --revision {ref.revision}' if ref.revision else ''}) "
                          f"and copy the cache folder, or pass a local model folder instead")
    try:
        folder = Path(hub.snapshot_download(**common)) / ref.subfolder
    except errors.GatedRepoError:
        raise ConfigError(f"{ref} is a gated repository; accept its terms on huggingface.co and log in "
                          f"(`hf auth login` or HF_TOKEN)") from None
    except errors.RepositoryNotFoundError:
        raise ConfigError(f"{ref}: no such model repository on the Hub, or it is private; check the name, "
                          f"or log in (`hf auth login` or HF_TOKEN) for a private one") from None
    except errors.RevisionNotFoundError:
        raise ConfigError(f"{ref}: the repository has no revision {ref.revision!r}; use a branch, tag or "
                          f"commit hash it has") from None
    except errors.OfflineModeIsEnabled:  # HF_HUB_OFFLINE was set when huggingface_hub was imported
        raise ConfigError(f"{ref} is not in the local Hub cache ({cache_dir()}) and huggingface_hub runs offline "
                          f"(HF_HUB_OFFLINE was set when it was imported); unset it and restart") from None
    except errors.LocalEntryNotFoundError as err:  # no connection and nothing cached
        raise ConfigError(f"{ref} could not be downloaded ({err.__class__.__name__}: the Hub is unreachable) and "
                          f"is not in the local cache ({cache_dir()}); connect, or pass a local model folder") from None
    if not _complete(folder, required):
        missing = ", ".join(f for f in required if not (folder / f).is_file())
        hint = (f"; a transformers or smp checkpoint becomes a pixelwise folder with `pixelwise convert {ref} "
                f"--from hf|smp --out DIR`" if required == REQUIRED else "")
        raise ConfigError(f"{ref} has no {missing}{f' in {ref.subfolder}/' if ref.subfolder else ''}, so it is not "
                          f"a pixelwise model folder{hint}")
    return folder


def push(folder: str | os.PathLike, repo_id: str, *, private: bool | None = None, token: str | None = None,
         revision: str | None = None, commit_message: str | None = None, create_pr: bool = False) -> str:
    """Upload the model folder ``folder`` to the Hub repository ``repo_id`` (created when missing).

    Only the model folder's files (:data:`MODEL_FILES`) are uploaded. Returns the commit URL."""
    folder = Path(folder)
    if not _complete(folder, REQUIRED):
        raise ConfigError(f"{str(folder)!r} is not a saved pixelwise model (no config.json + model.safetensors); "
                          f"save it first (Segmenter.save_pretrained or pixelwise.save)")
    if offline():
        raise ConfigError(f"cannot push {str(folder)!r} to {repo_id!r}: HF_HUB_OFFLINE is set; unset it to upload")
    ref = parse(PREFIX + repo_id)
    if ref.subfolder or ref.revision:
        raise ConfigError(f"repo_id {repo_id!r} must be ORG/NAME; give the branch as revision=")
    hub = require("huggingface_hub", "pushing a model to the Hub")
    api = hub.HfApi(token=token)
    api.create_repo(ref.repo_id, private=private, exist_ok=True, repo_type="model")
    present = [name for name in MODEL_FILES if (folder / name).is_file()]
    info = api.upload_folder(repo_id=ref.repo_id, folder_path=str(folder), repo_type="model", revision=revision,
                             allow_patterns=present, create_pr=create_pr,
                             commit_message=commit_message or f"Upload pixelwise model ({', '.join(present)})")
    return str(getattr(info, "commit_url", info))

