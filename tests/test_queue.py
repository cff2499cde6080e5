"""The review queue: review.csv and a self-contained review.html that a person works from disk."""

from __future__ import annotations

import csv
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import one_clear_line, run_cli
from PIL import Image

from pipeline import manifest
from pipeline.classify import ENCODING, ERRORS, classify
from pipeline.classify.queue import BELOW_REASON, QUEUE_HEADER, read_queue, write_queue
from pipeline.errors import ClassifyError
from pipeline.samples import letter_ink, pair_ink, scanned

pytestmark = pytest.mark.skipif(manifest.release_dir() is None, reason="no release models in this checkout")

# Names people's files really have: quotes, markup, a newline, an ampersand, a space.
HOSTILE = [
    'a"quote.png',
    "<b>bold.png",
    "two\nlines.png",
    "tom & jerry's.png",
    "<img src=x onerror=alert(1)>.png",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, test_digits: tuple[np.ndarray, np.ndarray]) -> Path:
    """A folder of clean digits, digits side by side and letters (hostile names among them),
    classified with its review queue."""
    root = tmp_path_factory.mktemp("queue")
    scans = root / "scans"
    (scans / "sub").mkdir(parents=True)
    rng = np.random.default_rng(5)
    x = test_digits[0]
    for i in range(12):
        Image.fromarray(255 - x[i]).save(scans / f"digit{i:02}.png")
    for i, name in enumerate(HOSTILE):
        Image.fromarray(scanned(pair_ink(x[20 + 2 * i], x[21 + 2 * i], rng), rng, quality=90)).save(
            scans / "sub" / name
        )
    for i in range(6):
        Image.fromarray(255 - scanned(letter_ink(rng), rng, quality=90)).save(scans / f"letter{i}.png")
    (scans / "broken.png").write_bytes(b"not an image")
    summary = classify(scans, root / "results.csv", workers=1, review_queue=root / "review")
    assert summary.queue is not None
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding=ENCODING, errors=ERRORS, newline="") as f:
        return list(csv.DictReader(f))


class _Page(HTMLParser):
    """Collects the page's image sources, its links and the text of its path cells."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.external: list[str] = []
        self.tags: list[str] = []
        self.paths: list[str] = []
        self._in_path = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        for key in ("href", "src"):
            if values.get(key) and not (values[key] or "").startswith("data:"):
                self.external.append(values[key] or "")
        self._in_path = tag == "td" and values.get("class") == "path"

    def handle_endtag(self, tag: str) -> None:
        self._in_path = False

    def handle_data(self, data: str) -> None:
        if self._in_path:
            self.paths.append(data)


def test_review_csv_lists_every_flagged_row_least_confident_first(run: Path) -> None:
    results = _rows(run / "results.csv")
    queued = _rows(run / "review" / "review.csv")
    flagged = {r["path"] for r in results if r["status"] == "review"}
    assert list(queued[0]) == QUEUE_HEADER
    assert {r["path"] for r in queued} == flagged
    assert {f"sub/{n}" for n in HOSTILE} <= flagged  # every pair is several digits
    confidences = [float(r["confidence"]) for r in queued]
    assert confidences == sorted(confidences)
    assert all(r["reason"] for r in queued)


def test_page_is_self_contained_html_with_its_images_and_names_as_text(run: Path) -> None:
    html = (run / "review" / "review.html").read_text(encoding="utf-8")
    page = _Page()
    page.feed(html)
    page.close()
    queued = _rows(run / "review" / "review.csv")
    assert page.external == []  # nothing to fetch: it opens from disk, offline
    assert len(page.images) == 2 * len(queued)  # the file and the 28x28, per row
    kinds = sorted(src.split(";")[0] for src in page.images)
    assert kinds == ["data:image/jpeg"] * len(queued) + ["data:image/png"] * len(queued)
    assert "script" not in page.tags and "b" not in page.tags  # names stayed text
    shown = "".join(page.paths)
    for name in HOSTILE:
        assert f"sub/{name}" in shown
    assert "1 file could not be read" in html


def test_page_is_capped_and_says_what_it_left_out(run: Path, tmp_path: Path) -> None:
    queue = write_queue(run / "results.csv", run / "scans", tmp_path, limit=2)
    html = queue.html.read_text(encoding="utf-8")
    assert queue.shown == 2 and queue.rows > 2
    assert html.count('<tr><td class="rank">') == 2
    assert f"{queue.rows - 2:,} more not shown here" in html
    assert len(_rows(queue.csv)) == queue.rows  # the CSV keeps them all


def test_below_queues_unflagged_rows_and_a_moved_file_is_said_in_place(run: Path, tmp_path: Path) -> None:
    plain, _ = read_queue(run / "results.csv")
    everything, errors = read_queue(run / "results.csv", below=1.0)
    assert errors == 1
    assert len(everything) > len(plain)
    assert {r.reason for r in everything} - {r.reason for r in plain} == {BELOW_REASON}
    scans = tmp_path / "scans"
    shutil.copytree(run / "scans", scans)
    (scans / "sub" / HOSTILE[0]).unlink()
    queue = write_queue(run / "results.csv", scans, tmp_path / "out")
    assert "file not found" in queue.html.read_text(encoding="utf-8")


def test_a_file_that_is_not_a_results_csv_is_one_clear_error(tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ClassifyError, match="not a results CSV"):
        read_queue(other)
    result = run_cli("review", str(other), str(tmp_path), "--out-dir", str(tmp_path / "q"))
    assert result.returncode != 0 and "not a results CSV" in result.stderr
    assert "Traceback" not in result.stderr


def test_review_command_writes_the_queue_of_a_finished_run(run: Path, tmp_path: Path) -> None:
    result = run_cli(
        "review", str(run / "results.csv"), str(run / "scans"), "--out-dir", str(tmp_path), "--limit", "3"
    )
    assert result.returncode == 0, result.stderr
    assert "review queue:" in result.stdout
    assert (tmp_path / "review.html").is_file() and (tmp_path / "review.csv").is_file()


def _browser() -> object:
    """Headless Chromium through Selenium, or a skip that says what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no browser: install Debian's chromium and chromium-driver to run this test")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(options=options, service=Service(driver))


