// A user's day with Baton's dashboard, in a real (headless) Chromium.
//
// Environment:
//   BATON_DASHBOARD_URL  the dashboard link `baton dashboard` prints, with `#token=...`
//   BATON_SCREENSHOTS    a folder for the screenshots (created if missing)
//   BATON_LAB            a JSON file describing the loopback lab:
//     {
//       "cidr": "127.0.0.8/29",       // Discover scans this; the lab's studios listen in it
//       "studios": 2,                 // how many LLM servers Discover must find there (default 1)
//       "refusing": {"host": "127.0.0.15", "port": 1234},
//                                     // an address where nothing listens: added by hand
//                                     // in the Studios form, it must fail preflight with a fix
//       "model": "mistral-7b-instruct-v0.2"
//                                     // optional: the model to ask the endpoint for
//                                     // (default: the first of its /v1/models)
//     }
//   BATON_CHROMIUM       optional, the browser (default /usr/bin/chromium)
//
// The walk: open the dashboard -> Studios: Discover on the lab's CIDR finds the
// studios -> Add all, and add the refusing studio by hand -> Preflight: the
// refusing studio fails with its fix -> Overview: Start balancer -> requests
// sent to the endpoint with Node's fetch show up in the live figures ->
// Benchmarks: a short run, its tables and charts, hover a point and read its
// value -> a second run -> compare the two -> screenshots of every view, light
// and dark, 1280x800 and 380x700, and the popover -> Stop balancer, and the
// endpoint stops answering. Exits 1 with the failing step on any failure.
//
// Run: cd tests/ui && npm ci && BATON_DASHBOARD_URL=... BATON_SCREENSHOTS=... BATON_LAB=... node day.mjs

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const need = (name) => process.env[name] || fail(`setup`, new Error(`${name} is not set (see the top of day.mjs)`));
const URL_ = need('BATON_DASHBOARD_URL');
const SHOTS = need('BATON_SCREENSHOTS');
const lab = JSON.parse(fs.readFileSync(need('BATON_LAB'), 'utf8'));
for (const [key, ok] of [['cidr', typeof lab.cidr === 'string'], ['refusing', lab.refusing?.host && lab.refusing?.port]]) {
  if (!ok) fail('setup', new Error(`BATON_LAB lacks "${key}" (see the top of day.mjs)`));
}
const origin = new URL(URL_).origin;
fs.mkdirSync(SHOTS, { recursive: true });

const userData = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-ui-'));
let ctx;
let page;
const problems = [];

function fail(step, err) {
  console.error(`FAIL: ${step}: ${err?.message || err}`);
  process.exit(1);
}

async function step(name, fn) {
  const t = Date.now();
  try {
    await fn();
    console.log(`ok   ${name} (${((Date.now() - t) / 1000).toFixed(1)} s)`);
  } catch (err) {
    if (page) await page.screenshot({ path: path.join(SHOTS, 'failure.png'), fullPage: true }).catch(() => {});
    await ctx?.close().catch(() => {});
    fail(name, err);
  }
}

function check(cond, message) {
  if (!cond) throw new Error(message);
}

const go = (view) => page.evaluate((v) => { location.hash = `view=${v}`; }, view);
const button = (name, scope = page) => scope.getByRole('button', { name, exact: true });

// Controls without an accessible name (label, aria-label or text), in view.
const unnamed = () => page.evaluate(() => [...document.querySelectorAll('button, a[href], input, select, textarea')]
  .filter((el) => el.getClientRects().length)
  .filter((el) => !(el.getAttribute('aria-label') || [...(el.labels || [])].some((l) => l.textContent.trim()) || el.textContent.trim() || el.title))
  .map((el) => el.outerHTML.slice(0, 100)));

async function shoot(name) {
  await page.waitForTimeout(300); // let the last event's redraw land
  await page.evaluate(() => window.scrollTo(0, 0)); // else the sticky bar lands mid-page
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

await step('launch Chromium', async () => {
  ctx = await chromium.launchPersistentContext(userData, {
    executablePath: process.env.BATON_CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 800 },
  });
  page = ctx.pages()[0] || await ctx.newPage();
  page.setDefaultTimeout(20000);
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error' && !/^Failed to load resource/.test(m.text())) problems.push(`console: ${m.text()}`); });
  // The UI must ask nothing of any other host.
  page.on('request', (r) => { if (!r.url().startsWith(origin) && !r.url().startsWith('data:')) problems.push(`request to another host: ${r.url()}`); });
});

