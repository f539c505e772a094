// The intgrads-zmq web page: a form over the same HTTP API that curl uses.
// Plain ES2020, no dependencies, so it works offline and needs no build step.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const SVG_NS = "http://www.w3.org/2000/svg";
// ColorBrewer RdBu ends: red pushes towards the target label, blue away from it.
const POSITIVE = [178, 24, 43];
const NEGATIVE = [33, 102, 172];
// Completeness is judged relative to F(x) - F(x'); a tiny absolute gap is fine
// even when the difference itself is near zero and the ratio explodes.
const OK_RELATIVE = 0.05;
const OK_ABSOLUTE = 1e-4;
// Which form control to mark when the server names a field.
const FIELD_INPUTS = {
  sequence: "text", sequences: "text", n_steps: "n_steps", method: "method",
  baseline: "baseline", target: "target", tolerance: "tolerance",
  contrast: "contrast", aggregate: "aggregate", metrics: "metrics",
};
// What the faithfulness checkbox asks for.
const METRIC_NAMES = ["comprehensiveness", "sufficiency", "log_odds"];
// One colour per class when every class is explained (lines in the plots).
const CLASS_COLOURS = ["#2f5fb3", "#c2410c", "#15803d", "#7c3aed", "#b91c1c", "#0e7490", "#a16207", "#be185d"];
const classColour = (k) => CLASS_COLOURS[k % CLASS_COLOURS.length];

const state = {
  models: [],
  result: null,      // the parsed JSON reply
  resultText: "",    // the reply verbatim, for the JSON download
  request: null,     // {path, body} of the request the result answers
  controller: null,  // AbortController of the running request
  timer: null,
  progress: null,    // the latest {queued|progress event} of the running request
  scale: 0,          // max |attribution| the colours are normalised by
  units: [],         // the tokens or words shown, as pieces() / wordUnits() give them
  byWord: false,     // the heatmap shows words (aggregate "words")
};

