// Drives the dashboard in headless Chromium (puppeteer-core, Debian's chromium)
// against a real service, as a user would: every view renders the service's
// data, Apply applies the plan on screen, Approve pins a changed tool again,
// the restart button restarts, a broken config file shows where it is broken;
// a screenshot of every view at 1280x800 and at 390x844 is saved.
//
// Usage: node dashboard.mjs URL#token=... CONFIG_DIR STAGE_DIR SHOTS_DIR
//   The service runs in manual mode with servers alpha (logs a tick every half
//   second; environment API_KEY=some-secret-value), beta (a task runner) and
//   notes (tests/fixtures/servers/rugpull.py), tool pinning enforced, nothing
//   applied yet. STAGE_DIR holds next.yaml (the config with notes' tool
//   description changed) and mcp-servers.yaml (a broken file), which this
//   script moves into CONFIG_DIR when their turn comes.
// Env: PUPPETEER_CORE (path to the puppeteer-core module), CHROMIUM (binary).
// Prints one JSON line with what it saw; exits non-zero on failure.
import { copyFileSync, renameSync } from "node:fs";
import { join } from "node:path";

const [url, configDir, stageDir, shotsDir] = process.argv.slice(2);
const SECRET = "some-secret-value";
const WAIT = { timeout: 25000, polling: 100 };
const start = new URL(url);
const token = new URLSearchParams(start.hash.slice(1)).get("token");
const address = (path) => `${start.origin}${path}#token=${encodeURIComponent(token)}`;

const { default: puppeteer } = await import(process.env.PUPPETEER_CORE);
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM,
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const seen = { steps: [], shots: [] };
let page;
const fail = async (why) => {
  const dump = page ? await page.evaluate(() => document.body.innerText).catch(() => "") : "";
  if (page) await page.screenshot({ path: join(shotsDir, "failure.png"), fullPage: true }).catch(() => {});
  console.error(why + "\nsteps: " + seen.steps.join(" > ") + "\npage:\n" + dump);
  await browser.close();
  process.exit(1);
};
const check = async (ok, why) => { if (!ok) await fail(why); };
const step = (name) => seen.steps.push(name);

// Waits until `fn` (run in the page, with `arg`) is truthy; names the wait on failure.
async function until(what, fn, arg) {
  try {
    return await (await page.waitForFunction(fn, WAIT, arg)).jsonValue();
  } catch (e) {
    await fail(`timed out waiting for ${what}: ${e.message}`);
  }
}
const text = (selector) => page.$eval(selector, (e) => e.textContent);
const hasText = (what, selector, pattern) => until(what, ([sel, source, flags]) => {
  const el = document.querySelector(sel);
  return !!el && new RegExp(source, flags).test(el.textContent);
}, [selector, pattern.source, pattern.flags]);
const click = async (selector) => {
  await until(`${selector} to be clickable`, (sel) => {
    const el = document.querySelector(sel);
    return !!el && !el.disabled;
  }, selector);
  await page.click(selector);
};
// The service's API, straight (to cause a live event).
const api = (path, method = "GET") => fetch(`${start.origin}/api/v1${path}`, {
  method, headers: { Authorization: `Bearer ${token}` },
}).then((r) => r.json());

// What every view must hold to: no secret in the page at all, no emoji (they
// are empty boxes without an emoji font), the token only in the fragment.
async function clean(view) {
  const html = await page.content();
  await check(!html.includes(SECRET), `${view}: the secret is in the page`);
  const body = await page.evaluate(() => document.body.innerText);
  await check(!/\p{Extended_Pictographic}/u.test(body), `${view}: emoji in the page text: ${body.match(/\p{Extended_Pictographic}/u)}`);
  const where = new URL(page.url());
  await check(!(where.pathname + where.search).includes(token) && where.hash.includes(token),
    `${view}: the token is not (only) in the fragment: ${where.pathname}${where.search}`);
  // Nothing wider than the screen (no sideways scrolling on a phone).
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await check(overflow <= 1, `${view}: the page is ${overflow}px wider than the screen`);
  seen.viewsChecked = (seen.viewsChecked || 0) + 1;
}

