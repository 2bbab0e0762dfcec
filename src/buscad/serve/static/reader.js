// buscad reader-study page: a reader's session and the organiser's panel.
// Tokens travel as "Authorization: Bearer"; they are kept in sessionStorage (this tab only).
"use strict";

const $ = (id) => document.getElementById(id);
const rs = { reader: null, current: null, shownAt: null, urls: [] };
const READER_KEY = "buscad-reader-token";
const ORG_KEY = "buscad-organiser-token";

function authHeaders(key) {
  const t = sessionStorage.getItem(key);
  return t ? { Authorization: "Bearer " + t } : {};
}

async function api(url, key, opts) {
  const o = Object.assign({}, opts || {});
  o.headers = Object.assign({}, o.headers || {}, authHeaders(key));
  const r = await fetch(url, o);
  if (!r.ok) throw new Error(await apiError(r));
  return r;
}

async function getJSON(url, key) {
  return (await api(url, key)).json();
}

async function post(url, key, body) {
  const r = await api(url, key, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return r.json();
}

async function blobURL(url, key) {
  const u = URL.createObjectURL(await (await api(url, key)).blob());
  rs.urls.push(u);
  return u;
}

function freeURLs() {
  for (const u of rs.urls) URL.revokeObjectURL(u);
  rs.urls = [];
}

// ------------------------------------------------------------ organiser
function showTokens(lines) {
  const out = $("token-out");
  out.hidden = lines.length === 0;
  out.textContent = lines.length ? "Shown once; give each reader their link:\n" + lines.join("\n") : "";
}

async function refreshStudy() {
  const hasOrg = !!sessionStorage.getItem(ORG_KEY);
  let s;
  try {
    s = await getJSON("/api/study", hasOrg ? ORG_KEY : null);
  } catch (e) {
    setMessage($("org-msg"), e.message, "error");
    return null;
  }
  const st = $("study-status");
  if (!s.enabled) {
    st.textContent = "Reader-study mode is off: start the server with --study-db PATH.";
    return s;
  }
  if (!hasOrg || s.role !== "organiser") {
    st.textContent = s.exists ? "A study is running." : "No study yet.";
    return s;
  }
  if (!s.exists) {
    st.textContent = s.create_from_web
      ? "No study yet: create one from a manifest in the server's study folder."
      : "No study yet: create it with `buscad reader create` (or start the server with --study-dir).";
    $("create-form").hidden = !s.create_from_web;
    if (s.create_from_web) {
      const sel = $("manifest");
      sel.innerHTML = "";
      for (const name of (await getJSON("/api/study/manifests", ORG_KEY)).manifests) {
        const o = document.createElement("option");
        o.value = o.textContent = name;
        sel.append(o);
      }
    }
    return s;
  }
  $("create-form").hidden = true;
  $("org-panel").hidden = false;
  st.textContent = "Study " + s.study_id + ": " + s.n_cases + " cases, washout " + s.washout_days + " days.";
  const tb = document.querySelector("#progress tbody");
  tb.innerHTML = "";
  for (const r of s.readers) {
    const tr = document.createElement("tr");
    for (const v of [r.reader_id, r.round1_done + "/" + r.n_cases, r.round2_done + "/" + r.n_cases, r.status]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.append(td);
    }
    tb.append(tr);
  }
  return s;
}

async function unlock() {
  const t = $("org-token").value.trim();
  if (t) sessionStorage.setItem(ORG_KEY, t);
  $("org-token").value = "";
  setMessage($("org-msg"), "");
  await refreshStudy();
}

async function createStudy() {
  try {
    const readers = $("readers").value.split(",").map((x) => x.trim()).filter((x) => x);
    const res = await post("/api/study", ORG_KEY, {
      manifest: $("manifest").value,
      washout_days: Number($("washout").value),
      seed: Number($("seed").value),
      readers: readers,
    });
    setMessage($("org-msg"), "Created study " + res.study_id + " with " + res.n_cases + " cases.", "ok");
    showTokens(Object.entries(res.tokens).map(([rid, t]) => rid + ": " + t.link));
  } catch (e) {
    setMessage($("org-msg"), e.message, "error");
  }
  await refreshStudy();
}

async function issueToken() {
  const rid = $("new-reader").value.trim();
  if (!rid) return;
  try {
    const res = await post("/api/study/readers", ORG_KEY, { reader_id: rid });
    showTokens([res.reader_id + ": " + res.link]);
    $("new-reader").value = "";
  } catch (e) {
    setMessage($("org-msg"), e.message, "error");
  }
  await refreshStudy();
}

async function exportCSV() {
  try {
    const r = await api("/api/study/export.csv", ORG_KEY);
    const a = document.createElement("a");
    a.href = URL.createObjectURL(await r.blob());
    a.download = "reads.csv";
    document.body.append(a);
    a.click();
    a.remove();
  } catch (e) {
    setMessage($("org-msg"), e.message, "error");
  }
}

// --------------------------------------------------------------- reader
async function start() {
  const typed = $("reader-token").value.trim();
  if (typed) sessionStorage.setItem(READER_KEY, typed);
  $("reader-token").value = "";
  if (!sessionStorage.getItem(READER_KEY)) {
    setMessage($("reader-msg"), "Open your personal link or paste your token first.", "error");
    return;
  }
  try {
    const s = await post("/api/study/sessions", READER_KEY, {});
    rs.reader = s.reader_id;
    $("session").textContent = "Reader " + s.reader_id + ".";
    await nextCase();
  } catch (e) {
    setMessage($("reader-msg"), e.message, "error");
  }
}

function clearCase() {
  $("read-form").hidden = true;
  $("ai-panel").hidden = true;
  $("opacity-row").hidden = true;
  $("round").hidden = true;
  $("case-warning").hidden = true;
  $("position").textContent = "";
  $("stage").classList.add("empty");
  $("heat-img").style.display = "none";
  $("outline-row").hidden = true;
  $("outline-svg").setAttribute("hidden", "");  // an SVG element has no .hidden property
  $("outline-svg").replaceChildren();
  freeURLs();
}

// Round 2 only: the region the models read (the case's mask, or the segmenter's outline),
// drawn over the image in image pixels; the checkbox shows or hides it.
function showOutline(outline, w, h) {
  const svg = $("outline-svg");
  svg.replaceChildren();
  if (!outline || !outline.polygons.length) return;
  const NS = "http://www.w3.org/2000/svg";
  svg.setAttribute("viewBox", "0 0 " + w + " " + h);
  svg.setAttribute("preserveAspectRatio", "none");
  for (const poly of outline.polygons) {
    const p = document.createElementNS(NS, "polygon");
    p.setAttribute("points", poly.map(([x, y]) => (x + 0.5) + "," + (y + 0.5)).join(" "));
    svg.append(p);
  }
  $("outline-text").textContent = "Region read: " + outline.text + ".";
  $("outline-row").hidden = false;
  svg.toggleAttribute("hidden", !$("show-outline").checked);
}

async function nextCase() {
  let s;
  try {
    s = await getJSON("/api/study/readers/" + encodeURIComponent(rs.reader) + "/next", READER_KEY);
  } catch (e) {
    setMessage($("reader-msg"), e.message, "error");
    return;
  }
  rs.current = s.case;
  clearCase();
  if (!s.case) {
    if (s.status === "done") {
      setMessage($("reader-msg"), "All done: both rounds are complete. Thank you.", "ok");
      $("placeholder").textContent = "Study complete.";
    } else {
      const when = s.round2_opens_at ? new Date(s.round2_opens_at).toLocaleString() : "later";
      setMessage($("reader-msg"), "Round 1 complete. Round 2 (with AI) opens after the washout: " + when + ".", "ok");
      $("placeholder").textContent = "Washout: come back after " + when + ".";
    }
    return;
  }
  const c = s.case;
  setMessage($("reader-msg"), "");
  $("round").hidden = false;
  $("round").textContent = c.round === 1 ? "Round 1: without AI" : "Round 2: with AI";
  $("position").textContent = "Case " + c.position + " of " + c.n_cases;
  const warn = $("case-warning");
  warn.hidden = !(c.warnings && c.warnings.length);
  warn.textContent = c.warnings && c.warnings.length ? "Warning: " + c.warnings.join(" · ") : "";
  for (const r of document.querySelectorAll("input[name=birads]")) r.checked = false;
  $("give-confidence").checked = false;
  $("confidence").disabled = true;
  $("confidence-value").textContent = "–";
  const img = $("base-img");
  img.onload = () => {
    $("stage").classList.remove("empty");
    $("read-form").hidden = false;
    rs.shownAt = performance.now();
    if (c.ai) showOutline(c.ai.outline, img.naturalWidth, img.naturalHeight);
  };
  img.src = await blobURL(c.image_url, READER_KEY);
  const heat = $("heat-img");
  if (c.ai) {
    $("ai-panel").hidden = false;
    $("score").textContent = pct(c.ai.ai_score);
    // the case screen's headline words (model, score, band and call), once
    $("threshold").textContent = c.ai.assessment_text || c.ai.decision_text;
    showBand(c.ai, $("band"), $("band-note"));
    fillModels(document.querySelector("#models tbody"), c.ai);
    if (c.ai.heatmap_url) {
      heat.src = await blobURL(c.ai.heatmap_url, READER_KEY);
      heat.style.display = "block";
      $("opacity-row").hidden = false;
    }
  } else {
    heat.removeAttribute("src");
  }
}

async function submitRead(ev) {
  ev.preventDefault();
  const c = rs.current;
  const choice = document.querySelector("input[name=birads]:checked");
  if (!c || !choice) {
    setMessage($("reader-msg"), "Choose a BI-RADS category first.", "error");
    return;
  }
  $("submit").disabled = true;
  try {
    await post("/api/study/readers/" + encodeURIComponent(rs.reader) + "/reads", READER_KEY, {
      case_id: c.case_id,
      round: c.round,
      birads: choice.value,
      confidence: $("give-confidence").checked ? Number($("confidence").value) : null,
      client_time_s: rs.shownAt === null ? null : (performance.now() - rs.shownAt) / 1000,
    });
    await nextCase();
  } catch (e) {
    setMessage($("reader-msg"), e.message, "error");
  } finally {
    $("submit").disabled = false;
  }
  if (sessionStorage.getItem(ORG_KEY)) refreshStudy();
}

function tokenFromLink() {
  // a personal link ends in #token=...: keep it for this tab, then drop it from the address bar
  const m = /^#token=([A-Za-z0-9_-]{16,256})$/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(READER_KEY, m[1]);
    history.replaceState(null, "", location.pathname + location.search);
    return true;
  }
  return false;
}

document.addEventListener("DOMContentLoaded", () => {
  bindOpacity($("opacity"), $("opacity-value"), $("heat-img"));
  $("start").addEventListener("click", start);
  $("show-outline").addEventListener("change", (ev) => {
    const svg = $("outline-svg");
    svg.toggleAttribute("hidden", !ev.target.checked || !svg.childElementCount);
  });
  $("create").addEventListener("click", createStudy);
  $("org-unlock").addEventListener("click", unlock);
  $("issue").addEventListener("click", issueToken);
  $("export").addEventListener("click", exportCSV);
  $("read-form").addEventListener("submit", submitRead);
  $("give-confidence").addEventListener("change", (ev) => {
    $("confidence").disabled = !ev.target.checked;
    $("confidence-value").textContent = ev.target.checked ? $("confidence").value : "–";
  });
  $("confidence").addEventListener("input", (ev) => { $("confidence-value").textContent = ev.target.value; });
  refreshStudy();
  if (tokenFromLink() || sessionStorage.getItem(READER_KEY)) start();
});
