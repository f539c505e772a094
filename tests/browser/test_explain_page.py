"""The web page's explanation controls (target "all", contrast, words or tokens,
faithfulness), in headless Chromium against a real stack of a 3-class tiny
BERT: each control must change the request the page sends, and the page must
show exactly what the API answers for that request."""

from __future__ import annotations

import json

import pytest

from intgrads_zmq.testing.stack import http, running_stack
from tests.browser.test_web_page import (  # noqa: F401 - browser and downloads are fixtures
    browser,
    choose,
    console_errors,
    downloads,
    find,
    find_all,
    save_screenshot,
    wait,
)

pytestmark = pytest.mark.browser

LABELS = ("negative", "neutral", "positive")
TEXT = "a great film, but   the ending wasn't good 👍"
STEPS = 8
METRICS = ["comprehensiveness", "sufficiency", "log_odds"]
# Records the body of every POST the page sends (the page's own fetch runs as usual).
RECORD_REQUESTS = """
    window.sentBodies = [];
    const real = window.fetch;
    window.fetch = (url, init = {}) => {
      if (init.method === "POST" && init.body) window.sentBodies.push(JSON.parse(init.body));
      return real(url, init);
    };
"""


@pytest.fixture(scope="module")
def stack(browser, tmp_path_factory):  # noqa: F811 - the imported fixture
    from intgrads_zmq.testing.tiny_models import make_tiny_bert

    model = make_tiny_bert(tmp_path_factory.mktemp("bert3"), seed=5, labels=LABELS)
    folder = tmp_path_factory.mktemp("explain-stack")
    with running_stack(["--model", str(model), "--name", "tiny3"], folder=folder) as (_, frontend):
        yield frontend


def open_page(driver, stack):
    driver.get(stack.url + "/")
    wait(driver, lambda d: [o.get_attribute("value") for o in find_all(d, "#model option")] == ["tiny3"],
         what="the model list from GET /models")
    driver.execute_script(RECORD_REQUESTS)
    find(driver, "#text").send_keys(TEXT)
    choose(driver, "#steps_mode", "fixed")
    steps = find(driver, "#n_steps")
    steps.clear()
    steps.send_keys(str(STEPS))


def submit(driver):
    """Submit the form; the request body the page sent and the page once it shows the answer."""
    before = driver.execute_script("return window.sentBodies.length")
    find(driver, "#submit").click()
    wait(driver, lambda d: d.execute_script("return window.sentBodies.length") == before + 1, 10, "the request")
    wait(driver, lambda d: find(d, "#submit").is_enabled() and (find(d, "#results").is_displayed()
                                                                 or find(d, "#error").is_displayed()),
         60, "the answer")
    return driver.execute_script("return window.sentBodies[window.sentBodies.length - 1]")


def answer(driver, stack, body):
    """The reply the page rendered, checked against the API's answer to the same body
    (a second computation: equal to float32 rounding)."""
    shown = json.loads(driver.execute_script("return state.resultText"))
    status, _, raw = http("POST", stack.url + "/model/tiny3/?format=json", data=json.dumps(body).encode(),
                          headers={"Content-Type": "application/json"})
    assert status == 200, raw[:300]
    reply = json.loads(raw)
    for key in ("tokens", "words", "word_spans", "target", "target_label", "contrast", "contrast_label"):
        assert shown.get(key) == reply.get(key), key
    for key in ("attributions", "word_attributions"):
        if key in reply:
            assert _flat(shown[key]) == pytest.approx(_flat(reply[key]), rel=1e-5, abs=1e-6), key
    assert ("metrics" in shown) == ("metrics" in reply)
    return shown


def _flat(values):
    return [v for row in values for v in row] if values and isinstance(values[0], list) else values


def scores(elements):
    return [float(e.get_attribute("data-score")) for e in elements]


def check_faithfulness(driver, metrics, label):
    """The table's numbers and the deletion curve are the reply's, for one row."""
    row = find(driver, f'#faithfulness-table tbody tr[data-label="{label}"]')
    for name in METRICS:
        assert float(find(row, f'td[data-metric="{name}"]').get_attribute("title")) == metrics[name]
    removed = find_all(driver, f'#faithfulness svg circle.removed-point[data-label="{label}"]')
    assert [float(p.get_attribute("data-fraction")) for p in removed] == [0.0, *metrics["curve"]["fractions"]]
    assert [float(p.get_attribute("data-value")) for p in removed] == [metrics["full"], *metrics["curve"]["removed"]]
    kept = find_all(driver, f'#faithfulness svg circle.kept-point[data-label="{label}"]')
    assert [float(p.get_attribute("data-value")) for p in kept] == metrics["curve"]["kept"]
    assert len(find_all(driver, f'#faithfulness svg polyline.curve[data-label="{label}"]')) == 2


