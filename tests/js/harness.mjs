// What the browser scripts (browser.mjs, console.mjs) share: Debian's Chromium and its flags,
// named steps with a progress log on stderr, and one way to fail (message, failure screenshot,
// exit 1) or to run out of time.

import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';

export const CHROMIUM = '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export function check(cond, message) {
  if (!cond) throw new Error(message);
}

/** One script's run: `run.browser` and `run.page` are what a failure closes and photographs. */
export class Run {
  /** `name` prefixes the log lines; `failureShot` is where a failure's screenshot goes. */
  constructor(name, failureShot, timeoutMs) {
    this.name = name;
    this.failureShot = failureShot;
    this.browser = null;
    this.page = null;
    this.current = 'start';
    setTimeout(() => this.fail(`overall timeout of ${timeoutMs / 1000} s exceeded`), timeoutMs).unref();
  }

  log(msg) {
    console.error(`${this.name}: ${msg}`);
  }

  /** Ends the run: exit code 1 with the message, after a best-effort failure screenshot. */
  async fail(message) {
    this.log(`FAILED at step "${this.current}": ${message}`);
    if (this.page) {
      try {
        mkdirSync(dirname(this.failureShot), { recursive: true });
        await this.page.screenshot({ path: this.failureShot, fullPage: true, timeout: 3000 });
        this.log(`failure screenshot: ${this.failureShot}`);
      } catch {
        // the page may be gone
      }
    }
    try {
      if (this.browser) await this.browser.close();
    } catch {
      // already closed
    }
    process.exit(1);
  }

  async step(name, fn) {
    this.current = name;
    const t = Date.now();
    const result = await fn();
    this.log(`ok   ${name} (${Date.now() - t} ms)`);
    return result;
  }

  /** Runs `main`: exit 0 when it resolves, `fail` when it throws. */
  main(main) {
    main().then(
      () => process.exit(0),
      (e) => this.fail(e && e.message ? e.message : String(e)),
    );
  }
}
