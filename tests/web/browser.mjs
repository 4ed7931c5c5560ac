// A headless Chromium for medmesh's end-to-end tests, driven over stdin/stdout
// by tests/tests/e2e/browser.rs. Uses playwright-core with Debian's chromium
// (CHROMIUM, default /usr/bin/chromium): nothing downloads a browser.
//
// Usage: node browser.mjs USER_DATA_DIR
//
// Protocol (one JSON object per line each way):
//   ready line:  {"ready":true,"version":"<chromium version>"}
//   request:     {"id":N,"cmd":"<command>", ...arguments}
//   answer:      {"id":N,"ok":true,"value":...} or {"id":N,"ok":false,"error":"..."}
// Commands and their arguments (selectors are Playwright selectors, CSS by default):
//   goto {url}                      -> {url, status} after the load event
//   fill {selector, value}          -> null
//   click {selector}                -> null (does not wait for a navigation)
//   click_nav {selector}            -> {url} after the navigation the click starts has loaded
//   press {selector, key}           -> null (key as Playwright names it, e.g. "Enter")
//   text {selector}                 -> innerText of the first match
//   html {selector}                 -> innerHTML of the first match
//   content                         -> the whole document's HTML
//   count {selector}                -> number of matches (no waiting)
//   wait_for {selector, timeout_ms} -> null once a match is visible
//   wait_url {contains, timeout_ms} -> {url} once the page's URL contains the string
//   url                             -> the page's URL
//   title                           -> the document's title
//   screenshot {path, full_page}    -> null (PNG written to path)
//   cookies                         -> the context's cookies (Playwright's objects)
//   set_cookies {cookies}           -> null (Playwright cookie objects: name, value, url or domain+path, ...)
//   clear_cookies                   -> null
//   evaluate {expression}           -> the JSON value of a JavaScript expression in the page
//   console                         -> console messages and page errors so far (strings), then cleared
// It closes the browser and exits when stdin closes, and on SIGTERM.

import * as readline from 'node:readline';

import { chromium } from 'playwright-core';

console.log = console.error;

const userDataDir = process.argv[2];
if (!userDataDir) {
  console.error('usage: node browser.mjs USER_DATA_DIR');
  process.exit(2);
}

const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
];

const send = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);

async function main() {
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: FLAGS,
    // The node under test serves HTTPS with a test certificate.
    ignoreHTTPSErrors: true,
    viewport: { width: 1280, height: 900 },
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(10_000);
  page.setDefaultNavigationTimeout(15_000);
  let logs = [];
  page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));

  let closing = false;
  const close = async () => {
    if (closing) return;
    closing = true;
    await context.close().catch(() => {});
    process.exit(0);
  };
  process.on('SIGTERM', close);
  process.on('SIGINT', close);

  const commands = {
    async goto({ url }) {
      const resp = await page.goto(url, { waitUntil: 'load' });
      return { url: page.url(), status: resp ? resp.status() : null };
    },
    async fill({ selector, value }) {
      await page.fill(selector, String(value));
      return null;
    },
    async click({ selector }) {
      await page.click(selector);
      return null;
    },
    async click_nav({ selector }) {
      await Promise.all([
        page.waitForEvent('framenavigated', { predicate: (f) => f === page.mainFrame() }),
        page.click(selector),
      ]);
      await page.waitForLoadState('load');
      return { url: page.url() };
    },
    async press({ selector, key }) {
      await page.press(selector, key);
      return null;
    },
    async text({ selector }) {
      return page.locator(selector).first().innerText();
    },
    async html({ selector }) {
      return page.locator(selector).first().innerHTML();
    },
    async content() {
      return page.content();
    },
    async count({ selector }) {
      return page.locator(selector).count();
    },
    async wait_for({ selector, timeout_ms }) {
      await page.locator(selector).first().waitFor({ state: 'visible', timeout: timeout_ms ?? 10_000 });
      return null;
    },
    async wait_url({ contains, timeout_ms }) {
      await page.waitForURL((u) => u.href.includes(contains), { timeout: timeout_ms ?? 10_000, waitUntil: 'commit' });
      return { url: page.url() };
    },
    async url() {
      return page.url();
    },
    async title() {
      return page.title();
    },
    async screenshot({ path, full_page }) {
      await page.screenshot({ path, fullPage: !!full_page });
      return null;
    },
    async cookies() {
      return context.cookies();
    },
    async set_cookies({ cookies }) {
      await context.addCookies(cookies);
      return null;
    },
    async clear_cookies() {
      await context.clearCookies();
      return null;
    },
    async evaluate({ expression }) {
      const v = await page.evaluate(expression);
      return v === undefined ? null : v;
    },
    async console() {
      const out = logs;
      logs = [];
      return out;
    },
  };

  send({ ready: true, version: context.browser()?.version() ?? null });

  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  // One command at a time, in order.
  let queue = Promise.resolve();
  rl.on('line', (line) => {
    queue = queue.then(async () => {
      let req;
      try {
        req = JSON.parse(line);
      } catch (e) {
        send({ id: null, ok: false, error: `bad request line: ${e.message}` });
        return;
      }
      const fn = commands[req.cmd];
      if (!fn) {
        send({ id: req.id, ok: false, error: `unknown command ${req.cmd}` });
        return;
      }
      try {
        send({ id: req.id, ok: true, value: await fn(req) });
      } catch (e) {
        send({ id: req.id, ok: false, error: String(e?.message ?? e) });
      }
    });
  });
  rl.on('close', () => {
    queue.then(close, close);
  });
}

main().catch((err) => {
  console.error('browser: failed to start:', err);
  process.exit(1);
});
