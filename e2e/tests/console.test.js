// The admin console in real headless Chromium: sign-in, keys, reloads, storage, silent
// refresh, sign-out, cross-origin refresh attempts, audit. The tests run in order and share
// one signed-in browser profile, as one user's working session would.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  ACCESS_TTL_SEC, BASE_URL, CONSOLE, countRequests, launch, newContext, openPage,
  screenshot, serveHtml, signIn, sleep,
} from './helpers.js';

const KEY_NAME = `e2e key ${Date.now()}`;

describe('admin console', () => {
  let browser;
  let context;
  let page;

  before(async () => {
    browser = await launch();
    context = await newContext(browser);
    page = await openPage(context);
  });

  after(async () => {
    await browser?.close();
  });

  it('serves the console with its own CSP and the API with the strict one', async () => {
    const response = await page.goto(CONSOLE);
    const csp = response.headers()['content-security-policy'];
    assert.match(csp, /script-src 'self'/);
    assert.match(csp, /frame-ancestors 'none'/);
    assert.match(csp, /object-src 'none'/);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
    const api = await page.request.get(`${BASE_URL}/v1/audit/checkpoint`);
    assert.equal(api.headers()['content-security-policy'], "default-src 'none'; frame-ancestors 'none'");
    await page.getByLabel('Email').waitFor();
    await screenshot(page, '01-sign-in');
  });

  it('signs in', async () => {
    await signIn(page);
    await page.getByRole('heading', { name: 'API keys', level: 1 }).waitFor();
    assert.match(await page.locator('#whoami').textContent(), /\(admin\)/);
  });

  it('creates an API key and shows it exactly once', async () => {
    await page.getByLabel('Name', { exact: true }).fill(KEY_NAME);
    const created = page.waitForResponse((r) => r.url().endsWith('/v1/api-keys') && r.request().method() === 'POST');
    await page.getByRole('button', { name: 'Create key' }).click();
    const body = await (await created).json();
    const secret = page.locator('#new-key');
    assert.equal(await secret.inputValue(), body.key);
    await page.getByRole('button', { name: 'Copy' }).click();
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), body.key);
    await screenshot(page, '02-api-key-created');
    await page.getByRole('button', { name: 'Done, I have stored it' }).click();
    await page.getByRole('cell', { name: KEY_NAME, exact: true }).waitFor();
    const html = await page.content();
    assert.ok(!html.includes(body.key), 'the key is gone from the page after "Done"');
    assert.ok(html.includes(body.prefix), 'the list shows the prefix');
    // The list itself never carries the secret.
    await page.getByRole('button', { name: 'Reload' }).click();
    await page.getByRole('cell', { name: KEY_NAME, exact: true }).waitFor();
    assert.ok(!(await page.content()).includes(body.key));
  });

  it('revokes the key after confirmation', async () => {
    await page.getByRole('button', { name: `Revoke key ${KEY_NAME}` }).click();
    const dialog = page.getByRole('dialog');
    await dialog.waitFor();
    await screenshot(page, '03-revoke-confirmation');
    await dialog.getByRole('button', { name: 'Revoke key' }).click();
    const row = page.getByRole('row').filter({ hasText: KEY_NAME });
    await row.getByText(/Revoked/).waitFor();
    assert.equal(await row.getByRole('button', { name: /Revoke/ }).count(), 0);
    await screenshot(page, '04-api-keys');
  });

  it('stays signed in across a reload through the refresh cookie', async () => {
    const refreshes = countRequests(page, '/v1/auth/refresh');
    await page.reload();
    await page.getByRole('heading', { name: 'API keys', level: 1 }).waitFor();
    await page.getByRole('cell', { name: KEY_NAME, exact: true }).waitFor();
    assert.equal(refreshes.count, 1);
  });

  it('keeps no token in localStorage, sessionStorage or readable cookies', async () => {
    const seen = await page.evaluate(() => ({
      local: Object.fromEntries(Object.entries(localStorage)),
      session: Object.fromEntries(Object.entries(sessionStorage)),
      cookie: document.cookie,
    }));
    // Only the device id (an opaque UUID that authorises nothing) is stored.
    assert.deepEqual(Object.keys(seen.local), ['vt-device-id']);
    assert.match(seen.local['vt-device-id'], /^[0-9a-f-]{36}$/);
    assert.deepEqual(seen.session, {});
    const names = seen.cookie.split(';').map((c) => c.trim().split('=')[0]).filter(Boolean);
    assert.deepEqual(names, ['__Host-vt_csrf']);
    // The refresh token exists, but only as an HttpOnly cookie scripts cannot see.
    const jar = await context.cookies(BASE_URL);
    const refresh = jar.find((c) => c.name === '__Host-vt_refresh');
    assert.ok(refresh && refresh.httpOnly && refresh.secure && refresh.sameSite === 'Strict');
    assert.ok(!seen.cookie.includes(refresh.value));
    // Nothing JWT-shaped anywhere the page can read.
    const everything = JSON.stringify(seen);
    assert.doesNotMatch(everything, /eyJ[\w-]+\.[\w-]+\.[\w-]+/);
  });

  it('refreshes silently exactly once after the access token expires', async () => {
    await page.goto(`${CONSOLE}#/keys`);
    await page.getByRole('cell', { name: KEY_NAME, exact: true }).waitFor();
    const refreshes = countRequests(page, '/v1/auth/refresh');
    const unauthorized = [];
    page.on('response', (r) => { if (r.status() === 401) unauthorized.push(r.url()); });
    await sleep((ACCESS_TTL_SEC + 1.5) * 1000); // idle: the token lapses
    assert.equal(refreshes.count, 0, 'an idle tab does not keep refreshing');
    // Two API calls at once after expiry share a single refresh.
    const lists = page.waitForResponse((r) => r.url().endsWith('/v1/api-keys') && r.status() === 200);
    await page.getByRole('link', { name: 'Audit log' }).click(); // events + checkpoint at once
    await page.getByRole('heading', { name: 'Audit log' }).waitFor();
    await page.getByRole('link', { name: 'API keys' }).click();
    await lists;
    assert.equal(refreshes.count, 1, 'one silent refresh');
    assert.deepEqual(unauthorized, [], 'no call was refused with 401');
  });

  it('keeps one session when two tabs refresh at the same time', async () => {
    const second = await openPage(context);
    const refreshes = [];
    for (const p of [page, second]) {
      p.on('response', (r) => { if (new URL(r.url()).pathname === '/v1/auth/refresh') refreshes.push(r.status()); });
    }
    // Both tabs load together: each must refresh, and the Web Lock queues them so the
    // second presents the token the first just received (not the same one: that is reuse).
    // Slow refreshes widen the window in which two unqueued requests would overlap.
    await context.route('**/v1/auth/refresh', async (route) => { await sleep(400); await route.continue(); });
    await Promise.all([page.reload(), second.goto(`${CONSOLE}#/keys`)]);
    await Promise.all([page, second].map((p) => p.getByRole('cell', { name: KEY_NAME, exact: true }).waitFor()));
    await sleep((ACCESS_TTL_SEC + 1) * 1000);
    const listed = [page, second].map((p) => p.waitForResponse((r) => r.url().endsWith('/v1/api-keys') && r.status() === 200));
    await Promise.all([page, second].map((p) => p.getByRole('button', { name: 'Reload' }).click()));
    await Promise.all(listed);
    await context.unroute('**/v1/auth/refresh');
    assert.deepEqual(refreshes, [200, 200, 200, 200]);
    assert.equal(await second.getByRole('button', { name: 'Sign out' }).isVisible(), true);
    assert.deepEqual(second.problems, []);
    await second.close();
  });

  it('does not let a page on another origin refresh with the user\'s cookies', async () => {
    const attacker = await serveHtml('<!doctype html><title>elsewhere</title><p>another site</p>');
    try {
      const tryRefresh = (origin) => async () => {
        const other = await openPage(context);
        await other.goto(`${origin}/`);
        const seen = [];
        other.on('response', (r) => { if (r.url().includes('/v1/auth/refresh')) seen.push(r.status()); });
        const result = await other.evaluate(async (target) => {
          const csrf = document.cookie.match(/__Host-vt_csrf=([^;]+)/)?.[1] ?? null;
          const out = { csrfVisible: csrf !== null };
          try {
            // With the headers the real console sends: needs a CORS preflight, which fails.
            const r = await fetch(`${target}/v1/auth/refresh`, {
              method: 'POST', credentials: 'include',
              headers: { 'X-CSRF-Token': csrf ?? 'x', 'X-Device-ID': 'attacker-device-0001' },
            });
            out.withHeaders = { status: r.status, body: await r.text() };
          } catch (e) {
            out.withHeaders = { error: String(e) };
          }
          try {
            // A "simple" request gets through without a preflight, but cannot carry X-CSRF-Token.
            const r = await fetch(`${target}/v1/auth/refresh`, { method: 'POST', credentials: 'include', mode: 'no-cors' });
            out.simple = { type: r.type };
          } catch (e) {
            out.simple = { error: String(e) };
          }
          return out;
        }, BASE_URL);
        await sleep(300);
        await other.close();
        return { ...result, statuses: seen };
      };

      // Cross-site (127.0.0.1 vs localhost): SameSite=Strict keeps the cookies at home.
      const crossSite = await tryRefresh(`http://127.0.0.1:${attacker.port}`)();
      assert.equal(crossSite.csrfVisible, false);
      assert.ok(crossSite.withHeaders.error, `blocked by CORS: ${JSON.stringify(crossSite.withHeaders)}`);
      // Only the simple request reached the server, and without cookies: no refresh token.
      assert.deepEqual(crossSite.statuses, [401], JSON.stringify(crossSite));

      // Same site, other port: cookies are shared per host, so the CSRF cookie is even
      // readable, but the header cannot be sent cross-origin and the simple request lacks it.
      const samesite = await tryRefresh(`http://localhost:${attacker.port}`)();
      assert.ok(samesite.withHeaders.error, `blocked by CORS: ${JSON.stringify(samesite.withHeaders)}`);
      // The simple request carried the cookies (same site) but no X-CSRF-Token: 403.
      assert.equal(samesite.csrfVisible, true);
      assert.deepEqual(samesite.statuses, [403], JSON.stringify(samesite));

      // The user's session was not disturbed (nothing rotated or revoked it).
      await page.goto(`${CONSOLE}#/keys`);
      await page.getByRole('cell', { name: KEY_NAME, exact: true }).waitFor();
    } finally {
      await attacker.close();
    }
  });

  it('creates a product and a batch, downloads its tags and revokes a tag', async () => {
    await page.getByRole('link', { name: 'Products and batches' }).click();
    const sku = `E2E-${Date.now()}`;
    await page.getByLabel('Product name').fill('E2E sneaker');
    await page.getByLabel('SKU').fill(sku);
    await page.getByRole('button', { name: 'Create product' }).click();
    await page.getByRole('cell', { name: sku }).waitFor();
    const productId = await page.locator('code.id').first().textContent();
    await page.getByLabel('Product id', { exact: true }).fill(productId);
    await page.getByLabel('Quantity').fill('25');
    await page.getByRole('button', { name: 'Create batch' }).click();
    const download = page.waitForEvent('download');
    await page.getByRole('button', { name: /Download tags CSV/ }).click();
    const csv = await (await (await download).createReadStream()).toArray();
    const lines = Buffer.concat(csv).toString().trim().split('\n');
    assert.equal(lines.length, 25);
    assert.ok(lines.every((l) => /^[A-Za-z0-9_-]{16,64}$/.test(l)), 'one tag id per line, no header');
    await screenshot(page, '05-products-and-batches');

    await page.getByRole('link', { name: 'Tags' }).click();
    await page.getByLabel('Tag id').fill(lines[0]);
    await page.getByRole('button', { name: 'Look up' }).click();
    await page.getByText('authentic').waitFor();
    await page.getByLabel('Reason').fill('e2e: lost in transit');
    await page.getByRole('button', { name: 'Revoke tag' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Revoke tag' }).click();
    await page.locator('.badge.revoked').waitFor();
    await screenshot(page, '06-tag-revoked');
  });

  it('counts lengths as the API does and keeps a right-to-left name apart from its SKU', async () => {
    // The API counts characters (code points) once trimmed; HTML's maxlength counted UTF-16
    // units and cut a name of emoji at half its limit.
    await page.getByRole('link', { name: 'Products and batches' }).click();
    const name = page.getByLabel('Product name');
    assert.equal(await name.getAttribute('maxlength'), null);
    await name.fill('😀'.repeat(200));
    assert.equal(await name.evaluate((el) => el.validity.valid), true, '200 emoji are 200 characters');
    await name.fill(` ${'😀'.repeat(200)} `);
    assert.equal(await name.evaluate((el) => el.validity.valid), true, 'surrounding spaces are trimmed');
    await name.fill('😀'.repeat(201));
    assert.match(await name.evaluate((el) => el.validationMessage), /At most 200 characters/);

    // A product named in Arabic ending in a number: in one run of text its SKU read as part of
    // the name ("(200) 100 منتج"). Each is isolated now.
    const sku = `200-${Date.now()}`;
    await name.fill('منتج 100');
    await page.getByLabel('SKU').fill(sku);
    await page.getByRole('button', { name: 'Create product' }).click();
    await page.getByRole('cell', { name: sku }).waitFor();
    const productId = await page.getByRole('row').filter({ hasText: sku }).locator('code.id').textContent();
    await page.getByLabel('Product id', { exact: true }).fill(productId);
    await page.getByLabel('Quantity').fill('1');
    await page.getByRole('button', { name: 'Create batch' }).click();
    const download = page.waitForEvent('download');
    await page.getByRole('button', { name: /Download tags CSV/ }).first().click();
    const csv = await (await (await download).createReadStream()).toArray();
    const tagId = Buffer.concat(csv).toString().trim().split('\n')[0];
    await page.getByRole('link', { name: 'Tags' }).click();
    await page.getByLabel('Tag id').fill(tagId);
    await page.getByRole('button', { name: 'Look up' }).click();
    await page.getByText('authentic').waitFor();
    const product = page.locator('dt:text-is("Product") + dd');
    assert.deepEqual(await product.locator('bdi').allTextContents(), ['منتج 100', sku]);
    await screenshot(page, '07-right-to-left-product');
  });

  it('refreshes once and retries when the API answers 401, without looping', async () => {
    await page.getByRole('link', { name: 'API keys' }).click();
    await page.getByRole('cell', { name: KEY_NAME, exact: true }).waitFor();
    const refreshes = countRequests(page, '/v1/auth/refresh');
    let refused = 0;
    // The server stops accepting the token early (say, it restarted with a new key).
    await page.route('**/v1/api-keys', (route) => {
      if (refused++ > 0) return route.continue();
      return route.fulfill({ status: 401, contentType: 'application/json', body: '{"error":"invalid_token","detail":"The access token is not valid."}' });
    });
    const listed = page.waitForResponse((r) => r.url().endsWith('/v1/api-keys') && r.status() === 200);
    await page.getByRole('button', { name: 'Reload' }).click();
    await listed;
    assert.equal(refreshes.count, 1);
    await page.unroute('**/v1/api-keys');
    // A 401 that persists after the refresh is shown, not retried forever.
    await page.route('**/v1/api-keys', (route) => route.fulfill({ status: 401, contentType: 'application/json', body: '{"error":"invalid_token","detail":"The access token is not valid."}' }));
    await page.getByRole('button', { name: 'Reload' }).click();
    await page.getByRole('alert').filter({ hasText: 'invalid_token' }).waitFor();
    assert.equal(refreshes.count, 2);
    await page.unroute('**/v1/api-keys');
  });

  it('shows a 429 with when to retry', async () => {
    // The admin limit is set high for these tests; the 429 itself is staged at the network.
    await page.route('**/v1/api-keys', (route) => route.fulfill({
      status: 429,
      headers: { 'Retry-After': '7', 'Content-Type': 'application/json' },
      body: JSON.stringify({ error: 'rate_limited', detail: 'Rate limit exceeded. Try again in 7 seconds', retry_after: 7 }),
    }));
    await page.getByRole('button', { name: 'Reload' }).click();
    await page.getByRole('alert').filter({ hasText: 'Try again in 7 seconds' }).waitFor();
    await screenshot(page, '09-rate-limited');
    await page.unroute('**/v1/api-keys');
  });

  it('retries a failed action with the same Idempotency-Key and does it once', async () => {
    const keys = [];
    let first = true;
    // The first create reaches the server but its answer is lost on the way back.
    await page.route('**/v1/api-keys', async (route) => {
      if (route.request().method() !== 'POST') return route.continue();
      keys.push(route.request().headers()['idempotency-key']);
      if (first) {
        first = false;
        await route.fetch();
        return route.abort('connectionreset');
      }
      return route.continue();
    });
    await page.getByRole('button', { name: 'Reload' }).click();
    const name = `${KEY_NAME} retried`;
    await page.getByLabel('Name', { exact: true }).fill(name);
    await page.getByRole('button', { name: 'Create key' }).click();
    await page.getByRole('alert').filter({ hasText: 'could not be reached' }).waitFor();
    const replayed = page.waitForResponse((r) => r.url().endsWith('/v1/api-keys') && r.request().method() === 'POST');
    await page.getByRole('button', { name: 'Create key' }).click();
    assert.equal((await replayed).headers()['idempotent-replayed'], 'true');
    await page.locator('#new-key').waitFor();
    assert.equal(keys.length, 2);
    assert.equal(keys[0], keys[1]);
    await page.getByRole('button', { name: 'Done, I have stored it' }).click();
    await page.unroute('**/v1/api-keys');
    assert.equal(await page.getByRole('cell', { name, exact: true }).count(), 1, 'one key, not two');
  });

  it('shows the actions in the audit log and verifies the chain', async () => {
    // Someone not signed in, with an email that matches no account: the event keeps nothing of
    // what was typed, and the console shows who acted as "anonymous", not as the service.
    const failed = await page.request.post(`${BASE_URL}/v1/auth/login`, {
      headers: { 'x-device-id': 'e2e-anonymous-device-0001' },
      data: { email: 'nobody-e2e@example.com', password: 'not a password' },
    });
    assert.equal(failed.status(), 401);
    await page.getByRole('link', { name: 'Audit log' }).click();
    const events = page.locator('table code.action');
    await events.first().waitFor();
    const actions = await events.allTextContents();
    for (const action of ['api_key.created', 'api_key.revoked', 'product.created', 'batch.created', 'tag.revoked', 'auth.login_failed']) {
      assert.ok(actions.includes(action), `${action} in ${actions.join(', ')}`);
    }
    const failedRow = page.locator('tbody tr').filter({ has: page.locator('code.action', { hasText: 'auth.login_failed' }) }).last();
    assert.equal(await failedRow.locator('td').nth(2).textContent(), 'anonymous');
    await page.getByRole('button', { name: 'Verify chain' }).click();
    await page.locator('#verify-result').getByText('Chain intact').waitFor();
    // scripts/e2e.sh gives the service a signing key, so the checkpoint is really signed.
    const checkpoint = page.locator('section').filter({ hasText: 'Latest signed checkpoint' });
    await checkpoint.getByText('e2e-key').waitFor();
    await screenshot(page, '07-audit');
  });

  it('signs out, after which the refresh cookie no longer works', async () => {
    const before = (await context.cookies(BASE_URL)).filter((c) => c.name.startsWith('__Host-vt_'));
    assert.equal(before.length, 2);
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('Email').waitFor();
    await screenshot(page, '08-signed-out');
    const after = await page.evaluate(() => document.cookie);
    assert.equal(after, '');
    // A reload finds no session.
    await page.reload();
    await page.getByLabel('Email').waitFor();
    // Even the old cookies, put back by hand and sent exactly as the console would (right
    // CSRF token, same device), are dead: sign-out revoked the whole token family.
    await context.addCookies(before);
    const answer = await page.evaluate(async (csrf) => {
      const r = await fetch('/v1/auth/refresh', {
        method: 'POST',
        headers: { 'X-CSRF-Token': csrf, 'X-Device-ID': localStorage.getItem('vt-device-id') },
      });
      return { status: r.status, body: await r.json() };
    }, before.find((c) => c.name === '__Host-vt_csrf').value);
    assert.equal(answer.status, 401, JSON.stringify(answer));
    assert.equal(answer.body.error, 'invalid_refresh_token');
    assert.deepEqual(page.problems, []);
  });
});
