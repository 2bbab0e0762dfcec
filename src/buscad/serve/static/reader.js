// buscad reader-study page: a reader's session and the organiser's panel.
"use strict";

const $ = (id) => document.getElementById(id);
const rs = { reader: null, current: null, shownAt: null };

async function api(url, opts) {
  const r = await fetch(url, opts);
  if (!r.ok) throw new Error(await apiError(r));
  return r.json();
}

function post(url, body) {
  return api(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

async function refreshStudy() {
  const s = await api("/api/study");
  const st = $("study-status");
  if (!s.enabled) {
    st.textContent = "Reader-study mode is off: start the server with --study-db PATH.";
    $("create-form").hidden = true;
    return s;
  }
  if (!s.exists) {
    st.textContent = "No study yet: create one from a manifest.";
    $("create-form").hidden = false;
    $("organiser").open = true;
    return s;
  }
  $("create-form").hidden = true;
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

async function createStudy() {
  try {
    const res = await post("/api/study", {
      manifest: $("manifest").value,
      washout_days: Number($("washout").value),
      seed: Number($("seed").value),
    });
    setMessage($("org-msg"), "Created study " + res.study_id + " with " + res.n_cases + " cases.", "ok");
  } catch (e) {
    setMessage($("org-msg"), e.message, "error");
  }
  await refreshStudy();
}

async function start() {
  const id = $("reader-id").value.trim();
  if (!id) return;
  try {
    const s = await post("/api/study/sessions", { reader_id: id });
    rs.reader = id;
    localStorage.setItem("buscad-reader", id);
    $("session").textContent = (s.new ? "Enrolled " : "Resuming ") + id + ".";
    await nextCase();
  } catch (e) {
    setMessage($("reader-msg"), e.message, "error");
  }
  refreshStudy();
}

function clearCase() {
  $("read-form").hidden = true;
  $("ai-panel").hidden = true;
  $("opacity-row").hidden = true;
  $("round").hidden = true;
  $("position").textContent = "";
  $("stage").classList.add("empty");
  $("heat-img").style.display = "none";
}

async function nextCase() {
  let s;
  try {
    s = await api("/api/study/readers/" + encodeURIComponent(rs.reader) + "/next");
  } catch (e) {
    setMessage($("reader-msg"), e.message, "error");
    return;
  }
  rs.current = s.case;
  if (!s.case) {
    clearCase();
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
  for (const r of document.querySelectorAll("input[name=birads]")) r.checked = false;
  $("give-confidence").checked = false;
  $("confidence").disabled = true;
  $("confidence-value").textContent = "–";
  const img = $("base-img");
  img.onload = () => {
    $("stage").classList.remove("empty");
    $("read-form").hidden = false;
    rs.shownAt = performance.now();
  };
  img.src = c.image_url + "?t=" + Date.now();
  const heat = $("heat-img");
  if (c.ai) {
    $("ai-panel").hidden = false;
    $("score").textContent = pct(c.ai.ai_score);
    $("threshold").textContent = "Decision threshold " + pct(c.ai.threshold);
    showBand(c.ai, $("band"), $("band-note"));
    fillModels(document.querySelector("#models tbody"), c.ai);
    if (c.ai.heatmap_url) {
      heat.src = c.ai.heatmap_url;
      heat.style.display = "block";
      $("opacity-row").hidden = false;
    }
  } else {
    $("ai-panel").hidden = true;
    $("opacity-row").hidden = true;
    heat.style.display = "none";
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
    await post("/api/study/readers/" + encodeURIComponent(rs.reader) + "/reads", {
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
  refreshStudy();
}

document.addEventListener("DOMContentLoaded", () => {
  bindOpacity($("opacity"), $("opacity-value"), $("heat-img"));
  $("start").addEventListener("click", start);
  $("create").addEventListener("click", createStudy);
  $("read-form").addEventListener("submit", submitRead);
  $("give-confidence").addEventListener("change", (ev) => {
    $("confidence").disabled = !ev.target.checked;
    $("confidence-value").textContent = ev.target.checked ? $("confidence").value : "–";
  });
  $("confidence").addEventListener("input", (ev) => { $("confidence-value").textContent = ev.target.value; });
  const saved = localStorage.getItem("buscad-reader");
  if (saved) $("reader-id").value = saved;
  refreshStudy();
});
