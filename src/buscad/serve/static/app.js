// buscad case page: open an image, mark the lesion, see the AI result, print or save the report.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, box: null, natural: null, drag: null, info: null, maskEdge: null,
  // the segmenter's outline proposed for this image ({polygons, token, maskBlob, confidence,
  // predictedDice, flagged, threshold, mode, accepted}); outlineSeq drops answers that arrive
  // after the case changed
  outline: null, outlining: false, outlineSeq: 0, whole: false };
const OUTLINE_COLOUR = "#00e5ff"; // buscad.serve.imaging.OUTLINE_RGB

// While a reader study is served with --open-case-screen, this page's API needs the
// organiser's token: the one entered on /reader in this tab (sessionStorage), if any.
function organiserAuth() {
  const t = sessionStorage.getItem("buscad-organiser-token");
  return t ? { Authorization: "Bearer " + t } : {};
}

function outlineAvailable() {
  return !!(state.info && state.info.outline_available);
}

async function loadInfo() {
  const r = await fetch("/api/info");
  state.info = await r.json();
  const i = state.info;
  $("model-line").textContent = "Bundle " + i.bundle.name + (i.bundle.version ? " (" + i.bundle.version + ")" : "") +
    " · threshold " + pct(i.threshold) + " · uploads up to " + i.max_upload_mb + " MB" +
    (i.training ? " · " + i.training : "");
  // what the bundle is, first: the phantom banner and the study's checks (docs/safety.md)
  const top = [i.banner, i.flags_text].filter(Boolean);
  $("bundle-banner").hidden = !top.length;
  $("bundle-banner").textContent = top.join(" · ");
  const box = $("clinical");
  box.innerHTML = "";
  const inputs = i.inputs || [];
  if (inputs.length) {
    const h = document.createElement("h2");
    h.textContent = "Clinical and ultrasound findings (optional)";
    box.append(h);
    const hint = document.createElement("p");
    hint.className = "hint";
    hint.textContent = "The models that read these use what you give; anything left empty is not used.";
    box.append(hint);
    for (const f of inputs) {
      const lab = document.createElement("label");
      lab.className = "input-row";
      lab.title = f.name;
      const span = document.createElement("span");
      span.textContent = f.label;
      let inp;
      if (f.choices) {
        inp = document.createElement("select");
        const none = document.createElement("option");
        none.value = "";
        none.textContent = "not given";
        inp.append(none);
        for (const c of f.choices) {
          const o = document.createElement("option");
          o.value = c;
          o.textContent = f.name === "birads" ? "BI-RADS " + c.toUpperCase() : c;
          inp.append(o);
        }
      } else {
        inp = document.createElement("input");
        inp.type = "text";
        inp.size = 8;
        if (f.name === "age") inp.inputMode = "numeric";
      }
      inp.dataset.clinical = f.name;
      inp.id = "clinical-" + f.name;
      lab.append(span, inp);
      box.append(lab);
    }
  }
  $("lesion-hint").textContent = i.outline_available
    ? "When an image opens, the bundle's segmenter outlines the lesion (cyan). Accept the outline, " +
      "or redraw it: drag a box around the lesion to outline it inside the box, upload a mask, or " +
      "use the whole image."
    : "Drag on the image to draw a box around the lesion, or upload its mask. " +
      "Automatic outlining is unavailable for this bundle (it has no lesion segmenter).";
}

// ------------------------------------------------------------------ outline
function outlineText() {
  const o = state.outline;
  if (!o) return "";
  const where = o.mode === "box" ? "inside your box" : "automatic";
  const conf = o.predictedDice != null
    ? "predicted Dice " + o.predictedDice.toFixed(2)
    : "segmenter confidence " + o.confidence.toFixed(2);
  const head = "Outline (" + where + ", " + conf + ")";
  if (o.flagged && !o.accepted) {
    return head + ": FLAGGED, it may be wrong" +
      (o.threshold != null ? " (predicted Dice below " + o.threshold.toFixed(2) + ")" : "") +
      ". Check it against the lesion, or drag a box around the lesion to redraw it, before Analyse.";
  }
  if (o.flagged) return head + ": flagged; you checked and accepted it; the models will read it.";
  return head + (o.accepted ? ": accepted; the models will read it." : ": proposed; accept it or redraw it.");
}

