// Collects every script error of the page — uncaught exceptions, rejected
// promises nobody handled, console.error calls — into the #console-errors
// list, and shows it. Loaded first, as a classic script, so that it also
// sees a module that fails to load or parse. Anyone looking at the page (or
// a test reading its DOM) sees what went wrong.
(function () {
  'use strict';
  var pending = [];

  function show(text) {
    var list = document.getElementById('console-errors');
    if (!list) {
      pending.push(text);
      return;
    }
    var item = document.createElement('li');
    item.textContent = text;
    list.appendChild(item);
    list.parentElement.hidden = false;
  }

  function describe(value) {
    if (value instanceof Error) {
      return value.name + ': ' + value.message;
    }
    return String(value);
  }

  window.addEventListener('error', function (event) {
    var target = event.target;
    if (target && target !== window && (target.src || target.href)) {
      show('could not load ' + (target.src || target.href));
      return;
    }
    var where = event.filename ? ' (' + event.filename + ':' + event.lineno + ')' : '';
    show('Uncaught ' + (event.error ? describe(event.error) : event.message) + where);
  }, true);

  window.addEventListener('unhandledrejection', function (event) {
    show('Unhandled rejection: ' + describe(event.reason));
  });

  var original = console.error;
  console.error = function () {
    show(Array.prototype.map.call(arguments, describe).join(' '));
    return original.apply(console, arguments);
  };

  document.addEventListener('DOMContentLoaded', function () {
    pending.splice(0).forEach(show);
  });
})();
