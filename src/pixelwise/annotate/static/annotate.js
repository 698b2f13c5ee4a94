// pixelwise annotate: the labelling page. Plain JavaScript, no build step.
//
// The mask lives here as one class index per pixel (Uint8Array, row by row) and is sent to
// the server as raw bytes after every finished change (a stroke, a polygon, an accepted
// proposal, an undo), one save at a time, so a closed tab loses at most the stroke in progress.
"use strict";

const $ = (id) => document.getElementById(id);
const API = "v1/annotate";
const MAX_UNDO_BYTES = 200e6;

const S = {
  project: null, images: [], name: null, width: 0, height: 0,
  labels: null,               // Uint8Array(W*H): the mask being edited
  photo: null,                // offscreen canvas with the image
  maskCanvas: null, maskData: null,
  proposalCanvas: null,
  proposal: null,             // {kind: "object", classId, mask: Uint8Array(W*H)} or {kind: "labels", labels}
  prompt: { box: null, points: [], scribbles: [] },
  classId: 1, tool: "box", brush: 6, opacity: 0.55, lastOpacity: 0.55,
  view: { scale: 1, ox: 0, oy: 0 },
  undo: [], redo: [],
  drag: null, polygon: [], cursor: null, spaceDown: false,
  edits: 0, savedEdits: 0, saving: false, loadToken: 0, proposalToken: 0,
};

// ---------------------------------------------------------------- helpers

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function api(path, options = {}) {
  const response = await fetch(`${API}/${path}`, options);
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { const body = await response.json(); if (body.error) message = body.error.message; } catch (e) { /* not JSON */ }
    const err = new Error(message);
    err.status = response.status;
    throw err;
  }
  return response;
}

const json = async (path, options) => (await api(path, options)).json();
const post = (path, body) => json(path, { method: "POST", headers: { "content-type": "application/json" },
                                          body: JSON.stringify(body || {}) });

function rgbOf(hex) { return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)); }
function colour(classId) { return S.project.classes[classId] ? rgbOf(S.project.classes[classId].color) : [255, 0, 255]; }

// ---------------------------------------------------------------- project, list, progress

async function loadProject() {
  S.project = await json("project");
  $("root").textContent = S.project.root;
  const list = $("classes");
  list.innerHTML = "";
  S.project.classes.forEach((c) => {
    const li = document.createElement("li");
    li.dataset.id = c.id;
    li.innerHTML = `<span class="swatch" style="background:${c.color}"></span><span class="name"></span>` +
                   `<span class="key">${c.id >= 1 && c.id <= 9 ? c.id : c.id === 0 ? "E" : ""}</span>`;
    li.querySelector(".name").textContent = c.name;
    li.addEventListener("click", () => (c.id === 0 ? setTool("eraser") : setClass(c.id)));
    list.appendChild(li);
  });
  const method = $("method");
  const chosen = method.value || "auto";
  method.innerHTML = "";
  S.project.methods.forEach((m) => { const o = document.createElement("option"); o.value = o.textContent = m; method.appendChild(o); });
  method.value = S.project.methods.includes(chosen) ? chosen : "auto";
  $("model-name").textContent = S.project.model ? `model: ${S.project.model.source}` : "no model (classical proposals only)";
  $("predict").disabled = !S.project.model;
  showProgress(S.project.progress);
  setClass(Math.min(S.classId, S.project.classes.length - 1));
}

function showProgress(p) {
  $("progress-text").textContent = `${p.labelled} / ${p.total} labelled`;
  $("progress").max = Math.max(1, p.total);
  $("progress").value = p.labelled;
  document.body.dataset.labelled = p.labelled;
}

async function loadList() {
  const body = await json("images");
  S.images = body.images;
  showProgress(body.progress);
  const ul = $("images");
  ul.innerHTML = "";
  for (const item of S.images) {
    const li = document.createElement("li");
    li.dataset.name = item.name;
    li.className = (item.labelled ? "labelled" : item.proposal ? "proposal" : "") + (item.name === S.name ? " current" : "");
    li.innerHTML = `<span class="mark"></span><span class="label"></span>`;
    li.querySelector(".label").textContent = item.name;
    li.title = item.uncertainty ? `uncertainty: entropy ${item.uncertainty.entropy.toFixed(3)}` : item.name;
    li.addEventListener("click", () => openImage(item.name));
    ul.appendChild(li);
  }
}