function updateOutlinePanel() {
  const panel = $("outline-panel");
  panel.hidden = !outlineAvailable() || !state.natural;
  panel.classList.toggle("flagged", !!(state.outline && state.outline.flagged));
  $("outline-status").textContent = state.outlining ? "Outlining the lesion…"
    : state.outline ? outlineText()
    : state.whole ? "Whole image: the models will read the whole image."
    : state.outlineNote || "";
  $("accept-outline").disabled = !state.outline || state.outline.accepted;
  $("accept-outline").textContent = state.outline && state.outline.accepted ? "Outline accepted"
    : state.outline && state.outline.flagged ? "I checked it: accept outline" : "Accept outline";
  $("auto-outline").disabled = state.outlining || !state.file;
  $("whole-image").disabled = state.outlining || !state.file;
  updateAnalyse();
}

function updateAnalyse() {
  // the models never read an outline the user has not seen and accepted
  $("analyse").disabled = !state.file || !state.natural || state.outlining ||
    !!(state.outline && !state.outline.accepted);
}

function b64Blob(b64, type) {
  const bin = atob(b64);
  const arr = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) arr[i] = bin.charCodeAt(i);
  return new Blob([arr], { type: type });
}

// Ask the server for the segmenter's outline: automatic, or inside `box` (image pixels).
async function requestOutline(box) {
  if (!outlineAvailable() || !state.file) return;
  const seq = ++state.outlineSeq;
  state.outline = null;
  state.whole = false;
  state.outlineNote = "";
  state.outlining = true;
  resetResult();
  updateOutlinePanel();
  drawBox();
  const fd = new FormData();
  fd.append("image", state.file);
  if (box) fd.append("box", box.join(","));
  let res = null;
  let err = null;
  try {
    const r = await fetch("/api/outline", { method: "POST", body: fd, headers: organiserAuth() });
    if (r.ok) res = await r.json(); else err = await apiError(r);
  } catch (e) {
    err = "The outline could not be computed: " + e.message;
  }
  if (seq !== state.outlineSeq) return; // another image or box since
  state.outlining = false;
  if (err) {
    state.outlineNote = "No automatic outline: " + err;
    setMessage($("message"), err, "error");
  } else if (res.found) {
    state.outline = {
      polygons: res.polygons, token: res.outline_token, confidence: res.confidence, mode: res.mode,
      predictedDice: res.predicted_dice, flagged: !!res.outline_flagged, threshold: res.flag_threshold,
      maskBlob: b64Blob(res.mask_png, "image/png"), box: res.box, accepted: false,
    };
    if (res.outline_flagged) {
      setMessage($("message"), "This outline is flagged as possibly wrong (predicted Dice " +
        res.predicted_dice.toFixed(2) + "). Check it, or drag a box around the lesion to redraw it, " +
        "before Analyse.", "error");
    } else {
      setMessage($("message"), "The lesion is outlined in cyan (dashed until you accept it). " +
        "Accept the outline, or drag a box around the lesion to outline it again inside the box.");
    }
  } else {
    state.outlineNote = box
      ? "No lesion found inside the box: the box itself will be read."
      : "No lesion found by the segmenter: draw a box around the lesion, upload a mask, or analyse the whole image.";
    state.whole = !box;
    setMessage($("message"), state.outlineNote);
  }
  updateOutlinePanel();
  drawBox();
}

function acceptOutline() {
  if (!state.outline) return;
  state.outline.accepted = true;
  setMessage($("message"), "Outline accepted: Analyse runs every model on it.", "ok");
  updateOutlinePanel();
  drawBox();
}

function useWholeImage() {
  state.outlineSeq++;
  state.outlining = false;
  state.outline = null;
  state.box = null;
  state.maskEdge = null;
  $("mask-input").value = "";
  state.whole = true;
  state.outlineNote = "";
  resetResult();
  updateBoxText();
  updateOutlinePanel();
  drawBox();
  setMessage($("message"), "No outline: the models will read the whole image.");
}

function drawOutline(ctx, sx, sy) {
  const o = state.outline;
  if (!o) return;
  ctx.save();
  ctx.strokeStyle = OUTLINE_COLOUR;
  ctx.lineWidth = o.accepted ? 2.5 : 2;
  ctx.setLineDash(o.accepted ? [] : [6, 4]);
  ctx.shadowColor = "rgba(0,0,0,.8)";
  ctx.shadowBlur = 2;
  for (const poly of o.polygons) {
    if (!poly.length) continue;
    ctx.beginPath();
    poly.forEach(([x, y], k) => {
      const px = (x + 0.5) * sx, py = (y + 0.5) * sy;
      if (k === 0) ctx.moveTo(px, py); else ctx.lineTo(px, py);
    });
    ctx.closePath();
    ctx.stroke();
  }
  ctx.restore();
}

