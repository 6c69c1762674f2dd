// The console's calls to the node's JSON API. Paths are relative to the
// page, so the console also works behind a proxy that serves it under a
// prefix. With `http.token` set, the token the user typed is kept in this
// tab's sessionStorage only and sent as a bearer header.

const TOKEN_KEY = 'strata.token';

/** The node refused the call for want of a (valid) token. */
export class TokenNeeded extends Error {
  constructor(message, wrong) {
    super(message);
    this.name = 'TokenNeeded';
    this.wrong = wrong;
  }
}

/** The node answered the call with an error, or could not be reached. */
export class CallFailed extends Error {
  constructor(message) {
    super(message);
    this.name = 'CallFailed';
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) {
    sessionStorage.setItem(TOKEN_KEY, value);
  } else {
    sessionStorage.removeItem(TOKEN_KEY);
  }
}

/**
 * GETs `path` (with `params`, an object or a list of pairs) and returns the
 * parsed JSON body. `okStatuses` lists error statuses whose body is still
 * the answer (`/health` answers 503 while a component is KO).
 */
export async function getJSON(path, params = {}, okStatuses = []) {
  const query = new URLSearchParams(params).toString();
  const url = query ? `${path}?${query}` : path;
  const headers = { Accept: 'application/json' };
  const held = token();
  if (held) {
    headers.Authorization = `Bearer ${held}`;
  }
  let response;
  try {
    response = await fetch(url, { headers, cache: 'no-store' });
  } catch (e) {
    throw new CallFailed(`the node did not answer (${e.message})`);
  }
  if (response.status === 401 || response.status === 403) {
    const body = await response.json().catch(() => ({}));
    throw new TokenNeeded(body.error || 'this node needs its token', Boolean(held));
  }
  const body = await response.json().catch(() => null);
  if (body === null) {
    throw new CallFailed(`${path} answered ${response.status} without JSON`);
  }
  if (!response.ok && !okStatuses.includes(response.status)) {
    throw new CallFailed(`${path} answered ${response.status}: ${body.error || 'error'}`);
  }
  return body;
}

/** The `data` of a successful `{"status":"success","data":…}` answer. */
export async function getData(path, params = {}) {
  const body = await getJSON(path, params);
  return body.data;
}