function markListed(name, labelled) {
  const li = document.querySelector(`#images li[data-name="${CSS.escape(name)}"]`);
  if (li && labelled) li.className = "labelled" + (name === S.name ? " current" : "");
}

// ---------------------------------------------------------------- opening an image

async function openImage(name) {
  if (!name) return;
  await flushSave();
  const token = ++S.loadToken;
  document.body.dataset.ready = "false";
  setStatus(`opening ${name}…`);
  try {
    const info = await json(`images/${encodeURIComponent(name)}`);
    const blob = await (await api(`images/${encodeURIComponent(name)}/image`)).blob();
    const bitmap = await createImageBitmap(blob);
    let saved = null, source = null;
    try {
      const r = await api(`images/${encodeURIComponent(name)}/mask?source=any&format=raw`);
      saved = new Uint8Array(await r.arrayBuffer());
      source = r.headers.get("X-Mask-Source");
    } catch (err) { if (err.status !== 404) throw err; }
    if (token !== S.loadToken) return;  // another image was asked for meanwhile
    Object.assign(S, { name, width: info.width, height: info.height, undo: [], redo: [], polygon: [],
                       edits: 0, savedEdits: 0, proposal: null });
    S.prompt = { box: null, points: [], scribbles: [] };
    S.photo = makeCanvas(info.width, info.height);
    S.photo.getContext("2d").drawImage(bitmap, 0, 0);
    S.maskCanvas = makeCanvas(info.width, info.height);
    S.maskData = S.maskCanvas.getContext("2d").createImageData(info.width, info.height);
    S.proposalCanvas = makeCanvas(info.width, info.height);
    S.labels = source === "saved" ? saved : new Uint8Array(info.width * info.height);
    if (source === "proposal") setProposal({ kind: "labels", labels: saved }, "model prediction of this image");
    else clearProposal();
    paintMask(0, 0, info.width, info.height);
    $("image-name").textContent = `${name} (${info.width}×${info.height}) · ${info.labelled ? "labelled" : "unlabelled"}`;
    document.querySelectorAll("#images li").forEach((li) => li.classList.toggle("current", li.dataset.name === name));
    $("prev").disabled = !info.previous;
    $("next").disabled = !info.next;
    S.info = info;
    history.replaceState(null, "", `#${encodeURIComponent(name)}`);
    fit();
    updateButtons();
    setStatus(source === "saved" ? "saved mask loaded" : source === "proposal" ?
      "the model's prediction is shown: Enter accepts it, Esc discards it" : "no mask yet: draw a box around an object");
    document.body.dataset.ready = "true";
  } catch (err) {
    setStatus(`cannot open ${name}: ${err.message}`, true);
  }
}

function makeCanvas(w, h) { const c = document.createElement("canvas"); c.width = w; c.height = h; return c; }

// ---------------------------------------------------------------- drawing

function paintMask(x0, y0, x1, y1) {
  // Refresh the overlay pixels of the rectangle [x0, x1) x [y0, y1) from the labels.
  x0 = Math.max(0, Math.floor(x0)); y0 = Math.max(0, Math.floor(y0));
  x1 = Math.min(S.width, Math.ceil(x1)); y1 = Math.min(S.height, Math.ceil(y1));
  if (x1 <= x0 || y1 <= y0) return;
  const d = S.maskData.data, colours = S.project.classes.map((c) => rgbOf(c.color));
  for (let y = y0; y < y1; y++) {
    for (let x = x0; x < x1; x++) {
      const i = y * S.width + x, k = S.labels[i], o = 4 * i;
      if (k === 0) { d[o + 3] = 0; continue; }
      const c = colours[k] || [255, 0, 255];
      d[o] = c[0]; d[o + 1] = c[1]; d[o + 2] = c[2]; d[o + 3] = 255;
    }
  }
  S.maskCanvas.getContext("2d").putImageData(S.maskData, 0, 0, x0, y0, x1 - x0, y1 - y0);
  draw();
}

