"""The report of a 500-variant run, opened in a real headless browser: a screenshot kept, no console errors.

The browser is the system's chromium (setup.sh installs it as root). The
screenshot lands in the test's tmp folder and is copied to
tests/artifacts/ (git-ignored), to be looked at after a run.
"""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evolve.read.report import write_report
from tests.populations import write_run

pytestmark = pytest.mark.warm

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
WIDTH, HEIGHT = 1280, 3200  # the status, best-so-far, lineage and learning-curve figures
CONSOLE = re.compile(r":CONSOLE[:(]")  # how chromium logs a page's console messages and uncaught errors


def browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed: run setup.sh as root (it installs Debian's chromium)")
    return found


def screenshot(page: Path, png: Path, profile: Path) -> str:
    """Opens `page` headless, writes its screenshot to `png`; returns what the browser logged on stderr."""
    cmd = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={png}",
           "--enable-logging=stderr", "--v=0", page.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and png.is_file(), f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return done.stderr


def near(pixels: np.ndarray, rgb, tol: int = 40) -> int:
    return int((np.abs(pixels - np.array(rgb)).sum(axis=-1) < tol).sum())


def test_the_report_of_500_variants_renders_in_a_browser(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    write_run(root, 500)
    page = write_report(root)
    png = tmp_path / "report.png"
    log = screenshot(page, png, tmp_path / "profile")
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(png, ARTIFACTS / "report-500-variants.png")

    console = [line for line in log.splitlines() if CONSOLE.search(line)]
    assert console == [], "the page logged to the console:\n" + "\n".join(console)
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.int64)
    assert pixels.shape == (HEIGHT, WIDTH, 3)
    colours = np.unique((pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2])
    assert pixels.std() > 20 and len(colours) > 200  # not blank
    assert near(pixels, (255, 255, 255)) > 0.5 * WIDTH * HEIGHT  # a page, not a dark or broken canvas
    assert near(pixels, (214, 39, 40)) > 300  # the lineage figure's seed-to-champion path (tab:red)
    assert near(pixels, (255, 127, 14)) > 100  # the top 10's rings (tab:orange): the figure drew its view
    # the page keeps to the window's width: nothing drawn in the right margin past the content's 1100 px
    assert near(pixels[:, WIDTH - 60:], (255, 255, 255)) == 60 * HEIGHT


def test_the_console_check_sees_a_page_error(tmp_path):
    """The scan above finds what chromium logs for a script's error, so its silence on the report means something."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><p>x</p>"
                   "<script>console.error('boom'); missing();</script></body></html>")
    log = screenshot(bad, tmp_path / "bad.png", tmp_path / "profile")
    console = [line for line in log.splitlines() if CONSOLE.search(line)]
    assert any("boom" in line for line in console) and any("missing is not defined" in line for line in console)
