// One error type for everything the console shows: the API's JSON {error, detail}, a 429's
// Retry-After, and network failures (status 0), so every page reports errors the same way.

export class ApiError extends Error {
  constructor(status, code, detail, retryAfter = null) {
    super(detail || code);
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }

  /** Builds the error from a non-2xx response; tolerates bodies that are not our JSON. */
  static async from(response) {
    let body = {};
    try {
      body = await response.json();
    } catch {
      // A proxy's HTML error page, say: fall back to the status line.
    }
    const header = Number.parseInt(response.headers.get('Retry-After') ?? '', 10);
    const retryAfter = Number.isFinite(header) ? header : (body.retry_after ?? null);
    return new ApiError(
      response.status,
      body.error ?? `http_${response.status}`,
      body.detail ?? response.statusText,
      retryAfter,
    );
  }

  /** The browser's session now belongs to another user: a request begun for the previous one is not sent. */
  static sessionChanged() {
    return new ApiError(401, 'session_changed', 'This browser was signed in as another user from another tab; the request was not sent.');
  }

  static network(cause) {
    const e = new ApiError(0, 'network_error', 'The server could not be reached. Check the connection and try again.');
    e.cause = cause;
    return e;
  }

  /** The outcome is unknown or temporary: the same action may be tried again with its key. */
  get retryable() {
    return this.status === 0 || this.status === 429 || this.status >= 500
      || this.code === 'idempotency_key_in_use';
  }
}

/** The sentence a user sees for an error. */
export function describe(err) {
  if (!(err instanceof ApiError)) return `Unexpected error: ${err?.message ?? err}`;
  if (err.status === 429) {
    const secs = Math.max(1, err.retryAfter ?? 1);
    const at = new Date(Date.now() + secs * 1000).toLocaleTimeString();
    return `Too many requests. Try again in ${secs} second${secs === 1 ? '' : 's'} (at ${at}).`;
  }
  if (err.code === 'forbidden') return 'Your role does not allow this. Ask an admin.';
  if (err.code === 'idempotency_key_in_use') {
    return 'This action is still being carried out. Wait a moment, then press the button again to see its result.';
  }
  const detail = err.detail || 'The request failed.';
  return err.status ? `${detail} (${err.code}, HTTP ${err.status})` : detail;
}