function draw() {
  const canvas = $("canvas"), dpr = window.devicePixelRatio || 1;
  const w = Math.round(canvas.clientWidth * dpr), h = Math.round(canvas.clientHeight * dpr);
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, w, h);
  if (!S.photo) return;
  const v = S.view;
  ctx.setTransform(dpr * v.scale, 0, 0, dpr * v.scale, dpr * v.ox, dpr * v.oy);
  ctx.imageSmoothingEnabled = v.scale < 1;
  ctx.drawImage(S.photo, 0, 0);
  ctx.globalAlpha = S.opacity;
  ctx.drawImage(S.maskCanvas, 0, 0);
  if (S.proposal) { ctx.globalAlpha = Math.max(0.35, Math.min(0.9, S.opacity + 0.2)); ctx.drawImage(S.proposalCanvas, 0, 0); }
  ctx.globalAlpha = 1;
  const px = 1 / v.scale;  // one screen pixel in image units
  ctx.lineWidth = 2 * px;
  const p = S.prompt;
  const box = S.drag && S.drag.kind === "box" ? S.drag.box : p.box;
  if (box) {
    ctx.strokeStyle = "#ffeb3b"; ctx.setLineDash([6 * px, 4 * px]);
    ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
    ctx.setLineDash([]);
  }
  for (const s of p.scribbles.concat(S.drag && S.drag.kind === "scribble" ? [S.drag.scribble] : [])) {
    ctx.strokeStyle = s.positive ? "#00e676" : "#ff1744"; ctx.lineWidth = Math.max(2 * px, s.width);
    ctx.beginPath(); s.points.forEach(([x, y], i) => (i ? ctx.lineTo(x + .5, y + .5) : ctx.moveTo(x + .5, y + .5))); ctx.stroke();
  }
  for (const q of p.points) {
    ctx.fillStyle = q.positive ? "#00e676" : "#ff1744"; ctx.strokeStyle = "#000";
    ctx.lineWidth = px; ctx.beginPath(); ctx.arc(q.x + .5, q.y + .5, 4 * px, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
  }
  if (S.polygon.length) {
    ctx.strokeStyle = "#fff"; ctx.lineWidth = 2 * px; ctx.beginPath();
    S.polygon.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    if (S.cursor) ctx.lineTo(S.cursor[0], S.cursor[1]);
    ctx.stroke();
  }
  if (S.cursor && (S.tool === "brush" || S.tool === "eraser")) {
    ctx.strokeStyle = "#fff"; ctx.lineWidth = px; ctx.beginPath();
    ctx.arc(Math.floor(S.cursor[0]) + .5, Math.floor(S.cursor[1]) + .5, S.brush / 2, 0, 2 * Math.PI); ctx.stroke();
  }
}

// ---------------------------------------------------------------- view: fit, zoom, pan

function fit() {
  const canvas = $("canvas");
  if (!S.width) return;
  const scale = Math.min(canvas.clientWidth / S.width, canvas.clientHeight / S.height) * 0.96;
  S.view = { scale, ox: (canvas.clientWidth - S.width * scale) / 2, oy: (canvas.clientHeight - S.height * scale) / 2 };
  draw();
}

function zoom(factor, cx, cy) {
  const canvas = $("canvas"), v = S.view;
  if (cx === undefined) { cx = canvas.clientWidth / 2; cy = canvas.clientHeight / 2; }
  const scale = Math.min(64, Math.max(0.05, v.scale * factor));
  v.ox = cx - (cx - v.ox) * (scale / v.scale); v.oy = cy - (cy - v.oy) * (scale / v.scale); v.scale = scale;
  draw();
}

function toImage(event) {
  const r = $("canvas").getBoundingClientRect();
  return [(event.clientX - r.left - S.view.ox) / S.view.scale, (event.clientY - r.top - S.view.oy) / S.view.scale];
}

function toClient(x, y) {  // image pixel (x, y) -> page coordinates; used by the tests
  const r = $("canvas").getBoundingClientRect();
  return [r.left + S.view.ox + x * S.view.scale, r.top + S.view.oy + y * S.view.scale];
}

const clampX = (x) => Math.min(S.width - 1, Math.max(0, x));
const clampY = (y) => Math.min(S.height - 1, Math.max(0, y));

