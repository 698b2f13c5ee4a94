"""Command line: ``pixelwise train|eval|predict|check|serve|annotate|export|convert|push|models|demo``.

Every verb that takes a model folder also takes a Hub source ``hf://ORG/NAME[/FOLDER][@REVISION]``
(:mod:`pixelwise.remote`: the local cache first, the Hub only for what it lacks)."""

from __future__ import annotations

import sys

from ..errors import PixelwiseError
from .models import localise
from .parser import build_parser

__all__ = ["main", "build_parser"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        localise(args)
        return args.func(args)
    except (PixelwiseError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        # The trainer's graceful stop (first SIGINT/SIGTERM) says where it saved; a raw Ctrl-C does not.
        where = f" ({err.args[0]})" if err.args else "; the last completed checkpoint is kept"
        print(f"interrupted{where}; resume with --resume", file=sys.stderr)
        return 130
