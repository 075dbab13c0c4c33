// API keys: list, create (the secret is shown once, with a copy button), revoke (confirmed).

import { Action } from '../action.js';
import { get } from '../api.js';
import { h, field, form, section, errorBox, notice, confirm, when, table } from '../dom.js';

export async function render(root) {
  const listSlot = h('div', { class: 'list' });
  const listErrors = errorBox();
  const revealSlot = h('div');
  const create = new Action();
  const revokes = new Map(); // key id -> Action, so a retried revoke reuses its key

  async function load() {
    listErrors.clear();
    try {
      const { items } = await get('/v1/api-keys');
      listSlot.replaceChildren(items.length === 0
        ? h('p', { class: 'empty', text: 'No API keys yet.' })
        : table('API keys', ['Name', 'Prefix', 'Created', 'Status', ''], items.map((k) => [
          k.name,
          h('code', { text: k.prefix }),
          when(k.created_at),
          k.revoked_at ? h('span', { class: 'badge revoked', text: `Revoked ${when(k.revoked_at)}` }) : h('span', { class: 'badge ok', text: 'Active' }),
          k.revoked_at ? '' : h('button', { type: 'button', class: 'danger small', 'aria-label': `Revoke key ${k.name}`, text: 'Revoke', onclick: () => revoke(k) }),
        ])));
    } catch (err) {
      listErrors.show(err);
    }
  }

  async function revoke(key) {
    const ok = await confirm(`Revoke “${key.name}”?`,
      `Clients using the key ${key.prefix}… are refused within seconds. This cannot be undone.`, 'Revoke key');
    if (!ok) return;
    const action = revokes.get(key.id) ?? new Action();
    revokes.set(key.id, action);
    try {
      await action.send('DELETE', `/v1/api-keys/${encodeURIComponent(key.id)}`);
      revokes.delete(key.id);
      notice(`Key “${key.name}” revoked.`);
    } catch (err) {
      // Shown after the list reloads (which clears the box), so a failed revoke is not lost.
      await load();
      listErrors.show(err);
      return;
    }
    await load();
  }

  function reveal(created) {
    // The secret lives only in this panel; "Done" removes it from the page and from memory.
    const secret = h('input', { id: 'new-key', readonly: true, value: created.key, class: 'secret', 'aria-describedby': 'new-key-hint' });
    const copy = h('button', { type: 'button', text: 'Copy', onclick: async () => {
      try {
        await navigator.clipboard.writeText(created.key);
        copy.textContent = 'Copied';
      } catch {
        secret.select(); // clipboard refused (permissions): leave it selected for Ctrl+C
        copy.textContent = 'Press Ctrl+C';
      }
    } });
    const done = h('button', { type: 'button', class: 'primary', text: 'Done, I have stored it', onclick: () => { revealSlot.replaceChildren(); } });
    revealSlot.replaceChildren(h('div', { class: 'reveal', role: 'region', 'aria-label': 'New API key' },
      h('h3', { text: `Key “${created.name}” created` }),
      h('label', { for: 'new-key', text: 'API key' }),
      h('div', { class: 'row' }, secret, copy),
      h('p', { id: 'new-key-hint', class: 'warn', text: 'This is the only time the key is shown. Store it in your secret manager now.' }),
      done));
    secret.focus();
    secret.select();
  }

  const createForm = form({ class: 'inline' }, [
    field('Name', { name: 'name', required: true, maxchars: 200, placeholder: 'e.g. Retail app' }),
    field('Rate limit per minute', { name: 'rate', type: 'number', min: 1, inputmode: 'numeric' }, 'Optional; the scan default applies when empty.'),
  ], 'Create key', async ({ name, rate }, el) => {
    const body = { name: name.trim() };
    if (rate) body.rate_limit_per_minute = Number(rate);
    const created = await create.send('POST', '/v1/api-keys', body);
    el.reset();
    reveal(created);
    await load();
  });

  root.append(
    h('h1', { text: 'API keys' }),
    section('Create a key', createForm, revealSlot),
    section('Keys',
      h('div', { class: 'toolbar' }, h('button', { type: 'button', text: 'Reload', onclick: load })),
      listErrors.el, listSlot),
  );
  await load();
}
