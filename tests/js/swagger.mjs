// Drives Swagger UI (/swagger/, served by the binary) in a real headless Chromium (Debian's
// /usr/bin/chromium, through playwright-core): the spec loads from /api/openapi.json, "Authorize"
// takes an API token for the `bearer` scheme, and "Try it out" → "Execute" on GET /api/user
// answers 200 from this same instance with the token's user. No request may leave the instance
// (Swagger UI is offline) and the page must run under the server's CSP without a violation.
//
// Usage: node tests/js/swagger.mjs <base-url> <bearer-token> <expected-username> [screenshot.png]
// Exit 0 = every step passed; 1 = a step failed (the message names it); 30 s overall timeout.

import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { chromium } from 'playwright-core';

const [baseArg, token, username, shotArg] = process.argv.slice(2);
if (!baseArg || !token || !username) {
  console.error('usage: node swagger.mjs <base-url> <bearer-token> <expected-username> [screenshot.png]');
  process.exit(2);
}
const base = baseArg.replace(/\/+$/, '');
const screenshot = resolve(shotArg || 'target/test-artifacts/swagger-try-it-out.png');
const origin = new URL(base).origin;

let step = 'start';
const log = (msg) => console.error(`swagger: ${msg}`);
const timer = setTimeout(() => {
  console.error(`swagger: FAILED at step "${step}": overall timeout of 30 s exceeded`);
  process.exit(1);
}, 30_000);

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const problems = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(10_000);
  page.on('request', (req) => {
    const url = req.url();
    if (!url.startsWith(origin) && !url.startsWith('data:')) problems.push(`outside request: ${url}`);
  });
  page.on('console', (msg) => {
    if (/Content[- ]Security[- ]Policy/i.test(msg.text())) problems.push(`CSP: ${msg.text()}`);
  });
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));

  step = 'open /swagger/';
  await page.goto(`${base}/swagger/`);
  await page.locator('.swagger-ui .info .title').waitFor();
  const title = await page.locator('.swagger-ui .info .title').innerText();
  if (!/forge/i.test(title)) throw new Error(`spec title is ${JSON.stringify(title)}`);
  log(`spec loaded: ${title.split('\n')[0]}`);

  step = 'authorize with the Bearer token';
  await page.locator('.auth-wrapper .authorize').first().click();
  const dialog = page.locator('.dialog-ux .modal-ux');
  await dialog.waitFor();
  const bearerBlock = dialog.locator('.auth-container').filter({ hasText: 'bearer' }).first();
  await bearerBlock.locator('input').first().fill(token);
  await bearerBlock.locator('button.authorize').click();
  await bearerBlock.getByText('Authorized').first().waitFor();
  await dialog.locator('button.btn-done').first().click();
  log('authorized');

  step = 'try GET /api/user';
  const op = page.locator('#operations-user-getCurrentUser');
  await op.locator('.opblock-summary').first().click();
  await op.locator('button.try-out__btn').click();
  const answered = page.waitForResponse((r) => r.url() === `${base}/api/user`);
  await op.locator('button.execute').click();
  const response = await answered;
  const sent = response.request().headers()['authorization'];
  if (sent !== `Bearer ${token}`) throw new Error(`sent Authorization ${JSON.stringify(sent)}`);
  const status = (await op.locator('.live-responses-table tbody .response-col_status').first().innerText()).trim();
  if (status !== '200') throw new Error(`status shown is ${status}`);
  const shown = await op.locator('.live-responses-table tbody .response-col_description pre').first().innerText();
  const body = JSON.parse(shown);
  if (body.username !== username) throw new Error(`response shows user ${JSON.stringify(body.username)}`);
  log(`GET /api/user → 200 as ${body.username}`);

  mkdirSync(dirname(screenshot), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: false });
  log(`screenshot: ${screenshot}`);
  if (problems.length) throw new Error(problems.join('; '));
  step = 'done';
} catch (e) {
  console.error(`swagger: FAILED at step "${step}": ${e.message}`);
  if (problems.length) console.error(`swagger: also: ${problems.join('; ')}`);
  await browser.close();
  process.exit(1);
}
await browser.close();
clearTimeout(timer);
log('all steps passed');
