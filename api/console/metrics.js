// Reads this process's Prometheus text (/metrics) into the console's time series:
// WebSocket commands/s, ack latency (p50, p99) and the projections', relay's and geo
// projection's lag. Latency comes from histogram buckets when the exporter has them,
// else from a summary's quantiles (the slowest command type's).

// Parses the exposition format into [{name, labels, value}].
export function parse(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[3]) for (const l of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    const value = Number(m[4]);
    if (!Number.isNaN(value)) out.push({ name: m[1], labels, value });
  }
  return out;
}

const sum = (samples, name, pred = () => true) =>
  samples.filter((s) => s.name === name && pred(s.labels)).reduce((a, s) => a + s.value, 0);

const max = (samples, name) => {
  const xs = samples.filter((s) => s.name === name).map((s) => s.value);
  return xs.length ? Math.max(...xs) : null;
};

// Cumulative bucket counts of a histogram summed over its other labels: [[le, count]].
function buckets(samples, name) {
  const by = new Map();
  for (const s of samples) {
    if (s.name !== name + "_bucket") continue;
    const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
    by.set(le, (by.get(le) || 0) + s.value);
  }
  return [...by.entries()].sort((a, b) => a[0] - b[0]);
}

// The q-quantile of the observations between two scrapes of a histogram.
export function quantile(before, after, q) {
  const prev = new Map(before);
  const diff = after.map(([le, c]) => [le, c - (prev.get(le) || 0)]);
  const total = diff.length ? diff[diff.length - 1][1] : 0;
  if (total <= 0) return null;
  const rank = q * total;
  let lower = 0, below = 0;
  for (const [le, c] of diff) {
    if (c >= rank) {
      if (le === Infinity) return lower;
      return lower + ((le - lower) * (rank - below)) / Math.max(1e-12, c - below);
    }
    lower = le;
    below = c;
  }
  return lower;
}

const LATENCY = "nebengjek_ws_command_seconds";

export class MetricsHistory {
  constructor(keepMs = 5 * 60 * 1000) {
    this.keepMs = keepMs;
    this.previous = null;
    this.series = { commands: [], p50: [], p99: [], projections: [], relay: [], geo: [] };
  }

  push(t, samples) {
    const commands = sum(samples, "nebengjek_ws_commands_total");
    const hist = buckets(samples, LATENCY);
    const cur = { t, commands, hist };
    const add = (key, v) => {
      if (v === null || v === undefined || !Number.isFinite(v)) return;
      this.series[key].push([t, v]);
    };
    if (this.previous) {
      const dt = (t - this.previous.t) / 1000;
      if (dt > 0) add("commands", Math.max(0, commands - this.previous.commands) / dt);
      if (hist.length) {
        const p50 = quantile(this.previous.hist, hist, 0.5);
        const p99 = quantile(this.previous.hist, hist, 0.99);
        if (p50 !== null) add("p50", p50 * 1000);
        if (p99 !== null) add("p99", p99 * 1000);
      }
    }
    if (!hist.length) {
      // A summary: its quantiles per command type; the slowest type's stands for all.
      const q = (v) => {
        const xs = samples.filter((s) => s.name === LATENCY && s.labels.quantile === v).map((s) => s.value);
        return xs.length ? Math.max(...xs) * 1000 : null;
      };
      add("p50", q("0.5"));
      add("p99", q("0.99"));
    }
    add("projections", max(samples, "nebengjek_projection_lag_events"));
    add("relay", max(samples, "nebengjek_relay_lag_events"));
    add("geo", max(samples, "nebengjek_geo_projection_lag_events"));
    this.previous = cur;
    for (const k of Object.keys(this.series)) this.series[k] = this.series[k].filter((p) => p[0] >= t - this.keepMs);
  }
}