await step('without its token the page says how to open it', async () => {
  const other = await ctx.newPage();
  await other.goto(`${origin}/`);
  await other.getByText('baton dashboard', { exact: true }).waitFor();
  await other.close();
});

await step('open the dashboard; the token leaves the address bar', async () => {
  await page.goto(URL_);
  await page.getByRole('heading', { name: 'Overview' }).waitFor();
  check(!page.url().includes('token'), `the address bar still holds the token: ${page.url()}`);
  for (const name of ['Overview', 'Studios', 'Models', 'Preflight', 'Benchmarks', 'Batch']) {
    await page.getByRole('navigation').getByRole('link', { name, exact: true }).waitFor();
  }
});

await step(`Studios: Discover on ${lab.cidr} finds the studios`, async () => {
  await page.getByRole('link', { name: 'Studios', exact: true }).click();
  await page.getByLabel('CIDR (optional)').fill(lab.cidr);
  await button('Discover').click();
  const want = lab.studios || 1;
  await page.waitForFunction((n) => /^Scanned \d+ address/.test(document.querySelector('.discover .progress')?.textContent)
    && document.querySelectorAll('.found > li').length >= n, want, { timeout: 30000 }).catch(async () => {
    throw new Error(`found ${await page.locator('.found > li').count()} server(s), expected ${want}: ${await page.locator('.discover').innerText()}`);
  });
});

await step('add them all', async () => {
  const before = await page.getByRole('list', { name: 'Configured studios' }).getByRole('listitem').count();
  await button('Add all').click();
  await page.getByText(/^Added \d+ studio\(s\)\.$/).waitFor();
  const after = page.getByRole('list', { name: 'Configured studios' }).getByRole('listitem');
  await page.waitForFunction(([sel, want]) => document.querySelectorAll(sel).length >= want,
    ['ul.workers > li.worker', Math.max(lab.studios || 1, 1)]);
  check(await after.count() >= 1, `configured list has ${await after.count()} entries (before: ${before})`);
});

await step('the Add studio form shows the engine\'s validation error, Escape closes it', async () => {
  await button('Add studio').click();
  const dialog = page.getByRole('dialog', { name: 'Add studio' });
  await dialog.getByLabel('ID').fill('bad-port');
  await dialog.getByLabel('Host').fill('127.0.0.1');
  await dialog.getByLabel('Port').fill('0');
  await dialog.getByRole('button', { name: 'Add studio' }).click();
  await dialog.getByRole('alert').waitFor();
  check(await dialog.getByLabel('Port').getAttribute('aria-invalid') === 'true', 'the Port field is not marked invalid');
  await page.keyboard.press('Escape');
  await dialog.waitFor({ state: 'detached' });
});

await step(`add the refusing studio ${lab.refusing.host}:${lab.refusing.port} by hand`, async () => {
  await button('Add studio').click();
  const dialog = page.getByRole('dialog', { name: 'Add studio' });
  await dialog.getByLabel('ID').fill('refusing-studio');
  await dialog.getByLabel('Host').fill(lab.refusing.host);
  await dialog.getByLabel('Port').fill(String(lab.refusing.port));
  if (lab.model) await dialog.getByLabel('Model').fill(lab.model);
  await dialog.getByRole('button', { name: 'Add studio' }).click();
  await dialog.waitFor({ state: 'detached' });
  await page.locator('ul.workers .id', { hasText: 'refusing-studio' }).waitFor();
});

await step('Preflight: Run preflight; the refusing studio fails with its fix', async () => {
  await page.getByRole('link', { name: 'Preflight', exact: true }).click();
  await button('Run preflight').click();
  await page.locator('.summary', { hasText: /^Preflight of/ }).waitFor({ timeout: 30000 });
  const card = page.getByRole('region', { name: new RegExp(`^refusing-studio ${lab.refusing.host.replaceAll('.', '\\.')}`) });
  await card.waitFor();
  const failed = card.locator('.check.bad');
  check(await failed.count() >= 1, 'the refusing studio has no failed check');
  await failed.first().locator('.fix').waitFor();
  await shoot('preflight-result');
});

let endpoint;
await step('Overview: Start balancer', async () => {
  await page.getByRole('link', { name: 'Overview', exact: true }).click();
  const toggle = page.getByRole('button', { name: /^(Start|Stop) balancer$/ });
  if (await toggle.textContent() === 'Start balancer') await toggle.click();
  await button('Stop balancer').waitFor();
  endpoint = (await page.locator('.balancer code.url').textContent()).trim();
  check(/^http:\/\/.+\/v1$/.test(endpoint), `endpoint URL looks wrong: ${endpoint}`);
  if (lab.endpoint) check(endpoint === lab.endpoint, `endpoint ${endpoint}, lab says ${lab.endpoint}`);
  await page.getByRole('switch', { name: 'Expose on LAN' }).waitFor();
});