// ---------------------------------------------------------------- editing, undo/redo

function pushUndo() {
  S.undo.push(S.labels.slice());
  const limit = Math.max(5, Math.floor(MAX_UNDO_BYTES / Math.max(1, S.labels.length)));
  while (S.undo.length > limit) S.undo.shift();
  S.redo = [];
}

function changed() { S.edits++; updateButtons(); scheduleSave(); }

function undo() {
  if (!S.undo.length) return;
  S.redo.push(S.labels); S.labels = S.undo.pop();
  paintMask(0, 0, S.width, S.height); changed(); setStatus("undone");
}

function redo() {
  if (!S.redo.length) return;
  S.undo.push(S.labels); S.labels = S.redo.pop();
  paintMask(0, 0, S.width, S.height); changed(); setStatus("redone");
}

function dab(x, y, value) {
  // A filled disc of diameter S.brush centred on pixel (x, y).
  const r = S.brush / 2, cx = Math.floor(x), cy = Math.floor(y);
  const x0 = Math.max(0, Math.floor(cx - r)), x1 = Math.min(S.width - 1, Math.ceil(cx + r));
  const y0 = Math.max(0, Math.floor(cy - r)), y1 = Math.min(S.height - 1, Math.ceil(cy + r));
  const r2 = Math.max(0.25, r * r);
  for (let yy = y0; yy <= y1; yy++) for (let xx = x0; xx <= x1; xx++) {
    if ((xx - cx) * (xx - cx) + (yy - cy) * (yy - cy) <= r2) S.labels[yy * S.width + xx] = value;
  }
  paintMask(x0, y0, x1 + 1, y1 + 1);
}

function strokeTo(from, to, value) {
  const steps = Math.max(1, Math.ceil(Math.hypot(to[0] - from[0], to[1] - from[1]) / Math.max(1, S.brush / 4)));
  for (let i = 1; i <= steps; i++) dab(from[0] + (to[0] - from[0]) * i / steps, from[1] + (to[1] - from[1]) * i / steps, value);
}

function fillPolygon(points, value) {
  // Rasterise with the browser (even-odd fill of the pixel centres), then copy into the labels.
  const c = makeCanvas(S.width, S.height), ctx = c.getContext("2d");
  ctx.fillStyle = "#fff"; ctx.beginPath();
  points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
  ctx.closePath(); ctx.fill();
  const d = ctx.getImageData(0, 0, S.width, S.height).data;
  pushUndo();
  for (let i = 0; i < S.labels.length; i++) if (d[4 * i + 3] >= 128) S.labels[i] = value;
  paintMask(0, 0, S.width, S.height);
  changed();
}

// ---------------------------------------------------------------- saving

let saveTimer = null;
function scheduleSave() {
  document.body.dataset.saved = "false";
  $("save-state").textContent = "unsaved";
  clearTimeout(saveTimer);
  saveTimer = setTimeout(save, 150);  // coalesces a burst (undo pressed several times)
}

async function save() {
  clearTimeout(saveTimer);
  if (S.saving || S.edits === S.savedEdits || !S.name) return;
  S.saving = true;
  const name = S.name, edits = S.edits, body = S.labels.slice();
  $("save-state").textContent = "saving…";
  try {
    const result = await json(`images/${encodeURIComponent(name)}/mask`, {
      method: "PUT", headers: { "content-type": "application/octet-stream" }, body });
    if (name === S.name) {
      S.savedEdits = edits;
      $("image-name").textContent = `${name} (${S.width}×${S.height}) · labelled`;
    }
    showProgress(result.progress);
    markListed(name, true);
  } catch (err) {
    setStatus(`saving ${name} failed: ${err.message}; your change is kept here, press S to retry`, true);
    S.saving = false;
    $("save-state").textContent = "unsaved";
    return;
  }
  S.saving = false;
  if (name === S.name && S.edits !== S.savedEdits) { save(); return; }
  $("save-state").textContent = "saved";
  document.body.dataset.saved = "true";
}

async function flushSave() {
  for (let i = 0; i < 200 && (S.saving || (S.name && S.edits !== S.savedEdits)); i++) {
    if (!S.saving) await save();
    else await new Promise((r) => setTimeout(r, 25));
    if (document.body.dataset.saved === "false" && !S.saving && S.edits !== S.savedEdits && i > 5) break;  // save failed
  }
}

