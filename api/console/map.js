// The live map: an equirectangular projection on a <canvas>, the islands' outline,
// the service area's box, the drivers (one small square each, batched per colour so
// 10,000 of them are three fills), the open rides and, when a ride is selected, its
// trace. Drag pans, the wheel zooms; every draw is timed with performance.now().

import { ISLANDS } from "./outline.js";

const COLOURS = ["#6ea8fe", "#35d07f", "#ffb020"]; // online, available, busy
const RIDE = "#ff5c8a";

export class MapView {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { alpha: false });
    this.area = { min_lat: -11, max_lat: 6, min_lon: 95, max_lon: 141 };
    this.points = new Float64Array(0); // lat, lon, state triples
    this.rides = [];
    this.trace = null;
    this.draws = []; // the last draw times, ms
    this.lastDrawMs = 0;
    this.scheduled = false;
    this.fitArea();
    this.listen();
  }

  // Pixels per degree of longitude, and of latitude (scaled by cos(lat) at the centre).
  get kx() { return this.scale; }
  get ky() { return this.scale / Math.max(0.2, Math.cos((this.centre[1] * Math.PI) / 180)); }

  x(lon) { return (lon - this.centre[0]) * this.kx + this.canvas.width / 2; }
  y(lat) { return (this.centre[1] - lat) * this.ky + this.canvas.height / 2; }

  fit(minLon, minLat, maxLon, maxLat, margin = 1.1) {
    const w = Math.max(maxLon - minLon, 0.01) * margin;
    const h = Math.max(maxLat - minLat, 0.01) * margin;
    this.centre = [(minLon + maxLon) / 2, (minLat + maxLat) / 2];
    const cos = Math.max(0.2, Math.cos((this.centre[1] * Math.PI) / 180));
    this.scale = Math.min(this.canvas.width / w, (this.canvas.height / h) * cos);
    this.request();
  }

  fitArea() {
    const a = this.area;
    this.fit(a.min_lon, a.min_lat, a.max_lon, a.max_lat, 1.04);
  }

  // Fits the drivers and open rides (or the whole area when there are none).
  fitDrivers() {
    let minLat = Infinity, maxLat = -Infinity, minLon = Infinity, maxLon = -Infinity;
    const p = this.points;
    for (let i = 0; i < p.length; i += 3) {
      if (p[i] < minLat) minLat = p[i];
      if (p[i] > maxLat) maxLat = p[i];
      if (p[i + 1] < minLon) minLon = p[i + 1];
      if (p[i + 1] > maxLon) maxLon = p[i + 1];
    }
    for (const r of this.rides) {
      for (const [lat, lon] of [r.pickup, r.destination]) {
        minLat = Math.min(minLat, lat); maxLat = Math.max(maxLat, lat);
        minLon = Math.min(minLon, lon); maxLon = Math.max(maxLon, lon);
      }
    }
    if (minLat === Infinity) return this.fitArea();
    this.fit(minLon, minLat, maxLon, maxLat, 1.25);
  }

  fitTrace() {
    const t = this.trace;
    if (!t) return;
    const pts = [...t.points.map((p) => [p.lat, p.lon])];
    if (t.pickup) pts.push(t.pickup);
    if (t.destination) pts.push(t.destination);
    if (!pts.length) return;
    const lats = pts.map((p) => p[0]);
    const lons = pts.map((p) => p[1]);
    this.fit(Math.min(...lons), Math.min(...lats), Math.max(...lons), Math.max(...lats), 1.4);
  }

  setSnapshot(snapshot) {
    this.area = snapshot.service_area || this.area;
    this.points = Float64Array.from(snapshot.drivers.points);
    this.rides = snapshot.rides;
    this.request();
  }

  setTrace(trace) {
    this.trace = trace;
    if (trace) this.fitTrace();
    this.request();
  }

  request() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      this.draw();
    });
  }

  draw() {
    const started = performance.now();
    const { ctx, canvas } = this;
    ctx.fillStyle = "#0b1118";
    ctx.fillRect(0, 0, canvas.width, canvas.height);

    // Land.
    ctx.fillStyle = "#22313f";
    ctx.strokeStyle = "#3b5166";
    ctx.lineWidth = 1;
    for (const island of ISLANDS) {
      ctx.beginPath();
      island.points.forEach(([lon, lat], i) => (i ? ctx.lineTo(this.x(lon), this.y(lat)) : ctx.moveTo(this.x(lon), this.y(lat))));
      ctx.closePath();
      ctx.fill();
      ctx.stroke();
    }
    // The service area.
    const a = this.area;
    ctx.strokeStyle = "#52606d";
    ctx.setLineDash([6, 4]);
    ctx.strokeRect(this.x(a.min_lon), this.y(a.max_lat), this.x(a.max_lon) - this.x(a.min_lon), this.y(a.min_lat) - this.y(a.max_lat));
    ctx.setLineDash([]);

    // Drivers: one path per state.
    const size = this.scale > 2000 ? 5 : 3;
    const half = size / 2;
    const p = this.points;
    const w = canvas.width, h = canvas.height;
    for (let s = 0; s < 3; s++) {
      ctx.beginPath();
      for (let i = 0; i < p.length; i += 3) {
        if (p[i + 2] !== s) continue;
        const x = this.x(p[i + 1]), y = this.y(p[i]);
        if (x < -size || y < -size || x > w + size || y > h + size) continue;
        ctx.rect(x - half, y - half, size, size);
      }
      ctx.fillStyle = COLOURS[s];
      ctx.fill();
    }

    // Open rides: pickup to destination, the driver joined to the pickup.
    ctx.strokeStyle = RIDE;
    ctx.fillStyle = RIDE;
    ctx.globalAlpha = 0.8;
    ctx.beginPath();
    for (const r of this.rides) {
      ctx.moveTo(this.x(r.pickup[1]), this.y(r.pickup[0]));
      ctx.lineTo(this.x(r.destination[1]), this.y(r.destination[0]));
    }
    ctx.stroke();
    ctx.beginPath();
    for (const r of this.rides) {
      ctx.moveTo(this.x(r.pickup[1]) + 3.5, this.y(r.pickup[0]));
      ctx.arc(this.x(r.pickup[1]), this.y(r.pickup[0]), 3.5, 0, 2 * Math.PI);
    }
    ctx.fill();
    ctx.globalAlpha = 1;

    if (this.trace) this.drawTrace();
    const ms = performance.now() - started;
    this.lastDrawMs = ms;
    this.draws.push(ms);
    if (this.draws.length > 240) this.draws.shift();
    canvas.dataset.drivers = String(p.length / 3);
    canvas.dataset.rides = String(this.rides.length);
    canvas.dataset.drawMs = ms.toFixed(2);
    if (this.onDraw) this.onDraw(ms);
  }

  drawTrace() {
    const { ctx } = this;
    const t = this.trace;
    const mark = (lat, lon, colour, r) => {
      ctx.fillStyle = colour;
      ctx.beginPath();
      ctx.arc(this.x(lon), this.y(lat), r, 0, 2 * Math.PI);
      ctx.fill();
    };
    const billed = t.points.filter((p) => p.kind !== "rejected");
    ctx.strokeStyle = "#ffffff";
    ctx.lineWidth = 3;
    ctx.beginPath();
    billed.forEach((p, i) => (i ? ctx.lineTo(this.x(p.lon), this.y(p.lat)) : ctx.moveTo(this.x(p.lon), this.y(p.lat))));
    ctx.stroke();
    ctx.lineWidth = 1;
    for (const p of t.points) mark(p.lat, p.lon, p.kind === "rejected" ? "#ff6b6b" : "#ffffff", p.kind === "start" ? 5 : 2.5);
    if (t.pickup) mark(t.pickup[0], t.pickup[1], "#35d07f", 6);
    if (t.destination) mark(t.destination[0], t.destination[1], RIDE, 6);
  }

  listen() {
    const c = this.canvas;
    let drag = null;
    const ratio = () => c.width / c.getBoundingClientRect().width;
    c.addEventListener("pointerdown", (e) => {
      drag = { x: e.clientX, y: e.clientY, centre: [...this.centre] };
      c.setPointerCapture(e.pointerId);
    });
    c.addEventListener("pointermove", (e) => {
      if (!drag) return;
      const r = ratio();
      this.centre = [
        drag.centre[0] - ((e.clientX - drag.x) * r) / this.kx,
        drag.centre[1] + ((e.clientY - drag.y) * r) / this.ky,
      ];
      this.request();
    });
    c.addEventListener("pointerup", () => (drag = null));
    c.addEventListener("wheel", (e) => {
      e.preventDefault();
      const rect = c.getBoundingClientRect();
      const r = ratio();
      const px = (e.clientX - rect.left) * r, py = (e.clientY - rect.top) * r;
      const lon = this.centre[0] + (px - c.width / 2) / this.kx;
      const lat = this.centre[1] - (py - c.height / 2) / this.ky;
      this.scale *= e.deltaY < 0 ? 1.25 : 0.8;
      this.scale = Math.min(Math.max(this.scale, 5), 200000);
      // Keep the point under the cursor where it is.
      this.centre = [lon - (px - c.width / 2) / this.kx, 0];
      this.centre[1] = lat + (py - c.height / 2) / this.ky;
      this.request();
    }, { passive: false });
  }

  // Redraws for `frames` animation frames while panning a little each frame, and
  // reports the draw time and the time between frames (the responsiveness figure).
  bench(frames = 120) {
    return new Promise((resolve) => {
      const draws = [], gaps = [];
      let last = null, n = 0;
      const step = (now) => {
        if (last !== null) gaps.push(now - last);
        last = now;
        this.centre = [this.centre[0] + (n % 2 ? 1 : -1) * (2 / this.kx), this.centre[1]];
        const t = performance.now();
        this.draw();
        draws.push(performance.now() - t);
        if (++n < frames) requestAnimationFrame(step);
        else resolve({ drivers: this.points.length / 3, frames, draw: stats(draws), frame: stats(gaps) });
      };
      requestAnimationFrame(step);
    });
  }
}

function stats(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const q = (f) => s[Math.min(s.length - 1, Math.floor(f * s.length))];
  const mean = s.reduce((a, b) => a + b, 0) / Math.max(1, s.length);
  return { mean: +mean.toFixed(2), p50: +q(0.5).toFixed(2), p95: +q(0.95).toFixed(2), max: +s[s.length - 1].toFixed(2) };
}
