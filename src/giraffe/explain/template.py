"""The attention page's HTML, CSS and JavaScript: one string, filled in by `attention.py`.

Standalone and offline on purpose: no external script, font or style sheet, so the file
opens anywhere, from disk, without a network. Everything is drawn on canvases (a few
elements, not one per weight). It knows the data layout that `attention.page_data`
writes and nothing about models.
"""

ATTENTION_PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>__TITLE__</title>
<style>
body{font:14px system-ui,sans-serif;margin:0;background:#fafafa;color:#222}
header{padding:10px 16px;background:#28324a;color:#fff}
header h1{font-size:18px;margin:0 0 4px}
nav button{margin-right:6px;padding:4px 12px;border:1px solid #889;border-radius:4px;background:#eef;cursor:pointer}
nav button.on{background:#c2791b;border-color:#c2791b;color:#fff;font-weight:600}
section{padding:10px 16px}
.controls{margin-bottom:8px;display:flex;flex-wrap:wrap;gap:12px;align-items:center}
.heads label{margin-right:6px;white-space:nowrap}
.swatch{display:inline-block;width:10px;height:10px;margin-right:3px;vertical-align:middle}
#tip{position:fixed;pointer-events:none;background:#222;color:#fff;padding:3px 6px;border-radius:3px;font-size:12px;display:none;white-space:pre}
#zoomBox{margin-top:10px}
canvas{background:#fff;border:1px solid #ccd}
.note{color:#667;font-size:12px}
</style></head>
<body>
<header><h1>__TITLE__</h1>
<nav><button id="bHead" class="on">head view</button><button id="bModel">model view</button></nav></header>
<section id="headView">
 <div class="controls">
  <label>layer <select id="layer"></select></label>
  <label>show weights above <input id="thr" type="range" min="0.01" max="0.5" step="0.01" value="0.05"> <span id="thrV"></span></label>
  <span class="note">hover a token: its lines only. left = query (attending), right = key (attended to)</span>
 </div>
 <div class="controls heads" id="heads"></div>
 <canvas id="hv"></canvas>
</section>
<section id="modelView" style="display:none">
 <div class="controls"><label><input id="sqrt" type="checkbox" checked> square-root contrast (shows small weights)</label>
 <span class="note">rows = layers, columns = heads; click a map to enlarge it</span></div>
 <canvas id="grid"></canvas>
 <div id="zoomBox" style="display:none"><div id="zoomTitle"></div><canvas id="zoom"></canvas></div>
</section>
<div id="tip"></div>
<script>
const D = __DATA__;
const T = D.tokens.length, L = D.layers, H = D.heads;
const per = D.causal ? T * (T + 1) / 2 : T * T;
const cache = {};
function layerBytes(l) {
  if (!cache[l]) {
    const s = atob(D.weights[l]);
    const a = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i);
    cache[l] = a;
  }
  return cache[l];
}
function w(l, h, i, j) {  // weight of query i on key j, in 0..1
  if (D.causal) { if (j > i) return 0; return layerBytes(l)[h * per + i * (i + 1) / 2 + j] / 255; }
  return layerBytes(l)[h * per + i * T + j] / 255;
}
function headColour(h) { return "hsl(" + Math.round(h * 360 / H) + ",75%,45%)"; }
function show(t) { return t.replace(/\n/g, "\\n").replace(/ /g, "\u2423") || "\u2205"; }
const tip = document.getElementById("tip");
function tipAt(e, text) { tip.style.display = text ? "block" : "none"; tip.textContent = text;
  if (!e) return;
  tip.style.left = (e.clientX + 12) + "px"; tip.style.top = (e.clientY + 12) + "px"; }

// ---- head view ----
const layerSel = document.getElementById("layer"), thr = document.getElementById("thr");
for (let l = 0; l < L; l++) layerSel.add(new Option("layer " + l, l));
const headOn = Array(H).fill(true);
const headsBox = document.getElementById("heads");
for (let h = 0; h < H; h++) {
  const lab = document.createElement("label");
  lab.innerHTML = '<input type="checkbox" checked><span class="swatch"></span>head ' + h;
  lab.querySelector(".swatch").style.background = headColour(h);
  lab.querySelector("input").onchange = e => { headOn[h] = e.target.checked; drawHeads(); };
  headsBox.appendChild(lab);
}
const hv = document.getElementById("hv"), hctx = hv.getContext("2d");
const ROW = 16, TOP = 8, COLW = 160, GAP = 260;
hv.width = 2 * COLW + GAP; hv.height = TOP * 2 + T * ROW;
let focus = null;  // {side: "q"|"k", index}
function drawHeads() {
  const l = +layerSel.value, t = +thr.value;
  document.getElementById("thrV").textContent = t.toFixed(2);
  hctx.clearRect(0, 0, hv.width, hv.height);
  hctx.font = "12px monospace"; hctx.textBaseline = "middle";
  const y = i => TOP + i * ROW + ROW / 2;
  for (let h = 0; h < H; h++) {
    if (!headOn[h]) continue;
    hctx.strokeStyle = headColour(h);
    for (let i = 0; i < T; i++) {
      if (focus && focus.side === "q" && focus.index !== i) continue;
      const last = D.causal ? i : T - 1;
      for (let j = 0; j <= last; j++) {
        if (focus && focus.side === "k" && focus.index !== j) continue;
        const v = w(l, h, i, j);
        if (v <= t || v === 0) continue;
        hctx.globalAlpha = Math.min(1, v); hctx.lineWidth = 0.5 + 2 * v;
        hctx.beginPath(); hctx.moveTo(COLW, y(i)); hctx.lineTo(COLW + GAP, y(j)); hctx.stroke();
      }
    }
  }
  hctx.globalAlpha = 1;
  for (let i = 0; i < T; i++) {
    const lit = q => focus && focus.side === q && focus.index === i;
    hctx.fillStyle = lit("q") ? "#c00" : "#222"; hctx.textAlign = "right";
    hctx.fillText(show(D.tokens[i]).slice(0, 20), COLW - 6, y(i));
    hctx.fillStyle = lit("k") ? "#c00" : "#222"; hctx.textAlign = "left";
    hctx.fillText(show(D.tokens[i]).slice(0, 20), COLW + GAP + 6, y(i));
  }
}
hv.onmousemove = e => {
  const r = hv.getBoundingClientRect(), x = e.clientX - r.left, i = Math.floor((e.clientY - r.top - TOP) / ROW);
  let f = null;
  if (i >= 0 && i < T && x < COLW) f = {side: "q", index: i};
  else if (i >= 0 && i < T && x > COLW + GAP) f = {side: "k", index: i};
  if (JSON.stringify(f) !== JSON.stringify(focus)) { focus = f; drawHeads(); }
};
hv.onmouseleave = () => { focus = null; drawHeads(); };
layerSel.onchange = drawHeads; thr.oninput = drawHeads;

// ---- model view ----
const CELL = 64, PAD = 18;
const grid = document.getElementById("grid"), gctx = grid.getContext("2d");
grid.width = PAD + H * (CELL + 4); grid.height = PAD + L * (CELL + 4);
const sqrtBox = document.getElementById("sqrt");
function ramp(v) {  // 0..1 -> white..dark blue
  if (sqrtBox.checked) v = Math.sqrt(v);
  return [255 - 215 * v, 255 - 190 * v, 255 - 100 * v];
}
function thumb(l, h) {  // max-pool the (T x T) map into at most CELL x CELL pixels
  const n = Math.min(T, CELL), img = gctx.createImageData(n, n), m = new Float32Array(n * n);
  for (let i = 0; i < T; i++) {
    const last = D.causal ? i : T - 1, pi = Math.floor(i * n / T);
    for (let j = 0; j <= last; j++) {
      const k = pi * n + Math.floor(j * n / T), v = w(l, h, i, j);
      if (v > m[k]) m[k] = v;
    }
  }
  for (let k = 0; k < n * n; k++) { const c = ramp(m[k]);
    img.data[4 * k] = c[0]; img.data[4 * k + 1] = c[1]; img.data[4 * k + 2] = c[2]; img.data[4 * k + 3] = 255; }
  const off = document.createElement("canvas"); off.width = n; off.height = n;
  off.getContext("2d").putImageData(img, 0, 0);
  return off;
}
let drawn = 0, token = 0;
function drawGrid() {
  const mine = ++token; drawn = 0;
  gctx.clearRect(0, 0, grid.width, grid.height);
  gctx.font = "10px sans-serif"; gctx.fillStyle = "#445";
  for (let h = 0; h < H; h++) gctx.fillText("h" + h, PAD + h * (CELL + 4) + CELL / 2 - 6, 12);
  gctx.imageSmoothingEnabled = false;
  function step() {  // one layer per frame keeps the page responsive while it fills in
    if (mine !== token || drawn >= L) return;
    const l = drawn++;
    gctx.fillStyle = "#445"; gctx.fillText("" + l, 2, PAD + l * (CELL + 4) + CELL / 2);
    for (let h = 0; h < H; h++) gctx.drawImage(thumb(l, h), PAD + h * (CELL + 4), PAD + l * (CELL + 4), CELL, CELL);
    requestAnimationFrame(step);
  }
  requestAnimationFrame(step);
}
function cellAt(e) {
  const r = grid.getBoundingClientRect();
  const h = Math.floor((e.clientX - r.left - PAD) / (CELL + 4)), l = Math.floor((e.clientY - r.top - PAD) / (CELL + 4));
  return h >= 0 && h < H && l >= 0 && l < L ? [l, h] : null;
}
grid.onmousemove = e => { const c = cellAt(e); tipAt(e, c ? "layer " + c[0] + ", head " + c[1] : ""); };
grid.onmouseleave = () => tipAt(null, "");
const zoom = document.getElementById("zoom"), zctx = zoom.getContext("2d");
let zoomed = null;
function drawZoom(l, h) {
  zoomed = [l, h];
  const px = Math.max(2, Math.min(24, Math.floor(640 / T))), lab = T <= 48 ? 110 : 0;
  zoom.width = lab + T * px; zoom.height = lab + T * px;
  zctx.fillStyle = "#fff"; zctx.fillRect(0, 0, zoom.width, zoom.height);
  for (let i = 0; i < T; i++) for (let j = 0; j < T; j++) {
    const c = ramp(w(l, h, i, j)); zctx.fillStyle = "rgb(" + c.join(",") + ")";
    zctx.fillRect(lab + j * px, lab + i * px, px, px);
  }
  if (lab) { zctx.fillStyle = "#222"; zctx.font = "11px monospace";
    for (let i = 0; i < T; i++) {
      zctx.textAlign = "right"; zctx.fillText(show(D.tokens[i]).slice(0, 14), lab - 4, lab + i * px + px * 0.7);
      zctx.save(); zctx.translate(lab + i * px + px * 0.7, lab - 4); zctx.rotate(-Math.PI / 2);
      zctx.textAlign = "left"; zctx.fillText(show(D.tokens[i]).slice(0, 14), 0, 0); zctx.restore();
    } }
  zoom.dataset.lab = lab; zoom.dataset.px = px;
  document.getElementById("zoomTitle").textContent = "layer " + l + ", head " + h + " (rows = queries, columns = keys)";
  document.getElementById("zoomBox").style.display = "block";
}
grid.onclick = e => { const c = cellAt(e); if (c) { drawZoom(c[0], c[1]); document.getElementById("zoomBox").scrollIntoView(); } };
zoom.onmousemove = e => {
  const r = zoom.getBoundingClientRect(), lab = +zoom.dataset.lab, px = +zoom.dataset.px;
  const j = Math.floor((e.clientX - r.left - lab) / px), i = Math.floor((e.clientY - r.top - lab) / px);
  if (!zoomed || i < 0 || j < 0 || i >= T || j >= T) return tipAt(e, "");
  tipAt(e, show(D.tokens[i]) + " (" + i + ") -> " + show(D.tokens[j]) + " (" + j + "): " + w(zoomed[0], zoomed[1], i, j).toFixed(3));
};
zoom.onmouseleave = () => tipAt(null, "");
sqrtBox.onchange = () => { drawGrid(); if (zoomed) drawZoom(zoomed[0], zoomed[1]); };

const bHead = document.getElementById("bHead"), bModel = document.getElementById("bModel");
let gridDone = false;
bHead.onclick = () => { bHead.className = "on"; bModel.className = "";
  document.getElementById("headView").style.display = ""; document.getElementById("modelView").style.display = "none"; };
bModel.onclick = () => { bModel.className = "on"; bHead.className = "";
  document.getElementById("headView").style.display = "none"; document.getElementById("modelView").style.display = "";
  if (!gridDone) { gridDone = true; drawGrid(); } };
drawHeads();
</script>
</body></html>
"""
