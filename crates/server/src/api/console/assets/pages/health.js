// Health: the node's overall status and each component's checks with
// their details and durations (GET /health, GET /health/{component}).

import { getJSON } from '../api.js';
import { badge, h, section, swap, table } from '../dom.js';
import { healthTone } from '../format.js';

function component(name, detail) {
  const rows = detail.checks.map((c) =>
    h(
      'tr',
      { dataset: { check: c.name, status: c.status } },
      h('th', { scope: 'row' }, c.name),
      h('td', {}, badge(c.status, healthTone(c.status))),
      h('td', {}, c.detail),
      h('td', { class: 'num' }, `${c.duration_us} µs`),
    ),
  );
  return h(
    'section',
    { class: 'panel', dataset: { component: name, status: detail.status } },
    h('h2', {}, name, ' ', badge(detail.status, healthTone(detail.status))),
    table(`Checks of ${name}`, [['check'], ['status'], ['detail'], ['took', 'num']], rows, 'No check.'),
  );
}

export function mount(main) {
  const overall = h('div', {});
  const body = h('div', {});
  main.append(h('h1', {}, 'Health'), overall, body);
  return {
    async refresh() {
      const health = await getJSON('health', {}, [503]);
      const names = Object.keys(health.components);
      const details = await Promise.all(names.map((n) => getJSON(`health/${encodeURIComponent(n)}`, {}, [503])));
      swap(
        overall,
        section(
          'Node',
          h(
            'p',
            { class: 'overall', dataset: { status: health.status } },
            `${health.node} is `,
            badge(health.status, healthTone(health.status)),
            ' (the worst of its active components; Deactivated ones are not configured here)',
          ),
        ),
      );
      swap(body, names.map((n, i) => component(n, details[i])));
    },
  };
}