await step('requests sent to the endpoint show up in the live figures', async () => {
  let model = lab.model;
  if (!model) {
    const models = await (await fetch(`${endpoint}/models`)).json();
    model = models.data[0].id;
  }
  const ask = () => fetch(`${endpoint}/chat/completions`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ model, max_tokens: 96, stream: true, messages: [{ role: 'user', content: 'Tell me about batons.' }] }),
  }).then(async (r) => { check(r.ok, `endpoint answered ${r.status}`); await r.text(); });
  const sent = Promise.all(Array.from({ length: 6 }, ask));
  // Tokens/s of the pool, or requests in flight, leave zero while they run.
  await page.waitForFunction(() => [...document.querySelectorAll('.figures .v')].slice(0, 3)
    .some((v) => /[1-9]/.test(v.textContent)), null, { timeout: 15000 });
  await sent;
  await page.waitForFunction(() => [...document.querySelectorAll('.studio .c.share .v')].some((v) => /[1-9]/.test(v.textContent)));
  await shoot('overview-live');
});

async function bench(label, { fresh = false } = {}) {
  await page.getByRole('link', { name: 'Benchmarks', exact: true }).click();
  const form = page.getByRole('region', { name: 'New benchmark' });
  // Both modes by default, as the CLI, so the scaling chart is drawn.
  const mode = await form.getByLabel('Mode').inputValue();
  check(!fresh || mode === 'both', `the form's mode defaults to ${mode}, not both`);
  await form.getByLabel('Mode').selectOption('concurrency');
  await form.getByLabel('Length of each level').fill('2');
  await form.getByLabel('Length unit').selectOption('duration_s');
  await form.getByLabel('Concurrency levels').fill('1 4');
  await form.getByLabel('Max tokens').fill('16');
  await form.getByLabel('If a studio fails preflight').selectOption('exclude_unhealthy');
  await form.getByLabel('Label').fill(label);
  await button('Run benchmark').click();
  await page.getByRole('region', { name: 'Benchmark progress' }).waitFor();
  await page.getByRole('heading', { name: new RegExp(`^Run \\d+: ${label}$`) }).waitFor({ timeout: 120000 });
  // The progress list reads in time order: the preflight's notes first.
  const steps = await page.getByRole('region', { name: 'Benchmark progress' }).locator('li').evaluateAll(
    (lis) => lis.map((li) => li.className));
  const firstLevel = steps.indexOf('level');
  check(steps[0] === 'note' && firstLevel > 0, `progress steps out of time order: ${steps}`);
  const table = page.getByRole('table', { name: 'Concurrency benchmark' });
  await table.waitFor();
  const heads = await table.locator('thead th').allTextContents();
  check(heads.join('|') === 'Concurrency|req/s|tok/s|Success|p50 latency|p95 latency|p99 latency|TTFT', `table columns: ${heads}`);
  check(await table.locator('tbody tr').count() === 2, 'expected two concurrency levels');
  // Every run says what is wrong with the pool, or that nothing is.
  const diag = page.getByRole('region', { name: 'Diagnosis' });
  await diag.waitFor();
  const text = await diag.textContent();
  check(/No problem found|Fix:/.test(text), `the diagnosis card says neither: ${text}`);
}

await step('Benchmarks: a short run shows its tables and charts', async () => {
  await bench('day-1', { fresh: true });
  const charts = page.locator('.result + .charts figure.chart, section[aria-label="Result"] figure.chart');
  await charts.first().locator('.plane svg').waitFor();
  check(await charts.first().locator('button.pt').count() > 0, 'the first chart has no data points');
});

await step('hovering a chart point shows its exact value; so does keyboard focus', async () => {
  const fig = page.locator('section[aria-label="Result"] figure.chart').first();
  const pt = fig.locator('button.pt').first();
  const label = await pt.getAttribute('aria-label');
  await pt.hover();
  const tip = fig.locator('.tip');
  await tip.waitFor();
  // The tooltip is the series name (when there is one) over the exact label.
  const series = (await tip.locator('.series').allTextContents())[0] || '';
  const shown = (await tip.textContent()).slice(series.length);
  check(label === (series ? `${series}: ${shown}` : shown) && shown.length > 0,
    `tooltip "${series}|${shown}" does not show the point's label "${label}"`);
  await page.mouse.move(0, 0);
  await pt.focus();
  await tip.waitFor();
  await page.keyboard.press('ArrowRight');
  const next = await page.evaluate(() => document.activeElement?.getAttribute('aria-label'));
  check(next, 'arrow keys do not move between points');
  await page.keyboard.press('Escape');
});

