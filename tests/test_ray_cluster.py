"""The README's Ray cluster recipe, run as written on two Ray nodes started on this machine.

The commands are read from the README's own code block (so the test fails if the recipe drifts);
only the placeholders change: HEAD_IP, the port, the token the head prints, the folder and CSV.
Each node gets its own HOME, so the worker and the driver can only join with the token they are
given, as on separate machines.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.classify import classify

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("ray", reason="Ray is not installed here (pip install '.[ray]'); cluster test skipped")
pytestmark = pytest.mark.slow


def _recipe() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Classify on a Ray cluster", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "the README has no cluster recipe"
    return [
        line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.split("#", 1)[0].strip()
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_readme_cluster_recipe_works_on_two_nodes(
    exported: Path, test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    lines = _recipe()
    assert lines[0].startswith("pip install") and "[ray]" in lines[0]
    head, token_line, worker, classify_line = lines[1:4], lines[4], lines[5], lines[6]
    assert head[1] == "ray get-auth-token --generate" and head[2].startswith("ray start --head")
    assert token_line.startswith("export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=")
    assert worker.startswith("ray start --address=") and "--engine ray --address" in classify_line
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(120):
        Image.fromarray(test_digits[0][i]).save(folder / f"{i:03d}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    model = exported / "conv2d.int8.onnx"
    port = str(_free_port())
    bin_dir = str(Path(sys.executable).parent)

    def shell(commands: list[str], home: Path) -> subprocess.CompletedProcess[str]:
        home.mkdir(exist_ok=True)
        script = "set -e\n" + "\n".join(
            c.replace("6379", port).replace("HEAD_IP", "127.0.0.1") for c in commands
        )
        env = {**os.environ, "HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS"):
            env.pop(name, None)
        return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=240)

    homes = [tmp_path / "head", tmp_path / "worker", tmp_path / "driver"]
    try:
        made = shell(head[:2], homes[0])
        assert made.returncode == 0, made.stderr[-2000:]
        token = made.stdout.strip().splitlines()[-1]
        assert len(token) >= 16
        started = shell([head[0], head[2]], homes[0])
        assert started.returncode == 0, started.stderr[-2000:]
        join = token_line.replace("RAY_AUTH_TOKEN=TOKEN", f"RAY_AUTH_TOKEN={token}")
        joined = shell([join, worker], homes[1])
        assert joined.returncode == 0, joined.stderr[-2000:]
        count = "import ray; ray.init(address='HEAD_IP:6379'); print(sum(n['Alive'] for n in ray.nodes()))"
        nodes = shell([join, f'{sys.executable} -c "{count}"'], homes[2])
        assert nodes.returncode == 0 and nodes.stdout.strip().splitlines()[-1] == "2", nodes.stderr[-2000:]
        run = classify_line.replace("/mnt/scans", str(folder)).replace(
            "results.csv", str(tmp_path / "ray.csv")
        )
        done = shell([join, f"{run} --model {model}"], homes[2])
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        for home in homes[:2]:
            shell(["ray stop --force"], home)
    classify(folder, tmp_path / "local.csv", model=model)
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()