function resetResult() {
  $("results").hidden = true;
  $("heat-img").removeAttribute("src");
  $("heat-img").style.display = "none";
}

function showWarnings(list) {
  const w = $("image-warning");
  w.hidden = !(list && list.length);
  w.textContent = list && list.length ? "Warning: " + list.join(" · ") : "";
}

// A new case starts from a clean slate: nothing of the previous patient's case is kept
// (mask file, box, clinical and lexicon inputs, result, warnings).
function clearCase() {
  resetResult();
  state.file = null;
  state.box = null;
  state.drag = null;
  state.natural = null;
  state.maskEdge = null;
  state.outlineSeq++;
  state.outline = null;
  state.outlining = false;
  state.outlineNote = "";
  state.whole = false;
  $("mask-input").value = "";
  for (const inp of document.querySelectorAll("[data-clinical]")) inp.value = "";
  showWarnings([]);
  updateBoxText();
  updateOutlinePanel();
  drawBox();
}

async function openImage(file) {
  clearCase();
  state.file = file;
  setMessage($("message"), "Reading image…");
  const fd = new FormData();
  fd.append("image", file);
  const r = await fetch("/api/preview", { method: "POST", body: fd, headers: organiserAuth() });
  if (!r.ok) {
    state.file = null;
    $("analyse").disabled = true;
    setMessage($("message"), await apiError(r), "error");
    return;
  }
  try {
    showWarnings(JSON.parse(r.headers.get("X-Buscad-Warnings") || "[]"));
  } catch (e) { showWarnings([]); }
  const blob = await r.blob();
  const img = $("base-img");
  img.onload = () => {
    state.natural = { w: img.naturalWidth, h: img.naturalHeight };
    $("stage").classList.remove("empty");
    sizeCanvas();
    setMessage($("message"), "Image " + state.natural.w + "×" + state.natural.h +
      ". Draw a box around the lesion, upload a mask, or analyse the whole image.");
    updateOutlinePanel();
    if (outlineAvailable()) requestOutline(null);
  };
  img.src = URL.createObjectURL(blob);
}

function sizeCanvas() {
  const img = $("base-img");
  const c = $("draw");
  c.width = img.clientWidth;
  c.height = img.clientHeight;
  drawBox();
}

function toImage(ev) {
  const c = $("draw");
  const rect = c.getBoundingClientRect();
  const sx = state.natural.w / rect.width;
  const sy = state.natural.h / rect.height;
  return {
    x: Math.max(0, Math.min(state.natural.w, (ev.clientX - rect.left) * sx)),
    y: Math.max(0, Math.min(state.natural.h, (ev.clientY - rect.top) * sy)),
  };
}

function drawBox() {
  const c = $("draw");
  const ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  if (state.maskEdge && state.natural) {
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(state.maskEdge, 0, 0, c.width, c.height);
  }
  if (!state.natural) return;
  const sx = c.width / state.natural.w;
  const sy = c.height / state.natural.h;
  drawOutline(ctx, sx, sy);
  const b = state.drag || state.box;
  if (!b) return;
  ctx.strokeStyle = "#00e676";
  ctx.lineWidth = 2;
  ctx.strokeRect(Math.min(b[0], b[2]) * sx, Math.min(b[1], b[3]) * sy,
    Math.abs(b[2] - b[0]) * sx, Math.abs(b[3] - b[1]) * sy);
}

function updateBoxText() {
  $("box-text").textContent = state.box
    ? "Box: " + state.box.map((v) => Math.round(v)).join(", ")
    : "No box drawn.";
}

