// Shared set-up for the console tests: Debian's Chromium driven by playwright-core, the
// service's URL and admin credentials from scripts/e2e.sh, screenshots under test-output/e2e/.

import { mkdirSync } from 'node:fs';
import { createServer } from 'node:http';
import path from 'node:path';
import { chromium } from 'playwright-core';

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the tests through scripts/e2e.sh`);
  return value;
}

export const BASE_URL = required('E2E_BASE_URL'); // http://localhost:<port>
export const ADMIN_EMAIL = required('E2E_ADMIN_EMAIL');
export const ADMIN_PASSWORD = required('E2E_ADMIN_PASSWORD');
export const VIEWER_EMAIL = required('E2E_VIEWER_EMAIL');
export const VIEWER_PASSWORD = required('E2E_VIEWER_PASSWORD');
export const ACCESS_TTL_SEC = Number(process.env.E2E_ACCESS_TTL_SEC ?? 5);
export const CONSOLE = `${BASE_URL}/admin/`;
const OUTPUT = process.env.E2E_OUTPUT_DIR ?? path.resolve('..', 'test-output', 'e2e');
mkdirSync(OUTPUT, { recursive: true });

/** Debian's Chromium, headless, with the flags this machine's closed network needs. */
export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
}

/**
 * A fresh browser profile (its own cookie jar and storage) with a laptop-sized window.
 * Clipboard permission lets the copy button work headless.
 */
export async function newContext(browser) {
  const context = await browser.newContext({ viewport: { width: 1366, height: 820 } });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: BASE_URL });
  return context;
}

/**
 * Opens a page that records CSP violations and uncaught errors, so every test also checks
 * that the policy holds and nothing broke.
 */
export async function openPage(context) {
  const page = await context.newPage();
  page.problems = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error' && /Content Security Policy|Refused to/i.test(msg.text())) {
      page.problems.push(`CSP: ${msg.text()}`);
    }
  });
  page.on('pageerror', (err) => page.problems.push(`page error: ${err.message}`));
  return page;
}

/** Counts the page's requests whose path is `pathname` (e.g. /v1/auth/refresh). */
export function countRequests(page, pathname) {
  const counter = { count: 0, urls: [] };
  page.on('request', (req) => {
    if (new URL(req.url()).pathname === pathname) {
      counter.count += 1;
      counter.urls.push(req.url());
    }
  });
  return counter;
}

export async function screenshot(page, name) {
  await page.screenshot({ path: path.join(OUTPUT, `${name}.png`), fullPage: true });
}

/** Signs in through the form and waits for the console's header. */
export async function signIn(page) {
  await page.goto(CONSOLE);
  await page.getByLabel('Email').fill(ADMIN_EMAIL);
  await page.getByLabel('Password').fill(ADMIN_PASSWORD);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('button', { name: 'Sign out' }).waitFor();
}

/** Serves `html` at / on a free port of 127.0.0.1; resolves to { port, close }. */
export function serveHtml(html) {
  return new Promise((resolve) => {
    const server = createServer((req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
      res.end(html);
    });
    server.listen(0, '127.0.0.1', () => resolve({
      port: server.address().port,
      close: () => new Promise((done) => server.close(done)),
    }));
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