// ---------------------------------------------------------------- proposals

function setProposal(proposal, text) {
  S.proposal = proposal;
  const ctx = S.proposalCanvas.getContext("2d"), img = ctx.createImageData(S.width, S.height), d = img.data;
  if (proposal.kind === "object") {
    const c = colour(proposal.classId);
    for (let i = 0; i < proposal.mask.length; i++) if (proposal.mask[i]) {
      d[4 * i] = c[0]; d[4 * i + 1] = c[1]; d[4 * i + 2] = c[2]; d[4 * i + 3] = 255;
    }
  } else {
    const colours = S.project.classes.map((cl) => rgbOf(cl.color));
    for (let i = 0; i < proposal.labels.length; i++) { const k = proposal.labels[i]; if (k) {
      const c = colours[k] || [255, 0, 255]; d[4 * i] = c[0]; d[4 * i + 1] = c[1]; d[4 * i + 2] = c[2]; d[4 * i + 3] = 255; } }
  }
  // A white outline, so a proposal stays visible over an object of a similar colour.
  const W = S.width, H = S.height, on = (x, y) => x >= 0 && y >= 0 && x < W && y < H && d[4 * (y * W + x) + 3] > 0;
  const edge = [];
  for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
    if (on(x, y) && !(on(x - 1, y) && on(x + 1, y) && on(x, y - 1) && on(x, y + 1))) edge.push(4 * (y * W + x));
  }
  for (const o of edge) { d[o] = d[o + 1] = d[o + 2] = 255; }
  ctx.putImageData(img, 0, 0);
  $("proposal-info").textContent = text;
  document.body.dataset.proposal = "ready";
  updateButtons(); draw();
}

function clearProposal() {
  S.proposal = null;
  S.prompt = { box: null, points: [], scribbles: [] };
  $("proposal-info").textContent = "";
  document.body.dataset.proposal = "none";
  updateButtons(); draw();
}

async function requestProposal() {
  const p = S.prompt, token = ++S.proposalToken;
  if (!p.box && !p.points.some((q) => q.positive) && !p.scribbles.some((s) => s.positive)) { draw(); return; }
  document.body.dataset.proposal = "pending";
  setStatus("asking for a proposal…");
  try {
    const body = { method: $("method").value, class_id: S.classId, box: p.box, points: p.points,
                   scribbles: p.scribbles.map((s) => ({ points: s.points, positive: s.positive, width: s.width })) };
    const r = await post(`images/${encodeURIComponent(S.name)}/proposal`, body);
    if (token !== S.proposalToken) return;
    const mask = new Uint8Array(S.width * S.height);
    const [x, y, w, h] = r.bbox, crop = r.data ? Uint8Array.from(atob(r.data), (ch) => ch.charCodeAt(0)) : [];
    for (let j = 0; j < h; j++) for (let i = 0; i < w; i++) mask[(y + j) * S.width + x + i] = crop[j * w + i];
    const name = S.project.classes[S.classId].name;
    setProposal({ kind: "object", classId: S.classId, mask },
      `${r.method}: ${r.area} px of ${name}. Enter accepts, Esc rejects; add clicks to correct`);
    setStatus(`proposal from ${r.method}`);
  } catch (err) {
    document.body.dataset.proposal = "none";
    setStatus(`no proposal: ${err.message}`, true);
  }
}

function acceptProposal() {
  if (!S.proposal) return;
  pushUndo();
  if (S.proposal.kind === "object") {
    const m = S.proposal.mask, k = S.proposal.classId;
    for (let i = 0; i < m.length; i++) if (m[i]) S.labels[i] = k;
  } else {
    S.labels.set(S.proposal.labels);
  }
  clearProposal();
  paintMask(0, 0, S.width, S.height);
  changed();
  setStatus("proposal accepted and saved; correct it with the brush (B) or eraser (E)");
}

// ---------------------------------------------------------------- clean-up

