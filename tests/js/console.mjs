// Drives Forge's console (web/console.js) in a real headless Chromium through playwright-core,
// against a server whose project tests/browser.rs prepared (templates slow, long, flood, quick;
// a schedule): log in, open the project, run `slow` through its survey form and watch its
// output arrive while it runs (ANSI colours as spans), stop `long` with the Stop button while a
// second tab's task list changes without a reload, open the 100 000-line `flood` task (the DOM
// keeps a bounded number of line nodes, every line arrives, scrolling works), run `quick` by
// keyboard only, and render the task list on a phone-sized screen without sideways scrolling.
// The page must run under the server's CSP with no errors.
//
// A guest of the project sees its tasks but Run is disabled, with the reason.
//
// Usage: node tests/js/console.mjs <base-url> <user> <password> <project-id> <guest> <guest-password> <artifact-dir>
// Prints `TASKS={"slow":id,...,"flood_lines":n}` on stdout at the end; progress on stderr.
// Exit 0 = every step passed; 1 = a step failed (a failure screenshot is saved).

import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';
import { CHROMIUM, CHROMIUM_ARGS, Run, check } from './harness.mjs';

const OVERALL_TIMEOUT_MS = 150_000;
const STEP_TIMEOUT_MS = 20_000;
/** Line nodes the output box may hold at once (it renders what is in view, plus a margin). */
const MAX_LINE_NODES = 200;

const [baseArg, user, password, projectArg, guest, guestPassword, artifactArg] = process.argv.slice(2);
if (!baseArg || !user || !password || !projectArg || !guest || !guestPassword || !artifactArg) {
  console.error('usage: node console.mjs <base-url> <user> <password> <project-id> <guest> <guest-password> <artifact-dir>');
  process.exit(2);
}
const base = baseArg.replace(/\/+$/, '');
const p = Number(projectArg);
const artifacts = resolve(artifactArg);
mkdirSync(artifacts, { recursive: true });

const run = new Run('console', join(artifacts, 'console-failure.png'), OVERALL_TIMEOUT_MS);
const step = (name, fn) => run.step(name, fn);

const problems = [];
function watch(pg) {
  pg.setDefaultTimeout(STEP_TIMEOUT_MS);
  pg.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  pg.on('console', (m) => {
    if (m.type() !== 'error') return;
    if (/^Failed to load resource: the server responded with a status of 401/.test(m.text())) return;
    problems.push(`console error: ${m.text()}`);
  });
}

/** The id in a `#/project/{p}/task/{id}` URL. */
const taskIdOf = (url) => {
  const m = /#\/project\/\d+\/task\/(\d+)$/.exec(url);
  check(m, `not a task page: ${url}`);
  return Number(m[1]);
};

const outputText = (pg) => pg.locator('[data-testid=task-output]').innerText();
const status = (pg) => pg.locator('[data-testid=task-page-status] [data-testid=task-status]').getAttribute('data-status');
const runButton = (pg, name) => pg.locator(`[data-testid=template-row][data-name="${name}"] [data-testid=run-template]`);

async function openProject(pg) {
  await pg.goto(`${base}/#/project/${p}`, { waitUntil: 'load' });
  await pg.locator('[data-testid=template-row]').first().waitFor();
  await pg.locator('[data-testid=console-view][data-live=open]').waitFor();
}

