// What the console tells its user when something goes wrong around a session: another user
// signing in from another tab of the same browser, a failed revoke, a sign-out the server
// never confirmed, a reload whose refresh fails for a moment. Each test has its own browser
// profile. Server failures that the running service cannot produce on demand (a 503 on one
// route, an unreachable server for one request) are staged at the network with page.route.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';

import {
  ACCESS_TTL_SEC, ADMIN_EMAIL, ADMIN_PASSWORD, CONSOLE, VIEWER_EMAIL, VIEWER_PASSWORD,
  countRequests, launch, newContext, openPage, screenshot, sleep,
} from './helpers.js';

/** Fills the sign-in form already shown on `page` and waits for the console's header. */
async function signInThroughForm(page, email, password) {
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('button', { name: 'Sign out' }).waitFor();
}

async function signInAs(page, email, password) {
  await page.goto(CONSOLE);
  await signInThroughForm(page, email, password);
}

/**
 * Two tabs of one browser profile: `second` shows the sign-in form (opened before anyone signed
 * in, so it has nothing to resume), then `first` signs in as the admin.
 */
async function adminBesideASignInForm(context) {
  const second = await openPage(context);
  await second.goto(CONSOLE);
  await second.getByLabel('Email').waitFor();
  const first = await openPage(context);
  await signInAs(first, ADMIN_EMAIL, ADMIN_PASSWORD);
  return { first, second };
}

const UNAVAILABLE = {
  status: 503,
  contentType: 'application/json',
  body: JSON.stringify({ error: 'service_unavailable', detail: 'A dependency is down; try again shortly.' }),
};

