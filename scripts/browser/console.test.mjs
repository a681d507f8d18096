// The console in a real browser (Debian's Chromium driven by playwright-core), run by
// scripts/browser-test.sh while a simulated city runs against the server:
//   1. a passenger's number logs in and is told the console needs the analyst role;
//   2. the analyst logs in by OTP (the development server echoes the code);
//   3. drivers appear on the live map;
//   4. a completed ride appears in the rides list with its fare, and its detail shows
//      the ledger, the accepted payment and the trace;
//   5. every chart has data; the audit panel shows the verify run;
//   6. with 10,000 more drivers in the feed, the map's draw and frame times are
//      measured in the page with performance.now().
// Screenshots go to OUT_DIR. Prints "N passed, M failed" and exits non-zero on a failure.
import { chromium } from "playwright-core";
import { mkdirSync, writeFileSync } from "node:fs";

const url = process.env.CONSOLE_URL;
const analyst = process.env.ANALYST_MSISDN;
const passenger = process.env.PASSENGER_MSISDN;
const out = process.env.OUT_DIR;
const bigDrivers = Number(process.env.BIG_DRIVERS || 10000);
mkdirSync(out, { recursive: true });

let passed = 0, failed = 0;
const results = {};
async function check(name, fn) {
  const started = Date.now();
  try {
    await fn();
    passed++;
    console.log(`ok   ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  } catch (err) {
    failed++;
    console.log(`FAIL ${name}: ${err.message.split("\n")[0]}`);
    await page.screenshot({ path: `${out}/failed-${passed + failed}.png`, fullPage: true }).catch(() => {});
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
});
const page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
const consoleErrors = [];
page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
page.on("pageerror", (e) => consoleErrors.push(String(e)));

async function login(msisdn) {
  await page.fill("#msisdn", msisdn);
  await page.click("#send-code");
  await page.waitForSelector("#token-form:not([hidden])");
  await page.waitForFunction(() => document.querySelector("#otp").value.length === 6);
  await page.click("#log-in");
}

const number = (sel) => page.$eval(sel, (e) => Number(e.textContent));

await check("a passenger is told the console needs the analyst role", async () => {
  await page.goto(`${url}/console`);
  await login(passenger);
  await page.waitForSelector("#wrong-role:not([hidden])", { timeout: 10000 });
  const text = await page.textContent("#wrong-role-message");
  if (!/role is "passenger"/.test(text) || !/analyst/.test(text)) throw new Error(`message: ${text}`);
  if (await page.isVisible("#app")) throw new Error("the console is shown to a passenger");
  await page.screenshot({ path: `${out}/wrong-role.png` });
  await page.click("#wrong-role-logout");
  await page.waitForSelector("#login:not([hidden])");
});

await check("the analyst logs in by OTP", async () => {
  await login(analyst);
  await page.waitForSelector("#app:not([hidden])", { timeout: 10000 });
});

await check("drivers appear on the live map", async () => {
  await page.waitForFunction(() => Number(document.querySelector("#live-online").textContent) > 0
    && Number(document.querySelector("#map").dataset.drivers) > 0, null, { timeout: 90000 });
  results.drivers_seen = await number("#live-online");
  await page.screenshot({ path: `${out}/live-map.png` });
});

await check("a completed ride is in the rides list with its fare, and its detail", async () => {
  await page.selectOption("#ride-filters select[name=status]", "COMPLETED");
  const deadline = Date.now() + 120000;
  for (;;) {
    await page.click("#ride-filters button[type=submit]");
    await page.waitForTimeout(1000);
    if (await page.$("#rides-table tbody tr[data-status=COMPLETED]")) break;
    if (Date.now() > deadline) throw new Error("no completed ride within 120 s");
    await page.waitForTimeout(2000);
  }
  const fare = await page.textContent("#rides-table tbody tr[data-status=COMPLETED] td.fare");
  if (!/^Rp [1-9][0-9,]*$/.test(fare)) throw new Error(`fare cell: ${fare}`);
  results.first_completed_fare = fare;
  await page.click("#rides-table tbody tr[data-status=COMPLETED]");
  await page.waitForSelector("#ride-detail:not([hidden])");
  await page.waitForFunction(() => document.querySelector("#payments-table tbody").textContent.includes("ACCEPTED"));
  const total = await page.textContent("#ledger-total");
  if (!/total Rp [1-9]/.test(total)) throw new Error(`ledger: ${total}`);
  const trace = await page.$eval("#detail-fields", (e) => e.textContent);
  if (!/trace\d+points/.test(trace.replace(/\s/g, ""))) throw new Error(`detail: ${trace}`);
});

await check("every chart has data", async () => {
  await page.selectOption("#revenue-bucket", "hour");
  await page.waitForFunction(() => ["chart-rides", "chart-revenue", "chart-commands", "chart-latency", "chart-lag"]
    .every((id) => Number(document.getElementById(id).dataset.points) > 0), null, { timeout: 60000 });
});

await check("the audit panel shows the verify run", async () => {
  await page.waitForFunction(() => /^Passed/.test(document.querySelector("#audit-verify").textContent), null, { timeout: 120000 });
  const head = await page.textContent("#audit-tree-head");
  if (!/audit log not present|signed|no signed tree head/.test(head)) throw new Error(`tree head: ${head}`);
  await page.screenshot({ path: `${out}/console.png` });
});

await check(`the map stays responsive with ${bigDrivers} more drivers`, async () => {
  await page.click("#clear-trace").catch(() => {});
  await page.waitForFunction((n) => Number(document.querySelector("#live-online").textContent) >= n, bigDrivers, { timeout: 120000 });
  await page.click("#fit-drivers");
  await page.waitForTimeout(1500);
  const bench = await page.evaluate(() => window.consoleMap.bench(180));
  results.bench = bench;
  console.log(`     ${bench.drivers} drivers: draw mean ${bench.draw.mean} ms, p95 ${bench.draw.p95} ms; ` +
    `frame mean ${bench.frame.mean} ms, p95 ${bench.frame.p95} ms`);
  await page.screenshot({ path: `${out}/console-10k.png`, fullPage: true });
  if (bench.drivers < bigDrivers) throw new Error(`only ${bench.drivers} drivers drawn`);
  if (bench.draw.p95 > 50) throw new Error(`draw p95 ${bench.draw.p95} ms is over 50 ms`);
});

await check("no script error in the page", async () => {
  // A refused fetch during the role check is expected; a script error is not.
  const errors = consoleErrors.filter((e) => !/status of 40[13]/.test(e));
  if (errors.length) throw new Error(errors.join(" | "));
});

writeFileSync(`${out}/results.json`, JSON.stringify(results, null, 2));
await browser.close();
console.log(`browser: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