async function main() {
  const browser = await step('launch chromium', () =>
    chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: STEP_TIMEOUT_MS }),
  );
  run.browser = browser;
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  run.page = page;
  watch(page);
  const ids = {};

  await step('log in: the projects list shows the project', async () => {
    await page.goto(`${base}/`, { waitUntil: 'load' });
    await page.fill('#login-auth', user);
    await page.fill('#login-password', password);
    await page.click('#login-submit');
    const link = page.locator(`[data-testid=project-link][data-project-id="${p}"]`);
    await link.waitFor();
    check((await link.textContent()) === 'Console demo', 'project name');
    check(await page.locator('#tokens-view').isVisible(), 'the token list is gone from the home page');
  });

  await step('open the project: templates, schedules, live socket', async () => {
    await page.click(`[data-testid=project-link][data-project-id="${p}"]`);
    await page.locator('[data-testid=template-row]').first().waitFor();
    check(/#\/project\/\d+$/.test(page.url()), `url ${page.url()}`);
    check(await page.locator('#tokens-view').isHidden(), 'the token list shows on a project page');
    const names = await page.locator('[data-testid=template-row]').evaluateAll((rows) => rows.map((r) => r.dataset.name));
    check(['slow', 'long', 'flood', 'quick'].every((n) => names.includes(n)), `templates ${names}`);
    const sched = page.locator('[data-testid=schedule-row]');
    await sched.first().waitFor();
    const text = await sched.first().innerText();
    check(/nightly/.test(text) && /30 2 \* \* \*/.test(text) && /quick/.test(text), `schedule row ${JSON.stringify(text)}`);
    const hook = page.locator('[data-testid=integration-row]');
    await hook.first().waitFor();
    const hookText = await hook.first().innerText();
    check(/on-push/.test(hookText) && /quick/.test(hookText) && /filtered by “push only”/.test(hookText), `integration row ${JSON.stringify(hookText)}`);
    await page.locator('[data-testid=console-view][data-live=open]').waitFor();
    await page.locator('[data-testid=tasks-empty]').waitFor();
  });

  await step('run "slow" through its survey form', async () => {
    await runButton(page, 'slow').click();
    await page.locator('[data-testid=run-form]').waitFor();
    const greeting = page.getByLabel('Greeting');
    check(await greeting.evaluate((e) => e === document.activeElement), 'the first survey field has no focus');
    check((await greeting.getAttribute('required')) !== null, 'Greeting is not required');
    await page.click('[data-testid=run-submit]');
    const err = page.locator('[data-testid=run-error]');
    await err.waitFor();
    check(/Greeting is required/.test(await err.textContent()), 'no "required" message');
    await greeting.fill('hello world');
    await page.getByLabel('Count').fill('3');
    await page.click('[data-testid=run-submit]');
    await page.waitForURL(/#\/project\/\d+\/task\/\d+$/);
    ids.slow = taskIdOf(page.url());
  });

  await step('its output arrives live while it runs, colours as spans', async () => {
    const box = page.locator('[data-testid=task-output]');
    await box.getByText('slow line 2', { exact: true }).waitFor();
    check((await status(page)) === 'running', `status ${await status(page)} at line 2`);
    const before = Number(await box.getAttribute('data-lines'));
    await box.getByText('slow line 6', { exact: true }).waitFor();
    const after = Number(await box.getAttribute('data-lines'));
    check(after > before, `lines did not grow: ${before} → ${after}`);
    check((await status(page)) === 'running', 'it ended before line 6 was shown: not live');
    const text = await outputText(page);
    check(text.includes('greeting=hello world') && text.includes('count=3'), `survey values not in the output: ${text}`);
    check(!text.includes('\u001b') && !text.includes('[31m'), 'raw escape sequences in the output');
    check(text.includes('<img src=x data-bad=1>not <b>bold</b>'), 'markup in the output is not shown as text');
    check((await box.locator('img, b').count()) === 0, 'markup in the output became elements');
    const red = box.locator('span.ansi-fg-1');
    check((await red.textContent()) === 'red text', 'red text is not a red span');
    const green = box.locator('span.ansi-fg-2.ansi-bold');
    check((await green.textContent()) === 'bold green', 'bold green is not a bold green span');
    check(await page.locator('[data-testid=stop-task]').isVisible(), 'no Stop button while running');
    await page.screenshot({ path: join(artifacts, 'console-task.png') });
    await page.locator('[data-testid=console-view][data-task-status=success]').waitFor();
    await box.getByText('slow done', { exact: true }).waitFor();
    check(await page.locator('[data-testid=stop-task]').isHidden(), 'Stop button after the end');
  });

  await step('ANSI parsing: 256 and 24-bit colours, carried state, \\r, other escapes dropped', async () => {
    const got = await page.evaluate(async () => {
      const { parseAnsi } = await import('/logview.js');
      const runs = (line, start) => parseAnsi(line, start).runs.map((r) => [r.text, r.state.fg, r.state.bg, r.state.bold]);
      const end = parseAnsi('\u001b[38;5;196;48;2;1;2;3mX').end;
      return {
        extended: runs('\u001b[38;5;196;48;2;1;2;3mX'),
        carried: runs('next line', end),
        reset: runs('\u001b[1mA\u001b[22;39mB'),
        cr: runs('progress 10%\rprogress 100%'),
        other: runs('\u001b]0;title\u0007a\u001b[2Kb\u001b(Bc\u0008'),
      };
    });
    const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
    check(same(got.extended, [['X', '#ff0000', '#010203', false]]), `extended ${JSON.stringify(got.extended)}`);
    check(same(got.carried, [['next line', '#ff0000', '#010203', false]]), `carried ${JSON.stringify(got.carried)}`);
    check(same(got.reset, [['A', null, null, true], ['B', null, null, false]]), `reset ${JSON.stringify(got.reset)}`);
    check(same(got.cr, [['progress 100%', null, null, false]]), `cr ${JSON.stringify(got.cr)}`);
    check(got.other.map((r) => r[0]).join('') === 'abc', `other ${JSON.stringify(got.other)}`);
  });

  await step('the raw output link serves the text', async () => {
    const href = await page.locator('[data-testid=raw-output]').getAttribute('href');
    check(href === `/api/project/${p}/tasks/${ids.slow}/raw_output`, `raw link ${href}`);
    const res = await page.request.get(`${base}${href}`);
    check(res.status() === 200, `raw output answered ${res.status()}`);
    const body = await res.text();
    check(body.includes('slow line 12\n') && body.includes('\u001b[31mred text'), 'raw output lacks lines');
  });

  const watcher = await step('a second tab shows the task list', async () => {
    const tab = await context.newPage();
    watch(tab);
    await openProject(tab);
    const row = tab.locator(`[data-testid=task-row][data-task-id="${ids.slow}"]`);
    await row.waitFor();
    check((await row.getAttribute('data-status')) === 'success', 'slow is not listed as success');
    const cells = await row.innerText();
    check(/\d+s/.test(cells) && cells.includes('slow') && cells.includes(`#${ids.slow}`), `row ${JSON.stringify(cells)}`);
    const by = await row.locator('td[data-label=By]').innerText();
    check(by.trim() !== '' && by.trim() !== '—', `no starter in ${JSON.stringify(cells)}`);
    await tab.evaluate(() => {
      window.notReloaded = true;
    });
    return tab;
  });

  await step('run "long", Stop it; both tabs follow without a reload', async () => {
    await page.goto(`${base}/#/project/${p}`);
    await runButton(page, 'long').click();
    await page.waitForURL(/#\/project\/\d+\/task\/\d+$/);
    ids.long = taskIdOf(page.url());
    const row = watcher.locator(`[data-testid=task-row][data-task-id="${ids.long}"]`);
    await row.waitFor(); // a new task appears in the other tab by itself
    await page.locator('[data-testid=task-output]').getByText('long task started').waitFor();
    await page.locator('[data-testid=console-view][data-task-status=running]').waitFor();
    await watcher.locator(`[data-testid=task-row][data-task-id="${ids.long}"][data-status=running]`).waitFor();
    await page.screenshot({ path: join(artifacts, 'console-running.png') });
    await page.locator('[data-testid=stop-task]').click();
    await page.locator('[data-testid=console-view][data-task-status=stopped]').waitFor();
    check(await page.locator('[data-testid=stop-task]').isHidden(), 'Stop button after stopping');
    await watcher.locator(`[data-testid=task-row][data-task-id="${ids.long}"][data-status=stopped]`).waitFor();
    check(await watcher.evaluate(() => window.notReloaded === true), 'the task list tab was reloaded');
    await watcher.screenshot({ path: join(artifacts, 'console-project.png'), fullPage: true });
  });

  await step('the 100 000-line task: every line arrives, few line nodes, scrolling works', async () => {
    await page.goto(`${base}/#/project/${p}`);
    await runButton(page, 'flood').click();
    await page.waitForURL(/#\/project\/\d+\/task\/\d+$/);
    ids.flood = taskIdOf(page.url());
    const box = page.locator('[data-testid=task-output]');
    await page.locator('[data-testid=task-output][data-complete=true]').waitFor({ timeout: 90_000 });
    const lines = Number(await box.getAttribute('data-lines'));
    check(lines > 100_000, `only ${lines} lines in the page`);
    ids.flood_lines = lines;
    // It followed the tail: the last lines are in view.
    await box.getByText('flood done', { exact: true }).waitFor();
    const nodes = await box.locator('.log-line').count();
    check(nodes > 10 && nodes <= MAX_LINE_NODES, `${nodes} line nodes in the DOM`);
    // Scrolling up stops following; line 1 is rendered there.
    await box.evaluate((b) => {
      b.scrollTop = 0;
    });
    await box.getByText('flood line 1', { exact: true }).waitFor();
    await page.locator('[data-testid=task-output][data-follow=false]').waitFor();
    check((await box.locator('.log-line').count()) <= MAX_LINE_NODES, 'line nodes grew while scrolling');
    // The middle.
    await box.evaluate((b) => {
      b.scrollTop = b.scrollHeight / 2;
    });
    await box.getByText(/^flood line [45]\d{4}$/).first().waitFor();
    // The page still answers at once: a frame goes by (not timed, just not stuck).
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => r())));
    await page.screenshot({ path: join(artifacts, 'console-flood.png') });
    const follow = page.locator('[data-testid=follow-output]');
    await follow.click();
    await box.getByText('flood done', { exact: true }).waitFor();
    await page.locator('[data-testid=task-output][data-follow=true]').waitFor();
  });

  await step('keyboard: Tab to "Run quick", press Enter', async () => {
    await page.goto(`${base}/#/project/${p}`);
    await page.locator('[data-testid=template-row]').first().waitFor();
    await page.evaluate(() => document.activeElement && document.activeElement.blur());
    let found = false;
    for (let i = 0; i < 80 && !found; i += 1) {
      await page.keyboard.press('Tab');
      found = await page.evaluate(() => {
        const a = document.activeElement;
        return Boolean(a && a.matches('[data-testid=template-row][data-name=quick] [data-testid=run-template]'));
      });
    }
    check(found, 'Tab never reached the Run button of "quick"');
    const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
    check(outline !== 'none', 'the focused Run button shows no focus ring');
    await page.keyboard.press('Enter');
    await page.waitForURL(/#\/project\/\d+\/task\/\d+$/);
    ids.quick = taskIdOf(page.url());
    await page.locator('[data-testid=task-output]').getByText('quick ran').waitFor();
    await page.locator('[data-testid=console-view][data-task-status=success]').waitFor();
  });

  await step('a guest sees the tasks, but Run is disabled with the reason', async () => {
    const other = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const pg = await other.newPage();
    watch(pg);
    await pg.goto(`${base}/#/project/${p}`, { waitUntil: 'load' });
    await pg.fill('#login-auth', guest);
    await pg.fill('#login-password', guestPassword);
    await pg.click('#login-submit');
    await pg.locator(`[data-testid=task-row][data-task-id="${ids.quick}"]`).waitFor();
    const denied = pg.locator('[data-testid=run-denied]');
    await denied.waitFor();
    check(/\(guest\) cannot run tasks/.test(await denied.textContent()), `reason ${await denied.textContent()}`);
    const buttons = pg.locator('[data-testid=run-template]');
    check((await buttons.count()) === 4, 'not four Run buttons');
    for (const b of await buttons.all()) check(await b.isDisabled(), 'a guest has an enabled Run button');
    await other.close();
  });

  await step('phone-sized screen: the task list and a task page without sideways scrolling', async () => {
    const phone = await browser.newContext({
      viewport: { width: 375, height: 740 },
      isMobile: true,
      hasTouch: true,
      storageState: await context.storageState(),
    });
    const small = await phone.newPage();
    watch(small);
    await openProject(small);
    await small.locator('[data-testid=task-row]').first().waitFor();
    const sizes = await small.evaluate(() => ({
      doc: document.documentElement.scrollWidth,
      view: window.innerWidth,
      wraps: [...document.querySelectorAll('.table-wrap')].map((w) => [w.scrollWidth, w.clientWidth]),
    }));
    check(sizes.doc <= sizes.view, `the page is ${sizes.doc}px wide in a ${sizes.view}px screen`);
    for (const [scroll, client] of sizes.wraps) check(scroll <= client, `a table is ${scroll}px in ${client}px`);
    await small.screenshot({ path: join(artifacts, 'console-phone.png'), fullPage: true });
    await small.goto(`${base}/#/project/${p}/task/${ids.slow}`);
    await small.locator('[data-testid=task-output]').getByText('slow done').waitFor();
    const task = await small.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
    check(task[0] <= task[1], `the task page is ${task[0]}px wide in a ${task[1]}px screen`);
    await small.screenshot({ path: join(artifacts, 'console-phone-task.png') });
    await phone.close();
  });

  await step('no page errors, console errors or CSP violations', async () => {
    check(problems.length === 0, problems.join('\n'));
  });

  await browser.close();
  run.browser = null;
  process.stdout.write(`TASKS=${JSON.stringify(ids)}\n`);
}

run.main(main);
