// Topology: this node, its link to the upstream tier, every downstream
// source with its progress and lag, the completeness of the last minutes,
// and the tiers below the sources as far as their forwarded self-metrics
// tell (GET /api/v1/status).

import { getData } from '../api.js';
import { badge, h, section, swap, table } from '../dom.js';
import * as fmt from '../format.js';

const ROLES = {
  top: 'top tier (no upstream)',
  middle: 'middle tier: merges its sources and forwards',
  edge: 'edge: forwards what applications send it',
};

function card(title, rows) {
  return h(
    'section',
    { class: 'card' },
    h('h2', {}, title),
    h('dl', {}, rows.filter(Boolean).map(([term, value]) => [h('dt', {}, term), h('dd', {}, value)])),
  );
}

function lagCell(ms) {
  const tone = fmt.lagTone(ms);
  return h(
    'td',
    { class: `num lag ${tone}`, dataset: { lagMs: ms ?? '' } },
    h('span', { class: 'dot', 'aria-hidden': 'true' }),
    fmt.duration(ms),
    h('span', { class: 'sr-only' }, ` (${{ ok: 'fine', warn: 'behind', bad: 'far behind or unknown' }[tone]})`),
  );
}

function thisNode(status) {
  const node = status.node;
  return card('This node', [
    ['id', h('strong', { dataset: { node: node.id } }, node.id)],
    ['role', ROLES[node.role] || node.role],
    ['version', node.version],
    ['series', fmt.number(node.series)],
    ['own watermark', `${fmt.time(node.watermark_ms)} UTC`],
    ['own lag', h('span', { class: `lag ${fmt.lagTone(node.lag_ms)}` }, fmt.duration(node.lag_ms))],
    ['samples ingested', `${fmt.number(node.ingest_samples_total)} since start`],
    ['late after complete', fmt.number(node.late_after_complete)],
  ]);
}

function upstream(status) {
  const link = status.upstream;
  if (!link) {
    return card('Upstream', [['link', 'none: this is a top tier']]);
  }
  return card('Upstream', [
    ['upstream', link.id || '(not welcomed yet)'],
    ['link', h('span', { dataset: { upstreamConnected: link.connected } }, badge(link.connected ? 'connected' : 'disconnected', link.connected ? 'ok' : 'bad'))],
    ['health', [badge(link.status, fmt.healthTone(link.status)), ' ', link.detail]],
    ['acknowledged', h('span', { dataset: { ackedSeq: link.acked_seq } }, `through seq ${fmt.number(link.acked_seq)} of ${fmt.number(link.last_seq)}`)],
    ['spool', h('span', { dataset: { spoolBatches: link.spool_batches } }, `${fmt.number(link.spool_batches)} batches, ${fmt.bytes(link.spool_bytes)}`)],
    link.spool_dropped_batches ? ['dropped at the cap', fmt.number(link.spool_dropped_batches)] : null,
  ]);
}

function completeness(status) {
  const minutes = status.completeness.map((m) =>
    h(
      'li',
      {
        class: m.complete ? 'min done' : 'min open',
        dataset: { ts: m.ts_ms, complete: m.complete },
        title: `${fmt.minute(m.ts_ms)} UTC: ${m.complete ? 'complete' : 'not complete yet'}, ${m.sources} of ${m.expected_sources} sources past its end`,
      },
      h('span', { class: 'at' }, fmt.minute(m.ts_ms)),
      h('span', { class: 'of' }, `${m.sources}/${m.expected_sources}`),
    ),
  );
  return section(
    'Completeness of the last minutes',
    h('p', { class: 'hint' }, 'A minute is complete once every expected source and this node have passed its end; queries and alarms mark it so.'),
    h('ol', { class: 'minutes' }, minutes),
  );
}

function sourceState(source) {
  if (source.expired) {
    return badge('expired', 'off');
  }
  return source.connected ? badge('connected', 'ok') : badge('disconnected', 'bad');
}

