// Drives the dashboard in headless Chromium (puppeteer-core, Debian's chromium):
// checks that it renders every server and that a restart button works.
// Usage: node dashboard.mjs URL#token=... SERVER OTHER-SERVER
// Env: PUPPETEER_CORE (path to the puppeteer-core module), CHROMIUM (binary).
// Prints one JSON line with what it saw; exits non-zero on failure.
const [url, server, other] = process.argv.slice(2);
const { default: puppeteer } = await import(process.env.PUPPETEER_CORE);
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const fail = async (why) => { console.error(why); await browser.close(); process.exit(1); };
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url, { waitUntil: "domcontentloaded" });
  const row = (name) => `tr[data-server="${name}"]`;
  await page.waitForSelector(row(server), { timeout: 30000 });
  await page.waitForSelector(row(other), { timeout: 30000 });
  await page.waitForFunction(
    (sel) => document.querySelector(sel)?.textContent.includes("healthy"),
    { timeout: 30000 }, row(server));
  const before = await page.$eval(row(server), (r) => r.textContent);
  const tokenInUrl = page.url().includes("token=");
  await page.click(`${row(server)} button[data-action="restart"]`);
  // The page shows the service's answer to the click.
  await page.waitForFunction(
    () => /restart/i.test(document.getElementById("message").textContent),
    { timeout: 30000 });
  const message = await page.$eval("#message", (e) => e.textContent);
  if (errors.length) await fail("page errors: " + errors.join("; "));
  console.log(JSON.stringify({ before, message, tokenInUrl }));
} catch (e) {
  const pages = await browser.pages();
  const dump = pages.length ? await pages[pages.length - 1].evaluate(() => document.body.innerText).catch(() => "") : "";
  await fail(String(e) + "\npage:\n" + dump);
}
await browser.close();
