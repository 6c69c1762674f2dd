// Explore: one metric, filtered by label values, grouped by a label, over
// the last 15 min to 24 h. The chart shows the chosen field per group and
// merged over every group; the table under it gives each series' newest
// point and its value over the whole range. Every figure is what
// GET /api/v1/query answers: percentiles of merged histograms, never
// averages of percentiles.

import { getData } from '../api.js';
import { h, section, swap, table } from '../dom.js';
import { legend, lineChart } from '../chart.js';
import * as fmt from '../format.js';

/** The value fields of each kind, the one shown first by default. */
const FIELDS = {
  counter: ['rate_per_min', 'count'],
  sum: ['sum'],
  avg: ['avg', 'sum', 'count'],
  max: ['max'],
  min: ['min'],
  latest: ['value'],
  percent: ['percent', 'matched', 'total'],
  apdex: ['apdex', 'satisfied', 'tolerating', 'total'],
  histogram: ['p99', 'p999', 'p95', 'p90', 'p75', 'p50', 'mean', 'max', 'min', 'count'],
  exp_histogram: ['p99', 'p999', 'p95', 'p90', 'p75', 'p50', 'mean', 'max', 'min', 'sum', 'count'],
};

const RANGES = { '15m': '15 minutes', '1h': '1 hour', '6h': '6 hours', '24h': '24 hours' };

/** Labels a default view groups by, the first one present. */
const DEFAULT_GROUPS = ['cloud', 'region'];

const SELF_PREFIX = 'strata_';

/** The metric a first visit shows: the histogram with the most series, not a self-metric. */
export function topMetric(metrics) {
  const own = metrics.filter((m) => !m.name.startsWith(SELF_PREFIX));
  const pool = own.length ? own : metrics;
  const score = (m) => [m.kind.endsWith('histogram') ? 1 : 0, m.series];
  const sorted = [...pool].sort((a, b) => {
    const [ka, sa] = score(a);
    const [kb, sb] = score(b);
    return kb - ka || sb - sa || a.name.localeCompare(b.name);
  });
  return sorted.length ? sorted[0].name : '';
}

