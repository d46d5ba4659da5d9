// keygate admin console: plain JavaScript over the admin REST API (/v1).
//
// Rules this file keeps:
// - The admin key lives in sessionStorage only (this tab), never in a URL,
//   localStorage, a cookie or a log line; Sign out removes it.
// - API data reaches the page through textContent / text nodes only, never innerHTML.
// - No inline styles or scripts (the page is served with a strict CSP).
// - A newly created key is shown once, in the create dialog; closing the dialog
//   removes it from the DOM.
(function () {
  'use strict';

  var STORAGE_KEY = 'keygate.adminKey';
  var PAGE_SIZE = 20;

  var state = {
    page: 1,
    pages: 1,
    total: 0,
    search: '',
    status: '',
    seq: 0,
    items: [],
  };
  var revokeTarget = null;
  var accessTarget = null;
  var searchTimer = 0;
  var statusTimer = 0;

  function $(id) {
    return document.getElementById(id);
  }

  // Builds an element. props: class, text, on<event> handlers, other attributes.
  // Children are nodes or strings (strings become text nodes).
  function h(tag, props) {
    var e = document.createElement(tag);
    if (props) {
      Object.keys(props).forEach(function (k) {
        var v = props[k];
        if (v === null || v === undefined || v === false) return;
        if (k === 'class') e.className = v;
        else if (k === 'text') e.textContent = v;
        else if (k.slice(0, 2) === 'on') e.addEventListener(k.slice(2), v);
        else e.setAttribute(k, v === true ? '' : String(v));
      });
    }
    for (var i = 2; i < arguments.length; i++) append(e, arguments[i]);
    return e;
  }

  function append(parent, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) child.forEach(function (c) { append(parent, c); });
    else parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }

  // ---- session -------------------------------------------------------------

  function storedKey() {
    try {
      return window.sessionStorage.getItem(STORAGE_KEY);
    } catch (e) {
      return null;
    }
  }

  function storeKey(key) {
    window.sessionStorage.setItem(STORAGE_KEY, key);
  }

  // The display prefix of the signed-in key (the key minus its last 30 characters:
  // 24 more random characters and the 6-character checksum), to mark it in the table.
  function ownPrefix() {
    var key = storedKey();
    return key && key.length > 38 ? key.slice(0, key.length - 30) : null;
  }

  function isOwn(k) {
    var mine = ownPrefix();
    return !!mine && k.prefix === mine;
  }

  function forgetKey() {
    try {
      window.sessionStorage.removeItem(STORAGE_KEY);
    } catch (e) {
      /* storage unavailable: nothing stored */
    }
  }

  // ---- API -----------------------------------------------------------------

  function ApiError(status, code, message, requestId) {
    this.status = status;
    this.code = code;
    this.message = message;
    this.requestId = requestId || '';
  }

  function api(method, path, body, key) {
    var adminKey = key || storedKey();
    var headers = { Accept: 'application/json', Authorization: 'Bearer ' + adminKey };
    var init = {
      method: method,
      headers: headers,
      cache: 'no-store',
      credentials: 'omit',
      referrerPolicy: 'no-referrer',
    };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(
      function (res) {
        return res.text().then(function (text) {
          var data = null;
          if (text) {
            try {
              data = JSON.parse(text);
            } catch (e) {
              data = null;
            }
          }
          if (!res.ok) {
            var err = data && data.error ? data.error : {};
            throw new ApiError(
              res.status,
              err.code || 'http_' + res.status,
              err.message || 'The admin API answered HTTP ' + res.status + '.',
              err.request_id
            );
          }
          return data;
        });
      },
      function () {
        throw new ApiError(0, 'network', 'Cannot reach the keygate admin API. Is keygate running?');
      }
    );
  }

  // The admin key itself was refused: the session is over.
  function isAuthFailure(e) {
    return (
      e instanceof ApiError &&
      (e.status === 401 || (e.status === 403 && (e.code === 'insufficient_scope' || e.code === 'key_revoked')))
    );
  }

  // ---- status region -------------------------------------------------------

  function announce(kind, message, requestId) {
    var region = $('status');
    window.clearTimeout(statusTimer);
    region.replaceChildren();
    region.className = 'status status-' + kind;
    var box = h('div', { class: 'status-box' },
      h('span', { class: 'status-icon', 'aria-hidden': 'true' }),
      h('div', { class: 'status-text' },
        h('span', null, message),
        requestId ? h('span', { class: 'status-meta' }, 'Request ID ' + requestId) : null
      ),
      h('button', {
        type: 'button',
        class: 'status-dismiss',
        'aria-label': 'Dismiss message',
        onclick: clearStatus,
      }, '\u00d7')
    );
    region.append(box);
    if (kind !== 'error') statusTimer = window.setTimeout(clearStatus, 8000);
  }

  function clearStatus() {
    window.clearTimeout(statusTimer);
    var region = $('status');
    region.replaceChildren();
    region.className = 'status';
  }

  function showError(context, e) {
    if (isAuthFailure(e)) {
      signOut('Your admin key was refused: ' + e.message + '. Sign in again.', 'error');
      return;
    }
    announce('error', context + ': ' + e.message, e.requestId);
  }

  // ---- formatting ----------------------------------------------------------

  var dateFmt = new Intl.DateTimeFormat(undefined, {
    year: 'numeric',
    month: 'short',
    day: 'numeric',
    hour: '2-digit',
    minute: '2-digit',
  });
  var numFmt = new Intl.NumberFormat();
  var relFmt = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });

  function maskPrefix(prefix) {
    return (prefix || '') + '\u2026';
  }

  function relative(d) {
    var secs = Math.round((d.getTime() - Date.now()) / 1000);
    var abs = Math.abs(secs);
    if (abs < 45) return secs <= 0 ? 'just now' : 'in a few seconds';
    if (abs < 3600) return relFmt.format(Math.round(secs / 60), 'minute');
    if (abs < 86400) return relFmt.format(Math.round(secs / 3600), 'hour');
    if (abs < 7 * 86400) return relFmt.format(Math.round(secs / 86400), 'day');
    return null;
  }

  // <time> with a readable text and the exact UTC time as tooltip.
  function timeEl(iso, preferRelative) {
    var d = new Date(iso);
    if (isNaN(d.getTime())) return h('span', null, String(iso));
    var text = (preferRelative && relative(d)) || dateFmt.format(d);
    return h('time', { datetime: iso, title: d.toISOString() }, text);
  }

  var STATUS_LABELS = { active: 'Active', paused: 'Paused', expired: 'Expired', revoked: 'Revoked' };

  function badge(k) {
    var status = k.status;
    var known = Object.prototype.hasOwnProperty.call(STATUS_LABELS, status);
    var title = null;
    if (status === 'revoked' && k.revoked_at) title = 'Revoked ' + dateFmt.format(new Date(k.revoked_at));
    else if (k.expires_at) title = (status === 'expired' ? 'Expired ' : 'Expires ') + dateFmt.format(new Date(k.expires_at));
    return h('span', { class: 'badge badge-' + (known ? status : 'other'), title: title }, known ? STATUS_LABELS[status] : status);
  }

  // ---- access: MCP, IP allowlist, rate limit -------------------------------

  // As the admin API checks them (tool patterns) or as keys::Rate::parse accepts them.
  var TOOL_PATTERN = /^[A-Za-z0-9_.\/:*-]{1,128}$/;
  var MAX_TOOLS = 100;
  var RATE_PATTERN = /^[1-9][0-9]{0,5}\/(s|m|h)$/;

  // Comma-separated input: trimmed, non-empty, each once.
  function commaList(text) {
    var out = [];
    text.split(',').forEach(function (s) {
      s = s.trim();
      if (s && out.indexOf(s) < 0) out.push(s);
    });
    return out;
  }

  // Why a list of MCP tools is refused, or null when it is fine.
  function toolsProblem(tools) {
    if (tools.length > MAX_TOOLS) return 'List at most ' + MAX_TOOLS + ' MCP tools.';
    var bad = tools.filter(function (t) {
      return !TOOL_PATTERN.test(t);
    });
    if (bad.length) {
      return 'MCP tool \u201c' + bad[0] + '\u201d is not valid: each entry must be 1\u2013128 characters of A\u2013Z, a\u2013z, 0\u20139, _ - . / : and *.';
    }
    return null;
  }

  // Why a (trimmed, non-empty) rate limit is refused, or null when it is fine.
  function rateProblem(rate) {
    if (RATE_PATTERN.test(rate)) return null;
    return 'The rate limit must be a count from 1 to 999999, a slash and s, m or h (per second, minute or hour), e.g. 10/s, 600/m or 1000/h.';
  }

  function mcpRestricted(m) {
    return !!m && (!!m.disabled || !!m.read_only || !!(m.tools && m.tools.length));
  }

  // "allowed, all tools", "paused", "tools search_*, get_doc, read-only", ...
  function mcpText(m) {
    m = m || {};
    var tools = m.tools || [];
    var rules = [tools.length ? 'tools ' + tools.join(', ') : 'all tools'];
    if (m.read_only) rules.push('read-only');
    if (m.disabled) return 'paused' + (tools.length || m.read_only ? ' (' + rules.join(', ') + ')' : '');
    return (tools.length ? '' : 'allowed, ') + rules.join(', ');
  }

  // "any" for an empty allowlist; with `max`, the first `max` entries and a count.
  function ipsText(ips, max) {
    ips = ips || [];
    if (!ips.length) return 'any';
    if (max && ips.length > max) return ips.slice(0, max).join(', ') + ' +' + (ips.length - max) + ' more';
    return ips.join(', ');
  }

  function rateText(rate) {
    return rate || 'default';
  }

  // <dt>/<dd> pairs for a .facts list.
  function accessFacts(k) {
    return [
      h('dt', null, 'MCP'), h('dd', { 'data-fact': 'mcp' }, mcpText(k.mcp)),
      h('dt', null, 'Allowed IPs'), h('dd', { 'data-fact': 'allowed-ips' }, ipsText(k.allowed_ips)),
      h('dt', null, 'Rate limit'), h('dd', { 'data-fact': 'rate-limit' }, rateText(k.rate_limit)),
    ];
  }

  // A line under the key name, only for keys with non-default access.
  function accessLine(k) {
    var items = [];
    if (mcpRestricted(k.mcp)) items.push(['MCP', mcpText(k.mcp)]);
    if (k.allowed_ips && k.allowed_ips.length) items.push(['IPs', ipsText(k.allowed_ips, 3)]);
    if (k.rate_limit) items.push(['Rate', k.rate_limit]);
    if (!items.length) return null;
    return h('div', { class: 'key-access' }, items.map(function (it) {
      return h('span', { class: 'access-item' }, h('span', { class: 'access-label' }, it[0] + ':'), ' ', it[1]);
    }));
  }

  // ---- views ---------------------------------------------------------------

  function showSignIn() {
    $('keys-view').hidden = true;
    $('session').hidden = true;
    $('signin-view').hidden = false;
  }

  function showKeys() {
    $('signin-view').hidden = true;
    $('session').hidden = false;
    $('keys-view').hidden = false;
  }

  function signIn(ev) {
    ev.preventDefault();
    var input = $('admin-key');
    var key = input.value.trim();
    if (!key) {
      announce('error', 'Enter an admin key to sign in.');
      input.focus();
      return;
    }
    var button = $('signin-submit');
    button.disabled = true;
    button.textContent = 'Signing in\u2026';
    api('GET', '/v1/keys?page=1&limit=1', undefined, key)
      .then(function () {
        storeKey(key);
        input.value = '';
        clearStatus();
        resetList();
        showKeys();
        return load().then(function () {
          $('create-open').focus();
        });
      })
      .catch(function (e) {
        announce('error', 'Sign-in failed: ' + e.message, e.requestId);
        input.focus();
        input.select();
      })
      .then(function () {
        button.disabled = false;
        button.textContent = 'Sign in';
      });
  }

  function signOut(message, kind) {
    forgetKey();
    ['create-dialog', 'revoke-dialog', 'access-dialog', 'usage-dialog'].forEach(function (id) {
      var d = $(id);
      if (d.open) d.close();
    });
    discardCreated();
    state.seq++;
    state.items = [];
    $('keys-body').replaceChildren();
    $('search').value = '';
    $('status-filter').value = '';
    resetList();
    showSignIn();
    if (message) announce(kind || 'info', message);
    else clearStatus();
    $('admin-key').focus();
  }

  function resetList() {
    state.page = 1;
    state.pages = 1;
    state.total = 0;
    state.search = '';
    state.status = '';
  }

  // ---- key table -----------------------------------------------------------

  function load(focusAfter) {
    var seq = ++state.seq;
    var q = new URLSearchParams({ page: String(state.page), limit: String(PAGE_SIZE) });
    if (state.search) q.set('search', state.search);
    if (state.status) q.set('status', state.status);
    var table = $('keys-table');
    table.setAttribute('aria-busy', 'true');
    if (!state.items.length) {
      $('keys-body').replaceChildren(messageRow('Loading keys\u2026'));
    }
    return api('GET', '/v1/keys?' + q.toString())
      .then(function (data) {
        if (seq !== state.seq) return;
        var pages = Math.max(1, Math.ceil(data.total / data.limit));
        if (state.page > pages) {
          state.page = pages;
          return load(focusAfter);
        }
        state.total = data.total;
        state.pages = pages;
        state.items = data.items || [];
        render();
        if (focusAfter) focusAfter();
      })
      .catch(function (e) {
        if (seq !== state.seq) return;
        if (!state.items.length) $('keys-body').replaceChildren(messageRow('The keys could not be loaded.'));
        showError('Could not load keys', e);
      })
      .then(function () {
        table.removeAttribute('aria-busy');
      });
  }

  function messageRow(text) {
    return h('tr', { class: 'row-message' }, h('td', { colspan: '7' }, text));
  }

  function render() {
    var body = $('keys-body');
    if (!state.items.length) {
      var filtered = state.search || state.status;
      body.replaceChildren(
        messageRow(filtered ? 'No keys match this search.' : 'No keys yet. Create one to get started.')
      );
    } else {
      body.replaceChildren.apply(body, state.items.map(row));
    }
    var first = state.total ? (state.page - 1) * PAGE_SIZE + 1 : 0;
    var last = Math.min(state.total, state.page * PAGE_SIZE);
    var noun = state.total === 1 ? 'key' : 'keys';
    $('keys-summary').textContent =
      numFmt.format(state.total) + ' ' + noun + (state.search || state.status ? ' match' + (state.total === 1 ? 'es' : '') : '');
    $('range').textContent = state.total
      ? 'Showing ' + numFmt.format(first) + '\u2013' + numFmt.format(last) + ' of ' + numFmt.format(state.total)
      : '';
    $('page-info').textContent = 'Page ' + state.page + ' of ' + state.pages;
    $('prev').disabled = state.page <= 1;
    $('next').disabled = state.page >= state.pages;
  }

  function row(k) {
    var scopes = (k.scopes || []).map(function (s) {
      return h('span', { class: 'chip' }, s);
    });
    var meta = h('div', { class: 'key-meta' },
      k.org_id ? h('span', { class: 'org' }, k.org_id) : h('span', { class: 'org org-none' }, 'no org'),
      scopes
    );
    var name = h('div', { class: 'key-name' }, k.name);
    if (isOwn(k)) {
      name.append(' ', h('span', { class: 'self-tag', title: 'The admin key this console is signed in with' }, 'you'));
    }
    return h('tr', { 'data-key-id': k.id },
      h('td', { class: 'cell-name' }, name, meta, accessLine(k)),
      h('td', null, h('code', { class: 'prefix', title: 'Key prefix; the rest of the key is never stored' }, maskPrefix(k.prefix))),
      h('td', { class: 'cell-creator' }, k.created_by),
      h('td', { class: 'cell-time' }, timeEl(k.created_at, false)),
      h('td', { class: 'cell-time' }, k.last_used_at ? timeEl(k.last_used_at, true) : h('span', { class: 'never' }, 'never')),
      h('td', null, badge(k)),
      h('td', { class: 'cell-actions' }, rowActions(k))
    );
  }

  function rowButton(label, action, k, extraClass, handler) {
    return h('button', {
      type: 'button',
      class: 'btn btn-sm ' + (extraClass || 'btn-secondary'),
      'data-action': action,
      'aria-label': label + ' key ' + k.name,
      onclick: function (ev) {
        handler(k, ev.currentTarget);
      },
    }, label);
  }

  function rowActions(k) {
    var wrap = h('div', { class: 'row-actions' });
    if (k.status === 'active') wrap.append(rowButton('Pause', 'pause', k, null, pauseResume));
    else if (k.status === 'paused') wrap.append(rowButton('Resume', 'resume', k, null, pauseResume));
    wrap.append(rowButton('Usage', 'usage', k, null, showUsage));
    if (k.status !== 'revoked') {
      wrap.append(rowButton('Access', 'access', k, null, openAccess));
      wrap.append(rowButton('Revoke', 'revoke', k, 'btn-danger-quiet', openRevoke));
    }
    return wrap;
  }

  function focusRowButton(id, actions) {
    return function () {
      var tr = document.querySelector('tr[data-key-id="' + CSS.escape(id) + '"]');
      if (!tr) return;
      for (var i = 0; i < actions.length; i++) {
        var b = tr.querySelector('button[data-action="' + actions[i] + '"]');
        if (b) {
          b.focus();
          return;
        }
      }
    };
  }

  function pauseResume(k, button) {
    var action = button.getAttribute('data-action');
    button.disabled = true;
    api('POST', '/v1/keys/' + encodeURIComponent(k.id) + '/' + action)
      .then(function () {
        if (action === 'pause' && isOwn(k)) {
          signOut('Key \u201c' + k.name + '\u201d paused. It is the key this console was signed in with, so you are signed out; resume it with another admin key or the CLI.', 'info');
          return;
        }
        announce('success', 'Key \u201c' + k.name + '\u201d ' + (action === 'pause' ? 'paused: requests with it are refused until you resume it.' : 'resumed.'));
        return load(focusRowButton(k.id, [action === 'pause' ? 'resume' : 'pause', 'usage']));
      })
      .catch(function (e) {
        button.disabled = false;
        showError((action === 'pause' ? 'Could not pause' : 'Could not resume') + ' \u201c' + k.name + '\u201d', e);
      });
  }

  // ---- create dialog -------------------------------------------------------

  function openCreate() {
    var dialog = $('create-dialog');
    discardCreated();
    $('create-form').reset();
    $('create-form').hidden = false;
    $('create-error').textContent = '';
    dialog.setAttribute('aria-labelledby', 'create-title');
    dialog.showModal();
    $('create-name').focus();
  }

  function createError(message, focusId) {
    $('create-error').textContent = message;
    if (focusId) $(focusId).focus();
  }

  function submitCreate(ev) {
    ev.preventDefault();
    var name = $('create-name').value.trim();
    if (!name) return createError('Enter a name for the key.', 'create-name');

    var scopes = [];
    document.querySelectorAll('#create-form input[name="scope"]:checked').forEach(function (c) {
      scopes.push(c.value);
    });
    $('create-scopes-other').value.split(',').forEach(function (s) {
      s = s.trim();
      if (s && scopes.indexOf(s) < 0) scopes.push(s);
    });
    if (!scopes.length) return createError('Choose at least one scope.', 'create-scopes-other');

    var body = { name: name, scopes: scopes };
    var org = $('create-org').value.trim();
    if (org) body.org = org;
    var quotaText = $('create-quota').value.trim();
    if (quotaText !== '') {
      if (!/^\d+$/.test(quotaText) || !Number.isSafeInteger(Number(quotaText))) {
        return createError('The quota must be a whole number of at least 0.', 'create-quota');
      }
      body.quota = Number(quotaText);
    }
    var days = $('create-expiry').value;
    if (days) body.expires_at = new Date(Date.now() + Number(days) * 86400000).toISOString();

    var tools = commaList($('create-mcp-tools').value);
    var toolsError = toolsProblem(tools);
    if (toolsError) return createError(toolsError, 'create-mcp-tools');
    var mcp = {};
    if (tools.length) mcp.tools = tools;
    if ($('create-mcp-read-only').checked) mcp.read_only = true;
    if ($('create-mcp-disabled').checked) mcp.disabled = true;
    if (Object.keys(mcp).length) body.mcp = mcp;

    // The server checks the addresses and networks (and says which one is wrong).
    var ips = commaList($('create-ips').value);
    if (ips.length) body.allowed_ips = ips;

    var rate = $('create-rate').value.trim();
    if (rate !== '') {
      var rateError = rateProblem(rate);
      if (rateError) return createError(rateError, 'create-rate');
      body.rate_limit = rate;
    }

    var submit = $('create-submit');
    submit.disabled = true;
    submit.textContent = 'Creating\u2026';
    $('create-error').textContent = '';
    api('POST', '/v1/keys', body)
      .then(function (created) {
        showCreated(created);
        announce('success', 'Key \u201c' + created.name + '\u201d created.');
        state.page = 1;
        return load();
      })
      .catch(function (e) {
        if (isAuthFailure(e)) return showError('Could not create the key', e);
        createError('Could not create the key: ' + e.message, /^allowed_ips\b/.test(e.message) ? 'create-ips' : null);
      })
      .then(function () {
        submit.disabled = false;
        submit.textContent = 'Create key';
      });
  }

  // The one and only time the plaintext key is on the page.
  function showCreated(created) {
    var dialog = $('create-dialog');
    $('create-form').hidden = true;
    $('create-form').reset();

    var keyInput = h('input', {
      id: 'created-key',
      type: 'text',
      class: 'secret',
      readonly: true,
      autocomplete: 'off',
      spellcheck: 'false',
      'aria-describedby': 'created-warning',
    });
    keyInput.value = created.key;
    var feedback = h('p', { class: 'copy-feedback', role: 'status', 'aria-live': 'polite' });
    var copy = h('button', {
      type: 'button',
      class: 'btn btn-primary',
      id: 'created-copy',
      onclick: function () {
        copyKey(keyInput, feedback);
      },
    }, 'Copy');

    var facts = h('dl', { class: 'facts' },
      h('dt', null, 'Name'), h('dd', null, created.name),
      h('dt', null, 'Prefix'), h('dd', null, h('code', null, maskPrefix(created.prefix))),
      h('dt', null, 'Organisation'), h('dd', null, created.org_id || 'none'),
      h('dt', null, 'Scopes'), h('dd', null, (created.scopes || []).join(', ') || 'none'),
      h('dt', null, 'Expires'), h('dd', null, created.expires_at ? timeEl(created.expires_at, false) : 'never'),
      accessFacts(created)
    );

    var panel = h('section', { id: 'create-result', class: 'create-result', 'aria-labelledby': 'create-result-title' },
      h('div', { class: 'dialog-head' },
        h('h2', { id: 'create-result-title' }, 'Key created'),
        h('p', { class: 'muted' }, 'Give this key to the client that will use it.')
      ),
      h('div', { class: 'dialog-body' },
        h('div', { class: 'warning', id: 'created-warning' },
          h('span', { class: 'warning-icon', 'aria-hidden': 'true' }, '!'),
          h('div', null,
            h('strong', null, "Copy this key now. You won't be able to see it again."),
            h('span', { class: 'warning-more' }, 'keygate stores only a hash of it. If it is lost, create a new key and revoke this one.')
          )
        ),
        h('label', { for: 'created-key', class: 'label' }, 'API key for ' + created.name),
        h('div', { class: 'copy-row' }, keyInput, copy),
        feedback,
        facts
      ),
      h('div', { class: 'dialog-foot' },
        h('button', {
          type: 'button',
          class: 'btn btn-secondary',
          id: 'created-done',
          onclick: function () {
            dialog.close();
          },
        }, 'Done')
      )
    );
    dialog.setAttribute('aria-labelledby', 'create-result-title');
    dialog.append(panel);
    keyInput.focus();
    keyInput.select();
  }

  function copyKey(input, feedback) {
    function fallback() {
      input.focus();
      input.select();
      var ok = false;
      try {
        ok = document.execCommand('copy');
      } catch (e) {
        ok = false;
      }
      feedback.textContent = ok
        ? 'Copied to the clipboard.'
        : 'The key is selected: press Ctrl+C (\u2318C on a Mac) to copy it.';
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(function () {
        feedback.textContent = 'Copied to the clipboard.';
      }, fallback);
    } else {
      fallback();
    }
  }

  // Removes the plaintext key from the DOM (dialog closed, cancelled or signed out).
  function discardCreated() {
    var panel = $('create-result');
    if (!panel) return;
    panel.querySelectorAll('input').forEach(function (i) {
      i.value = '';
    });
    panel.remove();
  }

  function onCreateClosed() {
    discardCreated();
    $('create-form').reset();
    $('create-form').hidden = false;
    $('create-error').textContent = '';
    $('create-dialog').setAttribute('aria-labelledby', 'create-title');
  }

  // ---- revoke dialog -------------------------------------------------------

  function openRevoke(k) {
    revokeTarget = k;
    $('revoke-name').textContent = k.name;
    $('revoke-prefix').textContent = maskPrefix(k.prefix);
    $('revoke-self').hidden = !isOwn(k);
    $('revoke-error').textContent = '';
    $('revoke-confirm').disabled = false;
    $('revoke-dialog').showModal();
    $('revoke-cancel').focus();
  }

  function confirmRevoke() {
    var k = revokeTarget;
    if (!k) return;
    var button = $('revoke-confirm');
    button.disabled = true;
    button.textContent = 'Revoking\u2026';
    api('DELETE', '/v1/keys/' + encodeURIComponent(k.id))
      .then(function () {
        revokeTarget = null;
        $('revoke-dialog').close();
        if (isOwn(k)) {
          signOut('Key \u201c' + k.name + '\u201d revoked. It was the key this console was signed in with, so you are signed out.', 'info');
          return;
        }
        announce('success', 'Key \u201c' + k.name + '\u201d revoked. Requests with it are refused from now on.');
        return load(focusRowButton(k.id, ['usage']));
      })
      .catch(function (e) {
        if (isAuthFailure(e)) return showError('Could not revoke the key', e);
        $('revoke-error').textContent = 'Could not revoke the key: ' + e.message;
        button.disabled = false;
      })
      .then(function () {
        button.textContent = 'Revoke key';
      });
  }

  // ---- access dialog -------------------------------------------------------

  // MCP access, allowed IPs and rate limit of an existing key, prefilled from the list.
  function openAccess(k) {
    var m = k.mcp || {};
    accessTarget = k;
    $('access-form').reset();
    $('access-title').textContent = 'Access of \u201c' + k.name + '\u201d';
    $('access-sub').textContent = maskPrefix(k.prefix);
    $('access-mcp-disabled').checked = !!m.disabled;
    $('access-mcp-read-only').checked = !!m.read_only;
    $('access-mcp-tools').value = (m.tools || []).join(', ');
    $('access-ips').value = (k.allowed_ips || []).join(', ');
    $('access-rate').value = k.rate_limit || '';
    $('access-error').textContent = '';
    $('access-submit').disabled = false;
    $('access-dialog').showModal();
    $('access-mcp-disabled').focus();
  }

  function accessError(message, focusId) {
    $('access-error').textContent = message;
    if (focusId) $(focusId).focus();
  }

  function submitAccess(ev) {
    ev.preventDefault();
    var k = accessTarget;
    if (!k) return;
    var tools = commaList($('access-mcp-tools').value);
    var toolsError = toolsProblem(tools);
    if (toolsError) return accessError(toolsError, 'access-mcp-tools');
    var rate = $('access-rate').value.trim();
    if (rate !== '') {
      var rateError = rateProblem(rate);
      if (rateError) return accessError(rateError, 'access-rate');
    }
    // The server replaces the whole MCP policy; [] = any address; null = the default rate.
    var body = {
      mcp: {
        disabled: $('access-mcp-disabled').checked,
        tools: tools,
        read_only: $('access-mcp-read-only').checked,
      },
      allowed_ips: commaList($('access-ips').value),
      rate_limit: rate === '' ? null : rate,
    };

    var submit = $('access-submit');
    submit.disabled = true;
    submit.textContent = 'Saving\u2026';
    $('access-error').textContent = '';
    api('PATCH', '/v1/keys/' + encodeURIComponent(k.id), body)
      .then(function (updated) {
        if (accessTarget === k) $('access-dialog').close();
        announce('success', 'Access of key \u201c' + k.name + '\u201d saved: MCP ' + mcpText((updated && updated.mcp) || body.mcp) + '.');
        return load(focusRowButton(k.id, ['access', 'usage']));
      })
      .catch(function (e) {
        if (isAuthFailure(e)) return showError('Could not save the access of the key', e);
        var field = /^allowed_ips\b/.test(e.message) ? 'access-ips' : /^rate_limit\b/.test(e.message) ? 'access-rate' : null;
        accessError('Could not save the access of the key: ' + e.message, field);
      })
      .then(function () {
        submit.disabled = false;
        submit.textContent = 'Save';
      });
  }

  // ---- usage dialog --------------------------------------------------------

  function showUsage(k) {
    var dialog = $('usage-dialog');
    var body = $('usage-body');
    $('usage-title').textContent = 'Usage of \u201c' + k.name + '\u201d';
    $('usage-sub').textContent = maskPrefix(k.prefix);
    body.replaceChildren(h('p', { class: 'muted' }, 'Loading usage\u2026'));
    dialog.showModal();
    $('usage-close').focus();
    api('GET', '/v1/keys/' + encodeURIComponent(k.id) + '/usage')
      .then(function (u) {
        if (!dialog.open) return;
        var meter = h('meter', {
          min: '0',
          max: String(Math.max(u.limit, 1)),
          low: String(Math.max(u.limit, 1) * 0.75),
          high: String(Math.max(u.limit, 1) * 0.9),
          optimum: '0',
          value: String(Math.min(u.used, Math.max(u.limit, 1))),
          'aria-label': 'Share of the quota used',
        });
        var pct = u.limit ? Math.round((u.used / u.limit) * 1000) / 10 : 0;
        var stats = h('div', { class: 'usage-numbers' },
          h('p', { class: 'usage-big' },
            h('span', { class: 'usage-used' }, numFmt.format(u.used)),
            h('span', { class: 'usage-sep' }, ' / '),
            h('span', { class: 'usage-limit' }, numFmt.format(u.limit))
          ),
          h('p', { class: 'muted' }, 'units used this period (' + pct + '%), ' + numFmt.format(u.remaining) + ' remaining')
        );
        var facts = h('dl', { class: 'facts' },
          h('dt', null, 'Period started'), h('dd', null, timeEl(u.period_start, false)),
          h('dt', null, 'Resets'), h('dd', null, timeEl(u.reset_at, false), ' ', h('span', { class: 'muted' }, '(' + (relative(new Date(u.reset_at)) || 'in ' + Math.max(1, Math.round((new Date(u.reset_at) - Date.now()) / 86400000)) + ' days') + ')'))
        );
        var parts = [stats, meter, facts];
        if (u.history && u.history.length) {
          parts.push(
            h('table', { class: 'history' },
              h('caption', null, 'Recent periods'),
              h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Period starting'), h('th', { scope: 'col', class: 'num' }, 'Used'))),
              h('tbody', null, u.history.map(function (p) {
                return h('tr', null, h('td', null, timeEl(p.period_start, false)), h('td', { class: 'num' }, numFmt.format(p.used)));
              }))
            )
          );
        }
        parts.push(accessSection(k));
        body.replaceChildren.apply(body, parts);
      })
      .catch(function (e) {
        if (isAuthFailure(e)) return showError('Could not load usage', e);
        body.replaceChildren(
          h('p', { class: 'dialog-error', role: 'alert' }, 'Could not load usage: ' + e.message),
          accessSection(k)
        );
      });
  }

  // What the key may do: MCP, allowed IPs, rate limit (from the key list).
  function accessSection(k) {
    return h('section', { class: 'access', 'aria-labelledby': 'usage-access-title' },
      h('h3', { class: 'section-title', id: 'usage-access-title' }, 'Access'),
      h('dl', { class: 'facts' }, accessFacts(k))
    );
  }

  // ---- wiring --------------------------------------------------------------

  function init() {
    $('signin-form').addEventListener('submit', signIn);
    $('sign-out').addEventListener('click', function () {
      signOut('Signed out. The admin key was removed from this tab.', 'info');
    });

    $('search').addEventListener('input', function () {
      window.clearTimeout(searchTimer);
      searchTimer = window.setTimeout(function () {
        var value = $('search').value.trim();
        if (value === state.search) return;
        state.search = value;
        state.page = 1;
        load();
      }, 250);
    });
    $('status-filter').addEventListener('change', function () {
      state.status = $('status-filter').value;
      state.page = 1;
      load();
    });
    $('prev').addEventListener('click', function () {
      if (state.page > 1) {
        state.page--;
        load();
      }
    });
    $('next').addEventListener('click', function () {
      if (state.page < state.pages) {
        state.page++;
        load();
      }
    });

    $('create-open').addEventListener('click', openCreate);
    $('create-form').addEventListener('submit', submitCreate);
    $('create-cancel').addEventListener('click', function () {
      $('create-dialog').close();
    });
    $('create-dialog').addEventListener('close', onCreateClosed);
    // Escape fires `cancel` at once and `close` a task later: drop the key on the first.
    $('create-dialog').addEventListener('cancel', discardCreated);

    $('revoke-cancel').addEventListener('click', function () {
      $('revoke-dialog').close();
    });
    $('revoke-confirm').addEventListener('click', confirmRevoke);
    $('revoke-dialog').addEventListener('close', function () {
      revokeTarget = null;
    });

    $('access-form').addEventListener('submit', submitAccess);
    $('access-cancel').addEventListener('click', function () {
      $('access-dialog').close();
    });
    $('access-dialog').addEventListener('close', function () {
      accessTarget = null;
      $('access-error').textContent = '';
    });

    $('usage-close').addEventListener('click', function () {
      $('usage-dialog').close();
    });
    $('usage-dialog').addEventListener('close', function () {
      $('usage-body').replaceChildren();
    });

    if (storedKey()) {
      showKeys();
      load();
    } else {
      showSignIn();
      $('admin-key').focus();
    }
  }

  init();
})();
