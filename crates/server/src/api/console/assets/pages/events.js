// Events: the node's event log, newest first, filtered by type
// (GET /api/v1/events): sources connecting and refused, new epochs,
// commits that failed, spool overflows, alarms fired and resolved, …

import { getData } from '../api.js';
import { h, swap, table } from '../dom.js';
import * as fmt from '../format.js';

const SINCE = { '1h': 'last hour', '1d': 'last day', '7d': 'last 7 days', '30d': 'last 30 days' };

export function mount(main, params, ctx) {
  const state = {
    type: params.get('type') || '',
    since: SINCE[params.get('since')] ? params.get('since') : '1d',
  };
  const type = h('select', { id: 'events-type' }, h('option', { value: '' }, 'every type'));
  const since = h('select', { id: 'events-since' }, Object.entries(SINCE).map(([v, t]) => h('option', { value: v }, t)));
  since.value = state.since;
  const form = h(
    'form',
    { class: 'controls', 'aria-label': 'Which events', onsubmit: (e) => e.preventDefault() },
    h('label', { class: 'field' }, h('span', {}, 'Type'), type),
    h('label', { class: 'field' }, h('span', {}, 'Since'), since),
  );
  const body = h('div', {});
  main.append(h('h1', {}, 'Events'), form, body);
  const changed = () => {
    state.type = type.value;
    state.since = since.value;
    ctx.setParams([['type', state.type], ['since', state.since]]);
    ctx.refreshNow();
  };
  type.addEventListener('change', changed);
  since.addEventListener('change', changed);
  let typesLoaded = false;

  return {
    async refresh() {
      if (!typesLoaded) {
        const status = await getData('api/v1/status');
        type.append(...status.event_types.map((t) => h('option', { value: t }, t)));
        type.value = status.event_types.includes(state.type) ? state.type : '';
        state.type = type.value;
        typesLoaded = true;
      }
      const params = { from: `-${state.since}`, limit: 500 };
      if (state.type) {
        params.type = state.type;
      }
      const events = await getData('api/v1/events', params);
      const rows = events.map((e) =>
        h(
          'tr',
          { dataset: { kind: e.kind } },
          h('td', { class: 'nowrap' }, `${fmt.dateTime(e.ts_ms)} UTC`),
          h('td', { class: 'mono' }, e.kind),
          h('td', {}, e.message),
        ),
      );
      const caption = `${state.type || 'Every'} event${state.type ? 's' : ''}, ${SINCE[state.since]}, newest first (at most 500)`;
      swap(body, table(caption, [['recorded'], ['type'], ['message']], rows, 'No event in this range.'));
    },
  };
}
