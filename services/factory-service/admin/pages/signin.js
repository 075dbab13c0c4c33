// Sign in with email and password. On success the session module announces it and app.js
// shows the page the user asked for.

import { h, field, form } from '../dom.js';
import { signIn } from '../session.js';

export function render(root) {
  const signin = form({ class: 'signin', 'aria-labelledby': 'signin-title' }, [
    field('Email', { name: 'email', type: 'email', autocomplete: 'username', required: true }),
    field('Password', { name: 'password', type: 'password', autocomplete: 'current-password', required: true }),
  ], 'Sign in', async ({ email, password }) => {
    await signIn(email.trim(), password);
  });
  root.append(h('div', { class: 'signin-wrap' },
    h('h1', { id: 'signin-title', text: 'Sign in to VokeTag admin' }),
    signin));
  signin.querySelector('input').focus();
}
