"""README's "Your own data" block, run as written: folder -> check -> train -> eval -> predict -> serve."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from pixelwise.cli import main
from serve_live import wait_healthy

ROOT = Path(__file__).resolve().parents[1]


def _block() -> str:
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- walkthrough:.*?-->\n```bash\n(.*?)```", readme, re.S)
    assert found, "README.md lost its walkthrough block"
    return found.group(1)


def _data(root: Path, n: int = 6) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((48, 64), np.uint8)
            y, x = rng.integers(0, 24, 2)
            mask[y:y + 18, x:x + 24] = 1
            mask[30:40, 2:12] = 2
            image = rng.integers(0, 80, (48, 64, 3), dtype=np.uint8)
            image[mask == 1] = (220, 200, 40)
            image[mask == 2] = (30, 60, 230)
            name = "a" if i == 0 else f"img{i}"
            Image.fromarray(image).save(root / split / "images" / f"{name}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{name}.png")


@pytest.mark.timeout(1200)
def test_the_readme_walkthrough_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _data(tmp_path / "my_data")
    lines = _block().splitlines()
    yaml_start = lines.index("cat > my_config.yaml <<'YAML'")
    yaml_end = lines.index("YAML", yaml_start + 1)
    (tmp_path / "my_config.yaml").write_text("\n".join(lines[yaml_start + 1:yaml_end]) + "\n")
    commands = [line.split("#")[0].strip() for line in lines[yaml_end + 1:]]
    commands = [c for c in commands if c]
    ran = []
    server = None
    try:
        for command in commands:
            args = shlex.split(command.rstrip("&"))
            if args[0] == "pixelwise" and args[1] == "serve":
                server = subprocess.Popen([sys.executable, "-m", "pixelwise", *args[1:]], cwd=tmp_path,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
                wait_healthy("http://127.0.0.1:8000", proc=server, seconds=120)
            elif args[0] == "pixelwise":
                extra = ["--set", "train.epochs=2"] if args[1] == "train" else []  # the README's 20 epochs, shortened
                quiet = ["--quiet"] if args[1] in ("train", "eval", "predict") else []
                assert main([*args[1:], *extra, *quiet]) == 0, command
            elif args[0] == "curl":
                field, url = args[2], args[3]
                path = field.split("@", 1)[1]
                with open(path, "rb") as fh:
                    resp = httpx.post(url, files={"image": fh}, timeout=60)
                assert resp.status_code == 200, resp.text
                body = resp.json()
                assert [c["name"] for c in body["classes"]] == ["background", "cell", "debris"]
            else:
                pytest.fail(f"the walkthrough has a command this test does not know: {command}")
            ran.append(args[1] if args[0] == "pixelwise" else args[0])
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    assert ran == ["check", "train", "eval", "predict", "serve", "curl"]
    assert (tmp_path / "runs" / "my_data" / "report.html").is_file()
    assert sorted(p.name for p in (tmp_path / "my_predictions").glob("*_overlay.png"))[:1] == ["a_overlay.png"]
