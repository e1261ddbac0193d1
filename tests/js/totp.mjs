// Drives the web page's two-factor login in a real headless Chromium (Debian's /usr/bin/chromium,
// through playwright-core): sign in → "Enable" shows the QR code (a loaded PNG) → a wrong code
// is refused → the right one shows the recovery codes once → log out → sign in again asks for a
// code (also after a reload), with nothing else of the account shown → a recovery code lets the
// user in → the next sign-in takes a code from the authenticator. Codes are computed here
// (RFC 6238 with Node's HMAC-SHA1) from the secret in the enable answer, never by Forge.
// The page must run under the server's CSP without a violation.
//
// Usage: node tests/js/totp.mjs <base-url> <user> <password> [screenshot.png]
// Exit 0 = every step passed; 1 = a step failed (with a failure screenshot); 30 s timeout.

import { createHmac } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { chromium } from 'playwright-core';
import { CHROMIUM, CHROMIUM_ARGS, Run, check } from './harness.mjs';

const OVERALL_TIMEOUT_MS = 30_000;
const STEP_TIMEOUT_MS = 10_000;

const [baseArg, user, password, shot] = process.argv.slice(2);
const base = (baseArg || '').replace(/\/+$/, '');
if (!base || !user || !password) {
  console.error('usage: node totp.mjs <base-url> <user> <password> [screenshot.png]');
  process.exit(2);
}
const screenshot = resolve(shot || 'target/test-artifacts/browser-totp.png');
const run = new Run('totp', `${screenshot.replace(/\.png$/, '')}-failure.png`, OVERALL_TIMEOUT_MS);
const step = (name, fn) => run.step(name, fn);

/** RFC 4648 base32 → bytes. */
function base32(text) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0;
  let n = 0;
  const out = [];
  for (const c of text.replace(/=+$/, '').toUpperCase()) {
    const v = alphabet.indexOf(c);
    check(v >= 0, `not base32: ${text}`);
    bits = ((bits << 5) | v) & 0xffff;
    n += 5;
    if (n >= 8) {
      n -= 8;
      out.push((bits >> n) & 0xff);
    }
  }
  return Buffer.from(out);
}

/** RFC 6238: the 6-digit SHA-1 code of `secret` at Unix time `seconds` (30 s steps). */
function codeAt(secret, seconds) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(seconds / 30)));
  const mac = createHmac('sha1', secret).update(counter).digest();
  const offset = mac[mac.length - 1] & 0xf;
  const value = mac.readUInt32BE(offset) & 0x7fffffff;
  return String(value % 1_000_000).padStart(6, '0');
}

const now = () => Date.now() / 1000;