function minuteStrip(source, starts) {
  return h(
    'span',
    { class: 'strip', 'aria-label': `${source.minutes.filter(Boolean).length} of the last ${source.minutes.length} minutes passed` },
    source.minutes.map((done, i) =>
      h('span', { class: done ? 'mark done' : 'mark open', title: `${fmt.minute(starts[i])} UTC ${done ? 'passed' : 'not passed yet'}` }),
    ),
  );
}

function belowRow(node, status, columns, nested) {
  const minutes = status.node.self_metrics_window_minutes;
  const via = node.via.length === 1 ? node.via[0] : '';
  const figures = [
    `last flush ${fmt.minute(node.last_seen_ms)} UTC`,
    `${fmt.number(node.samples)} samples in`,
    `${fmt.number(node.batches_forwarded)} batches forwarded`,
    node.middle_tier ? `${fmt.number(node.batches_received)} batches merged from its sources` : null,
    `${fmt.number(node.duplicates)} duplicates`,
  ].filter(Boolean);
  return h(
    'tr',
    { class: 'below', dataset: { node: node.id, via } },
    h('th', { scope: 'row' }, nested ? h('span', { class: 'indent', 'aria-hidden': 'true' }, '↳ ') : null, node.id),
    h('td', { colspan: columns - 1 }, `${figures.join(' · ')} in the last ${minutes} min`, h('span', { class: 'hint' }, nested ? ` (behind ${via}, from forwarded self-metrics)` : ' (from forwarded self-metrics)')),
  );
}

const SOURCE_COLUMNS = [
  ['source'],
  ['state'],
  ['epoch'],
  ['committed seq', 'num'],
  ['watermark'],
  ['lag', 'num'],
  ['batches', 'num'],
  ['duplicates', 'num'],
  ['late', 'num'],
  ['last minutes'],
];

function sources(status) {
  const starts = status.completeness.map((m) => m.ts_ms);
  const rows = [];
  for (const source of status.sources) {
    rows.push(
      h(
        'tr',
        { dataset: { source: source.id, connected: source.connected, expired: source.expired, lagMs: source.lag_ms ?? '' } },
        h('th', { scope: 'row' }, source.id, source.middle_tier ? h('span', { class: 'hint' }, ' middle tier') : null),
        h('td', {}, sourceState(source)),
        h('td', { class: 'mono' }, source.epoch_fingerprint || '-'),
        h('td', { class: 'num' }, fmt.number(source.committed_seq)),
        h('td', {}, fmt.time(source.watermark_ms)),
        lagCell(source.lag_ms),
        h('td', { class: 'num' }, fmt.number(source.batches)),
        h('td', { class: 'num' }, fmt.number(source.duplicates)),
        h('td', { class: 'num' }, fmt.number(source.late_after_complete)),
        h('td', {}, minuteStrip(source, starts)),
      ),
    );
    for (const node of status.below.filter((n) => n.via.length === 1 && n.via[0] === source.id)) {
      rows.push(belowRow(node, status, SOURCE_COLUMNS.length, true));
    }
  }
  const empty = 'No downstream source: applications send to this node directly.';
  return section('Downstream sources', table('Downstream sources', SOURCE_COLUMNS, rows, empty));
}

function furtherDown(status) {
  const unplaced = status.below.filter((n) => n.via.length !== 1);
  if (!unplaced.length) {
    return null;
  }
  const rows = unplaced.map((node) => belowRow(node, status, 2, false));
  return section(
    'Further down',
    h('p', { class: 'hint' }, 'Nodes whose self-metrics reach this node through a middle tier that cannot be told apart from the figures alone.'),
    table('Further down', [['node'], ['figures']], rows, ''),
  );
}

export function mount(main) {
  const heading = h('h1', {}, 'Topology');
  const cards = h('div', { class: 'cards' });
  const body = h('div', {});
  main.append(heading, cards, body);
  return {
    async refresh() {
      const status = await getData('api/v1/status');
      swap(cards, thisNode(status), upstream(status));
      swap(body, completeness(status), sources(status), furtherDown(status));
    },
  };
}
