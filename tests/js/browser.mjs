// Drives Forge's web page in a real headless Chromium (Debian's /usr/bin/chromium, through
// playwright-core): wrong password → error shown; login → "Signed in as"; create a token →
// shown once, listed by its handle, works as Bearer; expire it → marked expired, refused;
// log out → login form again. Also checks the page runs under the server's CSP without
// violations and that unknown paths serve the page.
//
// Usage:
//   node tests/js/browser.mjs [--pause] <base-url> <user> <password> [screenshot.png]
// or the environment FORGE_URL, FORGE_USER, FORGE_PASSWORD, FORGE_SCREENSHOT.
//
// Prints `TOKEN=<token>` on stdout once the new token works as Bearer. With `--pause` it then
// waits for a line `continue` on stdin before expiring the token (tests/browser.rs checks the
// token with curl meanwhile). Progress goes to stderr. Exit 0 = every step passed; 1 = a step
// failed (the message names it; a screenshot of the failure is saved next to the screenshot
// path); 30 s overall timeout.

import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';
import { CHROMIUM, CHROMIUM_ARGS, Run, check } from './harness.mjs';

const OVERALL_TIMEOUT_MS = 30_000;
const STEP_TIMEOUT_MS = 10_000;
const TOKEN_RE = /^[a-z0-9_-]{43}=$/;

const argv = process.argv.slice(2);
const pause = argv.includes('--pause');
const positional = argv.filter((a) => a !== '--pause');
const base = (positional[0] || process.env.FORGE_URL || '').replace(/\/+$/, '');
const user = positional[1] || process.env.FORGE_USER || '';
const password = positional[2] || process.env.FORGE_PASSWORD || '';
const screenshot = resolve(
  positional[3] || process.env.FORGE_SCREENSHOT || 'target/test-artifacts/browser-tokens.png',
);
if (!base || !user || !password) {
  console.error('usage: node browser.mjs [--pause] <base-url> <user> <password> [screenshot.png]');
  process.exit(2);
}

const started = Date.now();
const run = new Run('browser', `${screenshot.replace(/\.png$/, '')}-failure.png`, OVERALL_TIMEOUT_MS);
const log = (msg) => run.log(msg);
const step = (name, fn) => run.step(name, fn);
let page = null;

/** The handle the server lists for a token: 16 hex digits of its SHA-256. */
const handleOf = (token) => createHash('sha256').update(token).digest('hex').slice(0, 16);

/** `GET /api/user` from Node with `Authorization: Bearer <token>`. */
async function bearerUser(token) {
  const res = await fetch(`${base}/api/user`, {
    headers: { Authorization: `Bearer ${token}`, Accept: 'application/json' },
  });
  const text = await res.text();
  return { status: res.status, text };
}

/** The first line on stdin (null at its end). */
function readLine() {
  return new Promise((resolveLine) => {
    const rl = createInterface({ input: process.stdin });
    let done = false;
    rl.once('line', (line) => {
      done = true;
      rl.close();
      resolveLine(line);
    });
    rl.once('close', () => {
      if (!done) resolveLine(null);
    });
  });
}

const text = async (selector) => ((await page.locator(selector).textContent()) ?? '').trim();

