"""`dvc plots show` on the project's dvc.yaml shows the report's curve without any network."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from toy_project import offline_env

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32  # DVC copies it as it is; it need not draw anything


def test_dvc_plots_show_embeds_the_report_png_as_a_local_file(tmp_path):
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "em_curve.png").write_bytes(PNG)
    rows = [{"checkpoint": "iter_0", "step": 0, "em": 10.0, "f1": 19.3, "acc": 15.0}]
    (reports / "em_curve.json").write_text(json.dumps(rows))
    env = offline_env()
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, env=env, check=True)
    subprocess.run(
        [sys.executable, "-m", "dvc", "plots", "show", "-o", "out"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
    )
    page = (tmp_path / "out" / "index.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 1 and not images[0].startswith(("http:", "https:", "//"))
    assert (tmp_path / "out" / images[0]).read_bytes() == PNG
