// Alarms: the rules this node evaluates, the instances firing now (since
// when, with which value) and the history of firings and resolutions
// (GET /api/v1/alarms).

import { getData } from '../api.js';
import { badge, h, section, swap, table } from '../dom.js';
import * as fmt from '../format.js';

function condition(item) {
  return `${item.field} ${item.op} ${fmt.number(item.threshold)}`;
}

function firing(data, now) {
  const rows = data.active.map((a) =>
    h(
      'tr',
      { dataset: { alarm: a.alarm, state: 'firing', group: fmt.labels(a.group), value: a.value ?? '' } },
      h('th', { scope: 'row' }, a.alarm),
      h('td', {}, fmt.labels(a.group)),
      h('td', {}, `${fmt.dateTime(a.since_ms)} UTC`, h('span', { class: 'hint' }, ` (${fmt.ago(now, a.since_ms)})`)),
      h('td', { class: 'num' }, fmt.number(a.value)),
      h('td', {}, a.field ? `${a.metric} ${condition(a)}` : '-'),
      h('td', {}, `${fmt.minute(a.ts_ms)} UTC`),
    ),
  );
  const columns = [['alarm'], ['group'], ['firing since'], ['value', 'num'], ['condition'], ['minute']];
  return section('Firing', table('Firing alarm instances', columns, rows, 'Nothing is firing.'));
}

function rules(data) {
  const rows = data.rules.map((r) =>
    h(
      'tr',
      { dataset: { rule: r.alarm } },
      h('th', { scope: 'row' }, r.alarm),
      h('td', { class: 'mono' }, r.metric),
      h('td', {}, condition(r)),
      h('td', {}, r.evaluated_through_ms ? `${fmt.minute(r.evaluated_through_ms)} UTC` : 'not yet'),
      h('td', {}, data.active.some((a) => a.alarm === r.alarm) ? badge('firing', 'bad') : badge('quiet', 'ok')),
    ),
  );
  const columns = [['rule'], ['metric'], ['condition'], ['evaluated through'], ['state']];
  return section('Rules', table('Alarm rules', columns, rows, 'No [[alarm]] rule in this node\u2019s config.'));
}

function history(data) {
  const rows = data.history.map((r) =>
    h(
      'tr',
      { dataset: { alarm: r.alarm, state: r.state } },
      h('td', {}, `${fmt.dateTime(r.evaluated_ms)} UTC`),
      h('th', { scope: 'row' }, r.alarm),
      h('td', {}, badge(r.state, r.state === 'firing' ? 'bad' : 'ok')),
      h('td', {}, fmt.labels(r.group)),
      h('td', { class: 'num' }, fmt.number(r.value)),
      h('td', {}, `${fmt.minute(r.ts_ms)} UTC`),
    ),
  );
  const columns = [['decided'], ['alarm'], ['state'], ['group'], ['value', 'num'], ['minute']];
  return section('History', table('Alarm history, newest first', columns, rows, 'No alarm has fired yet.'));
}

export function mount(main) {
  const body = h('div', {});
  main.append(h('h1', {}, 'Alarms'), body);
  return {
    async refresh() {
      const data = await getData('api/v1/alarms', { limit: 100 });
      data.rules = data.rules || [];
      swap(body, firing(data, Date.now()), rules(data), history(data));
    },
  };
}
