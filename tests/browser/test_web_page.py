"""The web page at GET /, driven in a real headless Chromium against the real
stack (broker, worker, gunicorn): the heatmap must show exactly what the API
returns for the same request, and every failure must reach the user."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import re
import time
from pathlib import Path

import pytest

from intgrads_zmq.testing.stack import REPO, http, running_stack

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = REPO / "artifacts"
TEXT = "a great film with wonderful acting, but the ending was boring."
STEPS = 16
CHROME_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-quic", "--window-size=1280,1000")
# Chromium logs every 4xx/5xx and offline fetch itself; those are expected here.
EXPECTED_CONSOLE = re.compile(r"Failed to load resource|ERR_INTERNET_DISCONNECTED|Failed to fetch")


def _missing_browser() -> str | None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    return f"headless browser test needs {', '.join(missing)}" if missing else None


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(tmp_path_factory, downloads):
    reason = _missing_browser()
    if reason:
        print(f"SKIPPED: {reason}")  # visible with -s; -ra prints the reason too
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in CHROME_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chrome-profile')}")
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    # Headless Chromium ignores the download prefs unless told over CDP.
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def stack(browser, tiny_bert_dir, tmp_path_factory):
    # Depends on browser so that a missing Chromium skips before any process starts.
    folder = tmp_path_factory.mktemp("web-stack")
    with running_stack(["--model", str(tiny_bert_dir), "--name", "tiny"], folder=folder) as (_, frontend):
        yield frontend


def wait(driver, condition, timeout=30.0, what="condition"):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The page rebuilds elements (options, results) while it is being polled.
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=ignored).until(
        condition, f"timed out waiting for {what}")


def find(driver, css):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def find_all(driver, css):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def open_page(driver, stack):
    driver.get(stack.url + "/")
    wait(driver, lambda d: [o.get_attribute("value") for o in find_all(d, "#model option")] == ["tiny"],
         what="the model list from GET /models")


def choose(driver, css, value):
    from selenium.webdriver.support.ui import Select

    Select(find(driver, css)).select_by_value(value)


def rgb(style: str) -> tuple[int, ...]:
    return tuple(int(v) for v in re.findall(r"\d+", style)[:3])


def save_screenshot(driver, name):
    """Full-page PNG under artifacts/ (git-ignored) for a human to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path = ARTIFACTS / name
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def console_errors(driver):
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and not EXPECTED_CONSOLE.search(e["message"])]


def wait_for_file(path: Path, timeout=20.0) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        partial = list(path.parent.glob("*.crdownload"))
        if path.exists() and not partial and path.stat().st_size:
            return path.read_bytes()
        time.sleep(0.05)
    raise AssertionError(f"{path.name} was not downloaded; folder has {os.listdir(path.parent)}")


