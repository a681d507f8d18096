// The console: login, then the live map, rides, charts and audit panels. Everything
// shown comes from the analyst-only endpoints; text is set with textContent only (no
// HTML is ever built from data).

import { call, clearSession, events, HttpError, saveSession, session, text } from "./api.js";
import { MapView } from "./map.js";
import { bars, lines, formatNumber, PALETTE } from "./charts.js";
import { MetricsHistory, parse } from "./metrics.js";

const $ = (id) => document.getElementById(id);
const show = (id, on) => ($(id).hidden = !on);
const rupiah = (v) => (v === null || v === undefined ? "–" : "Rp " + Number(v).toLocaleString("en-US"));
const km = (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(3));
const utc = (t) => (t ? t.replace("T", " ").replace(/\.\d+/, "").replace("Z", "") : "–");

function message(id, textValue, kind = "") {
  const el = $(id);
  el.textContent = textValue;
  el.className = "message " + kind;
}

function cell(row, value) {
  const td = document.createElement("td");
  td.textContent = value;
  row.appendChild(td);
  return td;
}

// ---- login -------------------------------------------------------------------------

let msisdn = "";

function startLogin(note) {
  clearSession();
  stopApp();
  show("app", false);
  show("wrong-role", false);
  show("whoami", false);
  show("login", true);
  show("token-form", false);
  message("login-message", note || "");
  $("msisdn").focus();
}

$("otp-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  msisdn = $("msisdn").value.trim();
  message("login-message", "sending a code…");
  try {
    const sent = await call("/v1/auth/otp", { msisdn });
    show("token-form", true);
    if (sent.dev_otp) {
      $("otp").value = sent.dev_otp;
      message("login-message", `Development server: the code for ${sent.msisdn} is filled in.`, "ok");
    } else {
      message("login-message", `A code was sent to ${sent.msisdn}.`, "ok");
    }
    $("otp").focus();
  } catch (err) {
    message("login-message", err.message, "error");
  }
});

$("token-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    const issued = await call("/v1/auth/token", { msisdn, otp: $("otp").value.trim() });
    saveSession(issued.token, issued.user);
    enter();
  } catch (err) {
    message("login-message", err.message, "error");
  }
});

for (const id of ["logout", "wrong-role-logout"]) $(id).addEventListener("click", () => startLogin("Logged out."));

function enter() {
  const s = session();
  if (!s) return startLogin();
  show("login", false);
  show("whoami", true);
  $("whoami-name").textContent = `${s.user.fullname || s.user.msisdn} (${s.user.role})`;
  if (s.user.role !== "analyst") {
    show("app", false);
    show("wrong-role", true);
    message("wrong-role-message",
      `You are logged in as ${s.user.msisdn}, whose role is "${s.user.role}". The console needs the analyst role.`, "error");
    return;
  }
  show("wrong-role", false);
  show("app", true);
  startApp();
}

// Any 401 (expired token) sends back to the login; a 403 means the role changed.
function handle(err, where) {
  if (err instanceof HttpError && err.status === 401) return startLogin("Your session has expired; log in again.");
  if (err instanceof HttpError && err.status === 403) {
    show("app", false);
    show("wrong-role", true);
    message("wrong-role-message", "The server refused this account: the console needs the analyst role.", "error");
    stopApp();
    return;
  }
  message(where, err.message, "error");
}

// ---- the running console -----------------------------------------------------------

let map = null;
let running = null; // { abort, timers }

function stopApp() {
  if (!running) return;
  running.abort.abort();
  running.timers.forEach(clearInterval);
  running = null;
}

function startApp() {
  stopApp();
  if (!map) {
    map = new MapView($("map"));
    map.onDraw = (ms) => ($("draw-ms").textContent = ms.toFixed(1));
    $("fit-drivers").addEventListener("click", () => map.fitDrivers());
    $("fit-area").addEventListener("click", () => map.fitArea());
    $("clear-trace").addEventListener("click", () => {
      map.setTrace(null);
      show("clear-trace", false);
      map.fitDrivers();
    });
    window.consoleMap = map; // for the browser test's measurements
  }
  running = { abort: new AbortController(), timers: [] };
  live(running.abort.signal);
  searchRides();
  revenue();
  audit();
  const history = new MetricsHistory();
  scrape(history);
  running.timers.push(setInterval(() => scrape(history), 2000));
  running.timers.push(setInterval(revenue, 10000));
  running.timers.push(setInterval(audit, 15000));
}

