"""The live-captions page in a real headless Chromium (Debian `chromium` + `chromium-driver`).

Driven with Selenium through the system chromedriver: its version is Debian's match for the
system chromium, and Selenium is pure Python (Playwright would need a browser build of its own,
which cannot be downloaded here, and is only loosely compatible with another chromium).
The microphone is Chromium's fake capture device playing a corpus-dev clip (48 kHz stereo WAV
with 2 s of silence after it, `%noloop`). Screenshots go to build/test-artifacts/.
"""
# ruff: noqa: F811  (pytest fixtures imported from http_helpers are redefined as arguments)

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from http_helpers import http_mesh  # noqa: F401  (fixtures)

from support.metrics import normalize, wer

pytestmark = pytest.mark.mesh

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "build" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def words_found(reference: str, hypothesis: str) -> float:
    """Share of the reference's words heard (loose: live streaming is less accurate than offline)."""
    heard = set(normalize(hypothesis).split())
    words = normalize(reference).split()
    return sum(w in heard for w in words) / len(words)


def fake_microphone_wav(source: Path, tmp: Path) -> Path:
    wav = tmp / "mic.wav"
    subprocess.run(
        [
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(source),
            "-af",
            "apad=pad_dur=2",
            "-ar",
            "48000",
            "-ac",
            "2",
            "-c:a",
            "pcm_s16le",
            str(wav),
        ],
        check=True,
    )
    return wav


@pytest.fixture()
def browser_factory():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail(
            "chromium and chromedriver are needed for the browser tests and were not found; "
            "run `make system-deps` (Debian packages chromium and chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers = []

    def start(microphone: Path):
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--window-size=1100,1000",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={microphone}%noloop",
            "--autoplay-policy=no-user-gesture-required",
        ):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.quit()


def wait_for(driver, script: str, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(interval)
    events = driver.execute_script("return window.asrEvents")
    status = driver.execute_script("return document.getElementById('status').textContent")
    raise AssertionError(f"timed out waiting for {script!r}; status {status!r}; events {events}")


@pytest.mark.parametrize("encoding", ["pcm_s16le", "webm"])
def test_microphone_interim_then_final_captions(
    http_mesh, browser_factory, corpus, manifest, tmp_path, encoding
):
    """pcm_s16le: AudioWorklet → 16 kHz s16le; webm: the browser's own MediaRecorder stream,
    decoded by the server's ffmpeg."""
    item = manifest["asr"][0]
    driver = browser_factory(fake_microphone_wav(corpus / item["audio"], tmp_path))
    driver.get(f"{http_mesh.url}/")
    assert driver.find_element("css selector", "#captions").get_attribute("aria-live") == "polite"
    driver.execute_script(f"document.getElementById('encoding').value = '{encoding}'")
    driver.find_element("id", "start").click()
    wait_for(driver, "return window.asrEvents.some(e => e.type === 'interim' && e.text)", 120)
    # Interim text is shown greyed while it may still change.
    interim_colour = driver.execute_script(
        "const el = document.getElementById('interim'); return el.textContent ? getComputedStyle(el).color : 'shown';"
    )
    assert interim_colour in ("rgb(119, 119, 119)", "shown")
    wait_for(driver, "return document.querySelectorAll('#finals .final').length > 0", 120)
    driver.find_element("id", "stop").click()
    wait_for(driver, "return window.asrEvents.some(e => e.type === 'summary')", 60)
    events = driver.execute_script("return window.asrEvents")
    kinds = [e["type"] for e in events]
    assert "error" not in kinds, events
    assert kinds.index("interim") < kinds.index("final")
    finals_text = driver.execute_script(
        "return [...document.querySelectorAll('#finals .final')].map(p => p.lastChild.textContent).join(' ')"
    )
    assert words_found(item["text"], finals_text) >= 0.5 and "bom dia" in finals_text.lower(), (
        finals_text
    )
    colour = driver.execute_script(
        "return getComputedStyle(document.querySelector('#finals .final')).color"
    )
    assert colour == "rgb(0, 0, 0)"
    latency = driver.find_element("id", "latency").text
    assert latency.endswith(" s") and float(latency[:-2]) >= 0
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert events[0] == {"type": "ready", "encoding": encoding}
    driver.save_screenshot(str(ARTIFACTS / f"http-captions-live-{encoding}.png"))
    if encoding == "pcm_s16le":  # the whole page in use (docs/http-captions.png is one of these)
        driver.find_element("id", "file").send_keys(str(corpus / item["audio"]))
        wait_for(
            driver,
            "return document.getElementById('file-text').textContent.length > 0",
            300,
            interval=0.5,
        )
        driver.save_screenshot(str(ARTIFACTS / "http-captions-page.png"))


def test_file_upload_progress_and_srt_download(
    http_mesh, browser_factory, corpus, manifest, tmp_path
):
    item = manifest["dia"][0]
    driver = browser_factory(fake_microphone_wav(corpus / manifest["asr"][0]["audio"], tmp_path))
    driver.get(f"{http_mesh.url}/")
    driver.find_element("id", "file").send_keys(str(corpus / item["audio"]))
    link = wait_for(driver, "return document.getElementById('download-srt')", 300, interval=0.5)
    assert driver.execute_script("return document.getElementById('upload-progress').value") == 100
    assert driver.execute_script("return document.getElementById('job-progress').value") == 100
    wait_for(driver, "return document.getElementById('file-text').textContent.length > 0", 30)
    href = link.get_attribute("href")
    srt = httpx.get(href, timeout=60)
    assert srt.status_code == 200 and srt.headers["content-disposition"].startswith("attachment")
    assert srt.text.startswith("1\n00:00:") and " --> " in srt.text
    cues_text = " ".join(
        line for line in srt.text.splitlines() if line and "-->" not in line and not line.isdigit()
    )
    assert wer([item["text"]], [cues_text]) < 0.4
    for fmt in ("vtt", "json"):
        other = driver.find_element("id", f"download-{fmt}").get_attribute("href")
        assert httpx.get(other, timeout=60).status_code == 200
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "http-captions-file.png"))