async function main() {
  const problems = [];
  const browser = await step('launch chromium', () =>
    chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: STEP_TIMEOUT_MS }),
  );
  run.browser = browser;
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  const page = await context.newPage();
  run.page = page;
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    // 401 (a code awaited, a wrong code) and 400 (a malformed code) are logged by Chromium as
    // failed resources.
    if (/^Failed to load resource: the server responded with a status of (400|401)/.test(m.text())) return;
    problems.push(`console error: ${m.text()}`);
  });
  page.on('dialog', (d) => d.accept());
  const text = async (selector) => ((await page.locator(selector).textContent()) ?? '').trim();

  async function signIn() {
    await page.locator('#login-view').waitFor({ state: 'visible' });
    await page.fill('#login-auth', user);
    await page.fill('#login-password', password);
    await page.click('#login-submit');
  }

  async function logOut() {
    await page.click('#logout');
    await page.locator('#login-view').waitFor({ state: 'visible' });
  }

  await step('sign in: two-factor login is off', async () => {
    await page.goto(`${base}/`, { waitUntil: 'load' });
    await signIn();
    await page.locator('#totp-view').waitFor({ state: 'visible' });
    check(/^Off/.test(await text('#totp-state')), `state: ${await text('#totp-state')}`);
    check(await page.locator('#totp-disable').isHidden(), 'Disable shows while off');
  });

  const enabled = await step('"Enable" shows the QR code of the secret', async () => {
    const answer = page.waitForResponse(
      (r) => r.request().method() === 'POST' && /\/2fas\/totp$/.test(new URL(r.url()).pathname),
    );
    await page.click('#totp-enable');
    const res = await answer;
    check(res.status() === 201, `enable answered ${res.status()}`);
    const body = await res.json();
    await page.locator('#totp-setup').waitFor({ state: 'visible' });
    await page.waitForFunction(() => {
      const img = document.getElementById('totp-qr');
      return img.complete && img.naturalWidth > 0;
    });
    const secret = new URL(body.url).searchParams.get('secret');
    check(secret, `no secret in ${body.url}`);
    check(!(await page.content()).includes(secret), 'the secret is written into the page');
    return { secret: base32(secret), codes: body.recovery_codes };
  });

  await step('a wrong code is refused', async () => {
    const right = codeAt(enabled.secret, now());
    await page.fill('#totp-confirm-code', right === '000000' ? '111111' : '000000');
    await page.click('#totp-confirm');
    await page.locator('#totp-error').waitFor({ state: 'visible' });
    check(await page.locator('#totp-codes').isHidden(), 'recovery codes shown after a wrong code');
  });

  await step('the right code shows the recovery codes once', async () => {
    await page.fill('#totp-confirm-code', codeAt(enabled.secret, now()));
    await page.click('#totp-confirm');
    await page.locator('#totp-codes').waitFor({ state: 'visible' });
    const shown = await page.locator('#totp-codes-list li').allTextContents();
    check(JSON.stringify(shown) === JSON.stringify(enabled.codes), `codes shown: ${shown}`);
    check(/^On/.test(await text('#totp-state')), `state: ${await text('#totp-state')}`);
    check(await page.locator('#totp-disable').isVisible(), 'no Disable button once on');
    check(await page.locator('#totp-setup').isHidden(), 'the QR code still shows');
    mkdirSync(dirname(screenshot), { recursive: true });
    await page.screenshot({ path: screenshot, fullPage: true });
    await page.click('#totp-done');
    check((await page.locator('#totp-codes-list li').count()) === 0, 'codes left in the page');
  });

  await step('signing in again asks for a code, and only that', async () => {
    await logOut();
    await signIn();
    await page.locator('#verify-view').waitFor({ state: 'visible' });
    for (const id of ['#tokens-view', '#totp-view', '#account-bar', '#login-view']) {
      check(await page.locator(id).isHidden(), `${id} shows before the code`);
    }
    await page.reload({ waitUntil: 'load' });
    await page.locator('#verify-view').waitFor({ state: 'visible' });
    await page.fill('#verify-code', '12345x');
    await page.click('#verify-submit');
    await page.locator('#verify-error').waitFor({ state: 'visible' });
    check(await page.locator('#tokens-view').isHidden(), 'signed in with a malformed code');
  });

  await step('a recovery code lets the user in', async () => {
    await page.fill('#verify-code', enabled.codes[2].toUpperCase());
    await page.click('#verify-submit');
    await page.locator('#tokens-view').waitFor({ state: 'visible' });
    check(/^On/.test(await text('#totp-state')), 'two-factor state after recovery');
  });

  await step('the next sign-in takes a code from the authenticator', async () => {
    await logOut();
    await signIn();
    await page.locator('#verify-view').waitFor({ state: 'visible' });
    // The confirmation used the current step: the next one (accepted for clock drift) is new.
    await page.fill('#verify-code', codeAt(enabled.secret, now() + 30));
    await page.click('#verify-submit');
    await page.locator('#tokens-view').waitFor({ state: 'visible' });
    const t = await text('#signed-in');
    check(t.endsWith(`(${user})`), `signed in as ${t}`);
  });

  await step('no page errors, console errors or CSP violations', async () => {
    check(problems.length === 0, problems.join('\n'));
  });
  await browser.close();
  run.browser = null;
}

run.main(main);
