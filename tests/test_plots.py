"""`dvc plots show` on the project's dvc.yaml shows the report's curves without any network."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from browser import NEEDS_CHROMIUM, chromium
from toy_project import offline_env

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32  # DVC copies it as it is; it need not draw anything


def plots_page(tmp_path: Path) -> str:
    """`dvc plots show` of the project's dvc.yaml and .dvc/config over a small report."""
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
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs" / "dvc_plots.html", tmp_path / "configs")
    shutil.copy(ROOT / ".dvc" / "config", tmp_path / ".dvc" / "config")  # the project's page
    subprocess.run(
        [sys.executable, "-m", "dvc", "plots", "show", "-o", "out"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
    )
    return (tmp_path / "out" / "index.html").read_text()


def test_dvc_plots_show_embeds_the_report_png_as_a_local_file(tmp_path):
    body = plots_page(tmp_path).split("<body>", 1)[1]  # the inlined scripts build <img>s too
    images = re.findall(r'<img src="([^"]+)"', body)
    assert len(images) == 1 and not images[0].startswith(("http:", "https:", "//"))
    assert (tmp_path / "out" / images[0]).read_bytes() == PNG


def test_the_vega_plot_page_loads_nothing_from_the_network(tmp_path):
    page = plots_page(tmp_path)
    assert not re.findall(r"<script[^>]*\bsrc=", page), "a script is fetched, not inlined"
    assert "cdn.jsdelivr" not in page
    for package in ("vega@5.20.2", "vega-lite@5.2.0", "vega-embed@6.18.2"):
        assert f'<script data-package="{package}">' in page
    assert page.count("vegaEmbed('#") == 1  # the curve once, as the top-level plots draw it


# Runs the page's inline scripts as a browser would (UMD bundles set globals), then draws the
# embedded Vega-Lite spec to SVG with the inlined Vega: what vegaEmbed renders in the page.
DRAW_JS = """
const fs = require("fs"), vm = require("vm");
const page = fs.readFileSync(process.argv[2], "utf8");
for (const m of page.matchAll(/<script data-package="[^"]+">([\\s\\S]*?)<\\/script>/g))
  vm.runInThisContext(m[1]);
const spec = JSON.parse(/var spec = (\\{[\\s\\S]*?\\});\\s*vegaEmbed/.exec(page)[1]);
const view = new vega.View(vega.parse(vegaLite.compile(spec).spec), {renderer: "none"});
view.toSVG().then(svg => process.stdout.write(svg));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's scripts")
def test_the_inlined_vega_draws_the_em_curve_with_no_network(tmp_path):
    page = plots_page(tmp_path)
    (tmp_path / "page.html").write_text(page)
    (tmp_path / "draw.js").write_text(DRAW_JS)
    drawn = subprocess.run(
        ["node", str(tmp_path / "draw.js"), str(tmp_path / "page.html")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    svg = drawn.stdout
    assert svg.startswith("<svg") and "Dev metrics per EM iteration" in svg
    assert svg.count('class="mark-') >= 2  # the lines and their points were drawn


@pytest.mark.slow
@NEEDS_CHROMIUM
def test_a_browser_with_no_network_draws_the_vega_curve(tmp_path):
    plots_page(tmp_path)
    dom = chromium((tmp_path / "out" / "index.html").as_uri(), "--dump-dom", offline=True)
    assert dom.count('class="vega-embed') >= 1
    assert '<canvas width="' in dom and 'class="marks"' in dom  # vegaEmbed drew on its canvas
