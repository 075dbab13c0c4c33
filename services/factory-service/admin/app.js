// The console's shell: hash routes (#/keys, #/catalog, #/tags, #/audit), the header, and
// resuming the session from the refresh cookie when the page loads.

import * as session from './session.js';
import { describe } from './errors.js';
import { notice } from './dom.js';
import * as signin from './pages/signin.js';
import * as keys from './pages/keys.js';
import * as catalog from './pages/catalog.js';
import * as tags from './pages/tags.js';
import * as audit from './pages/audit.js';

const PAGES = {
  keys: { title: 'API keys', page: keys },
  catalog: { title: 'Products and batches', page: catalog },
  tags: { title: 'Tags', page: tags },
  audit: { title: 'Audit log', page: audit },
};
const DEFAULT_PAGE = 'keys';

const main = document.getElementById('main');
const topbar = document.getElementById('topbar');
const whoami = document.getElementById('whoami');

function currentPage() {
  const name = location.hash.match(/^#\/([a-z]+)/)?.[1];
  return PAGES[name] ? name : DEFAULT_PAGE;
}

let rendering = 0;
async function show() {
  const ticket = ++rendering;
  main.replaceChildren();
  const user = session.user();
  topbar.hidden = !user;
  if (!user) {
    document.title = 'Sign in · VokeTag admin';
    signin.render(main);
    return;
  }
  whoami.textContent = `${user.email} (${user.role})`;
  const name = currentPage();
  document.title = `${PAGES[name].title} · VokeTag admin`;
  for (const link of topbar.querySelectorAll('nav a')) {
    if (link.getAttribute('href') === `#/${name}`) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  await PAGES[name].page.render(main);
  if (ticket === rendering) main.focus({ preventScroll: true });
}

// Only "#/..." hashes are routes; others (the skip link's #main) just move focus.
addEventListener('hashchange', () => {
  if (location.hash.startsWith('#/')) show();
});
session.onChange(() => show());

document.getElementById('signout').addEventListener('click', async () => {
  try {
    await session.signOut();
    notice('Signed out.');
  } catch (err) {
    notice(`Signed out here, but the server did not confirm: ${describe(err)}`);
  }
});

async function boot() {
  // A reload loses the in-memory access token; the refresh cookie brings the session back.
  if (session.mayResume()) {
    try {
      await session.refresh();
    } catch (err) {
      notice(describe(err));
    }
  }
  if (!session.user()) show();
  // else: onChange already rendered the page
}

boot();
