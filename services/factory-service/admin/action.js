// One user action, one Idempotency-Key. The key is kept while the action's outcome is unknown
// or temporary (network failure, 5xx, 429, key still in use), so pressing the button again
// retries the same action and the server does it at most once. Any other answer ends the action;
// changing the form starts a new one (the old key with a new body would be a 422).

import { request } from './api.js';

export class Action {
  #pending = null; // { fingerprint, key }

  /** Sends `method path body` as this action, reusing the key of an unfinished identical try. */
  async send(method, path, body) {
    const fingerprint = `${method} ${path} ${JSON.stringify(body ?? null)}`;
    if (this.#pending?.fingerprint !== fingerprint) {
      this.#pending = { fingerprint, key: crypto.randomUUID() };
    }
    try {
      const result = await request(method, path, { body, idempotencyKey: this.#pending.key });
      this.#pending = null;
      return result;
    } catch (e) {
      if (!e.retryable) this.#pending = null;
      throw e;
    }
  }

  /** True while a retry would reuse the key of a try whose outcome is unknown. */
  get pending() {
    return this.#pending !== null;
  }
}