def test_page_in_a_real_browser_shows_every_image_and_hostile_names_as_text(run: Path) -> None:
    """Opened from disk in Chromium: every embedded image decodes, no name became markup."""
    browser = _browser()
    from selenium.webdriver.common.by import By

    try:
        browser.get((run / "review" / "review.html").resolve().as_uri())  # type: ignore[attr-defined]
        images = browser.find_elements(By.TAG_NAME, "img")  # type: ignore[attr-defined]
        queued = _rows(run / "review" / "review.csv")
        assert len(images) == 2 * len(queued)
        for img in images:
            assert browser.execute_script(  # type: ignore[attr-defined]
                "return arguments[0].complete && arguments[0].naturalWidth > 0", img
            )
        assert browser.find_elements(By.TAG_NAME, "script") == []  # type: ignore[attr-defined]
        assert browser.find_elements(By.CSS_SELECTOR, "td.path b") == []  # type: ignore[attr-defined]
        shown = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "td.path")]  # type: ignore[attr-defined]
        for name in HOSTILE:
            assert f"sub/{name}" in shown, (name, shown)
    finally:
        browser.quit()  # type: ignore[attr-defined]


def test_classify_cli_writes_the_queue_with_its_run(run: Path, tmp_path: Path) -> None:
    result = run_cli(
        "classify", str(run / "scans"), "--out", str(tmp_path / "results.csv"), "--workers", "1",
        "--review-queue", str(tmp_path / "queue"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "review queue:" in result.stdout
    assert _rows(tmp_path / "queue" / "review.csv") == _rows(run / "review" / "review.csv")


def test_bad_queue_inputs_are_one_clear_line(run: Path, tmp_path: Path) -> None:
    """A folder given as the results CSV, or a queue folder that cannot be made: one line, no
    traceback; classify refuses the queue folder before it classifies anything."""
    one_clear_line(
        run_cli("review", str(run), str(run / "scans"), "-o", str(tmp_path / "q")), "cannot read it"
    )
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_cli(
        "classify", str(run / "scans"), "--out", str(tmp_path / "r.csv"), "--review-queue", str(blocker / "q")
    )
    one_clear_line(result, "cannot create the review queue folder")
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "r.csv.partial").exists()