class ApiError extends Error {
  constructor(title, description, { field = null, status = 0, code = null, retryAfter = null } = {}) {
    super(description);
    this.title = title;
    this.description = description;
    this.field = field;
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

// --- HTTP ---------------------------------------------------------------

async function send(url, init) {
  try {
    return await fetch(url, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError("Network error",
      `Could not reach the server (${err.message}). Check that it is running and try again.`);
  }
}

async function readText(response) {
  try {
    return await response.text();
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError("Network error", `The connection broke while reading the answer (${err.message}).`);
  }
}

function parseJSON(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

// Every error body of the API is {code, title, description, field?}; anything
// else (a proxy's HTML page, say) is still reported with its status.
function errorFrom(response, text) {
  const data = parseJSON(text);
  const retry = response.headers.get("Retry-After");
  const extra = { status: response.status, retryAfter: retry };
  if (data && typeof data === "object" && (data.title || data.description)) {
    return new ApiError(String(data.title || `HTTP ${response.status}`), String(data.description || ""),
      { ...extra, field: data.field || null, code: data.code || null });
  }
  const snippet = text.replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim().slice(0, 300);
  return new ApiError(`HTTP ${response.status} ${response.statusText}`.trim(),
    snippet || "The server gave no details.", extra);
}

async function fetchJSON(url, init = {}) {
  const response = await send(url, init);
  const text = await readText(response);
  if (!response.ok) throw errorFrom(response, text);
  const data = parseJSON(text);
  if (data === null || typeof data !== "object") {
    throw new ApiError("Unexpected answer", `The server answered ${response.status} but not with a JSON object.`,
      { status: response.status });
  }
  return { data, text };
}

// POST with Accept: text/event-stream: the server streams "queued" and
// "progress" events, then "result" (the JSON reply) or "error" (the error
// body plus its status). Aborting the fetch closes the connection, and the
// server then cancels the computation. A server (or proxy) that answers
// plain JSON instead is read as before.
async function fetchEvents(url, init, onProgress) {
  const response = await send(url, { ...init, headers: { ...init.headers, Accept: "text/event-stream" } });
  const type = response.headers.get("Content-Type") || "";
  if (!response.ok || !type.startsWith("text/event-stream") || !response.body) {
    const text = await readText(response);
    if (!response.ok) throw errorFrom(response, text);
    const data = parseJSON(text);
    if (data === null || typeof data !== "object") {
      throw new ApiError("Unexpected answer", `The server answered ${response.status} but not with JSON.`,
        { status: response.status });
    }
    return { data, text };
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError("Network error", `The connection broke while reading the answer (${err.message}).`);
    }
    if (chunk.done) break;
    buffer += decoder.decode(chunk.value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const found = parseEvent(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (!found) continue;
      if (found.name === "result") {
        const data = parseJSON(found.data);
        if (data === null || typeof data !== "object") throw new ApiError("Unexpected answer", "The result was not JSON.");
        return { data, text: found.data };
      }
      const data = parseJSON(found.data) || {};
      if (found.name === "error") {
        throw new ApiError(String(data.title || "Error"), String(data.description || ""), {
          status: data.status || 0, field: data.field || null, code: data.code || null,
          retryAfter: data.retry_after || null });
      }
      onProgress(found.name, data);
    }
  }
  throw new ApiError("Connection lost", "The answer stopped before the result arrived; try again.");
}

// One SSE block: "event: name" and "data: ..." lines; comment lines ignored.
function parseEvent(block) {
  let name = null;
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  return name ? { name, data: data.join("\n") } : null;
}

function showProgress(name, data) {
  state.progress = { name, ...data };
}

// The bar and its words, once a request has taken more than a second.
function renderProgress(seconds) {
  const info = state.progress;
  const box = $("#progress");
  if (!info || seconds < 1) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  const bar = $("#progress-bar");
  if (info.name === "queued") {
    bar.removeAttribute("value");  // indeterminate while waiting
    $("#progress-text").textContent = info.position ? `queued, ${info.position} ahead` : "queued, next";
    return;
  }
  if (!info.total) {
    bar.removeAttribute("value");
    $("#progress-text").textContent = "started";
    return;
  }
  bar.value = Math.min(1, info.done / info.total);
  const eta = Number.isFinite(info.eta_seconds) ? `, about ${Math.max(0, info.eta_seconds).toFixed(0)} s left` : "";
  $("#progress-text").textContent = `${info.done} / ${info.total} steps${eta}`;
}

// --- errors -------------------------------------------------------------

function showError(err) {
  const box = $("#error");
  const isApi = err instanceof ApiError;
  const title = isApi ? err.title : "Page error";
  $(".error-title", box).textContent = err.status ? `${title} (HTTP ${err.status})` : title;
  $(".error-description", box).textContent = isApi ? err.description : String(err.message || err);
  const notes = [];
  if (isApi && err.field) notes.push(`Field: ${err.field}`);
  if (isApi && err.retryAfter) notes.push(`The server asks to retry in ${err.retryAfter} s.`);
  $(".error-field", box).textContent = notes.join(" · ");
  $(".error-field", box).hidden = notes.length === 0;
  box.dataset.code = (isApi && err.code) || "";
  box.dataset.field = (isApi && err.field) || "";
  box.hidden = false;
  const input = isApi && err.field && document.getElementById(FIELD_INPUTS[err.field] || "");
  if (input) {
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-errormessage", "error");
  }
  if (!isApi) console.error(err); // a bug in this page: keep the stack for the console
}

function clearError() {
  $("#error").hidden = true;
  for (const input of document.querySelectorAll("[aria-invalid]")) {
    input.removeAttribute("aria-invalid");
    input.removeAttribute("aria-errormessage");
  }
}

// --- models -------------------------------------------------------------

// resetForm: take the model's defaults into the form (not when a later retry
// would overwrite what the user already chose).
async function loadModels(resetForm = true) {
  const select = $("#model");
  const chosen = select.value;
  try {
    const { data } = await fetchJSON("models", { headers: { Accept: "application/json" } });
    state.models = Array.isArray(data.models) ? data.models : [];
    select.replaceChildren();
    for (const model of state.models) {
      const workers = model.workers === 1 ? "1 worker" : `${model.workers ?? 0} workers`;
      select.append(new Option(`${model.name} (${workers})`, model.name));
    }
    if (!state.models.length) select.append(new Option("no model served yet", ""));
    if (data.default_model) select.value = data.default_model;
    if (!resetForm && state.models.some((m) => m.name === chosen)) select.value = chosen;
    applyModel(resetForm);
    return true;
  } catch (err) {
    // The API still has a default model, so the form stays usable.
    select.replaceChildren(new Option("server default", ""));
    showError(err);
    return false;
  }
}

function currentModel() {
  return state.models.find((m) => m.name === $("#model").value) || null;
}

// A model brings its labels, defaults and step limit into the form.
function applyModel(resetForm = true) {
  const model = currentModel();
  if (!model) return;
  const labels = model.labels || [];
  const target = $("#target");
  const previous = target.value;
  target.replaceChildren(new Option("predicted", ""));
  for (const label of labels) target.append(new Option(label, label));
  target.append(new Option("all classes", "all"));
  target.value = labels.includes(previous) || previous === "all" ? previous : "";
  const contrast = $("#contrast");
  const previousContrast = contrast.value;
  contrast.replaceChildren(new Option("none", ""));
  for (const label of labels) contrast.append(new Option(label, label));
  contrast.value = labels.includes(previousContrast) ? previousContrast : "";
  applyTarget();
  const defaults = resetForm ? model.defaults || {} : {};
  if (defaults.baseline) $("#baseline").value = defaults.baseline;
  if (defaults.method) $("#method").value = defaults.method;
  // The page asks for auto steps by default; a server's integer default fills the fixed field.
  if (Number.isInteger(defaults.n_steps)) $("#n_steps").value = defaults.n_steps;
  if (resetForm) $("#steps_mode").value = "auto";
  if (typeof defaults.tolerance === "number") $("#tolerance").value = defaults.tolerance;
  const maxSteps = (model.limits || {}).max_steps;
  if (maxSteps) {
    $("#n_steps").max = maxSteps;
    $("#max-steps").textContent = maxSteps;
    $("#step-budget").textContent = maxSteps;
  }
  applyStepsMode();
}

// "all classes" explains every class, so no contrast; the target itself is no contrast either.
function applyTarget() {
  const target = $("#target").value;
  const contrast = $("#contrast");
  contrast.disabled = target === "all";
  contrast.title = contrast.disabled ? "a contrast needs one target class" : "";
  for (const option of contrast.options) option.disabled = option.value !== "" && option.value === target;
  if (contrast.selectedOptions[0] && contrast.selectedOptions[0].disabled) contrast.value = "";
}

// auto: the tolerance matters and the method is the adaptive rule's own;
// fixed: the number of steps and the method matter.
function applyStepsMode() {
  const auto = $("#steps_mode").value === "auto";
  $("#tolerance-field").hidden = !auto;
  $("#steps-field").hidden = auto;
  $("#method").disabled = auto;
  $("#method").title = auto ? "auto steps use adaptive Gauss–Kronrod" : "";
}

// --- the request --------------------------------------------------------

function buildRequest() {
  const model = $("#model").value;
  const body = { sequence: $("#text").value };
  // An unparsable number reaches the server as null so that its 400 names the field.
  if ($("#steps_mode").value === "auto") {
    body.n_steps = "auto";
    const tolerance = $("#tolerance");
    if (tolerance.validity.badInput) body.tolerance = null;
    else if (tolerance.value.trim() !== "") body.tolerance = Number(tolerance.value);
  } else {
    const steps = $("#n_steps");
    if (steps.validity.badInput) body.n_steps = null;
    else if (steps.value.trim() !== "") body.n_steps = Number(steps.value);
    body.method = $("#method").value;
  }
  body.baseline = $("#baseline").value;
  if ($("#target").value) body.target = $("#target").value;
  const contrast = $("#contrast");
  if (!contrast.disabled && contrast.value) body.contrast = contrast.value;
  if ($("#aggregate").value === "words") body.aggregate = "words";
  if ($("#metrics").checked) body.metrics = [...METRIC_NAMES];
  const path = model ? `model/${encodeURIComponent(model)}/` : "model/";
  return { path, body };
}

function setBusy(busy) {
  $("#submit").disabled = busy;
  $("#form").setAttribute("aria-busy", String(busy));
  $("#spinner").hidden = !busy;
  clearInterval(state.timer);
  state.progress = null;
  $("#progress").hidden = true;
  if (busy) {
    const started = performance.now();
    $("#elapsed").textContent = "0.0";
    state.timer = setInterval(() => {
      const seconds = (performance.now() - started) / 1000;
      $("#elapsed").textContent = seconds.toFixed(1);
      renderProgress(seconds);
    }, 100);
  }
}

async function onSubmit(event) {
  event.preventDefault();
  if (state.controller) return;
  clearError();
  if (!state.models.length) await loadModels(false);
  const request = buildRequest();
  renderCurl(request); // also for a failing request: it is what to report
  state.controller = new AbortController();
  setBusy(true);
  const started = performance.now();
  try {
    const { data, text } = await fetchEvents(`${request.path}?format=json`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request.body),
      signal: state.controller.signal,
    }, showProgress);
    state.result = data;
    state.resultText = text;
    state.request = request;
    clearError(); // e.g. a /models failure that the answer has made moot
    render(data, request, (performance.now() - started) / 1000);
  } catch (err) {
    $("#results").hidden = true;
    if (err.name === "AbortError") {
      showError(new ApiError("Cancelled", "The request was cancelled; the server stopped computing it."));
    } else {
      showError(err);
    }
  } finally {
    state.controller = null;
    setBusy(false);
  }
}

// --- rendering ----------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== null) node.textContent = text;
  return node;
}

// Short human numbers; the exact value is always one hover away.
function fmt(x, digits = 4) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "—";
  if (x === 0) return "0";
  const a = Math.abs(x);
  const text = a >= 1e-3 && a < 1e5 ? String(Number(x.toPrecision(digits))) : x.toExponential(digits - 1);
  return text.replace("-", "−");
}