// The live feed: reconnects after a drop, fits the view on the first drivers seen.
async function live(signal) {
  let fitted = false;
  while (!signal.aborted) {
    try {
      $("live-status").textContent = "connecting…";
      await events("/v1/console/live", (type, data) => {
        if (type !== "snapshot") {
          $("live-status").textContent = "feed unavailable, retrying";
          return;
        }
        const snap = JSON.parse(data);
        map.setSnapshot(snap);
        $("live-available").textContent = snap.drivers.available;
        $("live-busy").textContent = snap.drivers.busy;
        $("live-online").textContent = snap.drivers.online;
        $("live-rides").textContent = snap.rides.length;
        $("live-searching").textContent = snap.searching;
        $("live-status").textContent = "live " + utc(snap.at).slice(11);
        if (!fitted && !map.trace && (snap.drivers.online || snap.rides.length)) {
          fitted = true;
          map.fitDrivers();
        }
      }, signal);
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof HttpError && (err.status === 401 || err.status === 403)) return handle(err, "rides-message");
      $("live-status").textContent = "disconnected, retrying";
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

// ---- rides -------------------------------------------------------------------------

let nextCursor = null;

function rideQuery(cursor) {
  const form = new FormData($("ride-filters"));
  const q = new URLSearchParams();
  for (const key of ["status", "driver_id", "passenger_id", "limit"]) {
    const v = String(form.get(key) || "").trim();
    if (v) q.set(key, v);
  }
  for (const key of ["from", "to"]) {
    const v = String(form.get(key) || "").trim();
    if (v) q.set(key, new Date(v + "Z").toISOString()); // the inputs are read as UTC
  }
  if (cursor) q.set("cursor", cursor);
  return q;
}

async function searchRides(cursor) {
  try {
    const page = await call("/v1/rides?" + rideQuery(cursor));
    const body = $("rides-table").tBodies[0];
    body.replaceChildren();
    for (const r of page.rides) {
      const row = body.insertRow();
      row.dataset.rideId = r.ride_id;
      row.dataset.status = r.status;
      cell(row, utc(r.created_at));
      cell(row, r.status);
      cell(row, km(r.distance_km));
      cell(row, rupiah(r.fare)).className = "fare";
      cell(row, rupiah(r.adjusted_fare));
      cell(row, r.ride_id.slice(0, 8));
      row.addEventListener("click", () => {
        for (const tr of body.rows) tr.classList.remove("selected");
        row.classList.add("selected");
        rideDetail(r.ride_id);
      });
    }
    nextCursor = page.next_cursor || null;
    $("rides-next").disabled = !nextCursor;
    message("rides-message", page.rides.length ? `${page.rides.length} ride${page.rides.length === 1 ? "" : "s"}${nextCursor ? ", more on the next page" : ""}` : "no ride matches these filters");
  } catch (err) {
    handle(err, "rides-message");
  }
}

$("ride-filters").addEventListener("submit", (e) => {
  e.preventDefault();
  searchRides();
});
$("rides-next").addEventListener("click", () => nextCursor && searchRides(nextCursor));

async function rideDetail(id) {
  try {
    const [ride, ledger, payments, trace] = await Promise.all([
      call(`/v1/rides/${id}`),
      call(`/v1/billing/ledger?ride_id=${id}`),
      call(`/v1/payments?ride_id=${id}`),
      call(`/v1/console/rides/${id}/trace`),
    ]);
    show("ride-detail", true);
    $("detail-id").textContent = ride.ride_id;
    const dl = $("detail-fields");
    dl.replaceChildren();
    const field = (k, v) => {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      dl.append(dt, dd);
    };
    field("status", ride.status);
    field("driver", ride.driver_id);
    field("passenger", ride.passenger_id);
    field("distance", km(ride.distance_km) + " km");
    field("fare", rupiah(ride.fare));
    field("factor", ride.adjustment_factor ?? "–");
    field("paid", rupiah(ride.adjusted_fare));
    field("admin fee / payout", `${rupiah(ride.admin_fee)} / ${rupiah(ride.driver_payout)}`);
    field("created / started", `${utc(ride.created_at)} / ${utc(ride.started_at)}`);
    field("arrived / completed", `${utc(ride.arrived_at)} / ${utc(ride.completed_at)}`);
    if (ride.cancelled_at) field("cancelled", `${utc(ride.cancelled_at)} by ${ride.cancelled_by}: ${ride.cancel_reason}`);
    field("trace", `${trace.points.length} points (${trace.points.filter((p) => p.kind === "rejected").length} rejected)`);

    const lb = $("ledger-table").tBodies[0];
    lb.replaceChildren();
    ledger.entries.forEach((e, i) => {
      const row = lb.insertRow();
      cell(row, String(i + 1));
      cell(row, e.kind);
      cell(row, km(e.distance_km));
      cell(row, rupiah(e.cost));
      cell(row, utc(e.recorded_at));
    });
    $("ledger-total").textContent = `${ledger.entries.length} entries, total ${rupiah(ledger.total)}`;
    const pb = $("payments-table").tBodies[0];
    pb.replaceChildren();
    for (const p of payments.payments) {
      const row = pb.insertRow();
      cell(row, p.status);
      cell(row, rupiah(p.adjusted_cost));
      cell(row, rupiah(p.admin_fee));
      cell(row, rupiah(p.driver_payout));
      cell(row, String(p.attempts));
      cell(row, utc(p.updated_at));
    }
    if (!payments.payments.length) cell(pb.insertRow(), "no payment yet");
    map.setTrace(trace);
    show("clear-trace", true);
  } catch (err) {
    handle(err, "rides-message");
  }
}

// ---- charts ------------------------------------------------------------------------

$("revenue-bucket").addEventListener("change", () => revenue());

async function revenue() {
  const bucket = $("revenue-bucket").value;
  const to = new Date();
  const from = new Date(to.getTime() - (bucket === "hour" ? 24 * 3600e3 : 30 * 86400e3));
  try {
    const r = await call(`/v1/analytics/revenue?bucket=${bucket}&from=${from.toISOString()}&to=${to.toISOString()}`);
    // Every bucket of the period, the empty ones too, so a bar's width means its time.
    const width = bucket === "hour" ? 3600e3 : 86400e3;
    const byStart = new Map(r.buckets.map((b) => [new Date(b.bucket_start).getTime(), b]));
    const slots = [];
    for (let t = Math.floor(from.getTime() / width) * width; t < to.getTime(); t += width) slots.push(t);
    const at = (t) => byStart.get(t) || { rides: 0, revenue: 0 };
    const labels = slots.map((t) => new Date(t).toISOString().slice(bucket === "hour" ? 11 : 5, 16).slice(0, 5));
    const hasData = r.buckets.length > 0;
    bars($("chart-rides"), labels, hasData ? slots.map((t) => at(t).rides) : [], PALETTE[0]);
    bars($("chart-revenue"), labels, hasData ? slots.map((t) => at(t).revenue) : [], PALETTE[1]);
  } catch (err) {
    handle(err, "rides-message");
  }
}

async function scrape(history) {
  try {
    history.push(Date.now(), parse(await text("/metrics")));
  } catch (_) {
    return; // the charts keep their last samples
  }
  const s = history.series;
  lines($("chart-commands"), [{ name: "cmd/s", points: s.commands }]);
  lines($("chart-latency"), [{ name: "p50", points: s.p50 }, { name: "p99", points: s.p99, colour: PALETTE[1] }]);
  lines($("chart-lag"), [
    { name: "proj", points: s.projections },
    { name: "relay", points: s.relay, colour: PALETTE[1] },
    { name: "geo", points: s.geo, colour: PALETTE[2] },
  ]);
}

// ---- audit -------------------------------------------------------------------------

async function audit() {
  try {
    const a = await call("/v1/console/audit");
    $("audit-head").textContent = formatNumber(a.head_position);
    const findings = $("audit-findings");
    findings.replaceChildren();
    const v = a.verify;
    if (!v) {
      message("audit-verify", "No verify run recorded yet: run `replay-tools verify`.");
    } else {
      const what = `${v.events} events, ${v.aggregates} aggregates, ${v.rides} rides` +
        (v.window_from ? ` recorded ${utc(v.window_from)} – ${utc(v.window_to)}` : "");
      if (v.passed) {
        message("audit-verify", `Passed at ${utc(v.finished_at)} UTC: ${what}; every chain intact, read models agree.`, "ok");
      } else {
        message("audit-verify", `FAILED at ${utc(v.finished_at)} UTC: ${v.chain_breaks} broken chains, ${v.row_diffs} differing rows, ${v.unreadable} unreadable events (${what}).`, "error");
        for (const f of (v.findings || []).slice(0, 20)) {
          const li = document.createElement("li");
          li.textContent = f;
          findings.appendChild(li);
        }
      }
    }
    if (!a.audit_log) {
      message("audit-tree-head", "audit log not present in this database (no tree_heads table).");
    } else if (!a.tree_head) {
      message("audit-tree-head", "The audit log has no signed tree head yet.");
    } else {
      const h = a.tree_head;
      message("audit-tree-head", `${h.tree_size} events, root ${h.root_hash.slice(0, 16)}…, signed ${utc(h.timestamp)} UTC by key ${h.key_id.slice(0, 12)}…`, "ok");
    }
  } catch (err) {
    handle(err, "audit-verify");
  }
}

// ---- start -------------------------------------------------------------------------

if (session()) enter();
else startLogin();
