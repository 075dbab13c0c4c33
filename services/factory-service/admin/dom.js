// Small DOM helpers. Everything is built with createElement and textContent, never innerHTML,
// so API data (names, SKUs, audit details) can never become markup or script.

import { describe } from './errors.js';

/**
 * h('button', { class: 'primary', type: 'submit', onclick: fn }, 'Save').
 * `on*` props become listeners; `class`, `text` and other props become attributes.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
    else if (name === 'text') el.textContent = value;
    else el.setAttribute(name, value === true ? '' : value);
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

let ids = 0;

/**
 * A labelled input: the label's `for` points at the input, so screen readers announce it.
 * `maxchars` bounds the value as the API does: in characters (code points) once surrounding
 * whitespace is trimmed. HTML's `maxlength` counts UTF-16 units, which cut an emoji or a rare
 * CJK name at half the API's limit, and counts the spaces the API trims.
 */
export function field(label, { maxchars, ...props } = {}, hint = null) {
  const id = props.id ?? `f${++ids}`;
  const hintId = hint ? `${id}-hint` : undefined;
  const input = h('input', { id, 'aria-describedby': hintId, ...props });
  if (maxchars) {
    input.addEventListener('input', () => {
      const length = [...input.value.trim()].length;
      input.setCustomValidity(length > maxchars ? `At most ${maxchars} characters (this has ${length}).` : '');
    });
  }
  return h('div', { class: 'field' },
    h('label', { for: id, text: label }),
    input,
    hint && h('small', { id: hintId, class: 'hint', text: hint }));
}

/** Text whose direction is isolated from what surrounds it (`<bdi>`): a right-to-left name
 * next to a SKU or a date cannot reorder them. */
export function isolated(text) {
  return h('bdi', { text });
}

/** A panel with a heading, for one task on a page. */
export function section(title, ...children) {
  return h('section', { class: 'panel' }, h('h2', { text: title }), ...children);
}

/** An error slot: role=alert so the message is read out when it appears. */
export function errorBox() {
  const box = h('p', { class: 'error', role: 'alert', hidden: true });
  return {
    el: box,
    show(err) {
      box.textContent = describe(err);
      box.hidden = false;
    },
    clear() {
      box.textContent = '';
      box.hidden = true;
    },
  };
}

/**
 * Wires a form: on submit, disables its buttons, runs `handler(values)`, shows any error in
 * the form's own error slot. Native `required`/`pattern` validation runs first.
 */
export function form(props, fields, submitLabel, handler) {
  const errors = errorBox();
  const submit = h('button', { type: 'submit', class: 'primary', text: submitLabel });
  const el = h('form', props, ...fields, h('div', { class: 'actions' }, submit), errors.el);
  el.addEventListener('submit', async (event) => {
    event.preventDefault();
    errors.clear();
    submit.disabled = true;
    el.setAttribute('aria-busy', 'true');
    try {
      await handler(Object.fromEntries(new FormData(el)), el);
    } catch (err) {
      errors.show(err);
    } finally {
      submit.disabled = false;
      el.removeAttribute('aria-busy');
    }
  });
  return el;
}

/** Announces a short success message in the page's live region. */
export function notice(text) {
  const el = document.getElementById('notice');
  el.textContent = text;
  clearTimeout(notice.timer);
  notice.timer = setTimeout(() => { el.textContent = ''; }, 6000);
}

/**
 * Asks for confirmation in a modal <dialog> (focus is trapped, Esc cancels). Resolves to true
 * only when the user presses the confirm button.
 */
export function confirm(title, text, confirmLabel) {
  return new Promise((resolve) => {
    const yes = h('button', { type: 'submit', value: 'yes', class: 'danger', text: confirmLabel });
    const no = h('button', { type: 'submit', value: 'no', text: 'Cancel' });
    const dialog = h('dialog', { class: 'confirm', 'aria-labelledby': 'confirm-title' },
      h('form', { method: 'dialog' },
        h('h2', { id: 'confirm-title', text: title }),
        h('p', { text }),
        h('div', { class: 'actions' }, no, yes)));
    dialog.addEventListener('close', () => {
      resolve(dialog.returnValue === 'yes');
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
    no.focus(); // the safe choice has focus: Enter alone never revokes anything
  });
}

/** Answers every open confirmation "no" (the page it belonged to is gone). */
export function cancelDialogs() {
  for (const dialog of document.querySelectorAll('dialog[open]')) dialog.close('no');
}

/** A timestamp in the user's locale, or an em dash. */
export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : '—';
}

/** A table with a caption and column headers; rows are arrays of cells (strings or nodes). */
export function table(caption, headers, rows) {
  return h('table', {},
    h('caption', { text: caption }),
    h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col', text: t })))),
    h('tbody', {}, rows.map((cells) => h('tr', {}, cells.map((c) => h('td', {}, c ?? '—'))))));
}
