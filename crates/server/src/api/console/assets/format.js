// How figures are written on the page. Times are UTC, as in the API and
// the CLI; durations are short ("850 ms", "4.2 s", "3 min").

/** `HH:MM` UTC of an epoch-ms time. */
export function minute(ms) {
  return new Date(ms).toISOString().slice(11, 16);
}

/** `YYYY-MM-DD HH:MM:SS` UTC of an epoch-ms time; `-` for none. */
export function dateTime(ms) {
  if (!ms) {
    return '-';
  }
  return new Date(ms).toISOString().slice(0, 19).replace('T', ' ');
}

/** `HH:MM:SS` UTC. */
export function time(ms) {
  if (!ms) {
    return '-';
  }
  return new Date(ms).toISOString().slice(11, 19);
}

/** A duration in ms, short. */
export function duration(ms) {
  if (ms === null || ms === undefined) {
    return '-';
  }
  const abs = Math.abs(ms);
  if (abs < 1000) {
    return `${Math.round(ms)} ms`;
  }
  if (abs < 60_000) {
    return `${(ms / 1000).toFixed(1)} s`;
  }
  if (abs < 3_600_000) {
    return `${Math.round(ms / 60_000)} min`;
  }
  if (abs < 86_400_000) {
    return `${(ms / 3_600_000).toFixed(1)} h`;
  }
  return `${(ms / 86_400_000).toFixed(1)} d`;
}

/** How long ago `ms` was, from `now`. */
export function ago(now, ms) {
  if (!ms) {
    return 'never';
  }
  return `${duration(now - ms)} ago`;
}

/** A value for people: up to 4 significant digits, thousands grouped. */
export function number(value) {
  if (value === null || value === undefined) {
    return '-';
  }
  if (typeof value !== 'number') {
    return String(value);
  }
  if (Number.isInteger(value)) {
    return value.toLocaleString('en-US');
  }
  const abs = Math.abs(value);
  if (abs >= 1000) {
    return Math.round(value).toLocaleString('en-US');
  }
  return String(Number(value.toPrecision(4)));
}

/** Bytes as B, KiB, MiB, GiB. */
export function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/**
 * How a source's lag reads: `ok` up to 10 s (a flush or two and the
 * watermark delay), `warn` up to a minute (the current minute waits for
 * it), `bad` beyond or when unknown.
 */
export function lagTone(ms) {
  if (ms === null || ms === undefined) {
    return 'bad';
  }
  if (ms <= 10_000) {
    return 'ok';
  }
  return ms <= 60_000 ? 'warn' : 'bad';
}

/** The tone of a health status. */
export function healthTone(status) {
  return { OK: 'ok', Degraded: 'warn', KO: 'bad', Deactivated: 'off' }[status] || 'off';
}

/** `{a: "x", b: "y"}` as `a=x, b=y`; `(all)` for none. */
export function labels(group) {
  const pairs = Object.entries(group || {});
  return pairs.length ? pairs.map(([k, v]) => `${k}=${v}`).join(', ') : '(all)';
}
