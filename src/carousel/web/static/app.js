// carousel handwriting demo: capture strokes, send them to the server, draw the four rows.
"use strict";
(function () {
  const pad = document.getElementById("pad");
  const ctx = pad.getContext("2d");
  const textOut = document.getElementById("text");
  const statusEl = document.getElementById("status");
  let strokes = [];      // [[[x, y, t], ...], ...] canvas coordinates, y down
  let current = null;
  let inFlight = false, pending = false, lastSent = 0, requests = 0;
  let result = null, cursor = null, animId = null;

  function t() { return Math.round(performance.now()); }
  function pos(ev) {
    const r = pad.getBoundingClientRect();
    return [ev.clientX - r.left, ev.clientY - r.top, t()];
  }
  function drawPad() {
    ctx.clearRect(0, 0, pad.width, pad.height);
    ctx.strokeStyle = "#ccc"; ctx.beginPath(); ctx.moveTo(0, 170); ctx.lineTo(pad.width, 170); ctx.stroke();
    ctx.strokeStyle = "#111"; ctx.lineWidth = 3; ctx.lineCap = "round"; ctx.lineJoin = "round";
    for (const s of strokes) {
      ctx.beginPath();
      s.forEach((p, i) => (i ? ctx.lineTo(p[0], p[1]) : ctx.moveTo(p[0], p[1])));
      if (s.length === 1) ctx.lineTo(s[0][0] + 0.1, s[0][1]);
      ctx.stroke();
    }
  }
  pad.addEventListener("pointerdown", (ev) => {
    ev.preventDefault();
    pad.setPointerCapture(ev.pointerId);
    current = [pos(ev)];
    strokes.push(current);
    drawPad();
  });
  pad.addEventListener("pointermove", (ev) => {
    if (!current) return;
    current.push(pos(ev));
    drawPad();
    if (t() - lastSent > 300) send();
  });
  function end() { if (current) { current = null; send(); } }
  pad.addEventListener("pointerup", end);
  pad.addEventListener("pointercancel", end);

  async function send() {
    if (!strokes.length) return;
    if (inFlight) { pending = true; return; }
    inFlight = true; lastSent = t();
    statusEl.textContent = "";
    try {
      const r = await fetch("/api/recognize", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ strokes: strokes }),
      });
      const body = await r.json();
      if (!r.ok) { statusEl.textContent = body.error || ("error " + r.status); }
      else { result = body; cursor = null; textOut.textContent = body.text; drawRows(); }
    } catch (e) {
      statusEl.textContent = "server unreachable: " + e;
    } finally {
      inFlight = false;
      requests += 1; textOut.dataset.requests = String(requests);
      if (pending) { pending = false; send(); }
    }
  }

  function rowCtx(id) {
    const c = document.getElementById(id);
    const g = c.getContext("2d");
    g.clearRect(0, 0, c.width, c.height);
    return [c, g];
  }
  function drawRows() {
    if (!result || !result.frames) {
      ["row-chars", "row-cells", "row-writing", "row-grad"].forEach(rowCtx);
      return;
    }
    const T = result.frames, upto = cursor === null ? T - 1 : cursor;
    const xOf = (c, f) => ((f + 0.5) / T) * c.width;
    // 1. characters at the frame where they are output, over the per-frame probability
    let [c, g] = rowCtx("row-chars");
    g.strokeStyle = "#bbb"; g.beginPath();
    result.char_probs.forEach((p, f) => { if (f <= upto) { const y = c.height - 4 - p.prob * (c.height - 10); f ? g.lineTo(xOf(c, f), y) : g.moveTo(xOf(c, f), y); } });
    g.stroke();
    g.fillStyle = "#111"; g.font = "bold 26px serif"; g.textAlign = "center";
    for (const ch of result.chars) if (ch.frame <= upto) g.fillText(ch.char, xOf(c, ch.frame), 40);
    // 2. memory cells: a heat map, red positive, blue negative
    [c, g] = rowCtx("row-cells");
    const n = result.cells.length ? result.cells[0].length : 0, h = c.height / Math.max(n, 1);
    result.cells.forEach((row, f) => {
      if (f > upto) return;
      row.forEach((v, k) => {
        const a = Math.min(1, Math.abs(v));
        g.fillStyle = v >= 0 ? `rgba(200,40,40,${a})` : `rgba(40,80,200,${a})`;
        g.fillRect(xOf(c, f) - c.width / T / 2, k * h, c.width / T + 0.5, h + 0.5);
      });
    });
    // 3. the writing (normalised), up to the point that feeds the current frame
    [c, g] = rowCtx("row-writing");
    const P = result.points, lastPoint = Math.min(P.length - 1, (upto + 1) * result.stride - 1);
    let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
    for (const p of P) { minX = Math.min(minX, p[0]); maxX = Math.max(maxX, p[0]); minY = Math.min(minY, p[1]); maxY = Math.max(maxY, p[1]); }
    const s = Math.min((c.width - 20) / Math.max(maxX - minX, 1e-6), (c.height - 20) / Math.max(maxY - minY, 1e-6));
    g.strokeStyle = "#111"; g.lineWidth = 2;
    g.beginPath();
    for (let i = 0; i <= lastPoint; i++) {
      const x = 10 + (P[i][0] - minX) * s, y = c.height - 10 - (P[i][1] - minY) * s;
      if (i === 0 || P[i][2] > 0.5 || P[i - 1][2] > 0.5) g.moveTo(x, y); else g.lineTo(x, y);
    }
    g.stroke();
    // 4. gradient of the currently most active character w.r.t. each point's x and y
    [c, g] = rowCtx("row-grad");
    let k = -1;
    result.chars.forEach((ch, i) => { if (ch.frame <= upto) k = i; });
    if (k >= 0) {
      const gr = result.gradients[k];
      const m = Math.max(1e-9, ...gr.dx.map(Math.abs), ...gr.dy.map(Math.abs));
      [[gr.dx, "#1f77b4"], [gr.dy, "#ff7f0e"]].forEach(([vals, col]) => {
        g.strokeStyle = col; g.beginPath();
        vals.forEach((v, i) => { const x = ((i + 0.5) / vals.length) * c.width, y = c.height / 2 - (v / m) * (c.height / 2 - 4); i ? g.lineTo(x, y) : g.moveTo(x, y); });
        g.stroke();
      });
      g.fillStyle = "#111"; g.font = "14px sans-serif"; g.fillText("'" + result.chars[k].char + "'", 6, 16);
    }
  }

  document.getElementById("clear").addEventListener("click", () => {
    strokes = []; result = null; textOut.textContent = ""; statusEl.textContent = "";
    drawPad(); drawRows();
  });
  document.getElementById("animate").addEventListener("click", () => {
    if (!result || !result.frames) return;
    if (animId) cancelAnimationFrame(animId);
    const start = performance.now(), dur = 3000;
    const step = (now) => {
      cursor = Math.min(result.frames - 1, Math.floor(((now - start) / dur) * result.frames));
      drawRows();
      if (cursor < result.frames - 1) animId = requestAnimationFrame(step); else { cursor = null; animId = null; }
    };
    animId = requestAnimationFrame(step);
  });
  document.getElementById("save").addEventListener("click", async () => {
    if (!strokes.length) { statusEl.textContent = "nothing written yet"; return; }
    const label = document.getElementById("label").value || textOut.textContent;
    const r = await fetch("/api/export", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ strokes: strokes, text: label }),
    });
    const body = await r.json();
    if (!r.ok) { statusEl.textContent = body.error; return; }
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([JSON.stringify(body)], { type: "application/json" }));
    a.download = (label || "handwriting") + ".json";
    document.body.appendChild(a); a.click(); a.remove();
  });
  drawPad();
})();
