// The console's shell: hash routes (#/keys, #/catalog, #/tags, #/audit), the header, and
// resuming the session from the refresh cookie when the page loads.

import * as session from './session.js';
import { describe } from './errors.js';
import { cancelDialogs, notice, isolated } from './dom.js';
import * as signin from './pages/signin.js';
import * as keys from './pages/keys.js';
import * as catalog from './pages/catalog.js';
import * as tags from './pages/tags.js';
import * as audit from './pages/audit.js';

// Which roles each page is for. The API enforces roles on every call; hiding pages only
// spares users forms that would answer "forbidden".
const PAGES = {
  keys: { title: 'API keys', page: keys, roles: ['admin'] },
  catalog: { title: 'Products and batches', page: catalog, roles: ['admin', 'operator'] },
  tags: { title: 'Tags', page: tags, roles: ['admin', 'operator', 'viewer'] },
  audit: { title: 'Audit log', page: audit, roles: ['admin'] },
};

const main = document.getElementById('main');
const topbar = document.getElementById('topbar');
const whoami = document.getElementById('whoami');

function allowed(name, role) {
  return PAGES[name]?.roles.includes(role) ?? false;
}

function currentPage(role) {
  const name = location.hash.match(/^#\/([a-z]+)/)?.[1];
  if (allowed(name, role)) return name;
  return Object.keys(PAGES).find((n) => allowed(n, role)) ?? 'tags';
}

let rendering = 0;
async function show() {
  const ticket = ++rendering;
  main.replaceChildren();
  // A message about the previous page would be misread on the next one.
  document.getElementById('notice').textContent = '';
  const user = session.user();
  topbar.hidden = !user;
  if (!user) {
    document.title = 'Sign in · VokeTag admin';
    signin.render(main);
    return;
  }
  whoami.replaceChildren(isolated(user.email), ` (${user.role})`);
  const name = currentPage(user.role);
  document.title = `${PAGES[name].title} · VokeTag admin`;
  for (const link of topbar.querySelectorAll('nav a')) {
    const target = link.getAttribute('href').slice(2);
    link.parentElement.hidden = !allowed(target, user.role);
    if (target === name) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  await PAGES[name].page.render(main);
  if (ticket === rendering) main.focus({ preventScroll: true });
}

// Only "#/..." hashes are routes; others (the skip link's #main) just move focus.
addEventListener('hashchange', () => {
  if (location.hash.startsWith('#/')) show();
});
session.onChange(async (signedIn, how) => {
  // What the previous user's pages kept in memory is not the next user's to see, and a
  // confirmation the previous user opened must not be answered as the next one.
  if (!signedIn || how === 'user') {
    catalog.forget();
    cancelDialogs();
  }
  await show();
  if (!signedIn) {
    // After show(), which clears the notice.
    if (how === 'ended') notice('Your session has ended: it expired, or was ended by a sign-out elsewhere or by an admin. Sign in again.');
    if (how === 'elsewhere') notice('Signed out in another tab.');
    return;
  }
  const user = session.user();
  if (!user) return;
  if (how === 'user') {
    notice(`This browser is now signed in as ${user.email} (${user.role}) from another tab; this tab acts for that user from now on.`);
  } else if (how === 'role') {
    notice(`Your role is now ${user.role}.`);
  }
});

document.getElementById('signout').addEventListener('click', async () => {
  try {
    await session.signOut();
    notice('Signed out.');
  } catch (err) {
    notice(`Signed out of this browser, but the server could not end the session (${describe(err)}): it stays valid on the server until it expires.`);
  }
});

async function boot() {
  // A reload loses the in-memory access token; the refresh cookie brings the session back.
  let problem = null;
  if (session.mayResume()) {
    try {
      await session.refresh();
    } catch (err) {
      problem = err; // 429, 5xx or no network: the session may well be fine
    }
  }
  if (!session.user()) await show();
  // else: onChange already rendered the page
  // After the page: showing it clears the notice.
  if (problem) notice(`Your session could not be resumed just now. ${describe(problem)} Reload the page to try again.`);
}

boot();
