// `baton report`'s HTML file in a real (headless) Chromium, offline: it must
// render its sections and charts without a single request leaving the page.
//
// Environment:
//   BATON_REPORT       the HTML file `baton report` wrote
//   BATON_SCREENSHOTS  a folder for the screenshot (report.png; created if missing)
//   BATON_CHROMIUM     optional, the browser (default /usr/bin/chromium)
//
// Exits 1 with what failed.

import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { chromium } from 'playwright-core';

function fail(why) {
  console.error(`report.mjs: ${why}`);
  process.exit(1);
}

const file = process.env.BATON_REPORT || fail('BATON_REPORT is not set');
const shots = process.env.BATON_SCREENSHOTS || fail('BATON_SCREENSHOTS is not set');
fs.mkdirSync(shots, { recursive: true });
const page_url = pathToFileURL(path.resolve(file)).href;

const browser = await chromium.launch({ executablePath: process.env.BATON_CHROMIUM || '/usr/bin/chromium' });
try {
  const context = await browser.newContext({ offline: true, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const requests = [];
  const problems = [];
  page.on('request', (r) => { if (r.url() !== page_url) requests.push(r.url()); });
  page.on('console', (m) => { if (m.type() === 'error') problems.push(m.text()); });
  page.on('pageerror', (e) => problems.push(String(e)));
  await page.goto(page_url, { waitUntil: 'load' });
  const headings = await page.$$eval('h2', (hs) => hs.map((h) => h.textContent));
  for (const want of ['Capacity', 'Pool', 'Preflight', 'Concurrency', 'Charts']) {
    if (!headings.some((t) => t.startsWith(want))) fail(`no "${want}" section; headings: ${headings.join(' | ')}`);
  }
  if (!headings.some((t) => t.startsWith('Diagnosis'))) fail(`no diagnosis; headings: ${headings.join(' | ')}`);
  const answer = await page.textContent('.answer');
  if (!/^This pool serves \d+ agents? at once/.test(answer || '')) fail(`the capacity sentence reads "${answer}"`);
  // Every chart drawn, with a size (an SVG that failed to parse has none).
  const charts = await page.$$eval('figure svg', (svgs) => svgs.map((s) => s.getBoundingClientRect().width));
  if (charts.length < 3 || charts.some((w) => w < 200)) fail(`charts drawn at widths ${charts}`);
  const rows = await page.$$eval('table tr', (trs) => trs.length);
  if (rows < 8) fail(`only ${rows} table rows`);
  await page.screenshot({ path: path.join(shots, 'report.png'), fullPage: true });
  if (requests.length) fail(`the page asked for ${requests.join(', ')}`);
  if (problems.length) fail(`the page reported: ${problems.join('; ')}`);
  console.log(`report.mjs: ${headings.length} sections, ${charts.length} charts, ${rows} table rows, no request`);
} finally {
  await browser.close();
}
