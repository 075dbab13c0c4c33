// Tag look-up and revocation.

import { Action } from '../action.js';
import { get } from '../api.js';
import { h, field, form, section, errorBox, notice, confirm, when, isolated } from '../dom.js';
import { user } from '../session.js';

// Surrounding spaces (a pasted id) are allowed here and trimmed before use.
const TAG_PATTERN = '\\s*[A-Za-z0-9_\\-]{16,64}\\s*';

export async function render(root) {
  const resultSlot = h('div');

  function show(tag) {
    const errors = errorBox();
    const revoke = new Action();
    const details = h('dl', { class: 'facts' },
      ...[
        ['Status', h('span', { class: `badge ${tag.status === 'authentic' ? 'ok' : 'revoked'}`, text: tag.status })],
        ['Product', [isolated(tag.product.name), ' (', isolated(tag.product.sku), ')']],
        ['Batch', h('code', { class: 'id', text: tag.batch_id })],
        ['Scans', String(tag.scan_count)],
        ['First scanned', when(tag.first_scanned_at)],
        ['Created', when(tag.created_at)],
        tag.revoked_at && ['Revoked', [when(tag.revoked_at), ': ', isolated(tag.revoked_reason ?? '')]],
      ].filter(Boolean).flatMap(([k, v]) => [h('dt', { text: k }), h('dd', {}, v)]));
    const canRevoke = tag.status !== 'revoked' && ['admin', 'operator'].includes(user()?.role);
    const revokeForm = !canRevoke ? null : form({ class: 'inline' }, [
      field('Reason', { name: 'reason', required: true, maxchars: 500 }),
    ], 'Revoke tag', async ({ reason }) => {
      const ok = await confirm('Revoke this tag?', `Scans of ${tag.tag_id} will answer “revoked” within seconds. This cannot be undone.`, 'Revoke tag');
      if (!ok) return;
      await revoke.send('POST', `/v1/tags/${encodeURIComponent(tag.tag_id)}/revoke`, { reason: reason.trim() });
      notice('Tag revoked.');
      show(await get(`/v1/tags/${encodeURIComponent(tag.tag_id)}`));
    });
    resultSlot.replaceChildren(section(`Tag ${tag.tag_id}`, details, errors.el, revokeForm && h('h3', { text: 'Revoke' }), revokeForm));
  }

  const lookup = form({ class: 'inline' }, [
    field('Tag id', { name: 'tag_id', required: true, pattern: TAG_PATTERN, spellcheck: 'false', autocomplete: 'off' }, '16 to 64 letters, digits, - or _.'),
  ], 'Look up', async ({ tag_id: tagId }) => {
    resultSlot.replaceChildren();
    show(await get(`/v1/tags/${encodeURIComponent(tagId.trim())}`));
  });

  root.append(h('h1', { text: 'Tags' }), section('Look up a tag', lookup), resultSlot);
}