const signed = (x) => (x > 0 ? "+" : "") + fmt(x);
// Never "-0 %": a value that rounds to zero is shown as zero.
function percent(p, digits = 1) {
  const text = (100 * p).toFixed(digits);
  return `${Number(text) === 0 ? (0).toFixed(digits) : text.replace("-", "−")} %`;
}

function render(data, request, seconds) {
  $("#results").hidden = false;
  const timings = data.timings || {};
  $("#summary").textContent = [
    `model ${data.model || request.path}`,
    `${data.method}, ${data.n_steps} steps, baseline ${data.baseline}`,
    `computed in ${fmt(timings.compute_seconds, 3)} s (round trip ${seconds.toFixed(2)} s)`,
  ].join(" · ");
  renderAccuracy(data);
  renderPrediction(data);
  renderCompleteness(data);
  renderTokens(data);
  renderFaithfulness(data);
  renderIntegrand(data);
  $("#download-status").textContent = "";
  $("#results-title").focus();
}

// The reply explains one function (a target, perhaps against a contrast) or,
// for target "all", one per class; every per-class value is then a list in
// class order. One row per explained function, whatever the case.
function explainedRows(data) {
  const everyClass = Array.isArray(data.target);
  const pick = (value, k) => (everyClass ? (Array.isArray(value) ? value[k] : undefined) : value);
  const targets = everyClass ? data.target : [data.target];
  const hasWords = Array.isArray(data.words);
  return targets.map((target, k) => ({
    index: k,
    target,
    label: pick(data.target_label, k),
    attributions: pick(data.attributions, k) || [],
    words: hasWords ? pick(data.word_attributions, k) || [] : null,
    fInput: pick(data.f_input, k),
    fBaseline: pick(data.f_baseline, k),
    sum: pick(data.attribution_sum, k),
    error: pick(data.completeness_error, k),
    relative: pick(data.relative_completeness_error, k),
    integrand: pick(data.path_integrand, k) || [],
    errorEstimate: pick(data.error_estimate, k),
    completeness: pick(data.completeness, k),
    metrics: data.metrics ? pick(data.metrics, k) || null : null,
  }));
}

const hasContrast = (data) => data.contrast_label !== undefined && data.contrast_label !== null;

