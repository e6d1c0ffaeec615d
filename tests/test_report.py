"""`snakemake --report` on a simulated night, opened in headless Chromium: every figure decodes.

Snakemake's report is one self-contained HTML file: a React app whose results (our PNGs) sit as
base64 data URIs in the global ``results`` object and are shown only on click. We copy the report,
add one script that decodes every image result in the page's own context (``new Image()`` with the
report's data URI, waiting for load/error), and read the outcome from Chromium's ``--dump-dom``.
A deliberately corrupted copy checks that the probe does report a broken image.
"""

import json
import re
import shutil
import subprocess

import pytest
from matplotlib.image import imread

from _analysis_night import make_analysis_night
from bandersnake.analysis.plots import PLOTS

from conftest import run_snakemake

pytestmark = pytest.mark.slow

SUMMARY_PLOT = "work/summary/precision_vs_brightness.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Decodes every image result of the report and writes {path: {ok, width, height}} into the DOM.
PROBE = """
<script>
window.addEventListener("load", function () {
  const entries = Object.entries(typeof results === "undefined" ? {} : results)
      .filter(([, r]) => (r.mime_type || "").startsWith("image/"));
  const report = {images: {}};
  let pending = entries.length;
  // React renders asynchronously: look at the app after a (virtual) second.
  const done = () => setTimeout(() => {
    report.app_children = document.querySelector("#app").childElementCount;
    const out = document.createElement("pre");
    out.id = "bandersnake-image-check";
    out.textContent = JSON.stringify(report);
    document.body.appendChild(out);
  }, 1000);
  if (!pending) { done(); return; }
  for (const [path, r] of entries) {
    const img = new Image();
    const finish = (ok) => {
      report.images[path] = {ok: ok, width: img.naturalWidth, height: img.naturalHeight};
      if (--pending === 0) done();
    };
    img.onload = () => finish(true);
    img.onerror = () => finish(false);
    img.src = r.data_uri;
  }
});
</script>
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium not installed (Debian package 'chromium'; `make system-packages`)")
    root = tmp_path_factory.mktemp("report")
    night = make_analysis_night(root)  # the 30-frame small night: enough for every figure
    run_snakemake(root, ["all", SUMMARY_PLOT], config=night["config"])
    run_snakemake(root, ["all", SUMMARY_PLOT], config=night["config"], extra=["--report", "report.html"])
    return dict(night, html=root / "report.html")


def probe(html_text, tmp_path):
    """Open ``html_text`` (a report) with the probe in headless Chromium; return the probe's result."""
    end = html_text.rfind("</body>")
    assert end > 0, "report has no </body>"
    page = tmp_path / "probe.html"
    page.write_text(html_text[:end] + PROBE + html_text[end:])
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=20000",
           "--dump-dom", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    match = re.search(r'<pre id="bandersnake-image-check">(.*?)</pre>', proc.stdout, flags=re.S)
    assert match, f"probe did not report (chromium rc {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def test_every_report_image_decodes(report, tmp_path):
    result = probe(report["html"].read_text(), tmp_path)
    assert result["app_children"] > 0  # the report app rendered
    night, target = report["night"], report["target"]
    expected = {f"work/{night}/{target}/plots/{p}.png" for p in PLOTS}
    expected |= {f"work/{night}/{target}/transit/transit_fit.png", f"work/{night}/{target}/transit/transit_fit_corner.png",
                 SUMMARY_PLOT}
    assert set(result["images"]) == expected
    for path, img in result["images"].items():
        assert img["ok"], path
        # Decoded size equals the PNG on disk (rows, columns).
        assert (img["height"], img["width"]) == imread(report["root"] / path).shape[:2], path


def test_probe_detects_a_broken_image(report, tmp_path):
    """Negative control: truncating one image's base64 payload must make the probe fail it."""
    html = report["html"].read_text()
    start = html.index("data:image/png", html.index('<script id="results">'))
    payload = html.index("base64,", start) + len("base64,")
    broken = html[:payload] + "AAAA" + html[payload + 400:]  # PNG signature gone
    result = probe(broken, tmp_path)
    failed = [p for p, img in result["images"].items() if not img["ok"]]
    assert len(failed) == 1 and result["images"][failed[0]]["width"] == 0