describe('failures around a session', () => {
  let browser;

  before(async () => { browser = await launch(); });
  after(async () => { await browser?.close(); });

  it('a tab whose browser session another user took over says so and sends nothing for the previous user', async () => {
    const context = await newContext(browser);
    const { first, second } = await adminBesideASignInForm(context);
    await first.getByRole('heading', { name: 'API keys', level: 1 }).waitFor();
    // The second tab signs in as the viewer: the browser's refresh cookie is theirs now.
    await signInThroughForm(second, VIEWER_EMAIL, VIEWER_PASSWORD);
    // The first tab's token lapses; its next action refreshes and gets the viewer's session.
    await sleep((ACCESS_TTL_SEC + 0.5) * 1000);
    const creates = [];
    first.on('request', (r) => {
      if (r.method() === 'POST' && new URL(r.url()).pathname === '/v1/api-keys') creates.push(r.url());
    });
    await first.getByLabel('Name').fill('made for the previous user?');
    await first.getByRole('button', { name: 'Create key' }).click();
    await first.locator('#whoami').filter({ hasText: `${VIEWER_EMAIL} (viewer)` }).waitFor();
    await first.getByRole('status').filter({ hasText: `now signed in as ${VIEWER_EMAIL}` }).waitFor();
    await first.getByRole('heading', { name: 'Tags', level: 1 }).waitFor();
    await screenshot(first, '20-session-taken-over');
    assert.deepEqual(creates, [], 'nothing was sent as the viewer');
    assert.deepEqual([...first.problems, ...second.problems], []);
    await context.close();
  });

  it('a confirmation open when another user\'s session arrives is cancelled, not sent as them', async () => {
    const context = await newContext(browser);
    const { first, second } = await adminBesideASignInForm(context);
    const name = `e2e dialog ${Date.now()}`;
    await first.getByLabel('Name').fill(name);
    await first.getByRole('button', { name: 'Create key' }).click();
    await first.getByRole('button', { name: 'Done, I have stored it' }).click();
    await first.getByRole('button', { name: `Revoke key ${name}` }).click();
    await first.getByRole('dialog').waitFor();
    const deletes = [];
    first.on('request', (r) => { if (r.method() === 'DELETE') deletes.push(r.url()); });
    // The viewer signs in from the other tab; the first tab's proactive refresh (it was used)
    // brings the viewer's session while the dialog is still open.
    await signInThroughForm(second, VIEWER_EMAIL, VIEWER_PASSWORD);
    await first.getByRole('status').filter({ hasText: `now signed in as ${VIEWER_EMAIL}` })
      .waitFor({ timeout: (ACCESS_TTL_SEC + 5) * 1000 });
    assert.equal(await first.locator('dialog[open]').count(), 0, 'the confirmation is gone');
    await sleep(300);
    assert.deepEqual(deletes, []);
    assert.deepEqual([...first.problems, ...second.problems], []);
    await context.close();
  });

  it('a role changed by an operator redraws the pages at the next refresh, with a notice', async () => {
    // As `factory-service user set-role` would, straight in the test's database
    // (scripts/e2e.sh exports DATABASE_URL).
    const setRole = (role) => execFileSync('psql', [process.env.DATABASE_URL, '-qtA', '-v', 'ON_ERROR_STOP=1',
      '-c', `UPDATE users SET role = '${role}' WHERE email = '${VIEWER_EMAIL}'`]);
    const context = await newContext(browser);
    const page = await openPage(context);
    try {
      await signInAs(page, VIEWER_EMAIL, VIEWER_PASSWORD);
      await page.getByRole('heading', { name: 'Tags', level: 1 }).waitFor();
      setRole('operator');
      await page.keyboard.press('Shift'); // activity, so the tab refreshes before expiry
      await page.getByRole('status').filter({ hasText: 'Your role is now operator' })
        .waitFor({ timeout: (ACCESS_TTL_SEC + 5) * 1000 });
      assert.match(await page.locator('#whoami').textContent(), /\(operator\)/);
      const nav = page.getByRole('navigation', { name: 'Sections' });
      assert.deepEqual(await nav.getByRole('link').allTextContents(), ['Products and batches', 'Tags']);
      assert.deepEqual(page.problems, []);
    } finally {
      setRole('viewer');
      await context.close();
    }
  });

  it('a session ended by an operator says so at the next action; a pasted id with spaces is looked up', async () => {
    const context = await newContext(browser);
    const page = await openPage(context);
    await signInAs(page, VIEWER_EMAIL, VIEWER_PASSWORD);
    await page.getByRole('heading', { name: 'Tags', level: 1 }).waitFor();
    // Pasted with spaces around it: looked up (and unknown), not blocked by the form's pattern.
    const lookups = countRequests(page, '/v1/tags/NoSuchTag_0123456789');
    await page.getByLabel('Tag id').fill('  NoSuchTag_0123456789 ');
    await page.getByRole('button', { name: 'Look up' }).click();
    await page.getByRole('alert').filter({ hasText: 'not_found' }).waitFor();
    assert.equal(lookups.count, 1);
    // As `factory-service user end-sessions` does, straight in the test's database.
    execFileSync('psql', [process.env.DATABASE_URL, '-qtA', '-v', 'ON_ERROR_STOP=1', '-c',
      `UPDATE refresh_families SET revoked_at = now(), revoked_reason = 'ended_by_operator'
        WHERE revoked_at IS NULL AND user_id = (SELECT id FROM users WHERE email = '${VIEWER_EMAIL}')`]);
    await page.getByRole('button', { name: 'Look up' }).click();
    await page.getByLabel('Email').waitFor();
    await page.getByRole('status').filter({ hasText: 'Your session has ended' }).waitFor();
    await screenshot(page, '21-session-ended');
    assert.deepEqual(page.problems, []);
    await context.close();
  });

  it('a revoke that fails shows its error after the list reloads', async () => {
    const context = await newContext(browser);
    const page = await openPage(context);
    await signInAs(page, ADMIN_EMAIL, ADMIN_PASSWORD);
    const name = `e2e failing revoke ${Date.now()}`;
    await page.getByLabel('Name').fill(name);
    await page.getByRole('button', { name: 'Create key' }).click();
    await page.getByRole('button', { name: 'Done, I have stored it' }).click();
    await page.getByRole('cell', { name, exact: true }).waitFor();
    await page.route('**/v1/api-keys/*', (route) => (
      route.request().method() === 'DELETE' ? route.fulfill(UNAVAILABLE) : route.continue()));
    await page.getByRole('button', { name: `Revoke key ${name}` }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Revoke key' }).click();
    await page.getByRole('alert').filter({ hasText: 'service_unavailable' }).waitFor();
    // The list reloaded and the error is still there; the key is still active.
    await sleep(300);
    await page.getByRole('alert').filter({ hasText: 'service_unavailable' }).waitFor();
    const row = page.getByRole('row').filter({ hasText: name });
    await row.getByText('Active').waitFor();
    assert.deepEqual(page.problems, []);
    await context.close();
  });

  it('a sign-out the server never confirmed leaves nothing this browser can resume', async () => {
    const context = await newContext(browser);
    const page = await openPage(context);
    await signInAs(page, ADMIN_EMAIL, ADMIN_PASSWORD);
    await page.route('**/v1/auth/logout', (route) => route.abort('connectionrefused'));
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByRole('status').filter({ hasText: 'the server could not end the session' }).waitFor();
    await page.unroute('**/v1/auth/logout');
    // Before, a reload resumed the session through the refresh cookie.
    const refreshes = countRequests(page, '/v1/auth/refresh');
    await page.reload();
    await page.getByLabel('Email').waitFor();
    await sleep(500);
    assert.equal(refreshes.count, 0);
    assert.equal(await page.getByRole('button', { name: 'Sign out' }).isVisible(), false);
    await context.close();
  });

  it('a reload whose refresh fails for a moment says why instead of looking signed out', async () => {
    const context = await newContext(browser);
    const page = await openPage(context);
    await signInAs(page, ADMIN_EMAIL, ADMIN_PASSWORD);
    await page.route('**/v1/auth/refresh', (route) => route.fulfill(UNAVAILABLE));
    await page.reload();
    await page.getByRole('status').filter({ hasText: 'could not be resumed just now' }).waitFor();
    assert.match(await page.getByRole('status').textContent(), /service_unavailable/);
    // Once the server answers again, a reload resumes the same session.
    await page.unroute('**/v1/auth/refresh');
    await page.reload();
    await page.getByRole('button', { name: 'Sign out' }).waitFor();
    assert.deepEqual(page.problems, []);
    await context.close();
  });
});