await step('a second run, then compare the two', async () => {
  await bench('day-2');
  const runs = page.getByRole('table', { name: 'Runs' });
  for (const row of await runs.locator('tbody tr').all()) {
    const text = await row.textContent();
    if (/day-1|day-2/.test(text)) await row.getByRole('checkbox').check();
  }
  await button('Compare').click();
  const table = page.getByRole('table', { name: 'Speedup by concurrency' });
  await table.waitFor();
  const heads = (await table.locator('thead th').allTextContents()).map((t) => t.trim());
  check(heads.length === 4 && heads[0] === 'Concurrency' && heads[1].startsWith('req/s (') && heads[2].startsWith('req/s (') && heads[3] === 'Speedup',
    `comparison columns: ${heads.join(' | ')}`);
  const chart = page.getByRole('region', { name: 'Comparison' }).locator('figure.chart');
  await chart.locator('button.pt').first().waitFor();
  await shoot('benchmarks-compare');
});

await step('Models: warm up the pool with a cold model, then unload it from one studio', async () => {
  await go('models');
  const model = 'qwen3-14b';
  const places = page.getByRole('list', { name: `Where ${model} is` });
  await places.locator('li.place').nth(1).waitFor({ timeout: 15000 });
  check(await places.locator('li.place.loaded').count() === 0, `${model} starts loaded somewhere`);
  await shoot('models-cold');
  await page.getByRole('button', { name: `Warm up the pool with ${model}` }).click();
  await page.waitForFunction((m) => document.querySelectorAll(`ul[aria-label="Where ${m} is"] li.place.loaded`).length >= 2, model, { timeout: 15000 });
  const first = (await places.locator('li.place.loaded .id').first().innerText()).trim();
  await page.getByRole('button', { name: `Unload ${model} on ${first}` }).click();
  await page.getByRole('button', { name: `Load ${model} on ${first}` }).waitFor({ timeout: 15000 });
  await page.waitForFunction((m) => document.querySelectorAll(`ul[aria-label="Where ${m} is"] li.place.loaded`).length === 1, model, { timeout: 15000 })
    .catch(async () => { throw new Error(`${model} is not loaded on exactly one studio after the unload: ${await places.innerText()}`); });
  await shoot('models-mixed');
});

await step('screenshots of every view, light and dark, wide and narrow', async () => {
  for (const scheme of ['light', 'dark']) {
    await page.emulateMedia({ colorScheme: scheme });
    for (const [w, h] of [[1280, 800], [380, 700]]) {
      await page.setViewportSize({ width: w, height: h });
      for (const view of ['overview', 'studios', 'models', 'preflight', 'benchmarks', 'batch']) {
        await go(view);
        await page.getByRole('heading', { level: 1 }).first().waitFor();
        await shoot(`${view}-${scheme}-${w}x${h}`);
        const bad = await unnamed();
        check(bad.length === 0, `${view}: controls without an accessible name: ${bad.join(', ')}`);
        const wide = await page.evaluate(() => document.documentElement.scrollWidth);
        check(wide <= w, `${view} is ${wide} px wide in a ${w} px window`);
      }
    }
    await page.setViewportSize({ width: 380, height: 700 });
    await go('popover');
    await button('Open dashboard').waitFor();
    await shoot(`popover-${scheme}-380x700`);
    // Nothing may stick out sideways at 380 px.
    const wide = await page.evaluate(() => document.documentElement.scrollWidth);
    check(wide <= 380, `the popover is ${wide} px wide at 380`);
  }
  await page.emulateMedia({ colorScheme: 'light' });
  await page.setViewportSize({ width: 1280, height: 800 });
});

await step('Stop balancer: the endpoint stops answering', async () => {
  await go('overview');
  await button('Stop balancer').click();
  await button('Start balancer').waitFor();
  let answered = true;
  for (let i = 0; i < 20 && answered; i++) {
    answered = await fetch(`${endpoint}/models`, { signal: AbortSignal.timeout(1000) }).then(() => true, () => false);
    if (answered) await new Promise((r) => setTimeout(r, 250));
  }
  check(!answered, `${endpoint} still answers after Stop balancer`);
});

await step('no page errors, no requests to other hosts', async () => {
  check(problems.length === 0, problems.join('\n'));
});

await ctx.close();
fs.rmSync(userData, { recursive: true, force: true });
console.log(`day.mjs: all steps passed; screenshots in ${SHOTS}`);