// F, the function a row explains, in words.
function explainedFunction(data, row) {
  return hasContrast(data) ? `logit[${row.label}] − logit[${data.contrast_label}]` : `logit[${row.label}]`;
}

// The largest of some values, or null when one is missing (not finite).
function worst(values) {
  return values.length && values.every(Number.isFinite) ? Math.max(...values) : null;
}

// For n_steps "auto": the steps paid, the error estimate against the
// tolerance (the worst class's when every class is explained), and a plain
// warning when the tolerance was not met.
function renderAccuracy(data) {
  const line = $("#accuracy");
  const warning = $("#tolerance-warning");
  const auto = data.requested_steps === "auto";
  line.hidden = !auto;
  warning.hidden = !auto || data.converged === true;
  if (!auto) return;
  const rows = explainedRows(data);
  const estimate = worst(rows.map((row) => row.errorEstimate));
  const gap = worst(rows.map((row) => row.completeness));
  const which = rows.length > 1 ? " for the worst class" : "";
  line.textContent = `auto steps: ${data.n_steps} evaluated, ${data.nodes_used} nodes used · estimated error `
    + `${fmt(100 * estimate, 2)} %${which} (tolerance ${fmt(100 * data.tolerance, 2)} %) · completeness gap `
    + `${fmt(100 * gap, 2)} %`;
  warning.textContent = data.converged ? "" : `⚠ Tolerance not met: after ${data.n_steps} steps (the server's `
    + `budget${data.step_budget ? ` of ${data.step_budget}` : ""}) the estimated error is `
    + `${fmt(100 * worst([estimate ?? NaN, gap ?? NaN].filter(Number.isFinite)), 2)} %${which}, above the `
    + `tolerance of ${fmt(100 * data.tolerance, 2)} %. The attributions shown are the best estimate; treat small `
    + "differences between tokens with care, or try another baseline.";
}

function renderPrediction(data) {
  const box = $("#prediction");
  const probabilities = data.probabilities || [];
  const labels = data.labels || probabilities.map((_, i) => String(i));
  const predicted = Number.isInteger(data.predicted) ? data.predicted : probabilities.indexOf(Math.max(...probabilities));
  const explained = new Set(explainedRows(data).map((row) => row.target));
  const headline = $(".headline", box);
  headline.replaceChildren("Predicted ", el("strong", { class: "label", text: labels[predicted] }),
    ` with ${percent(probabilities[predicted])}`);
  if (Array.isArray(data.target)) {
    headline.append(el("br"), "Explaining every class, one row each");
  } else if (hasContrast(data)) {
    headline.append(el("br"), "Explaining ", el("strong", { text: data.target_label }), " rather than ",
      el("strong", { class: "contrast", text: data.contrast_label }));
  } else if (data.target !== predicted) {
    headline.append(el("br"), "Explaining ", el("strong", { text: data.target_label }), " (chosen target)");
  }
  const list = $(".bars", box);
  list.replaceChildren();
  probabilities.forEach((p, i) => {
    const tags = [];
    if (i === predicted) tags.push("predicted");
    if (explained.has(i)) tags.push("explained");
    if (hasContrast(data) && i === data.contrast) tags.push("contrast");
    const fill = el("span", { class: "fill" });
    fill.style.width = `${Math.max(0, Math.min(1, p)) * 100}%`;
    list.append(el("li", { class: tags.join(" "), "data-label": labels[i], "data-probability": String(p) },
      el("span", { class: "bar-label", text: labels[i] }),
      el("span", { class: "bar", role: "presentation" }, fill),
      el("span", { class: "bar-value", text: percent(p) }),
      el("span", { class: "tags", text: tags.join(", ") })));
  });
}

function addsUp(row) {
  const relative = row.relative;
  return row.error <= OK_ABSOLUTE || (Number.isFinite(relative) && relative <= OK_RELATIVE);
}

function renderCompleteness(data) {
  const box = $("#completeness");
  const rows = explainedRows(data);
  const ok = rows.every(addsUp);
  box.dataset.ok = String(ok);
  const verdict = $(".verdict", box);
  const badge = el("span", { class: `badge ${ok ? "ok" : "warn"}`, text: ok ? "✓ OK" : "⚠ Check" });
  if (Array.isArray(data.target)) {
    const off = rows.filter((row) => !addsUp(row)).map((row) => row.label);
    verdict.replaceChildren(badge, " ", ok ? "the attributions of every class add up."
      : `${off.join(", ")}: more than ${percent(OK_RELATIVE, 0)} off; raise n_steps or try gausslegendre.`);
    $(".numbers", box).replaceChildren(
      el("dt", { text: "class" }), el("dd", { text: "Σ attributions · F(x) − F(x′) · error" }),
      ...rows.flatMap((row) => [
        el("dt", { text: row.label, "data-label": row.label }),
        el("dd", { "data-ok": String(addsUp(row)), title: `F(x) = ${row.fInput}, F(x′) = ${row.fBaseline}`,
          text: `${fmt(row.sum, 5)} · ${fmt(row.fInput - row.fBaseline, 5)} · `
            + (Number.isFinite(row.relative) ? `${fmt(100 * row.relative, 2)} %` : fmt(row.error, 2)) }),
      ]));
    return;
  }
  const row = rows[0];
  const delta = row.fInput - row.fBaseline;
  const gap = Number.isFinite(row.relative) ? `relative error ${fmt(100 * row.relative, 2)} %`
    : `absolute error ${fmt(row.error)}`;
  verdict.replaceChildren(badge, " ",
    ok ? `${gap}: the attributions add up.`
      : `${gap}: more than ${percent(OK_RELATIVE, 0)} off; raise n_steps or try gausslegendre.`);
  const what = hasContrast(data) ? `${explainedFunction(data, row)} at the input and at the baseline`
    : `logit of “${row.label}” at the input and at the baseline`;
  const rowsShown = [
    ["Σ attributions", fmt(row.sum, 6), String(row.sum)],
    ["F(x) − F(x′)", fmt(delta, 6), `F(x) = ${row.fInput}, F(x′) = ${row.fBaseline}`],
    ["F(x), F(x′)", `${fmt(row.fInput)}, ${fmt(row.fBaseline)}`, what],
    ["Absolute error", fmt(row.error, 3), String(row.error)],
    ["Relative error", Number.isFinite(row.relative) ? `${fmt(100 * row.relative, 3)} %` : "— (F(x) = F(x′))",
      String(row.relative)],
  ];
  if (hasContrast(data)) rowsShown.unshift(["F", explainedFunction(data, row), "the explained function"]);
  $(".numbers", box).replaceChildren(...rowsShown.flatMap(([term, value, exact]) => [
    el("dt", { text: term }), el("dd", { text: value, title: exact }),
  ]));
}

