"""The page of ``attention_html``: inline CSS and JavaScript, no network, no external files.

``__DATA__`` is replaced by the JSON of the attention graphs (escaped for a script element) and
``__TITLE__`` by the escaped title. SVG elements are created in the namespace of the page's own
inline ``<svg>`` element, so the file names no external address at all.
"""

TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="gatattn">
<title>__TITLE__</title>
<style>
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 16px; color: #1d2330; }
h1 { font-size: 18px; margin: 0 0 8px; }
.controls { display: flex; flex-wrap: wrap; gap: 14px; align-items: center; margin-bottom: 8px; }
.controls label { display: flex; gap: 6px; align-items: center; }
.tabs button { border: 1px solid #9aa5b8; background: #f3f5f9; padding: 4px 12px; cursor: pointer; }
.tabs button.on { background: #1f5fa8; color: #fff; border-color: #1f5fa8; }
#summary { color: #4a5568; margin: 4px 0 10px; }
#head-svg text.tok { cursor: pointer; font-size: 13px; dominant-baseline: middle; }
#head-svg text.tok.active { font-weight: 700; fill: #b4231b; }
#head-svg text.val { font-size: 10px; fill: #b4231b; dominant-baseline: middle; }
#head-svg text.side { font-size: 11px; fill: #6b7280; }
#head-svg line.edge { stroke-linecap: round; }
#head-svg.dim line.edge { opacity: 0.06; }
#head-svg.dim line.edge.hl { opacity: 1; }
#model { display: grid; gap: 6px; align-items: start; justify-content: start; }
#model .cell { border: 1px solid #d5dae3; cursor: pointer; text-align: center; font-size: 10px; }
#model .cell:hover { border-color: #1f5fa8; }
#model .rowname { font-size: 11px; align-self: center; }
.hidden { display: none !important; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
<div class="controls">
  <span class="tabs"><button id="tab-head">Head view</button><button id="tab-model">Model view</button></span>
  <label>Layer <select id="layer"></select></label>
  <label>Head <select id="head"></select></label>
  <label>Show <select id="which"><option value="weight">Attn (weight)</option><option value="score">&alpha; (score)</option></select></label>
</div>
<div id="summary"></div>
<div id="head-view"><svg id="head-svg" width="10" height="10"></svg></div>
<div id="model-view" class="hidden"><div id="model"></div></div>
<script id="gatattn-data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("gatattn-data").textContent);
const svg = document.getElementById("head-svg");
const NS = svg.namespaceURI;
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#17becf"];
const S = { layer: D.initial.layer, head: D.initial.head, which: D.initial.which, view: D.initial.view };
const ROW = 20, TOP = 34, XL = 230, XR = 450;

function values(layer, head, which) {
  const L = D.layers[layer], rows = which === "score" ? L.a : L.w;
  if (head >= 0) return rows[head];
  const out = new Array(L.src.length).fill(0);
  for (const r of rows) for (let e = 0; e < out.length; e++) out[e] += r[e] === null ? 0 : r[e] / rows.length;
  return out;
}
// weight: opacity = Attn_ij / max Attn (the strongest edge is opaque); score: min-max scaled
function opacity(vals, which) {
  const fin = vals.filter(v => v !== null);
  const lo = which === "weight" ? 0 : Math.min(...fin), hi = Math.max(...fin);
  return vals.map(v => v === null ? 0 : (hi > lo ? (v - lo) / (hi - lo) : 1));
}
function colour(head) { return head < 0 ? "#1f5fa8" : COLORS[head % COLORS.length]; }
function el(name, attrs, text) {
  const n = document.createElementNS(NS, name);
  for (const k in attrs) n.setAttribute(k, attrs[k]);
  if (text !== undefined) n.textContent = text;
  return n;
}
function fmt(v) { return v === null ? "-" : Math.abs(v) >= 0.01 || v === 0 ? v.toFixed(3) : v.toExponential(1); }

function drawHead() {
  const L = D.layers[S.layer], n = D.tokens.length;
  const vals = values(S.layer, S.head, S.which), op = opacity(vals, S.which);
  svg.replaceChildren();
  svg.setAttribute("width", XR + 230);
  svg.setAttribute("height", TOP + n * ROW + 10);
  svg.appendChild(el("text", { x: XL - 6, y: 14, "text-anchor": "end", class: "side" }, "query i (attends)"));
  svg.appendChild(el("text", { x: XR + 6, y: 14, class: "side" }, "key j (attended to)"));
  const y = i => TOP + i * ROW + ROW / 2, col = colour(S.head);
  for (let e = 0; e < L.src.length; e++) {
    svg.appendChild(el("line", { class: "edge", x1: XL, y1: y(L.dst[e]), x2: XR, y2: y(L.src[e]),
      stroke: col, "stroke-width": 2, "stroke-opacity": op[e].toFixed(4),
      "data-i": L.dst[e], "data-j": L.src[e], "data-e": e }));
  }
  for (let i = 0; i < n; i++) {
    const q = el("text", { class: "tok q", x: XL - 6, y: y(i), "text-anchor": "end", "data-i": i }, D.tokens[i]);
    const k = el("text", { class: "tok k", x: XR + 6, y: y(i), "data-j": i }, D.tokens[i]);
    q.addEventListener("mouseenter", () => highlight("i", i, vals));
    k.addEventListener("mouseenter", () => highlight("j", i, vals));
    q.addEventListener("mouseleave", clearHighlight);
    k.addEventListener("mouseleave", clearHighlight);
    svg.appendChild(q); svg.appendChild(k);
  }
  svg.setAttribute("data-edges", L.src.length);
  const what = S.which === "score" ? "\u03b1 (pre-softmax score), opacity scaled from min to max"
    : "Attn (weight), opacity = Attn / max Attn";
  const head = S.head < 0 ? "mean over heads" : "head " + S.head;
  document.getElementById("summary").textContent = "Layer " + S.layer + ", " + head + ": " + L.src.length +
    " edges of " + n * n + " token pairs. Lines: " + what + ". Hover a token to highlight its edges.";
}
function highlight(side, idx, vals) {
  const L = D.layers[S.layer], other = side === "i" ? "k" : "q";
  svg.classList.add("dim");
  svg.querySelector("text.tok." + (side === "i" ? "q" : "k") + "[data-" + side + "='" + idx + "']").classList.add("active");
  for (const line of svg.querySelectorAll("line.edge[data-" + side + "='" + idx + "']")) {
    line.classList.add("hl");
    // a faint edge stays visible while highlighted (the attribute keeps the true opacity)
    line.style.strokeOpacity = Math.max(0.3, +line.getAttribute("stroke-opacity"));
    const e = +line.getAttribute("data-e"), t = side === "i" ? L.src[e] : L.dst[e];
    const x = other === "k" ? XR + 170 : 8;
    svg.appendChild(el("text", { class: "val", x: x, y: TOP + t * ROW + ROW / 2,
      "text-anchor": "start" }, fmt(vals[e])));
  }
}
function clearHighlight() {
  svg.classList.remove("dim");
  for (const n of svg.querySelectorAll(".hl, .active")) {
    n.classList.remove("hl", "active");
    n.style.strokeOpacity = "";
  }
  for (const n of svg.querySelectorAll("text.val")) n.remove();
}

function drawModel() {
  const box = document.getElementById("model"), n = D.tokens.length;
  box.replaceChildren();
  box.style.gridTemplateColumns = "auto repeat(" + D.heads + ", max-content)";
  const h = Math.max(40, Math.min(120, 6 * n)), w = 70;
  box.appendChild(document.createElement("div"));
  for (let hd = 0; hd < D.heads; hd++) {
    const t = document.createElement("div"); t.className = "rowname"; t.textContent = "head " + hd; box.appendChild(t);
  }
  for (let l = 0; l < D.layers.length; l++) {
    const name = document.createElement("div"); name.className = "rowname"; name.textContent = "layer " + l;
    box.appendChild(name);
    const L = D.layers[l];
    for (let hd = 0; hd < D.heads; hd++) {
      const cell = document.createElement("div"); cell.className = "cell";
      cell.title = "layer " + l + ", head " + hd + " (click for the head view)";
      const c = document.createElement("canvas"); c.width = w; c.height = h;
      c.setAttribute("data-layer", l); c.setAttribute("data-head", hd);
      const g = c.getContext("2d"), op = opacity(values(l, hd, S.which), S.which);
      g.strokeStyle = colour(hd); g.lineWidth = 1;
      const y = i => 3 + (h - 6) * (n > 1 ? i / (n - 1) : 0.5);
      for (let e = 0; e < L.src.length; e++) {
        g.globalAlpha = op[e]; g.beginPath(); g.moveTo(6, y(L.dst[e])); g.lineTo(w - 6, y(L.src[e])); g.stroke();
      }
      cell.appendChild(c);
      cell.addEventListener("click", () => { S.layer = l; S.head = hd; S.view = "head"; sync(); });
      box.appendChild(cell);
    }
  }
  document.getElementById("summary").textContent = D.layers.length + " layers \u00d7 " + D.heads +
    " heads; each cell: queries (left) to keys (right). Click a cell to open it in the head view.";
}

function sync() {
  document.getElementById("layer").value = S.layer;
  document.getElementById("head").value = S.head;
  document.getElementById("which").value = S.which;
  document.getElementById("tab-head").classList.toggle("on", S.view === "head");
  document.getElementById("tab-model").classList.toggle("on", S.view === "model");
  document.getElementById("head-view").classList.toggle("hidden", S.view !== "head");
  document.getElementById("model-view").classList.toggle("hidden", S.view !== "model");
  document.getElementById("head").disabled = S.view === "model";
  document.getElementById("layer").disabled = S.view === "model";
  if (S.view === "head") drawHead(); else drawModel();
}
(function init() {
  const ls = document.getElementById("layer"), hs = document.getElementById("head");
  D.layers.forEach((_, l) => ls.add(new Option("" + l, "" + l)));
  hs.add(new Option("mean", "-1"));
  for (let h = 0; h < D.heads; h++) hs.add(new Option("" + h, "" + h));
  if (!D.hasScores) document.querySelector("#which option[value=score]").disabled = true;
  ls.addEventListener("change", () => { S.layer = +ls.value; sync(); });
  hs.addEventListener("change", () => { S.head = +hs.value; sync(); });
  document.getElementById("which").addEventListener("change", ev => { S.which = ev.target.value; sync(); });
  document.getElementById("tab-head").addEventListener("click", () => { S.view = "head"; sync(); });
  document.getElementById("tab-model").addEventListener("click", () => { S.view = "model"; sync(); });
  sync();
})();
</script>
</body>
</html>
"""
