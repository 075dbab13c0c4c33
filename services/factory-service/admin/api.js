// The fetch wrapper every page uses: bearer token from the session, JSON in and out, the
// API's errors as ApiError, and one retry after a refresh when the server says 401.

import { ApiError } from './errors.js';
import * as session from './session.js';

/**
 * Calls the API. `idempotencyKey` is required for POST and DELETE (see action.js); the
 * retry after a 401 reuses it, since the first attempt was refused before doing anything.
 * Resolves to the parsed JSON body (or a Blob with `{ blob: true }`).
 */
export async function request(method, path, { body, idempotencyKey, blob = false } = {}) {
  if ((method === 'POST' || method === 'DELETE') && !idempotencyKey) {
    throw new Error(`${method} ${path} needs an Idempotency-Key`);
  }
  // Who this request is for: a refresh on the way may bring another user's session (signed in
  // from another tab), and then it is not sent on their behalf.
  const actingFor = session.subject();
  for (let attempt = 0; ; attempt++) {
    const bearer = await session.accessToken();
    if (!bearer) throw new ApiError(401, 'signed_out', 'Your session has ended. Sign in again.');
    if (actingFor !== null && session.subject() !== actingFor) throw ApiError.sessionChanged();
    const headers = { Authorization: `Bearer ${bearer}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (idempotencyKey) headers['Idempotency-Key'] = idempotencyKey;
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: 'same-origin',
        cache: 'no-store',
      });
    } catch (e) {
      throw ApiError.network(e);
    }
    if (response.status === 401 && attempt === 0) {
      // The token expired early (clock change, server restart with a new key) or its session
      // ended (`session_ended`: then the refresh fails too and the console signs out): refresh once.
      if (await session.refresh()) continue;
    }
    if (!response.ok) throw await ApiError.from(response);
    if (blob) return response.blob();
    return response.status === 204 ? null : response.json();
  }
}

export const get = (path, options) => request('GET', path, options);
