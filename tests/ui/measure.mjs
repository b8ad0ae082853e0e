// The dashboard's first render in headless Chromium, and the engine's CPU
// while the dashboard is open: figures for the README, not a test.
//
//   BATON_DASHBOARD_URL='http://127.0.0.1:PORT/#token=...' BATON_PID=<engine pid> node measure.mjs
//
// Prints: the UI's transfer size, the time from navigation to the first
// studio row, and the engine's CPU (percent of one core) over 30 s with the
// page open and idle.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const url = process.env.BATON_DASHBOARD_URL;
const pid = process.env.BATON_PID;
if (!url || !pid) {
  console.error('set BATON_DASHBOARD_URL and BATON_PID (see the top of measure.mjs)');
  process.exit(2);
}

const ticks = () => {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return Number(f[11]) + Number(f[12]); // utime + stime, in clock ticks
};
const HZ = 100;

const browser = await chromium.launchPersistentContext(
  fs.mkdtempSync(path.join(os.tmpdir(), 'baton-measure-')),
  {
    executablePath: process.env.BATON_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1280, height: 800 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  },
);
const page = browser.pages()[0] || await browser.newPage();
let bytes = 0;
page.on('response', async (r) => {
  if (new URL(r.url()).pathname.startsWith('/api/')) return;
  try { bytes += (await r.body()).length; } catch { /* streamed */ }
});
const t0 = Date.now();
await page.goto(url);
await page.locator('li.studio').first().waitFor();
const render = Date.now() - t0;
console.log(`first render: ${render} ms to the first studio row; UI transferred ${bytes} bytes`);
await page.waitForTimeout(2000);
const c0 = ticks();
await page.waitForTimeout(30000);
const cpu = ((ticks() - c0) / HZ / 30) * 100;
console.log(`engine CPU with the dashboard open and idle: ${cpu.toFixed(2)}% of one core`);
await browser.close();