/** `metric{a="x",b="y"}`, values escaped as PromQL strings. */
export function selector(metric, filters) {
  const quote = (v) => `"${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
  const matchers = Object.entries(filters).map(([k, v]) => `${k}=${quote(v)}`);
  return matchers.length ? `${metric}{${matchers.join(',')}}` : metric;
}

function readState(params) {
  const filters = {};
  for (const [key, value] of params) {
    if (key.startsWith('l.') && value) {
      filters[key.slice(2)] = value;
    }
  }
  return {
    metric: params.get('metric') || '',
    field: params.get('field') || '',
    group: params.get('group') ?? null,
    range: RANGES[params.get('range')] ? params.get('range') : '15m',
    filters,
  };
}

function stateParams(state) {
  const params = [['metric', state.metric], ['field', state.field], ['group', state.group || ''], ['range', state.range]];
  for (const [k, v] of Object.entries(state.filters)) {
    params.push([`l.${k}`, v]);
  }
  return params;
}

/** Replaces `select`'s options with `options` (`[value, text]`) if they differ; keeps `value` selected. */
function setOptions(select, options, value) {
  const wanted = options.map(([v, t]) => `${v}\u0000${t}`).join('\u0001');
  const have = Array.from(select.options).map((o) => `${o.value}\u0000${o.text}`).join('\u0001');
  if (wanted !== have) {
    select.replaceChildren(...options.map(([v, t]) => h('option', { value: v }, t)));
  }
  select.value = value;
}

function field(labelText, control) {
  return h('label', { class: 'field' }, h('span', {}, labelText), control);
}

/** Points of one query series with a value, as the chart takes them. */
function chartPoints(series, name) {
  return series.points
    .filter((p) => typeof p.value[name] === 'number')
    .map((p) => ({ ts: p.ts_ms, value: p.value[name], complete: p.complete, sources: p.sources, expected: p.expected_sources }));
}

/**
 * `cloud=aws` for a group's labels; `cloud=` for the series without the
 * label (they are merged into one group); `merged` for everything merged.
 */
function seriesKey(labels, group) {
  const pairs = Object.entries(labels);
  if (pairs.length) {
    return pairs.map(([k, v]) => `${k}=${v}`).join(',');
  }
  return group ? `${group}=` : 'merged';
}

function valueCell(point, name, extra) {
  const value = point ? point.value[name] : undefined;
  const known = typeof value === 'number';
  return h(
    'td',
    { class: 'num', dataset: { field: name, value: known ? value : null, complete: point ? point.complete : null, ...extra } },
    known ? fmt.number(value) : '-',
    point && !point.complete ? h('span', { class: 'hint' }, ' (incomplete)') : null,
  );
}

function summaryRow(series, total, name, range) {
  const newest = series.points.length ? series.points[series.points.length - 1] : null;
  const overall = total && total.points.length ? total.points[0] : null;
  const key = series.key;
  return h(
    'tr',
    { class: series.merged ? 'merged-row' : '', dataset: { series: key } },
    h('th', { scope: 'row' }, series.label),
    h('td', {}, newest ? `${fmt.minute(newest.ts_ms)} UTC` : '-'),
    valueCell(newest, name, { series: key, ts: newest ? newest.ts_ms : null }),
    h('td', {}, newest ? `${newest.sources}/${newest.expected_sources}` : '-'),
    valueCell(overall, name, { series: key, from: range.from, to: range.to, range: 'all' }),
    h('td', { class: 'num' }, String(series.points.length)),
  );
}

export function mount(main, params, ctx) {
  const state = readState(params);
  const controls = {
    metric: h('select', { id: 'explore-metric' }),
    field: h('select', { id: 'explore-field' }),
    group: h('select', { id: 'explore-group' }),
    range: h('select', { id: 'explore-range' }),
  };
  setOptions(controls.range, Object.entries(RANGES).map(([v, t]) => [v, `last ${t}`]), state.range);
  const filters = h('div', { class: 'filters' });
  const form = h(
    'form',
    { class: 'controls', 'aria-label': 'What to show', onsubmit: (e) => e.preventDefault() },
    field('Metric', controls.metric),
    field('Field', controls.field),
    field('Group by', controls.group),
    field('Range', controls.range),
    filters,
  );
  const title = h('p', { class: 'query', id: 'explore-query' });
  const chart = h('div', { class: 'chart', id: 'explore-chart' });
  const summary = h('div', { id: 'explore-table' });
  main.append(h('h1', {}, 'Explore'), form, title, chart, summary);

  let labels = null;
  const changed = () => {
    ctx.setParams(stateParams(state));
    ctx.refreshNow();
  };
  controls.metric.addEventListener('change', () => {
    state.metric = controls.metric.value;
    state.field = '';
    state.group = null;
    state.filters = {};
    labels = null;
    changed();
  });
  controls.field.addEventListener('change', () => {
    state.field = controls.field.value;
    changed();
  });
  controls.group.addEventListener('change', () => {
    state.group = controls.group.value;
    changed();
  });
  controls.range.addEventListener('change', () => {
    state.range = controls.range.value;
    changed();
  });
  filters.addEventListener('change', (event) => {
    const name = event.target.dataset.label;
    if (event.target.value) {
      state.filters[name] = event.target.value;
    } else {
      delete state.filters[name];
    }
    changed();
  });

  function updateControls(metrics) {
    const options = metrics.map((m) => [m.name, `${m.name} (${m.kind}, ${m.series} series)`]);
    setOptions(controls.metric, options, state.metric);
    const kind = labels.kind;
    const fields = FIELDS[kind] || ['count'];
    if (!fields.includes(state.field)) {
      state.field = fields[0];
    }
    setOptions(controls.field, fields.map((f) => [f, f]), state.field);
    const names = Object.keys(labels.labels);
    if (state.group === null || (state.group && !names.includes(state.group))) {
      state.group = DEFAULT_GROUPS.find((g) => names.includes(g)) || '';
    }
    setOptions(controls.group, [['', 'nothing: merged only'], ...names.map((n) => [n, n])], state.group);
    const selects = names.map((name) => {
      const select = h('select', { id: `explore-label-${name}`, dataset: { label: name } });
      setOptions(select, [['', 'any'], ...labels.labels[name].map((v) => [v, v])], state.filters[name] || '');
      return field(name, select);
    });
    // Rebuilt only when the labels or values change, so a focused picker stays.
    const wanted = JSON.stringify([labels.metric, labels.labels]);
    if (filters.dataset.labels !== wanted) {
      filters.dataset.labels = wanted;
      filters.replaceChildren(...selects);
    }
    ctx.setParams(stateParams(state));
  }

  async function query(group, from, to, step) {
    const params = { q: selector(state.metric, state.filters), from, to, step, group_by: group };
    return getData('api/v1/query', params);
  }

  async function refresh() {
    const metrics = await getData('api/v1/metrics');
    metrics.sort((a, b) => a.name.localeCompare(b.name));
    if (!metrics.some((m) => m.name === state.metric)) {
      state.metric = topMetric(metrics);
      labels = null;
    }
    if (!state.metric) {
      swap(chart, h('p', { class: 'empty' }, 'No metric yet: send samples to this node or a tier below it.'));
      return;
    }
    labels = await getData('api/v1/labels', { metric: state.metric });
    updateControls(metrics);
    const merged = await query('', `-${state.range}`, 'now', 'minute');
    const range = { from: merged.from_ms, to: merged.to_ms };
    const grouped = state.group ? await query(state.group, range.from, range.to, 'minute') : { series: [] };
    const totalMerged = await query('', range.from, range.to, 'all');
    const totalGrouped = state.group ? await query(state.group, range.from, range.to, 'all') : { series: [] };
    render(merged, grouped, totalMerged, totalGrouped, range);
  }

  function render(merged, grouped, totalMerged, totalGrouped, range) {
    const name = state.field;
    const totals = new Map();
    for (const s of totalGrouped.series) {
      totals.set(seriesKey(s.labels, state.group), s);
    }
    for (const s of totalMerged.series) {
      totals.set('merged', s);
    }
    const groupLabel = (labels) => (Object.keys(labels).length ? fmt.labels(labels) : `(no ${state.group})`);
    const all = [
      ...grouped.series.map((s) => ({ ...s, key: seriesKey(s.labels, state.group), label: groupLabel(s.labels), merged: false })),
      ...merged.series.map((s) => ({ ...s, key: 'merged', label: state.group ? `merged over every ${state.group}` : 'merged', merged: true })),
    ];
    const chartSeries = all.map((s) => ({ key: s.key, label: s.label, merged: s.merged, points: chartPoints(s, name) }));
    const what = `${name} of ${selector(state.metric, state.filters)}${state.group ? ` by ${state.group}` : ''}, last ${RANGES[state.range]}, per minute (UTC)`;
    swap(title, what);
    Object.assign(chart.dataset, { metric: state.metric, field: name, group: state.group, from: range.from, to: range.to });
    const width = chart.clientWidth || 960;
    swap(
      chart,
      lineChart({ series: chartSeries, from: range.from, to: range.to, field: name, width, title: what }),
      legend(chartSeries),
    );
    const rows = all.map((s) => summaryRow(s, totals.get(s.key), name, range));
    const columns = [['series'], ['newest minute'], [name, 'num'], ['sources'], [`${name} over the range`, 'num'], ['points', 'num']];
    swap(summary, section('Per series', table(`${name} per series`, columns, rows, 'No data in this range.')));
  }

  return { refresh };
}