const isSpecial = (token) => /^(\[[A-Za-z_]+\]|<\/?[A-Za-z_|]+>)$/.test(token);

// Subword pieces read as words: WordPiece marks continuations ("##ing"),
// sentencepiece and byte-level BPE mark word starts ("▁word", "Ġword").
function pieces(tokens) {
  const marker = tokens.some((t) => t.startsWith("▁")) ? "▁" : tokens.some((t) => t.startsWith("Ġ")) ? "Ġ" : null;
  return tokens.map((raw, i) => {
    const special = isSpecial(raw);
    let text = raw;
    let joins = false;
    if (!special && marker) {
      if (raw.startsWith(marker)) text = raw.slice(marker.length);
      else joins = i > 0 && !isSpecial(tokens[i - 1]);
    } else if (!special && raw.startsWith("##") && raw.length > 2) {
      text = raw.slice(2);
      joins = i > 0;
    }
    return { raw, text: text || raw, special, joins };
  });
}

// The words of the text, when the reply has them (aggregate "words"): each
// with its character span, or none for a token the tokenizer added. A word
// that starts where the previous one ends ("film" ",") sits flush against it.
function wordUnits(data) {
  const spans = data.word_spans || [];
  return data.words.map((word, i) => {
    const span = Array.isArray(spans[i]) ? spans[i] : null;
    const before = i > 0 && Array.isArray(spans[i - 1]) ? spans[i - 1] : null;
    return { raw: word, text: word, special: span === null, joins: Boolean(span && before && before[1] === span[0]),
      span };
  });
}

function colourFor(score, scale) {
  // A non-finite score arrives as null (JSON has no NaN): grey, not white.
  if (!Number.isFinite(score)) return { background: "#c9ced4", color: "#1b1f24" };
  const t = scale > 0 ? Math.max(-1, Math.min(1, score / scale)) : 0;
  const end = t >= 0 ? POSITIVE : NEGATIVE;
  const a = Math.abs(t);
  const [r, g, b] = end.map((c) => Math.round(255 + (c - 255) * a));
  return { background: `rgb(${r}, ${g}, ${b})`, color: a > 0.55 ? "#fff" : "#1b1f24" };
}

// One heatmap row per explained function, over tokens or words; every class
// shares one colour scale so that rows compare.
function renderTokens(data) {
  const byWord = Array.isArray(data.words);
  const units = byWord ? wordUnits(data) : pieces(data.tokens || []);
  const rows = explainedRows(data);
  const everyClass = Array.isArray(data.target);
  const scoresOf = (row) => (byWord ? row.words : row.attributions);
  const ignoreSpecial = $("#ignore-special").checked;
  const shown = rows.flatMap((row) => scoresOf(row).filter((_, i) => !(ignoreSpecial && units[i] && units[i].special)));
  const scale = Math.max(0, ...shown.filter(Number.isFinite).map(Math.abs));
  Object.assign(state, { scale, units, byWord });

  $("#attributions-title").textContent = `Attributions per ${byWord ? "word" : "token"}`;
  $("#explains").textContent = everyClass ? "every class, one row each, on one colour scale"
    : hasContrast(data) ? `F = ${explainedFunction(data, rows[0])}` : "";
  $(".legend-min").textContent = fmt(-scale);
  $(".legend-max").textContent = `+${fmt(scale)}`;
  $(".legend-caption").textContent = everyClass
    ? "red: towards the row’s class · blue: against it · colour ∝ score / max |score| of all rows"
    : hasContrast(data)
      ? `red: towards “${data.target_label}” · blue: towards “${data.contrast_label}” · colour ∝ score / max |score|`
      : `blue: against “${data.target_label}” · red: towards it · colour ∝ score / max |score|`;

  const box = $("#tokens");
  box.replaceChildren();
  box.classList.toggle("per-class", everyClass);
  box.dataset.unit = byWord ? "word" : "token";
  for (const row of rows) {
    if (!everyClass) {
      appendChips(box, units, scoresOf(row), scale, row);
      continue;
    }
    const chips = el("div", { class: "class-tokens" });
    appendChips(chips, units, scoresOf(row), scale, row);
    const label = el("span", { class: "class-label", text: row.label });
    label.style.borderColor = classColour(row.index);
    box.append(el("div", { class: "class-row", "data-label": row.label }, label, chips));
  }
  $("#token-detail").textContent = `Hover or focus a ${byWord ? "word" : "token"} to see its exact score.`;
  $("#truncated").hidden = !data.truncated;
  renderTable(units, rows.map(scoresOf), rows, scale, byWord, everyClass);
}

