"""The base install works without any extra: the optional packages are imported where a
feature uses them, and a missing one is an error that names the extra to install.

The check runs pixelwise in a child interpreter whose ``site-packages`` is a copy (made of
symlinks) of this one without the optional packages, so they are really absent, as after
``pip install pixelwise`` with no extras, not merely hidden by an import hook.
"""

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from pixelwise.errors import MissingDependencyError
from pixelwise.optional import EXTRAS, require

SRC = Path(__file__).resolve().parents[1] / "src"
# What the extras install (and what they pull in that the base install does not need).
OPTIONAL = ("nibabel", "onnx", "onnxruntime", "onnxscript", "onnx_ir", "fastapi", "uvicorn", "starlette", "multipart",
            "python_multipart", "pycocotools", "tensorboard", "tensorboard_data_server", "httpx", "playwright",
            "hypothesis", "tifffile", "transformers", "segmentation_models_pytorch", "openvino", "huggingface_hub")


def _base_site(tmp_path: Path) -> Path:
    site = Path(sysconfig.get_paths()["purelib"])
    base = tmp_path / "site-packages"
    base.mkdir()
    for entry in site.iterdir():
        top = entry.name.split("-")[0].split(".")[0].lower()
        if top in OPTIONAL or entry.suffix == ".pth" or top.startswith("__editable__"):
            continue
        (base / entry.name).symlink_to(entry)
    return base


def _run_without_extras(tmp_path: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    base = _base_site(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(base)]), "PYTHONNOUSERSITE": "1",
           "OMP_NUM_THREADS": "1"}
    # -S: no site-packages but the filtered copy on PYTHONPATH; -c: the check itself.
    return subprocess.run([sys.executable, "-S", "-c", textwrap.dedent(code), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


def test_base_install_imports_builds_trains_and_runs_the_cli_without_extras(tmp_path):
    code = """
        import importlib.util, sys
        for name in %r:
            assert importlib.util.find_spec(name) is None, f"{name} should be absent in this check"
        import torch
        torch.set_num_threads(1)
        import pixelwise
        from pixelwise import config
        from pixelwise.train.loop import train
        model = pixelwise.create_model("unet", encoder=None, in_channels=3, num_classes=2, base_channels=4, depth=2)
        assert model(torch.randn(1, 3, 33, 35)).shape == (1, 2, 33, 35)
        cfg = config.from_dict({
            "model": {"name": "unet", "args": {"base_channels": 4, "depth": 2}},
            "data": {"dataset": "synthetic", "num_classes": 5, "crop_size": 32, "augment": "none", "batch_size": 4,
                     "train_samples": 8, "val_samples": 4},
            "train": {"max_steps": 1, "out_dir": "run", "log_every": 1}})
        state = train(cfg, progress=False)
        assert state["step"] == 1, state
        from pixelwise.cli import main
        try:
            main(["--help"])
        except SystemExit as exit:
            assert exit.code == 0
        print("BASE-OK")
    """ % (OPTIONAL,)
    result = _run_without_extras(tmp_path, code)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "BASE-OK" in result.stdout
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


@pytest.mark.parametrize("feature, extra", [
    ("from pixelwise.data.volume import read_volume; open('v.nii', 'wb').write(b'0' * 400); read_volume('v.nii')",
     "medical"),
    ("from pixelwise.serve import serve; serve('nowhere')", "serve"),
    ("import torch, pixelwise; from pixelwise.export import export_onnx; "
     "export_onnx(pixelwise.create_model('unet', encoder=None, num_classes=2, base_channels=4, depth=2), 'm.onnx')",
     "export"),
    ("from pixelwise.metrics.coco import CocoMaskAP; CocoMaskAP()", "coco"),
    ("from pixelwise.annotate import annotate; annotate('nowhere')", "serve"),
    ("from pixelwise.annotate.sam import load_sam; load_sam('nowhere')", "sam"),
    ("from pixelwise.annotate.exports import export_coco; export_coco(None, 'out')", "coco"),
])
def test_a_feature_without_its_extra_names_the_extra(tmp_path, feature, extra):
    code = f"""
        from pixelwise.errors import MissingDependencyError
        try:
            {feature}
        except MissingDependencyError as err:
            print("MESSAGE:", err)
        else:
            raise SystemExit("no MissingDependencyError")
    """
    result = _run_without_extras(tmp_path, code)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"pip install 'pixelwise[{extra}]'" in result.stdout


def test_require_returns_the_module_or_names_the_extra(monkeypatch):
    assert require("json", "a test").dumps([1]) == "[1]"
    monkeypatch.setitem(EXTRAS, "pixelwise_surely_missing_module", "medical")
    with pytest.raises(MissingDependencyError, match=r"reading volumes needs .*pixelwise\[medical\]"):
        require("pixelwise_surely_missing_module", "reading volumes")
    with pytest.raises(ImportError):  # callers that catch ImportError keep working
        require("pixelwise_surely_missing_module.sub", "a test")


def test_version_is_the_installed_distributions(capsys):
    import importlib.metadata

    from pixelwise import __version__
    from pixelwise.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pixelwise {__version__}"
    assert importlib.metadata.version("pixelwise") == __version__  # pyproject reads it from the package