async function shot(name) {
  const viewport = page.viewport();
  const file = `${name}-${viewport.width}x${viewport.height}.png`;
  await page.screenshot({ path: join(shotsDir, file), fullPage: true });
  seen.shots.push(file);
}

const nav = (view) => click(`nav.views a[data-view="${view}"]`);
const row = (name) => `#servers tr[data-server="${name}"]`;

try {
  page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));

  step("list before apply");
  await page.goto(url, { waitUntil: "domcontentloaded" });
  for (const name of ["alpha", "beta", "notes"]) await until(`the ${name} row`, (sel) => !!document.querySelector(sel), row(name));
  await hasText("the pending plan banner", "#pending", /waiting for apply/);

  step("plan: the servers to start");
  await nav("plan");
  await check(new URL(page.url()).pathname === "/plan", "the Plan link leads to /plan");
  await hasText("alpha's start in the plan", '#plan .act[data-server="alpha"]', /\+ start\s+alpha/);
  await hasText("the reason", '#plan .act[data-server="alpha"] .why', /# alpha will be started: new server/);
  await hasText("the summary", "#plan-total", /Plan: 3 to start, 0 to restart, 0 to update, 0 to stop\./);
  await hasText("the Apply button", "#apply", /Apply 3 actions/);
  await clean("plan");
  await shot("plan");
  await click("#apply");
  await hasText("the answer to Apply", "#message", /^Applied/);
  await hasText("nothing left to do", "#plan-total", /No changes/);
  seen.applied = await text("#message");

  step("list");
  await nav("servers");
  for (const name of ["alpha", "beta"]) {
    await until(`${name} running and healthy, with its shape`, (sel) => {
      const r = document.querySelector(sel);
      return !!r && r.querySelector('svg.shape[data-health="healthy"]') && /running/.test(r.textContent) && /healthy/.test(r.textContent);
    }, row(name));
  }
  await until("a latency sparkline", (sel) => !!document.querySelector(sel + " .c-lat svg.spark polyline"), row("alpha"));
  seen.before = await text(row("alpha"));
  await clean("list");
  await shot("servers");

  step("server page");
  await click(`${row("alpha")} .c-server a`);
  await check(new URL(page.url()).pathname === "/servers/alpha", "the server's link leads to /servers/alpha");
  const serverPage = async () => {
    await hasText("the spec", '#spec tr[data-field="command"]', /sh/);
    await hasText("the secret shown as (sensitive)", '#spec tr[data-field="environment"]', /API_KEY:\s*\(sensitive\)/);
    await until("tools with their pins", () => document.querySelectorAll('#tools tr[data-tool][data-pin="pinned"]').length >= 3);
    await hasText("the log tail", "#log", /alpha: tick \d+/);
    await until("its events", () => document.querySelectorAll("#server-events tr[data-seq]").length > 0);
    await hasText("its restart history", "#restarts", /start alpha: new server/);
    await hasText("its process id", '#stats [data-stat="pids"]', /^\d+/);
  };
  await serverPage();
  // The log is live: a later line arrives while the page is open.
  const lastTick = () => page.$eval("#log", (e) => Math.max(...[...e.textContent.matchAll(/tick (\d+)/g)].map((m) => Number(m[1]))));
  const tick = await lastTick();
  await until("a new log line", ([n]) => Math.max(...[...document.getElementById("log").textContent.matchAll(/tick (\d+)/g)].map((m) => Number(m[1]))) > n, [tick]);
  await clean("server");
  await shot("server");
  // The address is the view: a reload shows the same.
  await page.reload({ waitUntil: "domcontentloaded" });
  await serverPage();
  await clean("server after a reload");
  seen.alphaPid = Number((await text('#stats [data-stat="pids"]')).match(/\d+/)[0]);

  step("restart button");
  await page.goBack({ waitUntil: "domcontentloaded" });
  await until("the list again", (sel) => !!document.querySelector(sel), row("alpha"));
  await click(`${row("alpha")} button[data-action="restart"]`);
  // The page shows the service's answer to the click.
  await hasText("the answer to restart", "#message", /restart/i);
  seen.message = await text("#message");

  step("events");
  await nav("events");
  await until("past events", () => document.querySelectorAll("#events tr[data-seq]").length > 3);
  const last = await page.$$eval("#events tr[data-seq]", (rows) => Math.max(...rows.map((r) => Number(r.dataset.seq))));
  await api("/servers/beta/restart", "POST");
  await until("the restart of beta, live", ([n]) => [...document.querySelectorAll("#events tr[data-seq]")]
    .some((r) => Number(r.dataset.seq) > n && /restart-server beta/.test(r.textContent)), [last]);
  await clean("events");
  await shot("events");

  step("plan: a changed server");
  // notes' tool description changes (a "rug pull"); manual mode holds the restart.
  copyFileSync(join(stageDir, "next.yaml"), join(configDir, ".next.yaml.tmp"));
  renameSync(join(configDir, ".next.yaml.tmp"), join(configDir, "mcp-manager.yaml"));
  await nav("plan");
  await hasText("notes' restart in the plan", '#plan .act[data-server="notes"]', /-\/\+ restart\s+notes/);
  await hasText("the field diff", '#plan .chg[data-field="environment.TOOL_DESCRIPTION"]',
    /~ environment\.TOOL_DESCRIPTION: \(sensitive value changed\)\s+# forces restart/);
  await hasText("the Apply button", "#apply", /Apply 1 action/);
  await clean("plan with a change");
  await shot("plan-change");
  await click("#apply");
  await hasText("the answer to Apply", "#message", /^Applied: 0 to start, 1 to restart/);

  step("approve");
  await page.goto(address("/servers/notes"), { waitUntil: "domcontentloaded" });
  await until("read_note changed since pinned", () => !!document.querySelector('#tools tr[data-tool="read_note"][data-pin="changed"]'));
  await hasText("the change, reported", "#tools tr.tool-diff", /id_rsa/);
  await clean("server with a changed tool");
  await shot("server-changed-tool");
  await click('#tools button[data-action="approve"][data-tool="read_note"]');
  await hasText("the answer to Approve", "#message", /Approved read_note/);
  await until("read_note pinned again", () => !!document.querySelector('#tools tr[data-tool="read_note"][data-pin="pinned"]'));
  await check(!(await page.$('#tools button[data-action="approve"]')), "an Approve button is left");
  seen.approved = await text("#message");

  step("config error");
  copyFileSync(join(stageDir, "mcp-servers.yaml"), join(configDir, "mcp-servers.yaml"));
  await nav("servers");
  await hasText("the error's place", "#config-errors .diag", /mcp-servers\.yaml:\d+:\d+/);
  await hasText("the source snippet", "#config-errors pre.snippet", /restart_delay: \u2026[\s\S]*\^/);
  seen.configError = (await text("#config-errors .diag")).replace(/\s+/g, " ").trim();
  await clean("list with a config error");
  await shot("config-error");

  step("phone");
  await page.setViewport({ width: 390, height: 844 });
  for (const [path, name, ready] of [
    ["/", "servers", `${row("alpha")} svg.shape`],
    ["/servers/alpha", "server", "#tools tr[data-tool]"],
    ["/plan", "plan", "#plan-total"],
    ["/events", "events", "#events tr[data-seq]"],
  ]) {
    // The last address without the token: the tab kept it (and puts it back
    // in the fragment, so that the address can be bookmarked as it is).
    const target = path === "/events" ? start.origin + path : address(path);
    await page.goto(target, { waitUntil: "domcontentloaded" });
    await until(`${path} at phone width`, (sel) => !!document.querySelector(sel), ready);
    if (name === "server") await hasText("the log tail", "#log", /tick/);
    await clean(`${path} at phone width`);
    await shot(name);
  }

  await check(!errors.length, "page errors: " + errors.join("; "));
  console.log(JSON.stringify(seen));
} catch (e) {
  await fail(String(e && e.stack || e));
}
await browser.close();
