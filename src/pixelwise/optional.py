"""Optional dependencies, imported where a feature uses them and never at ``import pixelwise``.

``pip install pixelwise`` gives training, evaluation and prediction; the extras add the rest
(``[export]``, ``[serve]``, ``[coco]``, ``[medical]``, ``[log]``, ``[tiff]``, ``[sam]``, ``[hub]``, ``[openvino]``, ``[all]``). A feature whose
package is missing fails with :class:`~pixelwise.errors.MissingDependencyError` naming the
extra to install, instead of a bare ``ModuleNotFoundError`` deep inside a call.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from .errors import MissingDependencyError

# Top-level module -> the pixelwise extra (pyproject.toml) that installs it.
EXTRAS = {
    "nibabel": "medical",
    "onnx": "export",
    "onnxruntime": "export",
    "onnxscript": "export",
    "onnx_ir": "export",
    "fastapi": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "python_multipart": "serve",
    "pydantic": "serve",
    "pycocotools": "coco",
    "tensorboard": "log",
    "tifffile": "tiff",
    "transformers": "sam",
    "huggingface_hub": "hub",
    "openvino": "openvino",
    "nncf": "openvino",
}


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` (dotted names allowed) for ``feature``, or fail naming the extra.

    >>> ort = require("onnxruntime", "the onnxruntime backend")
    """
    try:
        parts = module.split(".")
        for i in range(1, len(parts) + 1):  # a package set to None in sys.modules is "not installed"
            if sys.modules.get(".".join(parts[:i]), importlib) is None:
                raise ImportError(f"import of {'.'.join(parts[:i])} halted; None in sys.modules")
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        extra = EXTRAS.get(top)
        fix = (f"pip install 'pixelwise[{extra}]' (in a clone of the repository: pip install '.[{extra}]')"
               if extra else f"pip install {top}")
        raise MissingDependencyError(f"{feature} needs the package {top!r}, which is not installed "
                                     f"({err}); install it with: {fix}") from None
