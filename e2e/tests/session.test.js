// Sessions in separate browser profiles: keyboard-only sign-in, the API's error for a wrong
// password, the proactive refresh of an active tab, sign-out reaching every tab, and a control
// proving the two-tab test can fail.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { ACCESS_TTL_SEC, ADMIN_EMAIL, ADMIN_PASSWORD, CONSOLE, VIEWER_EMAIL, VIEWER_PASSWORD, launch, newContext, openPage, screenshot, sleep } from './helpers.js';

describe('sessions', () => {
  let browser;

  before(async () => { browser = await launch(); });
  after(async () => { await browser?.close(); });

  it('keyboard sign-in with the API\'s error for a wrong password; an active tab refreshes before expiry; sign-out reaches every tab', async () => {
    const context = await newContext(browser);
    const page = await openPage(context);
    await page.goto(CONSOLE);
    // The email field has focus on arrival; Tab moves to the password; Enter submits.
    await page.getByLabel('Email').waitFor();
    await page.keyboard.type(ADMIN_EMAIL);
    await page.keyboard.press('Tab');
    await page.keyboard.type('not the password');
    await page.keyboard.press('Enter');
    await page.getByRole('alert').filter({ hasText: 'invalid_credentials' }).waitFor();
    await screenshot(page, '00-sign-in-error');
    await page.getByLabel('Password').fill(ADMIN_PASSWORD);
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'API keys', level: 1 }).waitFor();
    // The nav is reachable by keyboard: focus a link and follow it with Enter.
    await page.getByRole('link', { name: 'Audit log' }).focus();
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Audit log', level: 1 }).waitFor();
    // An active user is refreshed shortly before expiry, before any call needs it.
    const refreshes = [];
    page.on('request', (r) => { if (r.url().endsWith('/v1/auth/refresh')) refreshes.push(Date.now()); });
    await page.reload();
    await page.getByRole('heading', { name: 'Audit log', level: 1 }).waitFor();
    const loaded = Date.now();
    await sleep(500);
    await page.keyboard.press('Shift'); // user activity
    await sleep((ACCESS_TTL_SEC - 0.2) * 1000);
    assert.equal(refreshes.length, 2, 'the reload\'s refresh, then one proactive refresh');
    assert.ok(refreshes[1] - loaded < ACCESS_TTL_SEC * 1000, 'before the token expired');
    // Sign-out in one tab signs out the others (BroadcastChannel; no token crosses it).
    const other = await openPage(context);
    await other.goto(`${CONSOLE}#/keys`);
    await other.getByRole('button', { name: 'Sign out' }).waitFor();
    await page.getByRole('button', { name: 'Sign out' }).click();
    await other.getByLabel('Email').waitFor();
    assert.deepEqual([...page.problems, ...other.problems], []);
    await context.close();
  });

  it('shows a viewer only the pages a viewer may use; the API refuses the rest', async () => {
    const context = await newContext(browser);
    const page = await openPage(context);
    await page.goto(`${CONSOLE}#/keys`);
    await page.getByLabel('Email').fill(VIEWER_EMAIL);
    await page.getByLabel('Password').fill(VIEWER_PASSWORD);
    await page.getByRole('button', { name: 'Sign in' }).click();
    // Asked for the keys page, a viewer lands on the tag look-up instead.
    await page.getByRole('heading', { name: 'Tags', level: 1 }).waitFor();
    const nav = page.getByRole('navigation', { name: 'Sections' });
    assert.deepEqual(await nav.getByRole('link').allTextContents(), ['Tags']);
    assert.match(await page.locator('#whoami').textContent(), /\(viewer\)/);
    await screenshot(page, '10-viewer');
    // Hiding is a courtesy: the server itself refuses a viewer.
    const status = await page.evaluate(async () => {
      const { request } = await import('./api.js');
      try {
        await request('GET', '/v1/api-keys');
        return 200;
      } catch (e) {
        return e.code;
      }
    });
    assert.equal(status, 'forbidden');
    assert.deepEqual(page.problems, []);
    await context.close();
  });

  it('control: without the Web Lock, two tabs refreshing together lose the session', async () => {
    // Proves the two-tab test in console.test.js would fail if the console did not queue its
    // refreshes: the same scenario with navigator.locks removed ends the session.
    const context = await newContext(browser);
    await context.addInitScript(() => {
      Object.defineProperty(Navigator.prototype, 'locks', { get: () => undefined });
    });
    const page = await openPage(context);
    await page.goto(CONSOLE);
    await page.getByLabel('Email').fill(ADMIN_EMAIL);
    await page.getByLabel('Password').fill(ADMIN_PASSWORD);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('button', { name: 'Sign out' }).waitFor();
    const second = await openPage(context);
    const statuses = [];
    for (const p of [page, second]) {
      p.on('response', (r) => { if (r.url().endsWith('/v1/auth/refresh')) statuses.push(r.status()); });
    }
    await context.route('**/v1/auth/refresh', async (route) => { await sleep(400); await route.continue(); });
    await Promise.all([page.reload(), second.goto(`${CONSOLE}#/keys`)]);
    await sleep(1500);
    // Both requests left with the same CSRF header. The server answers the later one with 401
    // refresh_token_reused when its old refresh cookie arrives, or 403 csrf_failed when the
    // browser attached the already-rotated cookie (it does so at send time, after the delay).
    // Either way that tab loses the session, which the Web Lock prevents.
    assert.equal(statuses.filter((s) => s === 200).length, 1, `${statuses}`);
    assert.ok(statuses.some((s) => s === 401 || s === 403), `${statuses}`);
    await context.close();
  });
});