function bindDrawing() {
  const c = $("draw");
  c.addEventListener("pointerdown", (ev) => {
    if (!state.natural) return;
    const p = toImage(ev);
    state.drag = [p.x, p.y, p.x, p.y];
    c.setPointerCapture(ev.pointerId);
  });
  c.addEventListener("pointermove", (ev) => {
    if (!state.drag) return;
    const p = toImage(ev);
    state.drag[2] = p.x;
    state.drag[3] = p.y;
    drawBox();
  });
  c.addEventListener("pointerup", () => {
    if (!state.drag) return;
    const b = state.drag;
    state.drag = null;
    const box = [Math.min(b[0], b[2]), Math.min(b[1], b[3]), Math.max(b[0], b[2]), Math.max(b[1], b[3])];
    state.box = box[2] - box[0] >= 4 && box[3] - box[1] >= 4 ? box.map(Math.round) : null;
    updateBoxText();
    drawBox();
    // redraw: the segmenter outlines the lesion inside the new box (unless a mask was uploaded)
    if (state.box && outlineAvailable() && !$("mask-input").files[0]) requestOutline(state.box);
  });
  window.addEventListener("resize", () => state.natural && sizeCanvas());
  $("clear-box").addEventListener("click", () => {
    state.box = null;
    updateBoxText();
    if (state.outline && state.outline.mode === "box") {
      state.outline = null;
      state.outlineNote = "Box cleared: outline the lesion again, or use the whole image.";
      updateOutlinePanel();
    }
    drawBox();
  });
}

// Outline an uploaded mask on the image (its edge pixels), after checking its size.
async function openMask(file) {
  state.maskEdge = null;
  drawBox();
  if (!file || !state.natural) return;
  // an uploaded mask replaces the automatic outline
  state.outlineSeq++;
  state.outlining = false;
  state.outline = null;
  state.whole = false;
  state.outlineNote = "Your mask (yellow) replaces the automatic outline.";
  resetResult();
  updateOutlinePanel();
  let bmp;
  try {
    bmp = await createImageBitmap(file);
  } catch (e) {
    $("mask-input").value = "";
    setMessage($("message"), "The mask could not be read as an image.", "error");
    return;
  }
  const { w, h } = state.natural;
  if (bmp.width !== w || bmp.height !== h) {
    $("mask-input").value = "";
    setMessage($("message"), "This mask is " + bmp.width + "×" + bmp.height + " but the image is " +
      w + "×" + h + ": choose the mask of this image.", "error");
    return;
  }
  const src = document.createElement("canvas");
  src.width = w;
  src.height = h;
  const sctx = src.getContext("2d");
  sctx.drawImage(bmp, 0, 0);
  const px = sctx.getImageData(0, 0, w, h).data;
  const on = (x, y) => x >= 0 && y >= 0 && x < w && y < h &&
    (px[4 * (y * w + x)] + px[4 * (y * w + x) + 1] + px[4 * (y * w + x) + 2]) > 0;
  const edge = sctx.createImageData(w, h);
  let n = 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (on(x, y) && (!on(x - 1, y) || !on(x + 1, y) || !on(x, y - 1) || !on(x, y + 1))) {
        const i = 4 * (y * w + x);
        edge.data[i] = 255; edge.data[i + 1] = 214; edge.data[i + 2] = 0; edge.data[i + 3] = 255;
        n++;
      }
    }
  }
  if (n === 0) {
    $("mask-input").value = "";
    setMessage($("message"), "This mask is blank: no lesion pixel in it.", "error");
    return;
  }
  sctx.putImageData(edge, 0, 0);
  state.maskEdge = src;
  setMessage($("message"), "Mask outlined in yellow; it is the region the models will read.");
  drawBox();
}

function formData() {
  const fd = new FormData();
  fd.append("image", state.file);
  const mask = $("mask-input").files[0];
  const o = state.outline;
  if (mask) {
    fd.append("mask", mask);
  } else if (o && o.accepted) {
    // the outline the user accepted, with the token that records it as the segmenter's
    fd.append("mask", o.maskBlob, "outline.png");
    fd.append("outline_token", o.token);
  } else if (state.box) {
    fd.append("box", state.box.join(","));
  }
  // the server's segmenter never outlines behind the user's back: what is read is what is shown
  if (outlineAvailable() && !mask && !(o && o.accepted)) fd.append("auto_outline", "false");
  const clinical = {};
  for (const inp of document.querySelectorAll("[data-clinical]")) {
    const v = inp.value.trim();
    if (v === "") continue;
    // a chosen value is sent as the text the models learnt; a typed number as a number
    clinical[inp.dataset.clinical] = inp.tagName !== "SELECT" && !isNaN(Number(v)) ? Number(v) : v;
  }
  if (Object.keys(clinical).length) fd.append("clinical", JSON.stringify(clinical));
  return fd;
}

async function analyse() {
  if (!state.file) return;
  $("analyse").disabled = true;
  setMessage($("message"), "Analysing…");
  try {
    const r = await fetch("/api/predict", { method: "POST", body: formData(), headers: organiserAuth() });
    if (!r.ok) {
      setMessage($("message"), await apiError(r), "error");
      return;
    }
    const res = await r.json();
    showResult(res);
    showWarnings(res.warnings);
    setMessage($("message"), "Done (" + Math.round(Object.values(res.timings_ms || {}).reduce((a, b) => a + b, 0)) + " ms).", "ok");
  } finally {
    updateAnalyse();
  }
}