async function main() {
  const problems = []; // console errors other than failed-resource notices, page errors

  const browser = await step('launch chromium', () =>
    chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: STEP_TIMEOUT_MS,
    }),
  );
  run.browser = browser;
  const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
  page = await context.newPage();
  run.page = page;
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    // A 401/403 answer is logged by Chromium as a failed resource; that is expected here.
    if (/^Failed to load resource: the server responded with a status of 40[13]/.test(m.text())) {
      return;
    }
    problems.push(`console error: ${m.text()}`);
  });

  await step('GET / serves the page with a CSP; footer links answer 200', async () => {
    const res = await page.goto(`${base}/`, { waitUntil: 'load' });
    check(res, 'no response for /');
    check(res.status() === 200, `GET / answered ${res.status()}`);
    const type = res.headers()['content-type'] || '';
    check(type.startsWith('text/html'), `GET / has content-type ${JSON.stringify(type)}`);
    const csp = res.headers()['content-security-policy'] || '';
    check(/script-src 'self'/.test(csp), `GET / has no script-src 'self' CSP: ${JSON.stringify(csp)}`);
    await page.locator('#login-view').waitFor({ state: 'visible' });
    check(await page.locator('#account-bar').isHidden(), 'the signed-in bar shows before login');
    for (const [id, href] of [
      ['#link-swagger', '/swagger/'],
      ['#link-openapi', '/api/openapi.json'],
      ['#link-postman', '/api/postman.json'],
    ]) {
      const got = await page.locator(id).getAttribute('href');
      check(got === href, `footer link ${id} is ${JSON.stringify(got)}, expected ${href}`);
      const linked = await page.request.get(`${base}${href}`);
      check(linked.status() === 200, `footer link ${href} answered ${linked.status()}`);
    }
  });

  await step('a wrong password shows the server\'s error', async () => {
    await page.fill('#login-auth', user);
    await page.fill('#login-password', `${password}-wrong`);
    await page.click('#login-submit');
    await page.locator('#login-error').waitFor({ state: 'visible' });
    const msg = await text('#login-error');
    check(/Sign-in failed/.test(msg) && /401/.test(msg), `unexpected login error: ${JSON.stringify(msg)}`);
    check(await page.locator('#login-view').isVisible(), 'the login form went away after a failure');
    log(`     error shown: ${msg}`);
  });

  const signedIn = await step('log in shows "Signed in as"', async () => {
    await page.fill('#login-auth', user);
    await page.fill('#login-password', password);
    await page.click('#login-submit');
    const who = page.locator('#signed-in');
    await who.waitFor({ state: 'visible' });
    const t = await text('#signed-in');
    check(
      t.startsWith('Signed in as ') && t.endsWith(`(${user})`),
      `unexpected signed-in text: ${JSON.stringify(t)}`,
    );
    check(await page.locator('#login-error').isHidden(), 'the login error still shows');
    check(await page.locator('#login-view').isHidden(), 'the login form still shows');
    await page.locator('#tokens-view').waitFor({ state: 'visible' });
    const cookies = await context.cookies(base);
    const session = cookies.find((c) => c.name === 'semaphore');
    check(session, `no semaphore cookie after login: ${JSON.stringify(cookies.map((c) => c.name))}`);
    check(session.httpOnly, 'the semaphore cookie is not HttpOnly');
    return t;
  });
  log(`     ${signedIn}`);

  const rowsBefore = await page.locator('#tokens-body tr').count();

  const token = await step('create a token: shown once, read-only', async () => {
    await page.click('#create-token');
    await page.locator('#new-token').waitFor({ state: 'visible' });
    const field = page.locator('#new-token-value');
    await page.waitForFunction(() => document.getElementById('new-token-value').value !== '');
    const value = await field.inputValue();
    check(TOKEN_RE.test(value), `the shown token has an unexpected shape: ${JSON.stringify(value)}`);
    check(await field.getAttribute('readonly') !== null, 'the token field is not read-only');
    const note = await text('#new-token-note');
    check(/will not be shown again/.test(note), `no "not shown again" note: ${JSON.stringify(note)}`);
    return value;
  });
  const handle = handleOf(token);

  await step(`the token is listed by its handle ${handle}`, async () => {
    const row = page.locator(`#tokens-body tr[data-token-id="${handle}"]`);
    await row.waitFor({ state: 'visible' });
    check((await page.locator('#tokens-body tr').count()) === rowsBefore + 1, 'not exactly one new row');
    check((await row.getAttribute('data-new')) === 'true', 'the new row is not marked new');
    check((await row.locator('[data-testid=token-handle]').textContent()) === handle, 'handle text');
    check((await row.locator('[data-testid=token-expired]').textContent()) === 'no', 'new token shows expired');
    const created = await row.locator('[data-testid=token-created]').textContent();
    check(/^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC$/.test(created), `created shows ${JSON.stringify(created)}`);
    check((await row.locator('[data-testid=expire-token]').count()) === 1, 'no Expire button on a live token');
    check((await text('#new-token-handle')) === handle, 'the new-token note names another handle');
    const table = await page.locator('#tokens-table').textContent();
    check(!table.includes(token), 'the full token appears in the token list');
  });

  await step('"Copy" puts the token on the clipboard', async () => {
    await page.click('#copy-token');
    await page.waitForFunction(() => /copied/i.test(document.getElementById('status').textContent));
    const status = await text('#status');
    check(/Token copied/.test(status), `status after Copy: ${JSON.stringify(status)}`);
    const clip = await page.evaluate(() => navigator.clipboard.readText());
    check(clip === token, `clipboard holds ${JSON.stringify(clip)}`);
  });

  await step(`full-page screenshot → ${screenshot}`, async () => {
    mkdirSync(dirname(screenshot), { recursive: true });
    await page.screenshot({ path: screenshot, fullPage: true });
  });

  await step('the token works as Bearer (from Node)', async () => {
    const r = await bearerUser(token);
    check(r.status === 200, `GET /api/user with the token answered ${r.status}: ${r.text}`);
    const me = JSON.parse(r.text);
    check(me.username === user, `Bearer user is ${JSON.stringify(me.username)}`);
  });

  process.stdout.write(`TOKEN=${token}\n`);
  if (pause) {
    await step('wait for "continue" on stdin', async () => {
      const line = await readLine();
      check(line !== null, 'stdin ended before "continue"');
      check(line.trim() === 'continue', `expected "continue" on stdin, got ${JSON.stringify(line)}`);
    });
  }

  await step('"Expire" marks the token expired', async () => {
    const row = page.locator(`#tokens-body tr[data-token-id="${handle}"]`);
    await row.locator('[data-testid=expire-token]').click();
    await page.locator(`#tokens-body tr[data-token-id="${handle}"][data-expired="true"]`).waitFor();
    check((await row.locator('[data-testid=token-expired]').textContent()) === 'yes', 'badge is not "yes"');
    check((await row.locator('[data-testid=expire-token]').count()) === 0, 'an expired token keeps its Expire button');
    check(await page.locator('#new-token').isHidden(), 'the expired token is still shown');
    const status = await text('#status');
    check(status === `Token ${handle} expired.`, `status after Expire: ${JSON.stringify(status)}`);
  });

  await step('the expired token is refused (401)', async () => {
    const r = await bearerUser(token);
    check(r.status === 401, `GET /api/user with the expired token answered ${r.status}: ${r.text}`);
  });

  await step('a reload keeps the session and lists the expired token', async () => {
    await page.reload({ waitUntil: 'load' });
    await page.locator('#signed-in').waitFor({ state: 'visible' });
    check((await text('#signed-in')) === signedIn, 'signed-in text changed after reload');
    await page.locator(`#tokens-body tr[data-token-id="${handle}"][data-expired="true"]`).waitFor();
  });

  await step('an unknown path serves the page too', async () => {
    const res = await page.goto(`${base}/some/deep/link`, { waitUntil: 'load' });
    check(res && res.status() === 200, `GET /some/deep/link answered ${res && res.status()}`);
    await page.locator('#signed-in').waitFor({ state: 'visible' });
  });

  await step('"Log out" shows the login form again', async () => {
    await page.click('#logout');
    await page.locator('#login-view').waitFor({ state: 'visible' });
    check(await page.locator('#account-bar').isHidden(), 'the signed-in bar still shows');
    check(await page.locator('#tokens-view').isHidden(), 'the token list still shows');
    check((await page.locator('#tokens-body tr').count()) === 0, 'token rows left in the page');
    check((await page.locator('#new-token-value').inputValue()) === '', 'a token left in the page');
    const status = await text('#status');
    check(status === 'Signed out.', `status after logout: ${JSON.stringify(status)}`);
    const cookies = await context.cookies(base);
    check(!cookies.some((c) => c.name === 'semaphore' && c.value), 'the session cookie is still set');
    const after = await page.evaluate(async () => (await fetch('/api/user', { credentials: 'same-origin' })).status);
    check(after === 401, `GET /api/user after logout answered ${after}`);
    await page.reload({ waitUntil: 'load' });
    await page.locator('#login-view').waitFor({ state: 'visible' });
  });

  await step('no page errors, console errors or CSP violations', async () => {
    check(problems.length === 0, problems.join('\n'));
  });

  await browser.close();
  run.browser = null;
  log(`passed in ${Date.now() - started} ms`);
  process.stdout.write(`SCREENSHOT=${screenshot}\n`);
}

run.main(main);