async function cleanup(query) {
  if (!S.name) return;
  try {
    const r = await api(`images/${encodeURIComponent(S.name)}/cleanup?${query}`, {
      method: "POST", headers: { "content-type": "application/octet-stream" }, body: S.labels.slice() });
    const out = new Uint8Array(await r.arrayBuffer());
    let n = 0; for (let i = 0; i < out.length; i++) n += out[i] !== S.labels[i];
    if (!n) { setStatus("nothing to clean"); return; }
    pushUndo(); S.labels = out; paintMask(0, 0, S.width, S.height); changed();
    setStatus(`${n} pixel(s) changed`);
  } catch (err) { setStatus(`clean-up failed: ${err.message}`, true); }
}

// ---------------------------------------------------------------- the model loop

async function poll(job, onDone) {
  const bar = $("job-progress");
  bar.hidden = false;
  for (;;) {
    const s = await json(job);
    if (job === "predict") {
      bar.max = Math.max(1, s.total || 1); bar.value = s.done || 0;
      $("job-status").textContent = s.state === "running" ? `predicting ${s.done || 0} / ${s.total || "?"}` : "";
    } else {
      bar.max = Math.max(1, s.total_steps || 1); bar.value = s.step || 0;
      $("job-status").textContent = s.state === "running" ?
        `${s.phase}: step ${s.step || 0} / ${s.total_steps}${s.loss !== undefined ? `, loss ${s.loss.toFixed(4)}` : ""}` +
        ` (${s.train_images} train, ${s.holdout_images} held out)` : "";
    }
    document.body.dataset[job] = s.state;
    if (s.state !== "running") { bar.hidden = true; onDone(s); return; }
    await new Promise((r) => setTimeout(r, 700));
  }
}

async function predictRest() {
  try {
    await post("predict", {});
    poll("predict", async (s) => {
      $("job-status").textContent = s.state === "done" ? `predicted ${s.predicted} image(s); ◌ marks them` : `failed: ${s.error}`;
      await loadList();
    });
  } catch (err) { $("job-status").textContent = err.message; }
}

async function retrain() {
  try {
    await post("retrain", { steps: parseInt($("steps").value, 10) || 300 });
    poll("retrain", async (s) => {
      if (s.state === "done") {
        const old = s.old_miou === null ? "none" : s.old_miou.toFixed(3);
        $("job-status").textContent = `held-out mIoU: old ${old}, new ${s.new_miou.toFixed(3)}: ` +
          (s.swapped ? "the new model proposes now" : "the old model stays");
        await loadProject();
      } else { $("job-status").textContent = `retrain failed: ${s.error}`; }
    });
  } catch (err) { $("job-status").textContent = err.message; }
}

async function exportAs(format) {
  await flushSave();
  try {
    const r = await post("export", { format });
    $("export-status").textContent = `${format}: ${r.images.train !== undefined ? r.images.train : r.images} image(s) in ${r.path}`;
  } catch (err) { $("export-status").textContent = `${format} export failed: ${err.message}`; }
}

async function nextUseful() {
  await flushSave();
  const r = await json(`next?strategy=uncertainty${S.name ? `&after=${encodeURIComponent(S.name)}` : ""}`);
  if (!r.name) { setStatus("every image is labelled"); return; }
  await openImage(r.name);
  if (r.strategy === "uncertainty") setStatus(`most uncertain unlabelled image (entropy ${r.score.toFixed(3)})`);
}

// ---------------------------------------------------------------- tools and classes

function setTool(tool) {
  if (S.polygon.length && tool !== "polygon") S.polygon = [];
  S.tool = tool;
  document.querySelectorAll("#tools button").forEach((b) => b.classList.toggle("active", b.dataset.tool === tool));
  $("canvas").classList.toggle("pan", tool === "pan");
  draw();
}

function setClass(id) {
  if (!S.project || id < 1 || id >= S.project.classes.length) return;
  S.classId = id;
  document.querySelectorAll("#classes li").forEach((li) => li.classList.toggle("current", +li.dataset.id === id));
  if (S.tool === "eraser") setTool("brush");
}

function setBrush(size) {
  S.brush = Math.max(1, Math.min(64, size));
  $("brush").value = S.brush; $("brush-value").textContent = S.brush;
  draw();
}

function updateButtons() {
  $("accept").disabled = $("reject").disabled = !S.proposal;
  $("undo").disabled = !S.undo.length;
  $("redo").disabled = !S.redo.length;
}

