// Two small canvas charts, bars and lines, with axes labelled at the extremes. Each
// sets data-points on its canvas (how many values it drew) for the browser test.

const INK = "#8b9bab";
const GRID = "#2a3a4a";
export const PALETTE = ["#35d07f", "#ff5c8a", "#6ea8fe", "#ffb020"];

function frame(canvas) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.font = "11px system-ui, sans-serif";
  return { ctx, left: 52, right: canvas.width - 8, top: 10, bottom: canvas.height - 20 };
}

export function formatNumber(v) {
  if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(0) + "k";
  if (Math.abs(v) >= 100 || Number.isInteger(v)) return v.toFixed(0);
  return v.toFixed(2);
}

function axes(f, max, first, last) {
  const { ctx, left, right, top, bottom } = f;
  ctx.strokeStyle = GRID;
  ctx.beginPath();
  ctx.moveTo(left, top); ctx.lineTo(left, bottom); ctx.lineTo(right, bottom);
  ctx.moveTo(left, top); ctx.lineTo(right, top);
  ctx.stroke();
  ctx.fillStyle = INK;
  ctx.textAlign = "right";
  ctx.fillText(formatNumber(max), left - 4, top + 8);
  ctx.fillText("0", left - 4, bottom);
  ctx.textAlign = "left";
  ctx.fillText(first, left, bottom + 14);
  ctx.textAlign = "right";
  ctx.fillText(last, right, bottom + 14);
}

function empty(canvas, f, message) {
  f.ctx.fillStyle = INK;
  f.ctx.textAlign = "center";
  f.ctx.fillText(message, canvas.width / 2, canvas.height / 2);
  canvas.dataset.points = "0";
}

// Bars: `labels[i]` under `values[i]`.
export function bars(canvas, labels, values, colour = PALETTE[0]) {
  const f = frame(canvas);
  if (!values.length) return empty(canvas, f, "no completed rides in this period");
  const max = Math.max(1, ...values);
  axes(f, max, labels[0], labels[labels.length - 1]);
  const step = (f.right - f.left) / values.length;
  f.ctx.fillStyle = colour;
  values.forEach((v, i) => {
    const h = ((f.bottom - f.top) * v) / max;
    f.ctx.fillRect(f.left + i * step + step * 0.15, f.bottom - h, Math.max(1, step * 0.7), h);
  });
  canvas.dataset.points = String(values.length);
}

// Lines over time: `series` is [{name, points: [[t_ms, value], ...]}].
export function lines(canvas, series, windowMs = 5 * 60 * 1000) {
  const f = frame(canvas);
  const all = series.flatMap((s) => s.points);
  if (!all.length) return empty(canvas, f, "waiting for samples…");
  const now = Math.max(...all.map((p) => p[0]));
  const from = now - windowMs;
  const max = Math.max(1e-9, ...all.map((p) => p[1]));
  axes(f, max, "-" + Math.round(windowMs / 60000) + " min", "now");
  const x = (t) => f.left + ((t - from) / windowMs) * (f.right - f.left);
  const y = (v) => f.bottom - ((f.bottom - f.top) * v) / max;
  series.forEach((s, i) => {
    const colour = s.colour || PALETTE[i % PALETTE.length];
    f.ctx.strokeStyle = colour;
    f.ctx.lineWidth = 1.5;
    f.ctx.beginPath();
    s.points.filter((p) => p[0] >= from).forEach((p, j) => (j ? f.ctx.lineTo(x(p[0]), y(p[1])) : f.ctx.moveTo(x(p[0]), y(p[1]))));
    f.ctx.stroke();
    const last = s.points[s.points.length - 1];
    f.ctx.fillStyle = colour;
    f.ctx.textAlign = "left";
    f.ctx.fillText(`${s.name} ${last ? formatNumber(last[1]) : "–"}`, f.left + 6 + i * 110, f.top + 12);
  });
  f.ctx.lineWidth = 1;
  canvas.dataset.points = String(all.length);
}
