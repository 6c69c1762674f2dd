// Building the DOM from code. Text always goes in as text
// nodes, never as HTML, so nothing a node reports can inject markup.

const SVG_NS = 'http://www.w3.org/2000/svg';

function build(element, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) {
      continue;
    }
    if (name.startsWith('on') && typeof value === 'function') {
      element.addEventListener(name.slice(2), value);
    } else if (name === 'dataset') {
      for (const [key, v] of Object.entries(value)) {
        if (v !== null && v !== undefined) {
          element.dataset[key] = String(v);
        }
      }
    } else {
      element.setAttribute(name, value === true ? '' : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) {
      continue;
    }
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** An HTML element: `h('td', {class: 'num'}, '42')`. */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element, as `h` builds HTML ones. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Makes `current` look like `next`, touching only what differs. */
function morph(current, next) {
  if (current.nodeType !== next.nodeType || current.nodeName !== next.nodeName) {
    current.replaceWith(next);
    return;
  }
  if (current.nodeType !== Node.ELEMENT_NODE) {
    if (current.nodeValue !== next.nodeValue) {
      current.nodeValue = next.nodeValue;
    }
    return;
  }
  for (const attr of Array.from(current.attributes)) {
    if (!next.hasAttribute(attr.name)) {
      current.removeAttribute(attr.name);
    }
  }
  for (const attr of Array.from(next.attributes)) {
    if (current.getAttribute(attr.name) !== attr.value) {
      current.setAttribute(attr.name, attr.value);
    }
  }
  morphChildren(current, Array.from(next.childNodes));
}

function morphChildren(parent, next) {
  const current = Array.from(parent.childNodes);
  next.forEach((node, i) => {
    if (i < current.length) {
      morph(current[i], node);
    } else {
      parent.append(node);
    }
  });
  for (const extra of current.slice(next.length)) {
    extra.remove();
  }
}

/**
 * Makes `container`'s children look like `nodes` (strings become text),
 * changing only the attributes and text that differ: a refresh never
 * blanks the page, and focus, scroll positions and selections survive it.
 * Nodes built for this carry no event listeners (those stay on controls
 * built once).
 */
export function swap(container, ...nodes) {
  const next = nodes
    .flat(Infinity)
    .filter((n) => n !== null && n !== undefined && n !== false)
    .map((n) => (n instanceof Node ? n : document.createTextNode(String(n))));
  morphChildren(container, next);
}

/**
 * A table in a scrollable region: `columns` are `[heading, className]`
 * pairs, `rows` already built `<tr>`s. A region the keyboard can scroll.
 */
export function table(caption, columns, rows, empty) {
  const head = h('thead', {}, h('tr', {}, columns.map(([title, cls]) => h('th', { scope: 'col', class: cls }, title))));
  const body = h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { class: 'empty', colspan: columns.length }, empty)));
  return h(
    'div',
    { class: 'scroll', tabindex: 0, role: 'region', 'aria-label': caption },
    h('table', {}, h('caption', {}, caption), head, body),
  );
}

/** A status word with its colour: `OK`, `Degraded`, `KO`, `Deactivated`, … */
export function badge(text, tone) {
  return h('span', { class: `badge ${tone}` }, text);
}

/** A titled section of a page. */
export function section(title, ...children) {
  return h('section', { class: 'panel' }, h('h2', {}, title), ...children);
}
