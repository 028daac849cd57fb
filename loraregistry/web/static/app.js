// loraregistry's pages: copy buttons, and the compose form (submit, live progress, result, gallery).
// Data from the registry is only ever put into the page with textContent and attributes, never as HTML.
"use strict";

function copyByCommand(text) {
  // Plain http on a non-loopback host has no clipboard API: the old way still works there.
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.appendChild(area);
  area.select();
  const ok = document.execCommand("copy");
  area.remove();
  return ok ? Promise.resolve() : Promise.reject(new Error("copy refused"));
}

function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    return navigator.clipboard.writeText(text).catch(() => copyByCommand(text));
  }
  return copyByCommand(text);
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button.copy");
  if (!button) return;
  const text = button.dataset.copy;
  copyText(text).then(() => {
    button.dataset.copied = text;
    button.classList.add("copied");
    setTimeout(() => button.classList.remove("copied"), 1200);
  }, () => { button.classList.add("copy-failed"); });
});

function el(tag, props, text) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  if (text !== undefined) node.textContent = text;
  return node;
}

function setupCompose(form) {
  const $ = (id) => document.getElementById(id);
  const chosen = $("chosen");
  const suggestions = $("lora-search") && $("lora-suggestions");
  const maxLoras = Number(form.dataset.maxLoras || 16);

  function addLora(id, name) {
    if (chosen.querySelector(`li[data-id="${CSS.escape(String(id))}"]`) || chosen.children.length >= maxLoras) return;
    const li = el("li");
    li.dataset.id = id;
    li.append(el("span", {}, name), " ",
      el("input", {type: "number", className: "weight", value: "1", step: "0.05", min: "-4", max: "4"}), " ",
      el("button", {type: "button", className: "remove", ariaLabel: "remove"}, "×"));
    chosen.appendChild(li);
    form.querySelector('input[name="mode"][value="chosen"]').checked = true;
  }

  chosen.addEventListener("click", (event) => {
    if (event.target.classList.contains("remove")) event.target.closest("li").remove();
  });

  let timer = null;
  $("lora-search").addEventListener("input", (event) => {
    clearTimeout(timer);
    const q = event.target.value.trim();
    if (!q) { suggestions.replaceChildren(); return; }
    timer = setTimeout(async () => {
      const response = await fetch(`/api/search?${new URLSearchParams({q, limit: 8, present: "true"})}`);
      if (!response.ok) return;
      const data = await response.json();
      suggestions.replaceChildren(...data.results.map((hit) => {
        const li = el("li", {tabIndex: 0}, `${hit.name} · ${hit.base_family}`);
        li.dataset.id = hit.id;
        li.addEventListener("click", () => { addLora(hit.id, hit.name); suggestions.replaceChildren(); event.target.value = ""; });
        return li;
      }));
    }, 200);
  });

  function body() {
    const num = (id) => { const v = $(id).value; return v === "" ? null : Number(v); };
    const data = {
      prompt: $("prompt").value, negative_prompt: $("negative_prompt").value, method: $("method").value,
      steps: num("steps"), cfg: num("cfg"), seed: num("seed") ?? 0, width: num("width"), height: num("height"),
      keep: num("keep"), loras: [],
    };
    if (form.querySelector('input[name="mode"]:checked').value === "chosen") {
      data.loras = [...chosen.children].map((li) => ({id: li.dataset.id, weight: Number(li.querySelector(".weight").value || 1)}));
    }
    return data;
  }

  function showError(message) {
    $("job").hidden = false;
    $("job-error").hidden = false;
    $("job-error").textContent = message;
    $("job-phase").textContent = "failed";
    $("compose-submit").disabled = false;
  }

  function showStatus(view) {
    $("job-phase").textContent = view.total ? `${view.phase}: step ${view.done} of ${view.total}` : view.phase;
    $("job-progress").max = Math.max(1, view.total);
    $("job-progress").value = view.done;
    $("job").dataset.state = view.state;
  }

  function showResult(result) {
    $("job-result").hidden = false;
    $("result-image").src = result.image_url;
    $("weights-figure").hidden = !result.weights_map_url;
    if (result.weights_map_url) {
      $("result-weights").src = result.weights_map_url;
      const rows = result.report.loras.map((l) => l.name).join(", ");
      $("weights-figure").querySelector("figcaption").textContent = `weight map (rows: ${rows}; columns: steps)`;
    }
    $("result-parameters").textContent = result.parameters;
    const sel = result.report.selection;
    $("result-selection").replaceChildren(...(sel ? sel.candidates : []).map((c) =>
      el("li", {className: c.kept ? "kept" : "dropped"}, `${c.kept ? "kept" : "dropped"} ${c.name}: ${c.reason || ""}`)));
    $("result-link").href = `/results/${result.id}`;
    const shot = el("a", {className: "shot", href: `/results/${result.id}`, title: result.parameters});
    shot.append(el("img", {src: result.image_url, alt: result.report.prompt, className: "pixel"}), el("span", {}, result.report.prompt));
    const empty = $("gallery-empty");
    if (empty) empty.remove();
    $("gallery").prepend(shot);
  }

  function finish(view) {
    showStatus(view);
    $("compose-submit").disabled = false;
    if (view.state === "done") showResult(view.result);
    else showError(view.error || "the job failed");
  }

  function follow(id) {
    // Server-sent events; if the stream breaks, poll instead.
    const source = new EventSource(`/api/jobs/${id}/events`);
    source.onmessage = (message) => {
      const view = JSON.parse(message.data);
      if (view.state === "done" || view.state === "failed") { source.close(); finish(view); }
      else showStatus(view);
    };
    source.onerror = () => { source.close(); poll(id); };
  }

  async function poll(id) {
    const response = await fetch(`/api/jobs/${id}`);
    if (!response.ok) { showError(`status ${response.status}`); return; }
    const view = await response.json();
    if (view.state === "done" || view.state === "failed") finish(view);
    else { showStatus(view); setTimeout(() => poll(id), 500); }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    $("compose-submit").disabled = true;
    $("job").hidden = false;
    $("job-error").hidden = true;
    $("job-result").hidden = true;
    $("job-phase").textContent = "submitting";
    const response = await fetch("/api/jobs", {method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(body())});
    const data = await response.json().catch(() => ({}));
    if (response.status === 429) { showError("The compose queue is full: try again in a moment."); return; }
    if (!response.ok) {
      const detail = Array.isArray(data.detail) ? data.detail.map((d) => `${d.loc.slice(1).join(".")}: ${d.msg}`).join("; ") : data.detail;
      showError(detail || `error ${response.status}`);
      return;
    }
    $("job").dataset.jobId = data.id;
    showStatus(data);
    follow(data.id);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("compose-form");
  if (form) setupCompose(form);
});