// ---------------------------------------------------------------- pointer input

function onPointerDown(event) {
  if (!S.photo) return;
  const canvas = $("canvas");
  canvas.setPointerCapture(event.pointerId);
  const [x, y] = toImage(event);
  if (event.button === 1 || S.tool === "pan" || S.spaceDown) {
    S.drag = { kind: "pan", x: event.clientX, y: event.clientY, ox: S.view.ox, oy: S.view.oy };
    return;
  }
  const inside = x >= 0 && y >= 0 && x < S.width && y < S.height;
  const negative = event.shiftKey || event.button === 2;
  if (S.tool === "box") {
    S.prompt = { box: null, points: [], scribbles: [] };
    S.drag = { kind: "box", start: [clampX(x), clampY(y)], box: null };
  } else if (S.tool === "click" && inside) {
    S.prompt.points.push({ x: Math.floor(x), y: Math.floor(y), positive: !negative });
    requestProposal();
  } else if (S.tool === "scribble" && inside) {
    S.drag = { kind: "scribble", scribble: { points: [[Math.floor(x), Math.floor(y)]], positive: !negative, width: S.brush } };
  } else if ((S.tool === "brush" || S.tool === "eraser") && inside) {
    pushUndo();
    const value = S.tool === "eraser" ? 0 : S.classId;
    S.drag = { kind: "paint", last: [x, y], value };
    dab(x, y, value);
  } else if (S.tool === "polygon" && inside) {
    const first = S.polygon[0];
    if (S.polygon.length >= 3 && Math.hypot(first[0] - x, first[1] - y) * S.view.scale < 8) { closePolygon(); return; }
    S.polygon.push([x, y]);
    draw();
  }
}

function onPointerMove(event) {
  if (!S.photo) return;
  const [x, y] = toImage(event);
  S.cursor = [x, y];
  const d = S.drag;
  if (!d) { draw(); return; }
  if (d.kind === "pan") {
    S.view.ox = d.ox + event.clientX - d.x; S.view.oy = d.oy + event.clientY - d.y; draw();
  } else if (d.kind === "box") {
    const [sx, sy] = d.start, ex = clampX(x), ey = clampY(y);
    d.box = [Math.floor(Math.min(sx, ex)), Math.floor(Math.min(sy, ey)), Math.ceil(Math.max(sx, ex)), Math.ceil(Math.max(sy, ey))];
    draw();
  } else if (d.kind === "scribble") {
    d.scribble.points.push([Math.floor(clampX(x)), Math.floor(clampY(y))]); draw();
  } else if (d.kind === "paint") {
    strokeTo(d.last, [x, y], d.value); d.last = [x, y];
  }
}

function onPointerUp() {
  const d = S.drag;
  S.drag = null;
  if (!d) return;
  if (d.kind === "box") {
    if (d.box && d.box[2] - d.box[0] >= 2 && d.box[3] - d.box[1] >= 2) { S.prompt.box = d.box; requestProposal(); }
    else draw();
  } else if (d.kind === "scribble") {
    S.prompt.scribbles.push(d.scribble); requestProposal();
  } else if (d.kind === "paint") {
    changed();  // the stroke is finished: save it
  }
}

function closePolygon() {
  if (S.polygon.length >= 3) fillPolygon(S.polygon, S.classId);
  S.polygon = [];
  draw();
}

// ---------------------------------------------------------------- keyboard

