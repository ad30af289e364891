// The plan view's Apply button for a plan the mass-removal guard holds (in
// auto mode): it shows the held plan, applies it, and then shows no changes.
// Usage: node apply_held_plan.mjs URL#token=... SHOTS_DIR
// Env: PUPPETEER_CORE (path to the puppeteer-core module), CHROMIUM (binary).
// Prints one JSON line with what it saw; exits non-zero on failure.
import { join } from "node:path";

const [url, shotsDir] = process.argv.slice(2);
const { default: puppeteer } = await import(process.env.PUPPETEER_CORE);
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage();
const errors = [];
page.on("pageerror", (e) => errors.push(String(e)));
const fail = async (why) => {
  const text = await page.evaluate(() => document.body.innerText).catch(() => "");
  console.error(why + "\npage:\n" + text);
  await browser.close();
  process.exit(1);
};
try {
  await page.setViewport({ width: 1280, height: 800 });
  const start = new URL(url);
  await page.goto(`${start.origin}/plan${start.hash}`, { waitUntil: "domcontentloaded" });
  await page.waitForSelector("#apply", { timeout: 30000 });
  const held = await page.evaluate(() => document.body.innerText);
  const button = await page.$eval("#apply", (b) => b.textContent);
  await page.screenshot({ path: join(shotsDir, "plan-held-1280x800.png"), fullPage: true });
  await page.click("#apply");
  await page.waitForFunction(() => /No changes/.test(document.body.innerText), { timeout: 30000 });
  const after = await page.evaluate(() => document.body.innerText);
  if (errors.length) await fail("page errors: " + errors.join("; "));
  console.log(JSON.stringify({ held, button, after }));
} catch (e) {
  await fail(String(e && e.stack || e));
}
await browser.close();
