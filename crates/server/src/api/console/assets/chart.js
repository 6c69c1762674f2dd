// The time-series chart of the explorer: an SVG line chart built here, one
// line per series, the merged series drawn heavier. A minute that is not
// complete yet (some expected source has not passed its end) is a hollow
// point reached by a dashed segment, so its value reads as provisional.
//
// Every point carries its exact figures as data attributes (`data-series`,
// `data-ts`, `data-value`, `data-complete`), the value as the API sent it.

import { h, s } from './dom.js';
import { minute, number } from './format.js';

const MINUTE_MS = 60_000;
const PALETTE_SIZE = 8;
const MARGIN = { left: 60, right: 16, top: 14, bottom: 30 };

/** Rounds `x` up to 1, 2, 2.5 or 5 times a power of ten. */
function niceStep(x) {
  if (!(x > 0)) {
    return 1;
  }
  const power = 10 ** Math.floor(Math.log10(x));
  const f = x / power;
  const nice = f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10;
  return nice * power;
}

/** Value axis: `[low, high, step]` covering every value, from 0 when all are positive. */
function valueScale(values) {
  let low = Math.min(0, ...values);
  let high = Math.max(0, ...values);
  if (high === low) {
    high = low + 1;
  }
  const step = niceStep((high - low) / 4);
  low = Math.floor(low / step) * step;
  high = Math.ceil(high / step) * step;
  return [low, high, step];
}

/** Minutes between time labels, so that at most about 8 fit. */
function timeStep(from, to) {
  const minutes = (to - from) / MINUTE_MS;
  const choices = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720];
  return (choices.find((c) => minutes / c <= 8) || 1440) * MINUTE_MS;
}

/** Consecutive minutes with a value: the lines break over gaps. */
function runs(points) {
  const out = [];
  let run = [];
  for (const p of points) {
    const last = run[run.length - 1];
    if (last && p.ts - last.ts !== MINUTE_MS) {
      out.push(run);
      run = [];
    }
    run.push(p);
  }
  if (run.length) {
    out.push(run);
  }
  return out;
}

function axes(frame, from, to, yScale, x, y) {
  const [low, high, step] = yScale;
  const parts = [];
  for (let v = low; v <= high + step / 2; v += step) {
    const value = Number(v.toPrecision(12));
    parts.push(
      s('line', { class: 'grid', x1: MARGIN.left, x2: frame.width - MARGIN.right, y1: y(value), y2: y(value) }),
      s('text', { class: 'tick', x: MARGIN.left - 6, y: y(value) + 4, 'text-anchor': 'end' }, number(value)),
    );
  }
  const every = timeStep(from, to);
  for (let t = Math.ceil(from / every) * every; t < to; t += every) {
    parts.push(
      s('line', { class: 'grid', x1: x(t), x2: x(t), y1: MARGIN.top, y2: frame.height - MARGIN.bottom }),
      s('text', { class: 'tick', x: x(t), y: frame.height - MARGIN.bottom + 18, 'text-anchor': 'middle' }, minute(t)),
    );
  }
  return parts;
}

function seriesGroup(series, tone, x, y, field) {
  const solid = [];
  const dashed = [];
  const circles = [];
  for (const run of runs(series.points)) {
    for (let i = 1; i < run.length; i += 1) {
      const [a, b] = [run[i - 1], run[i]];
      const segment = `M${x(a.ts).toFixed(1)} ${y(a.value).toFixed(1)}L${x(b.ts).toFixed(1)} ${y(b.value).toFixed(1)}`;
      (a.complete && b.complete ? solid : dashed).push(segment);
    }
  }
  for (const p of series.points) {
    const state = p.complete ? 'complete' : `incomplete, ${p.sources} of ${p.expected} sources`;
    circles.push(
      s(
        'circle',
        {
          class: p.complete ? 'pt' : 'pt open',
          cx: x(p.ts).toFixed(1),
          cy: y(p.value).toFixed(1),
          r: series.merged ? 3.5 : 2.5,
          dataset: { series: series.key, ts: p.ts, value: p.value, complete: p.complete },
        },
        s('title', {}, `${series.label} · ${minute(p.ts)} UTC · ${field} ${number(p.value)} · ${state}`),
      ),
    );
  }
  return s(
    'g',
    { class: `series ${tone}${series.merged ? ' merged' : ''}`, dataset: { series: series.key } },
    solid.length ? s('path', { class: 'line', d: solid.join('') }) : null,
    dashed.length ? s('path', { class: 'line provisional', d: dashed.join('') }) : null,
    circles,
  );
}

/** The colour class of the `i`-th series; the merged one has its own. */
export function tone(series, i) {
  return series.merged ? 'merged' : `s${i % PALETTE_SIZE}`;
}

/**
 * A line chart of `series` (`{key, label, merged, points: [{ts, value,
 * complete, sources, expected}]}`, points in time order, values not null)
 * over `[from, to)`, `width` pixels wide.
 */
export function lineChart({ series, from, to, field, width, title }) {
  const frame = { width: Math.max(280, Math.round(width)), height: width < 600 ? 220 : 300 };
  const values = series.flatMap((one) => one.points.map((p) => p.value));
  const svg = s('svg', {
    class: 'plot',
    viewBox: `0 0 ${frame.width} ${frame.height}`,
    width: frame.width,
    height: frame.height,
    role: 'img',
    'aria-label': title,
  });
  if (!values.length) {
    svg.append(s('text', { class: 'nodata', x: frame.width / 2, y: frame.height / 2, 'text-anchor': 'middle' }, 'No data in this range'));
    return svg;
  }
  const yScale = valueScale(values);
  const plotWidth = frame.width - MARGIN.left - MARGIN.right;
  const plotHeight = frame.height - MARGIN.top - MARGIN.bottom;
  const x = (t) => MARGIN.left + ((t - from) / (to - from)) * plotWidth;
  const y = (v) => MARGIN.top + (1 - (v - yScale[0]) / (yScale[1] - yScale[0])) * plotHeight;
  svg.append(...axes(frame, from, to, yScale, x, y));
  // The merged line last: drawn over the groups.
  const ordered = series.map((one, i) => [one, tone(one, i)]).sort(([a], [b]) => Number(a.merged) - Number(b.merged));
  for (const [one, colour] of ordered) {
    svg.append(seriesGroup(one, colour, x, y, field));
  }
  return svg;
}

/** The legend of a chart: each series' colour and label. */
export function legend(series) {
  return h(
    'ul',
    { class: 'legend' },
    series.map((one, i) =>
      h('li', {}, h('span', { class: `swatch ${tone(one, i)}`, 'aria-hidden': 'true' }), one.label),
    ),
    h('li', { class: 'hint' }, h('span', { class: 'swatch open', 'aria-hidden': 'true' }), 'hollow, dashed: minute not complete yet'),
  );
}
