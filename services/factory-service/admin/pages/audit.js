// The audit log: a paged list, "verify chain" with the verifier's own answer, and the newest
// signed checkpoint (which anyone may fetch and keep to detect a rewritten history later).

import { get } from '../api.js';
import { h, section, errorBox, when, table, isolated } from '../dom.js';
import { describe } from '../errors.js';

const PAGE = 50;

// A signed-in user (email, else id), the service itself ("system"), or someone not signed in:
// a failed login, shown with the account it was against when the email given matched one.
// Emails are isolated (<bdi>): right-to-left text in one cannot reorder what stands around it.
function actorOf(e) {
  if (e.actor_id) return isolated(e.actor_email ?? e.actor_id);
  if (e.actor_email === 'system') return 'system';
  return e.actor_email ? h('span', {}, 'anonymous (as ', isolated(e.actor_email), ')') : 'anonymous';
}

export async function render(root) {
  const listSlot = h('div');
  const listErrors = errorBox();
  const pageLabel = h('span', { class: 'muted', 'aria-live': 'polite' });
  let first = null; // seq range on screen
  let last = null;

  // The API pages forward only (after_seq). A page is a range of seqs: "Previous" asks for the
  // PAGE seqs before the first one shown (fewer events if a rolled-back write left a gap).
  const prev = h('button', { type: 'button', text: '← Older', onclick: () => show(Math.max(0, first - 1 - PAGE), first) });
  const next = h('button', { type: 'button', text: 'Newer →', onclick: () => show(last) });
  const newest = h('button', { type: 'button', text: 'Newest', onclick: () => showNewest() });
  const oldest = h('button', { type: 'button', text: 'Oldest', onclick: () => show(0) });

  async function show(after, before = null) {
    listErrors.clear();
    try {
      // One extra event tells whether a newer page exists.
      let { items } = await get(`/v1/audit/events?after_seq=${after}&limit=${PAGE + 1}`);
      const more = items.length > PAGE;
      items = items.slice(0, PAGE);
      if (before !== null) items = items.filter((e) => e.seq < before);
      first = items[0]?.seq ?? after + 1;
      last = items.at(-1)?.seq ?? after;
      prev.disabled = first <= 1;
      next.disabled = before === null && !more;
      pageLabel.textContent = items.length ? `Events ${first} to ${last}` : 'No events';
      listSlot.replaceChildren(table('Audit events, oldest first', ['Seq', 'Time', 'Actor', 'Action', 'Target', 'Client IP', 'Details'],
        items.map((e) => [
          String(e.seq),
          when(e.occurred_at),
          actorOf(e),
          h('code', { class: 'action', text: e.action }),
          e.target_type ? `${e.target_type} ${e.target_id ?? ''}` : '—',
          e.client_ip ?? '—',
          h('details', {}, h('summary', { text: e.details_unreadable ? 'Unreadable' : 'Show' }),
            h('pre', { text: e.details_unreadable ? `not readable as written by the service (a sign of tampering; verify the chain):\n${e.details_unreadable}` : JSON.stringify(e.details, null, 2) }),
            h('p', { class: 'hash', text: `hash ${e.hash ?? '—'}` })),
        ])));
    } catch (err) {
      listErrors.show(err);
    }
  }

  // The newest page: start from the newest checkpoint (at most a few hundred events behind
  // the head) and walk forward to the end in large pages.
  async function showNewest() {
    listErrors.clear();
    try {
      let after = 0;
      try {
        after = Math.max(0, (await get('/v1/audit/checkpoint')).seq - 1);
      } catch (err) {
        if (err.status !== 404) throw err;
      }
      for (;;) {
        const { items } = await get(`/v1/audit/events?after_seq=${after}&limit=1000`);
        if (items.length < 1000) {
          after = Math.max(after, items.at(-1)?.seq ?? after);
          break;
        }
        after = items.at(-1).seq;
      }
      await show(Math.max(0, after - PAGE));
    } catch (err) {
      listErrors.show(err);
    }
  }

  const verifySlot = h('div', { 'aria-live': 'polite' });
  const verifyErrors = errorBox();
  const verifyButton = h('button', { type: 'button', class: 'primary', text: 'Verify chain', onclick: verify });

  async function verify() {
    verifyErrors.clear();
    verifyButton.disabled = true;
    verifySlot.replaceChildren(h('p', { class: 'muted', text: 'Verifying every event…' }));
    try {
      const r = await get('/v1/audit/verify');
      verifySlot.replaceChildren(h('div', { class: `verdict ${r.ok ? 'ok' : 'bad'}`, id: 'verify-result' },
        h('strong', { text: r.ok ? 'Chain intact' : 'Chain BROKEN' }),
        h('dl', { class: 'facts' },
          h('dt', { text: 'Events checked' }), h('dd', { text: String(r.events_checked) }),
          h('dt', { text: 'Legacy events' }), h('dd', { text: String(r.legacy_events ?? 0) }),
          r.signatures_checked !== undefined && [h('dt', { text: 'Signatures checked' }), h('dd', { text: String(r.signatures_checked) })],
          r.signatures_unchecked > 0 && [
            h('dt', { text: 'Signatures NOT checked' }),
            h('dd', { class: 'warn', text: `${r.signatures_unchecked}, by key ids the service has no key for: ${(r.unchecked_key_ids ?? []).join(', ')} (an earlier key of yours, or a forger's; see AUDIT_PREVIOUS_PUBLIC_KEYS)` }),
          ],
          h('dt', { text: 'Head' }), h('dd', {}, `seq ${r.head?.seq ?? '—'} `, h('code', { class: 'hash', text: r.head?.hash ?? '' })),
          !r.ok && [
            h('dt', { text: 'First bad seq' }), h('dd', { text: String(r.first_bad_seq) }),
            h('dt', { text: 'Reason' }), h('dd', { text: `${r.reason ?? ''}${r.detail ? `: ${r.detail}` : ''}` }),
          ])));
    } catch (err) {
      verifySlot.replaceChildren();
      verifyErrors.show(err);
    } finally {
      verifyButton.disabled = false;
    }
  }

  const checkpointSlot = h('div');
  async function loadCheckpoint() {
    try {
      const c = await get('/v1/audit/checkpoint');
      checkpointSlot.replaceChildren(h('dl', { class: 'facts' },
        h('dt', { text: 'Seq' }), h('dd', { text: String(c.seq) }),
        h('dt', { text: 'Hash' }), h('dd', {}, h('code', { class: 'hash', text: c.hash })),
        h('dt', { text: 'Signed at' }), h('dd', { text: when(c.signed_at) }),
        h('dt', { text: 'Key id' }), h('dd', { text: c.key_id ?? 'unsigned' }),
        h('dt', { text: 'Signature' }), h('dd', {}, c.signature ? h('code', { class: 'signature', text: c.signature }) : 'none (no signing key configured)')));
    } catch (err) {
      checkpointSlot.replaceChildren(err.status === 404
        ? h('p', { class: 'empty', text: 'No checkpoint has been written yet.' })
        : h('p', { class: 'error', role: 'alert', text: describe(err) }));
    }
  }

  root.append(
    h('h1', { text: 'Audit log' }),
    h('div', { class: 'columns' },
      section('Integrity', h('p', { class: 'muted', text: 'Recomputes every event\u2019s hash and signature and checks the links between them.' }),
        h('div', { class: 'toolbar' }, verifyButton), verifyErrors.el, verifySlot),
      section('Latest signed checkpoint', checkpointSlot)),
    section('Events',
      h('div', { class: 'toolbar' }, oldest, prev, next, newest, pageLabel),
      listErrors.el, listSlot),
  );
  await Promise.all([showNewest(), loadCheckpoint()]);
}