function onKey(event) {
  if (event.target.closest("input, select, textarea")) return;
  const k = event.key, ctrl = event.ctrlKey || event.metaKey;
  if (ctrl && (k === "z" || k === "Z")) { event.preventDefault(); event.shiftKey ? redo() : undo(); return; }
  if (ctrl && (k === "y" || k === "Y")) { event.preventDefault(); redo(); return; }
  if (ctrl) return;
  if (k === " ") { S.spaceDown = true; event.preventDefault(); return; }
  if (/^[1-9]$/.test(k)) { setClass(+k); return; }
  const actions = {
    x: () => setTool("box"), c: () => setTool("click"), w: () => setTool("scribble"), b: () => setTool("brush"),
    e: () => setTool("eraser"), p: () => setTool("polygon"), h: () => setTool("pan"),
    "[": () => setBrush(S.brush - 1), "]": () => setBrush(S.brush + 1),
    Enter: () => (S.polygon.length ? closePolygon() : acceptProposal()),
    Escape: () => { if (S.polygon.length) { S.polygon = []; draw(); } else clearProposal(); },
    ArrowRight: () => S.info && openImage(S.info.next), d: () => S.info && openImage(S.info.next),
    ArrowLeft: () => S.info && openImage(S.info.previous), a: () => S.info && openImage(S.info.previous),
    n: nextUseful, "+": () => zoom(1.25), "=": () => zoom(1.25), "-": () => zoom(0.8), 0: fit,
    f: () => cleanup("fill_holes=true"), r: () => cleanup(`min_size=${parseInt($("min-size").value, 10) || 1}`),
    s: save, o: () => { const next = S.opacity > 0 ? 0 : S.lastOpacity || 0.55; if (S.opacity > 0) S.lastOpacity = S.opacity;
                        S.opacity = next; $("opacity").value = Math.round(next * 100); draw(); },
  };
  const action = actions[k] || actions[k.toLowerCase()];
  if (action) { event.preventDefault(); action(); }
}

// ---------------------------------------------------------------- wiring

function wire() {
  const canvas = $("canvas");
  canvas.addEventListener("pointerdown", onPointerDown);
  canvas.addEventListener("pointermove", onPointerMove);
  canvas.addEventListener("pointerup", onPointerUp);
  canvas.addEventListener("pointerleave", () => { S.cursor = null; draw(); });
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener("dblclick", () => S.tool === "polygon" && closePolygon());
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = canvas.getBoundingClientRect();
    zoom(Math.pow(1.0015, -e.deltaY), e.clientX - r.left, e.clientY - r.top);
  }, { passive: false });
  window.addEventListener("keydown", onKey);
  window.addEventListener("keyup", (e) => { if (e.key === " ") S.spaceDown = false; });
  window.addEventListener("resize", draw);
  window.addEventListener("beforeunload", (e) => { if (S.edits !== S.savedEdits) { save(); e.preventDefault(); } });
  document.querySelectorAll("#tools button").forEach((b) => b.addEventListener("click", () => setTool(b.dataset.tool)));
  document.querySelectorAll("[data-export]").forEach((b) => b.addEventListener("click", () => exportAs(b.dataset.export)));
  $("brush").addEventListener("input", (e) => setBrush(+e.target.value));
  $("opacity").addEventListener("input", (e) => { S.opacity = +e.target.value / 100; draw(); });
  $("accept").addEventListener("click", acceptProposal);
  $("reject").addEventListener("click", clearProposal);
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("fit").addEventListener("click", fit);
  $("prev").addEventListener("click", () => S.info && openImage(S.info.previous));
  $("next").addEventListener("click", () => S.info && openImage(S.info.next));
  $("useful").addEventListener("click", nextUseful);
  $("fill").addEventListener("click", () => cleanup("fill_holes=true"));
  $("small").addEventListener("click", () => cleanup(`min_size=${parseInt($("min-size").value, 10) || 1}`));
  $("predict").addEventListener("click", predictRest);
  $("retrain").addEventListener("click", retrain);
}

// Hooks for scripts and tests (read-only views of the page's state).
window.pixelwiseAnnotate = {
  toClient, labels: () => (S.labels ? Array.from(S.labels) : null), state: () => ({
    name: S.name, width: S.width, height: S.height, tool: S.tool, classId: S.classId, brush: S.brush,
    edits: S.edits, savedEdits: S.savedEdits, undo: S.undo.length, redo: S.redo.length, scale: S.view.scale }),
  openImage, setBrush,
};

(async function main() {
  wire();
  setTool("box");
  setBrush(S.brush);
  try {
    await loadProject();
    await loadList();
    const wanted = decodeURIComponent(location.hash.slice(1));
    const first = S.images.find((i) => i.name === wanted) || S.images.find((i) => !i.labelled) || S.images[0];
    if (first) await openImage(first.name);
  } catch (err) { setStatus(`cannot load the project: ${err.message}`, true); }
})();
