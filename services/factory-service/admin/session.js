// The signed-in session. The access token lives only in this module's memory: never in
// localStorage, sessionStorage or a cookie, so a reload drops it and the HttpOnly refresh
// cookie (which scripts cannot read) gets a new one. The CSRF cookie is readable on purpose:
// refresh and logout echo it in X-CSRF-Token, which another site's page cannot do.

import { ApiError } from './errors.js';

const CSRF_COOKIE = '__Host-vt_csrf';
const DEVICE_KEY = 'vt-device-id';
const REFRESH_LOCK = 'vt-refresh';

let token = null; // { value, expiresAt, ttl, claims }
let inFlight = null; // this tab's refresh, shared by every caller (single-flight)
let timer = null;
let lastActivity = 0;
const listeners = new Set();

// Tells other tabs of this console about sign-in and sign-out; never carries a token.
const channel = 'BroadcastChannel' in globalThis ? new BroadcastChannel('vt-session') : null;
channel?.addEventListener('message', (e) => {
  if (e.data === 'signed-out') drop(false, 'elsewhere');
});

// Only real user input counts as activity: an idle tab lets its access token lapse instead of
// keeping the session alive forever; its next call refreshes on demand.
for (const type of ['keydown', 'pointerdown']) {
  addEventListener(type, () => { lastActivity = Date.now(); }, { capture: true, passive: true });
}

/**
 * A stable id for this browser, sent as X-Device-ID: the server binds the refresh-token family
 * to it. Not a secret (it authorises nothing alone), so localStorage is the right place.
 */
export function deviceId() {
  let id = localStorage.getItem(DEVICE_KEY);
  if (!id) {
    id = crypto.randomUUID();
    localStorage.setItem(DEVICE_KEY, id);
  }
  return id;
}

function csrfToken() {
  for (const pair of document.cookie.split(';')) {
    const eq = pair.indexOf('=');
    if (eq > 0 && pair.slice(0, eq).trim() === CSRF_COOKIE) return pair.slice(eq + 1).trim();
  }
  return null;
}

/** True when a refresh cookie probably exists (its CSRF twin is visible). */
export function mayResume() {
  return csrfToken() !== null;
}

/**
 * Calls `fn(signedIn, how)` whenever the session starts or ends, and when a refresh brings a
 * different session: `how` is 'user' when the browser's refresh cookie now belongs to another
 * user (signed in from another tab of this browser), 'role' when the user's role changed, and
 * on an end 'ended' or 'elsewhere' (see `drop`).
 */
export function onChange(fn) {
  listeners.add(fn);
}

/** The id of the user the current access token acts for, or null. */
export function subject() {
  return token?.claims.sub ?? null;
}

/** The signed-in user's email and role, from the token's payload (display only). */
export function user() {
  return token ? { email: token.claims.email, role: token.claims.role } : null;
}

// Refresh a little before expiry: 20% of the lifetime, at most 30 s.
const margin = (ttl) => Math.min(30_000, ttl * 0.2);

function claimsOf(jwt) {
  try {
    const b64 = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(b64));
  } catch {
    return {};
  }
}

function adopt(body) {
  const ttl = body.expires_in * 1000;
  const before = token?.claims;
  token = { value: body.access_token, expiresAt: Date.now() + ttl, ttl, issuedAt: Date.now(), claims: claimsOf(body.access_token) };
  clearTimeout(timer);
  timer = setTimeout(proactive, Math.max(0, ttl - margin(ttl)));
  // Tabs share the refresh cookie: one that signs in as someone else takes every tab's session
  // with it, and the page on show must say who it now acts for.
  let how = null;
  if (!before) how = 'signed-in';
  else if (before.sub !== token.claims.sub) how = 'user';
  else if (before.role !== token.claims.role) how = 'role';
  if (how) listeners.forEach((fn) => fn(true, how === 'signed-in' ? undefined : how));
}

/**
 * Forgets the session. `how` tells listeners why: 'ended' when the server refused to refresh
 * it (expired, revoked, the user disabled), 'elsewhere' when another tab signed out.
 */
function drop(broadcast, how) {
  const wasSignedIn = token !== null;
  token = null;
  clearTimeout(timer);
  if (broadcast) channel?.postMessage('signed-out');
  if (wasSignedIn) listeners.forEach((fn) => fn(false, how));
}

// Shortly before expiry, refresh only if someone used this tab since the token was issued.
function proactive() {
  if (token && lastActivity > token.issuedAt && document.visibilityState === 'visible') {
    refresh().catch(() => { /* the next call retries on demand and shows the error */ });
  }
}

/**
 * A valid access token, refreshing first when it is missing or about to expire.
 * Resolves to null when there is no session.
 */
export async function accessToken() {
  if (token && token.expiresAt - Date.now() > margin(token.ttl)) return token.value;
  if (!mayResume()) {
    drop(false);
    return null;
  }
  return (await refresh()) ? token.value : null;
}

/**
 * Exchanges the refresh cookie for a new access token. Single-flight: callers in this tab
 * share one request, and the Web Locks API queues tabs, so no two tabs ever present the same
 * refresh token (the server would take that for theft and end the session). A tab that waited
 * reads the cookie only once it holds the lock, so it presents the token the other tab just got.
 */
export function refresh() {
  inFlight ??= withLock(exchange).finally(() => { inFlight = null; });
  return inFlight;
}

function withLock(fn) {
  return navigator.locks ? navigator.locks.request(REFRESH_LOCK, fn) : fn();
}

async function exchange() {
  const csrf = csrfToken();
  if (!csrf) {
    drop(false);
    return false;
  }
  let response;
  try {
    response = await fetch('/v1/auth/refresh', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'X-CSRF-Token': csrf, 'X-Device-ID': deviceId() },
    });
  } catch (e) {
    throw ApiError.network(e);
  }
  if (response.ok) {
    adopt(await response.json());
    return true;
  }
  if (response.status === 401 || response.status === 403) {
    // Expired, revoked or reused: this tab's session is over. Other tabs are not told: each
    // finds out at its own next refresh, so one odd failure cannot sign every tab out.
    drop(false, 'ended');
    return false;
  }
  throw await ApiError.from(response); // 429 or 5xx: the session may still be fine
}

/** Signs in; throws ApiError (invalid_credentials, rate_limited, ...). */
export async function signIn(email, password) {
  let response;
  try {
    response = await fetch('/v1/auth/login', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', 'X-Device-ID': deviceId() },
      body: JSON.stringify({ email, password }),
    });
  } catch (e) {
    throw ApiError.network(e);
  }
  if (!response.ok) throw await ApiError.from(response);
  adopt(await response.json());
}

/**
 * Signs out: the server revokes the whole refresh-token family and clears both cookies.
 * Held under the refresh lock so it cannot cross a refresh in flight in another tab.
 */
export async function signOut() {
  try {
    await withLock(async () => {
      const csrf = csrfToken();
      if (!csrf) return;
      const response = await fetch('/v1/auth/logout', {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'X-CSRF-Token': csrf, 'X-Device-ID': deviceId() },
      });
      // 401 means the session was already gone: signed out either way.
      if (!response.ok && response.status !== 401) throw await ApiError.from(response);
    });
  } catch (e) {
    // The server did not end the session. Forget the readable CSRF cookie at least: without
    // it nothing in this browser can refresh (or resume on reload) with the refresh cookie,
    // which scripts cannot delete; the server keeps the session until it expires.
    document.cookie = `${CSRF_COOKIE}=; Max-Age=0; Path=/; Secure; SameSite=Strict`;
    throw e instanceof ApiError ? e : ApiError.network(e);
  } finally {
    drop(true);
  }
}