function showResult(res) {
  $("results").hidden = false;
  // the banner and the cautions come first; a withheld call shows no score, band or call
  $("result-banner").hidden = !res.banner;
  $("result-banner").textContent = res.banner || "";
  // withheld: the headline's first words, then its cautions as a list (the same words)
  $("assessment").textContent = res.withheld ? res.assessment_text.split(": ")[0] + ":" : res.assessment_text;
  $("assessment").className = "assessment" + (res.withheld ? " withheld" : res.cautions && res.cautions.length ? " unreliable" : "");
  const cl = $("cautions");
  cl.innerHTML = "";
  for (const c of res.cautions || []) {
    const li = document.createElement("li");
    li.textContent = c;
    cl.append(li);
  }
  cl.hidden = !(res.withheld && res.cautions && res.cautions.length);
  $("score-box").hidden = !!res.withheld;
  $("band-box").hidden = !!res.withheld;
  $("score").textContent = pct(res.ai_score);
  const primary = (res.model_labels || {})[res.primary_model] || res.primary_model;
  $("threshold").textContent = "Decision threshold " + pct(res.threshold) + " (" + primary + ")";
  const dec = $("decision");
  dec.textContent = res.decision_text;
  dec.className = "decision " + res.decision;
  $("borderline").hidden = !res.borderline;
  $("borderline").textContent = res.borderline ? res.borderline.charAt(0).toUpperCase() + res.borderline.slice(1) : "";
  showBand(res, $("band"), $("band-note"));
  const note = $("roi-note");
  note.hidden = !res.roi_note;
  note.textContent = res.roi_note || "";
  $("roi-text").textContent = "Region read: " + res.roi_text + ".";
  $("others-text").textContent = "Other models: " + (res.others_text || "");
  fillModels(document.querySelector("#models tbody"), res);
  const heat = $("heat-img");
  if (res.heatmap_png) {
    heat.src = "data:image/png;base64," + res.heatmap_png;
    heat.style.display = "block";
  } else {
    heat.style.display = "none";
  }
  if (res.roi_source === "mask" || res.roi_source === "auto" || res.roi_source === "whole") {
    state.drag = null;
  }
}

async function fetchReport(format) {
  const fd = formData();
  const exam = $("exam").value.trim();
  if (exam) fd.append("exam", exam);  // typed by the user, never read from the DICOM header
  const r = await fetch("/api/report?format=" + format, {
    method: "POST", body: fd, headers: organiserAuth() });
  if (!r.ok) {
    setMessage($("message"), await apiError(r), "error");
    return null;
  }
  return r;
}

async function saveReport(format) {
  const r = await fetchReport(format);
  if (!r) return;
  const cd = r.headers.get("Content-Disposition") || "";
  const m = /filename="([^"]+)"/.exec(cd);
  const a = document.createElement("a");
  a.href = URL.createObjectURL(await r.blob());
  a.download = m ? m[1] : "buscad-report." + format;
  document.body.append(a);
  a.click();
  a.remove();
}

async function printReport() {
  const r = await fetchReport("html");
  if (!r) return;
  const frame = $("print-frame");
  frame.srcdoc = await r.text();
  frame.onload = () => frame.contentWindow.print();
}

document.addEventListener("DOMContentLoaded", () => {
  loadInfo();
  bindDrawing();
  bindOpacity($("opacity"), $("opacity-value"), $("heat-img"));
  $("image-input").addEventListener("change", (ev) => ev.target.files[0] && openImage(ev.target.files[0]));
  $("mask-input").addEventListener("change", (ev) => openMask(ev.target.files[0]));
  $("analyse").addEventListener("click", analyse);
  $("accept-outline").addEventListener("click", acceptOutline);
  $("auto-outline").addEventListener("click", () => {
    state.box = null;
    updateBoxText();
    state.maskEdge = null;
    $("mask-input").value = "";
    requestOutline(null);
  });
  $("whole-image").addEventListener("click", useWholeImage);
  $("save-html").addEventListener("click", () => saveReport("html"));
  $("save-pdf").addEventListener("click", () => saveReport("pdf"));
  $("print-report").addEventListener("click", printReport);
});