def test_heatmap_matches_the_api_and_the_page_reports_everything(browser, stack, downloads):
    driver = browser
    open_page(driver, stack)
    assert find(driver, "#baseline").get_attribute("value") == "pad"  # the model's default
    assert find(driver, "#n_steps").get_attribute("max") == "300"
    assert [o.text for o in find_all(driver, "#target option")] == ["predicted", "negative", "positive", "all classes"]
    # auto steps are the page's default; a fixed number is one choice away.
    assert find(driver, "#steps_mode").get_attribute("value") == "auto"
    assert find(driver, "#tolerance").is_displayed() and not find(driver, "#n_steps").is_displayed()
    assert not find(driver, "#method").is_enabled()

    find(driver, "#text").send_keys(TEXT)
    choose(driver, "#steps_mode", "fixed")
    assert find(driver, "#n_steps").is_displayed() and not find(driver, "#tolerance").is_displayed()
    steps = find(driver, "#n_steps")
    steps.clear()
    steps.send_keys(str(STEPS))
    choose(driver, "#target", "positive")
    choose(driver, "#method", "gausslegendre")
    choose(driver, "#baseline", "pad")
    find(driver, "#submit").click()
    wait(driver, lambda d: find(d, "#results").is_displayed() and find_all(d, "#tokens .token"), what="the heatmap")

    body = {"sequence": TEXT, "n_steps": STEPS, "method": "gausslegendre", "baseline": "pad", "target": "positive"}
    status, _, raw = http("POST", stack.url + "/model/tiny/?format=json", data=json.dumps(body).encode(),
                          headers={"Content-Type": "application/json"})
    assert status == 200, raw[:300]
    api = json.loads(raw)

    # One coloured span per token, holding exactly the API's score.
    spans = find_all(driver, "#tokens .token")
    assert len(spans) == len(api["tokens"]) == len(api["attributions"])
    scores = [float(s.get_attribute("data-score")) for s in spans]
    assert scores == pytest.approx(api["attributions"], abs=1e-6)
    top = max(range(len(scores)), key=lambda i: abs(scores[i]))
    for i, span in enumerate(spans):
        assert api["tokens"][i] in span.get_attribute("title")
        r, _, b = rgb(span.value_of_css_property("background-color"))
        if abs(scores[i]) > 0.05 * abs(scores[top]):  # red for positive, blue for negative
            assert (r > b) == (scores[i] > 0), (api["tokens"][i], scores[i], r, b)
    assert rgb(spans[top].value_of_css_property("background-color")) in {(178, 24, 43), (33, 102, 172)}
    assert "special" in spans[0].get_attribute("class") and spans[0].text == "[CLS]"
    # Subword pieces join into words: WordPiece continues with "##", sentencepiece starts with "▁".
    shown = driver.execute_script("return [pieces(arguments[0]), pieces(arguments[1])]",
                                  ["[CLS]", "un", "##believ", "##able", "film", "[SEP]"],
                                  ["▁un", "believ", "able", "▁film", "<sep>", "<cls>"])
    assert [(p["text"], p["joins"], p["special"]) for p in shown[0]] == [
        ("[CLS]", False, True), ("un", False, False), ("believ", True, False), ("able", True, False),
        ("film", False, False), ("[SEP]", False, True)]
    assert [(p["text"], p["joins"], p["special"]) for p in shown[1]] == [
        ("un", False, False), ("believ", True, False), ("able", True, False), ("film", False, False),
        ("<sep>", False, True), ("<cls>", False, True)]
    assert "−" in find(driver, ".legend-min").text and find(driver, ".legend-max").text.startswith("+")

    # Prediction, with the explained target marked.
    predicted = max(range(len(api["probabilities"])), key=api["probabilities"].__getitem__)
    prediction = find(driver, "#prediction")
    assert api["labels"][predicted] in find(prediction, ".headline").text
    assert find(prediction, "li.predicted").get_attribute("data-label") == api["labels"][predicted]
    assert find(prediction, "li.explained").get_attribute("data-label") == "positive"
    assert len(find_all(prediction, ".bars li")) == 2 and "%" in prediction.text

    # Completeness: the verdict and the numbers it rests on.
    completeness = find(driver, "#completeness")
    ok = api["completeness_error"] <= 1e-4 or (api["relative_completeness_error"] or 1) <= 0.05
    assert completeness.get_attribute("data-ok") == str(ok).lower()
    assert ("OK" if ok else "Check") in find(completeness, ".verdict").text
    assert "Σ attributions" in completeness.text and "F(x) − F(x′)" in completeness.text

    # The integrand plot: one point per step, at the API's alphas.
    points = find_all(driver, "#integrand svg circle.point")
    assert len(points) == STEPS == len(api["path_integrand"])
    assert [float(p.get_attribute("data-alpha")) for p in points] == pytest.approx(api["alphas"])
    assert "α" in find(driver, "#integrand svg").text

    # Hover a token: its exact score is spelled out.
    from selenium.webdriver import ActionChains

    ActionChains(driver).move_to_element(spans[top]).perform()
    assert repr(api["attributions"][top])[:8] in find(driver, "#token-detail").text

    # Both downloads repeat the same request.
    find(driver, "#download-json").click()
    saved = json.loads(wait_for_file(downloads / "returned_gradients.json"))
    assert saved["attributions"] == pytest.approx(api["attributions"], abs=1e-6)
    find(driver, "#download-gzip").click()
    import torch

    grads = torch.load(io.BytesIO(gzip.decompress(wait_for_file(downloads / "returned_gradients.gzip"))))
    assert grads["tokens"] == api["tokens"]
    assert tuple(grads["integrated_gradients"].shape) == (1, len(api["tokens"]), 32)
    assert grads["intermediate_gradients"].shape[0] == STEPS

    find(driver, "#table-details summary").click()
    assert len(find_all(driver, "#score-table tbody tr")) == len(api["tokens"])
    ActionChains(driver).move_to_element(spans[top]).perform()
    print("screenshot:", save_screenshot(driver, "web_page.png"))
    # A phone's viewport (a headless window cannot be made that narrow): nothing
    # may stick out sideways.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    try:
        time.sleep(0.4)  # the plot redraws at the new width after a short debounce
        assert driver.execute_script(
            "return document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        print("screenshot:", save_screenshot(driver, "web_page_narrow.png"))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert not console_errors(driver)


def test_auto_steps_show_steps_used_error_estimate_and_nodes(browser, stack):
    driver = browser
    open_page(driver, stack)
    find(driver, "#text").send_keys(TEXT)
    find(driver, "#submit").click()
    wait(driver, lambda d: find(d, "#results").is_displayed() and find_all(d, "#tokens .token"), what="the result")
    body = {"sequence": TEXT, "n_steps": "auto", "tolerance": 0.01, "baseline": "pad"}
    status, _, raw = http("POST", stack.url + "/model/tiny/?format=json", data=json.dumps(body).encode(),
                          headers={"Content-Type": "application/json"})
    assert status == 200, raw[:300]
    api = json.loads(raw)
    accuracy = find(driver, "#accuracy").text
    assert f"{api['n_steps']} evaluated" in accuracy and f"{api['nodes_used']} nodes used" in accuracy
    assert "estimated error" in accuracy and "tolerance 1 %" in accuracy
    assert api["converged"] and not find(driver, "#tolerance-warning").is_displayed()
    assert len(find_all(driver, "#integrand svg line.node-mark")) == api["nodes_used"]
    points = find_all(driver, "#integrand svg circle.point")
    assert [float(p.get_attribute("data-alpha")) for p in points] == pytest.approx(api["alphas"])

    # The tiny model's integrand from a zero baseline is too sharp for 1e-4 in 300 steps.
    choose(driver, "#baseline", "zero")
    tolerance = find(driver, "#tolerance")
    tolerance.clear()
    tolerance.send_keys("0.0001")
    find(driver, "#submit").click()
    wait(driver, lambda d: find(d, "#tolerance-warning").is_displayed(), 60, "the tolerance warning")
    warning = find(driver, "#tolerance-warning").text
    assert "Tolerance not met" in warning and "0.01 %" in warning
    print("screenshot:", save_screenshot(driver, "web_page_auto.png"))
    assert not console_errors(driver)


def test_empty_text_shows_the_servers_error_with_a_spinner_meanwhile(browser, stack):
    driver = browser
    open_page(driver, stack)
    # Slow every request down so the spinner can be seen; the request itself is real.
    driver.execute_script("""
        const real = window.fetch;
        window.fetch = (...args) => new Promise((r) => setTimeout(r, 1200)).then(() => real(...args));
    """)
    find(driver, "#text").clear()
    find(driver, "#submit").click()
    wait(driver, lambda d: find(d, "#spinner").is_displayed(), 5, "the spinner")
    assert not find(driver, "#submit").is_enabled()
    wait(driver, lambda d: float(find(d, "#elapsed").text) >= 0.3, 5, "the elapsed seconds")
    wait(driver, lambda d: find(d, "#error").is_displayed(), 20, "the error message")
    error = find(driver, "#error")
    assert "Bad request (HTTP 400)" in error.text
    assert "'sequence' is empty" in error.text and "Field: sequence" in error.text
    assert find(driver, "#text").get_attribute("aria-invalid") == "true"
    assert not find(driver, "#spinner").is_displayed() and find(driver, "#submit").is_enabled()
    assert not find(driver, "#results").is_displayed()
    print("screenshot:", save_screenshot(driver, "web_page_error.png"))
    assert not console_errors(driver)


def test_other_errors_reach_the_user(browser, stack):
    driver = browser
    open_page(driver, stack)
    find(driver, "#text").send_keys("a great film")
    # A model the server does not have: its 404 is shown as given.
    driver.execute_script("document.querySelector('#model').add(new Option('nope', 'nope'), 0);"
                          "document.querySelector('#model').value = 'nope';")
    find(driver, "#submit").click()
    wait(driver, lambda d: find(d, "#error").is_displayed(), 20, "the 404 message")
    assert "Unknown model (HTTP 404)" in find(driver, "#error").text
    assert find(driver, "#error").get_attribute("data-code") == "unknown_model"

    # An option out of range names its field and marks the input.
    choose(driver, "#model", "tiny")
    tolerance = find(driver, "#tolerance")
    tolerance.clear()
    tolerance.send_keys("2")
    find(driver, "#submit").click()
    wait(driver, lambda d: "Field: tolerance" in find(d, "#error").text, 20, "the tolerance error")
    assert find(driver, "#tolerance").get_attribute("aria-invalid") == "true"
    choose(driver, "#steps_mode", "fixed")
    steps = find(driver, "#n_steps")
    steps.clear()
    steps.send_keys("100000")
    find(driver, "#submit").click()
    wait(driver, lambda d: "Field: n_steps" in find(d, "#error").text, 20, "the n_steps error")
    assert find(driver, "#n_steps").get_attribute("aria-invalid") == "true"

    # No network at all.
    steps.clear()
    steps.send_keys("4")
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    try:
        find(driver, "#submit").click()
        wait(driver, lambda d: "Network error" in find(d, "#error").text, 20, "the network error")
        assert find(driver, "#submit").is_enabled()
    finally:
        driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    find(driver, "#submit").click()
    wait(driver, lambda d: find_all(d, "#tokens .token") and not find(d, "#error").is_displayed(), 20,
         "recovery once the network is back")
    assert len(find_all(driver, "#integrand svg circle.point")) == 4
    assert not console_errors(driver)


@pytest.fixture(scope="module")
def slow_stack(browser, tiny_bert_dir, tmp_path_factory):
    """A stack whose requests run many small chunks, so a long one can be watched and cancelled."""
    folder = tmp_path_factory.mktemp("web-slow-stack")
    with running_stack(["--model", str(tiny_bert_dir), "--name", "tiny", "--memory-budget", "4MiB",
                        "--max-steps", "3000"], folder=folder) as running:
        yield running


def test_a_long_request_shows_progress_and_cancel_stops_the_worker(browser, slow_stack):
    broker, frontend = slow_stack
    open_page(browser, frontend)
    # ~120 tokens x 3000 steps in chunks of a few steps: tens of seconds, far longer than the
    # second after which the page shows its progress bar.
    find(browser, "#text").send_keys(" ".join(["a great film with wonderful acting"] * 20))
    choose(browser, "#steps_mode", "fixed")
    steps = find(browser, "#n_steps")
    steps.clear()
    steps.send_keys("3000")
    choose(browser, "#method", "riemann_trapezoid")  # no node table to build before the first chunk
    find(browser, "#submit").click()
    wait(browser, lambda d: re.search(r"\d+ / 3000 steps", find(d, "#progress-text").text), 30,
         "the progress bar counting steps")
    assert find(browser, "#progress").is_displayed()
    assert float(find(browser, "#progress-bar").get_attribute("value") or 0) >= 0
    before = broker.status()["counters"].get("requests_cancelled", 0)
    find(browser, "#cancel").click()
    wait(browser, lambda d: broker.status()["workers"][0]["state"] == "idle", 30,
         "the worker to stop computing after Cancel")
    assert broker.status()["counters"].get("requests_cancelled", 0) == before + 1
    wait(browser, lambda d: "cancel" in find(d, "#error").text.lower(), 10, "the page to say it was cancelled")
    save_screenshot(browser, "progress-cancelled")