def test_each_control_changes_the_request_and_what_the_page_shows(browser, stack):  # noqa: F811
    driver = browser
    open_page(driver, stack)
    assert [o.text for o in find_all(driver, "#target option")] == ["predicted", *LABELS, "all classes"]
    assert [o.text for o in find_all(driver, "#contrast option")] == ["none", *LABELS]
    assert find(driver, "#aggregate").get_attribute("value") == "tokens"
    assert not find(driver, "#metrics").is_selected()

    # The defaults ask for none of the new options.
    body = submit(driver)
    assert not {"target", "contrast", "aggregate", "metrics"} & set(body)
    reply = answer(driver, stack, body)
    assert len(find_all(driver, "#tokens .token")) == len(reply["tokens"])
    assert find(driver, "#tokens").get_attribute("data-unit") == "token"
    assert not find(driver, "#faithfulness").is_displayed()

    # A target against a contrast, per word, with faithfulness.
    choose(driver, "#target", "positive")
    assert not find(driver, '#contrast option[value="positive"]').is_enabled()  # not its own contrast
    choose(driver, "#contrast", "negative")
    choose(driver, "#aggregate", "words")
    find(driver, "#metrics").click()
    body = submit(driver)
    assert {k: body[k] for k in ("target", "contrast", "aggregate", "metrics")} == {
        "target": "positive", "contrast": "negative", "aggregate": "words", "metrics": METRICS}
    reply = answer(driver, stack, body)
    assert reply["contrast_label"] == "negative" and reply["target_label"] == "positive"
    chips = find_all(driver, "#tokens .token")
    assert [c.text for c in chips] == reply["words"]
    assert scores(chips) == reply["word_attributions"]
    spans = [c.get_attribute("data-span") for c in chips]
    assert spans == [",".join(map(str, s)) if s else None for s in reply["word_spans"]]
    assert "wasn't" in reply["words"] and "👍" in reply["words"]  # words of the text, not pieces
    assert find(driver, "#attributions-title").text == "Attributions per word"
    assert "logit[positive] − logit[negative]" in find(driver, "#explains").text
    prediction = find(driver, "#prediction")
    assert "rather than negative" in find(prediction, ".headline").text
    assert find(prediction, "li.contrast").get_attribute("data-label") == "negative"
    assert "logit[positive] − logit[negative]" in find(driver, "#completeness").text
    assert find(driver, "#faithfulness").is_displayed()
    check_faithfulness(driver, reply["metrics"], "positive")
    note = find(driver, "#faithfulness-note").text
    assert "“[MASK]”" in note and "p(target) − p(contrast)" in note
    from selenium.webdriver import ActionChains

    ActionChains(driver).move_to_element(chips[1]).perform()
    detail = find(driver, "#token-detail").text
    assert reply["words"][1] in detail and repr(reply["word_attributions"][1])[:8] in detail
    print("screenshot:", save_screenshot(driver, "explain_contrast_words.png"))

    # Every class: no contrast, one heatmap row, faithfulness row and curve per class.
    choose(driver, "#target", "all")
    assert not find(driver, "#contrast").is_enabled()
    body = submit(driver)
    assert body["target"] == "all" and "contrast" not in body and body["aggregate"] == "words"
    reply = answer(driver, stack, body)
    rows = find_all(driver, "#tokens .class-row")
    assert [r.get_attribute("data-label") for r in rows] == list(LABELS)
    for k, row in enumerate(rows):
        assert scores(find_all(row, ".token")) == reply["word_attributions"][k]
        check_faithfulness(driver, reply["metrics"][k], LABELS[k])
    assert len(find_all(driver, "#faithfulness-table tbody tr")) == len(LABELS)
    assert len(find_all(driver, "#integrand svg polyline.curve")) == len(LABELS)
    assert len(find_all(driver, "#integrand svg circle.point")) == len(LABELS) * STEPS
    assert [e.get_attribute("textContent") for e in find_all(driver, "#score-table thead th")][2:] == list(LABELS)
    assert "every class" in find(driver, "#prediction .headline").text
    explained = [li.get_attribute("data-label") for li in find_all(driver, "#prediction li.explained")]
    assert explained == list(LABELS)
    completeness = find(driver, "#completeness").text
    assert all(label in completeness for label in LABELS) and "Σ attributions" in completeness
    print("screenshot:", save_screenshot(driver, "explain_all_classes.png"))

    # Back to tokens and no metrics: the per-class rows show the token scores.
    choose(driver, "#aggregate", "tokens")
    find(driver, "#metrics").click()
    body = submit(driver)
    assert "aggregate" not in body and "metrics" not in body and body["target"] == "all"
    reply = answer(driver, stack, body)
    rows = find_all(driver, "#tokens .class-row")
    for k, row in enumerate(rows):
        assert scores(find_all(row, ".token")) == reply["attributions"][k]
    assert not find(driver, "#faithfulness").is_displayed()

    # Nothing sticks out sideways on a phone's width, per-class rows included.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    try:
        wait(driver, lambda d: d.execute_script(
            "return document.documentElement.scrollWidth <= document.documentElement.clientWidth"), 5,
            "the page to fit a narrow screen")
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert not console_errors(driver)


def test_a_refused_option_marks_its_control(browser, stack):  # noqa: F811
    driver = browser
    open_page(driver, stack)
    # A label the model does not have, as an outdated page would send it.
    driver.execute_script("const c = document.querySelector('#contrast');"
                          "c.add(new Option('gone', 'gone')); c.value = 'gone';")
    body = submit(driver)
    assert body["contrast"] == "gone"
    wait(driver, lambda d: "Field: contrast" in find(d, "#error").text, 20, "the contrast error")
    assert find(driver, "#contrast").get_attribute("aria-invalid") == "true"
    assert not find(driver, "#results").is_displayed()
    choose(driver, "#target", "positive")
    choose(driver, "#contrast", "neutral")
    submit(driver)
    wait(driver, lambda d: find(d, "#results").is_displayed() and not find(d, "#error").is_displayed(), 20,
         "the answer once the contrast is a label")
    assert find(driver, "#contrast").get_attribute("aria-invalid") is None
    assert not console_errors(driver)