function appendChips(box, units, scores, scale, row) {
  let word = null;
  units.forEach((part, i) => {
    const score = scores[i];
    const { background, color } = colourFor(score, scale);
    const where = part.span ? ` [${part.span[0]}, ${part.span[1]})` : "";
    const span = el("span", {
      class: ["token", part.special && "special", part.joins && "cont", part.span !== undefined && "whole-word"]
        .filter(Boolean).join(" "),
      "data-score": String(score), "data-index": String(i), "data-row": String(row.index), tabindex: "0",
      title: `${part.raw}${where} · ${describeScore(score, scale)}`,
      text: part.text,
    });
    if (part.span) span.dataset.span = part.span.join(",");
    span.style.background = background;
    span.style.color = color;
    if (!part.joins || !word) {
      if (word) box.append(word, " ");
      word = el("span", { class: "word" });
    }
    word.append(span);
  });
  if (word) box.append(word);
}

function renderTable(units, scoreRows, rows, scale, byWord, everyClass) {
  const head = [el("th", { scope: "col", text: "#" }), el("th", { scope: "col", text: byWord ? "Word" : "Token" })];
  if (everyClass) {
    head.push(...rows.map((row) => el("th", { scope: "col", class: "num", text: row.label })));
  } else {
    head.push(el("th", { scope: "col", class: "num", text: "Attribution" }),
      el("th", { scope: "col", text: "Share of max |attr|" }));
  }
  $("#score-table thead").replaceChildren(el("tr", {}, ...head));
  const body = units.map((part, i) => {
    const cells = [el("td", { class: "num", text: String(i) }), el("td", {}, el("code", { text: part.raw }))];
    if (everyClass) {
      cells.push(...scoreRows.map((scores) => el("td", { class: "num", title: String(scores[i]), text: signed(scores[i]) })));
    } else {
      const score = scoreRows[0][i];
      const share = scale > 0 ? score / scale : 0;
      const bar = el("span", { class: `share ${share >= 0 ? "pos" : "neg"}` });
      bar.style.width = `${Math.min(1, Math.abs(share)) * 50}%`;
      cells.push(el("td", { class: "num", title: String(score), text: signed(score) }),
        el("td", {}, el("span", { class: "share-cell" }, el("span", { class: "share-track" }, bar),
          el("span", { class: "share-text", text: percent(share, 0) }))));
    }
    return el("tr", { class: part.special ? "special" : "" }, ...cells);
  });
  $("#score-table tbody").replaceChildren(...body);
}

// The exact score (shortest round-trip text of the float) and its share of the scale.
function describeScore(score, scale) {
  if (!Number.isFinite(score)) return "not a finite number";
  return `${score} (${percent(scale > 0 ? score / scale : 0, 0)} of max |score|)`;
}

function describeToken(span) {
  const index = Number(span.dataset.index);
  const row = explainedRows(state.result)[Number(span.dataset.row) || 0];
  const unit = state.units[index];
  const score = (state.byWord ? row.words : row.attributions)[index];
  const where = unit.span ? ` (characters ${unit.span[0]}–${unit.span[1]})` : "";
  const forClass = Array.isArray(state.result.target) ? ` for “${row.label}”` : "";
  $("#token-detail").textContent = `#${index} “${unit.raw}”${where}${forClass}: ${describeScore(score, state.scale)}`;
}

function niceStep(range, count) {
  const raw = range / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const unit = raw / power;
  return power * (unit <= 1 ? 1 : unit <= 2 ? 2 : unit <= 5 ? 5 : 10);
}

// The frame every plot shares: an SVG at the box's own width (so text stays
// at its real size on any screen), horizontal grid lines with their values,
// vertical ones at xTicks, both axes and their labels.
function plotFrame(box, { low, high, step, xTicks, xTick, xLabel, yLabel, title, desc, idPrefix, height }) {
  const W = Math.round(Math.min(960, Math.max(300, box.clientWidth || 640)));
  const H = W < 480 ? height - 50 : height;
  const m = { left: 64, right: 18, top: 16, bottom: 46 };
  const x = (a) => m.left + a * (W - m.left - m.right);
  const y = (v) => H - m.bottom - ((v - low) / (high - low)) * (H - m.top - m.bottom);
  const plot = svg("svg", {
    viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": `${idPrefix}-svg-title ${idPrefix}-svg-desc`,
    preserveAspectRatio: "xMidYMid meet",
  });
  plot.append(svg("title", { id: `${idPrefix}-svg-title` }, title), svg("desc", { id: `${idPrefix}-svg-desc` }, desc));
  const grid = svg("g", { class: "grid" });
  for (let v = low; v <= high + step / 2; v += step) {
    const value = Math.abs(v) < step * 1e-9 ? 0 : v;
    grid.append(svg("line", { x1: x(0), x2: x(1), y1: y(value), y2: y(value), class: value === 0 ? "zero" : "" }),
      svg("text", { x: m.left - 8, y: y(value) + 4, class: "tick y" }, fmt(value, 3)));
  }
  for (const a of xTicks) {
    grid.append(svg("line", { x1: x(a), x2: x(a), y1: y(high), y2: y(low), class: "v" }),
      svg("text", { x: x(a), y: H - m.bottom + 18, class: "tick x" }, xTick(a)));
  }
  plot.append(grid,
    svg("line", { x1: x(0), x2: x(1), y1: y(low), y2: y(low), class: "axis" }),
    svg("line", { x1: x(0), x2: x(0), y1: y(low), y2: y(high), class: "axis" }),
    svg("text", { x: (x(0) + x(1)) / 2, y: H - 6, class: "axis-label" }, xLabel),
    svg("text", { x: 14, y: (y(low) + y(high)) / 2, class: "axis-label",
      transform: `rotate(-90 14 ${(y(low) + y(high)) / 2})` }, yLabel));
  return { plot, x, y };
}

