// Shared helpers for the buscad pages (no external libraries).
"use strict";

function pct(p) {
  return p === null || p === undefined ? "not run" : (100 * p).toFixed(1) + "%";
}

async function apiError(resp) {
  let text = resp.status + " " + resp.statusText;
  try {
    const body = await resp.json();
    if (body && body.detail) {
      text = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    }
  } catch (e) { /* not JSON */ }
  return text;
}

function setMessage(el, text, kind) {
  el.textContent = text || "";
  el.className = "message" + (kind ? " " + kind : "");
}

function fillModels(tbody, result) {
  tbody.innerHTML = "";
  const names = Object.keys(result.model_scores || {});
  for (const m of Object.keys(result.skipped_models || {})) {
    if (!names.includes(m)) names.push(m);
  }
  for (const m of names) {
    const tr = document.createElement("tr");
    const td1 = document.createElement("td");
    // the plain name; the short name (as in bundle.json and summary.csv) as its tooltip
    td1.textContent = ((result.model_labels || {})[m] || m) +
      (m === result.primary_model ? " (gives the AI assessment)" : "") +
      // buscad.labels.READS_READER: the model reads the radiologist's own BI-RADS category
      ((result.reader_models || []).includes(m) ? " (uses the reader's BI-RADS)" : "");
    td1.title = m;
    const td2 = document.createElement("td");
    const s = (result.model_scores || {})[m];
    const why = (result.skipped_models || {})[m];
    const flags = (result.model_flags || {})[m] || [];
    const held = result.withheld && m === result.primary_model ? " (call withheld; for audit only)" : "";
    td2.textContent = pct(s === undefined ? null : s) + held + (why ? " (" + why + ")" : "") +
      (flags.length ? " (study check: " + flags.join("; ") + ")" : "");
    tr.append(td1, td2);
    tbody.append(tr);
  }
}

function showBand(result, bandEl, noteEl) {
  bandEl.textContent = result.band_text;
  noteEl.textContent = result.band.note;
}

function bindOpacity(slider, label, img) {
  const apply = () => {
    img.style.opacity = String(slider.value / 100);
    label.textContent = slider.value + "%";
  };
  slider.addEventListener("input", apply);
  apply();
}
