// The console's calls to the edge. The token lives in sessionStorage (gone with the
// tab) and travels only in the Authorization header, never in a URL.

const TOKEN_KEY = "nebengjek.console.token";
const USER_KEY = "nebengjek.console.user";

export class HttpError extends Error {
  constructor(status, code, message) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

export function session() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const user = sessionStorage.getItem(USER_KEY);
  return token && user ? { token, user: JSON.parse(user) } : null;
}

export function saveSession(token, user) {
  sessionStorage.setItem(TOKEN_KEY, token);
  sessionStorage.setItem(USER_KEY, JSON.stringify(user));
}

export function clearSession() {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(USER_KEY);
}

function headers(extra) {
  const h = { Accept: "application/json", ...extra };
  const s = session();
  if (s) h.Authorization = `Bearer ${s.token}`;
  return h;
}

async function failure(response) {
  let code = "http_" + response.status;
  let message = `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch (_) {
    // Not JSON: keep the status.
  }
  return new HttpError(response.status, code, message);
}

// GET (or POST with `body`) a JSON endpoint of this origin.
export async function call(path, body) {
  const init = body === undefined
    ? { headers: headers() }
    : { method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body) };
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

// Plain text (the Prometheus exposition of /metrics).
export async function text(path) {
  const response = await fetch(path, { headers: headers({ Accept: "text/plain" }) });
  if (!response.ok) throw await failure(response);
  return response.text();
}

// Reads a server-sent event stream with fetch (EventSource cannot send a header) and
// calls onEvent(type, data) for each event until the stream ends or `signal` aborts.
export async function events(path, onEvent, signal) {
  const response = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) type = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(type, data.join("\n"));
    }
  }
}