const polylinePoints = (points) => points.map(([px, py]) => `${px.toFixed(2)},${py.toFixed(2)}`).join(" ");

// g(α)·(x − x′) per step; its weighted sum is the attribution sum, so a
// jagged curve between few samples is a visible sign of too few steps. Every
// class explained: one curve per class, in the class colours.
function renderIntegrand(data) {
  const alphasAll = data.alphas || [];
  const rows = explainedRows(data);
  const everyClass = Array.isArray(data.target);
  // Non-finite steps (null in JSON) are left out rather than drawn at zero.
  const series = rows.map((row) => alphasAll.map((a, i) => [a, row.integrand[i]])
    .filter(([a, v]) => Number.isFinite(a) && Number.isFinite(v)));
  const values = series.flat().map(([, v]) => v);
  const box = $("#integrand .plot");
  let low = Math.min(0, ...values);
  let high = Math.max(0, ...values);
  if (high === low) { high += 1; low -= 1; }
  const step = niceStep(high - low, 4);
  low = Math.floor(low / step) * step;
  high = Math.ceil(high / step) * step;
  const { plot, x, y } = plotFrame(box, {
    low, high, step, xTicks: [0, 0.25, 0.5, 0.75, 1], xTick: String, idPrefix: "integrand", height: 270,
    xLabel: "α  (0 = baseline x′, 1 = input x)", yLabel: "g(α) · (x − x′)", title: "Path integrand against α",
    desc: `${alphasAll.length} steps${everyClass ? `, ${rows.length} classes` : ""}; values from `
      + `${fmt(Math.min(...values))} to ${fmt(Math.max(...values))}.`,
  });
  const radius = alphasAll.length > 80 ? 2 : 3.5;
  series.forEach((steps, k) => {
    const points = steps.map(([a, v]) => [x(a), y(v)]);
    const colour = everyClass ? classColour(k) : null;
    if (points.length) {
      const line = polylinePoints(points);
      if (!everyClass) {
        const zero = y(0).toFixed(2);
        plot.append(svg("polygon", { class: "area",
          points: `${points[0][0].toFixed(2)},${zero} ${line} ${points[points.length - 1][0].toFixed(2)},${zero}` }));
      }
      const curve = svg("polyline", { class: "curve", points: line, "data-label": rows[k].label });
      if (colour) curve.style.stroke = colour;
      plot.append(curve);
    }
    const dots = svg("g", { class: "points" });
    steps.forEach(([a, v], i) => {
      const dot = svg("circle", { class: "point", cx: points[i][0], cy: points[i][1], r: radius,
        "data-alpha": String(a), "data-value": String(v), "data-label": rows[k].label });
      if (colour) dot.style.stroke = colour;
      dot.append(svg("title", {}, `${everyClass ? `${rows[k].label}, ` : ""}step ${i + 1}: α = ${a}, integrand = ${v}`));
      dots.append(dot);
    });
    plot.append(dots);
  });
  if (data.requested_steps === "auto") {
    // Adaptive nodes: a tick under the axis per node shows where the rule refined.
    const marks = svg("g", { class: "node-marks" });
    for (const a of alphasAll) {
      marks.append(svg("line", { class: "node-mark", x1: x(a), x2: x(a), y1: y(low), y2: y(low) + 6 }));
    }
    plot.append(marks);
  }
  box.replaceChildren(plot);
  if (everyClass) box.append(classLegend(rows));
}

function classLegend(rows) {
  return el("p", { class: "plot-legend" }, ...rows.map((row) => {
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = classColour(row.index);
    return el("span", { class: "legend-item", "data-label": row.label }, swatch, row.label);
  }));
}

// --- faithfulness -------------------------------------------------------

const METRIC_TITLES = { comprehensiveness: "Comprehensiveness ↑", sufficiency: "Sufficiency ↓", log_odds: "Log-odds ↓" };

// The numbers the server measured (one row per explained class) and the
// deletion curve: the measured probability as the top-ranked tokens are
// removed (solid) or as only they are kept (dashed).
function renderFaithfulness(data) {
  const card = $("#faithfulness");
  const rows = explainedRows(data).filter((row) => row.metrics && typeof row.metrics === "object");
  card.hidden = rows.length === 0;
  if (!rows.length) return;
  const everyClass = Array.isArray(data.target);
  const names = METRIC_NAMES.filter((name) => rows.some((row) => name in row.metrics));
  $("#faithfulness-table thead").replaceChildren(el("tr", {},
    el("th", { scope: "col", text: everyClass ? "Class" : "Explained" }),
    ...names.map((name) => el("th", { scope: "col", class: "num", text: METRIC_TITLES[name] }))));
  $("#faithfulness-table tbody").replaceChildren(...rows.map((row) => el("tr", { "data-label": row.label },
    el("td", { text: everyClass ? row.label : explainedFunction(data, row) }),
    ...names.map((name) => el("td", { class: "num", "data-metric": name, title: String(row.metrics[name]),
      text: fmt(row.metrics[name]) })))));
  const first = rows[0].metrics;
  const passes = rows.reduce((sum, row) => sum + (row.metrics.forward_passes || 0), 0);
  const seconds = (data.timings && data.timings.metrics_seconds) || 0;
  const measured = first.measure === "probability_difference" ? "p(target) − p(contrast)" : "p(target)";
  $("#faithfulness-note").textContent = `Removed tokens are replaced by “${first.replacement}” · measured on `
    + `${measured} · ${first.ranked_tokens} tokens ranked · ${passes} forward passes in ${fmt(seconds, 3)} s`;
  renderDeletionCurve(rows, everyClass, first.measure === "probability_difference");
}

