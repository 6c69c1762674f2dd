// The console's shell: picks the page from the URL's hash (#/topology,
// #/explore?metric=…, …), refreshes it every few seconds while the tab is
// visible, and asks for the node's token when a call is refused for want
// of one.

import { TokenNeeded, getJSON, setToken } from './api.js';
import { time } from './format.js';
import * as topology from './pages/topology.js';
import * as explore from './pages/explore.js';
import * as alarms from './pages/alarms.js';
import * as events from './pages/events.js';
import * as health from './pages/health.js';

const PAGES = { topology, explore, alarms, events, health };
const DEFAULT_PAGE = 'topology';
const REFRESH_MS = 3000;

const main = document.getElementById('main');
const refreshLine = document.getElementById('refresh');
const tokenForm = document.getElementById('token-form');

/** The page on screen: its name, its parameters and what it returned on mount. */
let current = null;
let timer = null;
let refreshing = false;

/** `#/explore?metric=x&group=cloud` → `['explore', URLSearchParams]`. */
function parseHash() {
  const hash = location.hash.replace(/^#\/?/, '');
  const [name, query] = hash.split('?', 2);
  return [PAGES[name] ? name : DEFAULT_PAGE, new URLSearchParams(query || '')];
}

/** Sets the hash's parameters of the current page without a reload or a history entry. */
export function setParams(params) {
  const query = new URLSearchParams(params).toString();
  const hash = `#/${current.name}${query ? `?${query}` : ''}`;
  if (location.hash !== hash) {
    history.replaceState(null, '', hash);
  }
}

function markNav(name) {
  for (const link of document.querySelectorAll('nav a')) {
    if (link.dataset.page === name) {
      link.setAttribute('aria-current', 'page');
    } else {
      link.removeAttribute('aria-current');
    }
  }
}

function route() {
  const [name, params] = parseHash();
  if (current && current.name === name) {
    return;
  }
  if (current && current.view.unmount) {
    current.view.unmount();
  }
  markNav(name);
  document.title = `${name[0].toUpperCase()}${name.slice(1)} · strata console`;
  main.replaceChildren();
  main.dataset.page = name;
  main.dataset.state = 'loading';
  current = { name, view: PAGES[name].mount(main, params, { setParams, refreshNow }) };
  refreshNow();
}

function askToken(error) {
  tokenForm.hidden = false;
  main.hidden = true;
  main.dataset.state = 'token-required';
  document.getElementById('token-why').textContent = error.wrong
    ? `The node refused the token (${error.message}). Type it again; the console keeps it in this tab only.`
    : 'Its API is protected by http.token. The console keeps the token in this tab only, until the tab is closed.';
  if (error.wrong) {
    setToken(null);
  }
  document.getElementById('token-input').focus();
}

async function refreshNow() {
  clearTimeout(timer);
  if (refreshing) {
    timer = setTimeout(refreshNow, 100);
    return;
  }
  const page = current;
  refreshing = true;
  try {
    await page.view.refresh();
    if (page === current) {
      main.dataset.state = 'ready';
      refreshLine.textContent = `Updated ${time(Date.now())} UTC`;
      refreshLine.classList.remove('stale');
    }
  } catch (e) {
    if (e instanceof TokenNeeded) {
      askToken(e);
      refreshing = false;
      return;
    }
    refreshLine.textContent = `Not updated: ${e.message}`;
    refreshLine.classList.add('stale');
    if (!(e.name === 'CallFailed')) {
      // A bug of the console, not the node's answer: show it.
      console.error(e);
    }
  }
  refreshing = false;
  if (!document.hidden) {
    timer = setTimeout(refreshNow, REFRESH_MS);
  }
}

tokenForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const input = document.getElementById('token-input');
  setToken(input.value.trim());
  input.value = '';
  tokenForm.hidden = true;
  main.hidden = false;
  main.focus();
  refreshNow();
});

document.addEventListener('visibilitychange', () => {
  if (!document.hidden) {
    refreshNow();
  }
});

/** Names the node in the header; `/health` needs no token. */
async function nameNode() {
  try {
    const health = await getJSON('health', {}, [503]);
    document.getElementById('node-name').textContent = health.node;
  } catch (e) {
    // The page's own refresh reports an unreachable node.
  }
}

window.addEventListener('hashchange', route);
nameNode();
route();