function renderDeletionCurve(rows, everyClass, difference) {
  const box = $("#faithfulness .plot");
  const curves = rows.filter((row) => row.metrics.curve && (row.metrics.curve.removed || row.metrics.curve.kept));
  if (!curves.length) {
    box.replaceChildren();
    return;
  }
  const low = difference ? -1 : 0;
  const { plot, x, y } = plotFrame(box, {
    low, high: 1, step: difference ? 0.5 : 0.25, xTicks: [0, 0.2, 0.4, 0.6, 0.8, 1],
    xTick: (f) => `${Math.round(100 * f)} %`, idPrefix: "deletion", height: 250,
    xLabel: "top-ranked tokens removed (solid) or kept alone (dashed)",
    yLabel: difference ? "p(target) − p(contrast)" : "p(target)",
    title: "Deletion curve", desc: `The measured probability as the top-ranked tokens are removed or kept alone.`,
  });
  for (const row of curves) {
    const curve = row.metrics.curve;
    const colour = classColour(everyClass ? row.index : 0);
    const series = [];
    if (curve.removed) series.push(["removed", [[0, row.metrics.full], ...curve.fractions.map((f, i) => [f, curve.removed[i]])]]);
    if (curve.kept) series.push(["kept", curve.fractions.map((f, i) => [f, curve.kept[i]])]);
    for (const [kind, points] of series) {
      const finite = points.filter(([, v]) => Number.isFinite(v));
      const line = svg("polyline", { class: `curve ${kind}`, "data-label": row.label,
        points: polylinePoints(finite.map(([f, v]) => [x(f), y(v)])) });
      line.style.stroke = colour;
      plot.append(line);
      const dots = svg("g", { class: `points ${kind}` });
      for (const [f, v] of finite) {
        const dot = svg("circle", { class: `point ${kind}-point`, cx: x(f), cy: y(v), r: 3,
          "data-fraction": String(f), "data-value": String(v), "data-label": row.label });
        dot.style.stroke = colour;
        dot.append(svg("title", {}, `${row.label}: top ${Math.round(100 * f)} % ${kind === "removed" ? "removed" : "kept alone"}: ${v}`));
        dots.append(dot);
      }
      plot.append(dots);
    }
  }
  box.replaceChildren(plot);
  if (everyClass) box.append(classLegend(curves));
}

function shellQuote(text) {
  return `'${text.replace(/'/g, "'\\''")}'`;
}

function renderCurl(request) {
  const url = new URL(request.path, document.baseURI).href;
  $("#curl").textContent = `curl ${url} -H 'Content-Type: application/json' `
    + `-d ${shellQuote(JSON.stringify(request.body))} --output returned_gradients.gzip`;
}

// --- downloads ----------------------------------------------------------

function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30000);
}

async function downloadGzip() {
  if (!state.request) return;
  const button = $("#download-gzip");
  button.disabled = true;
  $("#download-status").textContent = "Preparing the torch dict…";
  clearError();
  try {
    // No ?format: the server's default answer, the gzip'd torch.save dict.
    const response = await send(state.request.path, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/gzip" },
      body: JSON.stringify(state.request.body),
    });
    if (!response.ok) throw errorFrom(response, await readText(response));
    saveBlob(await response.blob(), "returned_gradients.gzip");
    $("#download-status").textContent = "Saved returned_gradients.gzip.";
  } catch (err) {
    $("#download-status").textContent = "";
    showError(err);
  } finally {
    button.disabled = false;
  }
}

function downloadJSON() {
  if (!state.resultText) return;
  saveBlob(new Blob([state.resultText], { type: "application/json" }), "returned_gradients.json");
  $("#download-status").textContent = "Saved returned_gradients.json.";
}

// --- wiring -------------------------------------------------------------

function init() {
  $("#form").addEventListener("submit", onSubmit);
  $("#model").addEventListener("change", () => applyModel());
  $("#steps_mode").addEventListener("change", applyStepsMode);
  $("#cancel").addEventListener("click", () => state.controller && state.controller.abort());
  $("#text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("#form").requestSubmit();
  });
  $("#target").addEventListener("change", applyTarget);
  $("#ignore-special").addEventListener("change", () => state.result && renderTokens(state.result));
  for (const type of ["mouseover", "focusin"]) {
    $("#tokens").addEventListener(type, (event) => {
      const span = event.target.closest(".token");
      if (span) describeToken(span);
    });
  }
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => {
      if (!state.result) return;
      renderIntegrand(state.result);
      renderFaithfulness(state.result);
    }, 150);
  });
  $("#download-gzip").addEventListener("click", downloadGzip);
  $("#download-json").addEventListener("click", downloadJSON);
  renderCurl({ path: "model/", body: { sequence: "a great film" } });
  loadModels();
}

init();
