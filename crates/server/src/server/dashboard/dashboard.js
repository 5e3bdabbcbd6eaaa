// The run page's script (inlined by dashboard.rs): live parts, step logs over SSE with ANSI
// colours, cancel and re-run through the API.
(() => {
  const $ = (id) => document.getElementById(id);
  const runEl = $('run'), id = runEl.dataset.run, logEl = $('log'), follow = $('follow');
  const dot = document.querySelector('#live .dot');
  let status = runEl.dataset.status, done = runEl.dataset.done === 'true';
  let selected = null, es = null, got = 0, sgr = null, ended = false;
  const seen = {};

  // --- ANSI SGR to spans (text escaped) ------------------------------------------------
  const escapeHtml = (s) => s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
  function ansi(text, st) {
    const re = /\x1b\[([0-9;]*)([@-~])/g;
    let out = '', last = 0, m;
    const wrap = (t) => {
      t = t.replace(/\x1b[^\n]?/g, '');
      if (!t) return '';
      const cls = [];
      if (st.b) cls.push('b');
      if (st.c) cls.push('c' + st.c);
      return cls.length ? '<span class="' + cls.join(' ') + '">' + escapeHtml(t) + '</span>' : escapeHtml(t);
    };
    while ((m = re.exec(text))) {
      out += wrap(text.slice(last, m.index));
      last = re.lastIndex;
      if (m[2] !== 'm') continue;
      const codes = m[1] === '' ? [0] : m[1].split(';').map(Number);
      for (let i = 0; i < codes.length; i++) {
        const c = codes[i];
        if (c === 0) { st.b = false; st.c = null; }
        else if (c === 1) st.b = true;
        else if (c === 22) st.b = false;
        else if ((c >= 30 && c <= 37) || (c >= 90 && c <= 97)) st.c = c;
        else if (c === 39) st.c = null;
        else if (c === 38 || c === 48) i += codes[i + 1] === 5 ? 2 : 4;
      }
    }
    return out + wrap(text.slice(last));
  }

  // --- logs ----------------------------------------------------------------------------
  const setState = (t) => { $('logstate').textContent = t; };
  function append(t) {
    logEl.insertAdjacentHTML('beforeend', ansi(t, sgr));
    if (follow.checked) logEl.scrollTop = logEl.scrollHeight;
  }
  logEl.addEventListener('scroll', () => {
    follow.checked = logEl.scrollHeight - logEl.scrollTop - logEl.clientHeight < 30;
  });
  function highlight() {
    document.querySelectorAll('.g-row').forEach((r) => r.classList.toggle('sel', r.dataset.step === selected));
  }
  function openLog(step) {
    if (es) { es.close(); es = null; }
    selected = step; got = 0; ended = false; sgr = { b: false, c: null };
    highlight();
    $('logstep').textContent = step;
    history.replaceState(null, '', '#step=' + encodeURIComponent(step));
    const base = '/api/runs/' + id + '/logs/' + encodeURIComponent(step);
    $('raw').href = base;
    logEl.textContent = '';
    setState('connecting…');
    const src = new EventSource(base + '?follow=1');
    es = src;
    src.onmessage = (e) => {
      if (es !== src) return;
      if (!got) setState('live');
      got++;
      append(e.data + '\n');
    };
    src.addEventListener('end', () => {
      src.close();
      if (es !== src) return;
      es = null;
      ended = true;
      setState(got ? '' : '(empty)');
      if (!got) logEl.innerHTML = '<span class="muted">This step wrote nothing.</span>';
    });
    src.onerror = () => {
      src.close();
      if (es !== src) return;
      es = null;
      if (!got) fallback(step, base); else setState('disconnected');
    };
  }
  // Without the live stream (no log yet, or an older server): the whole log, once.
  async function fallback(step, base) {
    try {
      const r = await fetch(base, { cache: 'no-store' });
      if (selected !== step) return;
      if (r.ok) {
        const t = await r.text();
        logEl.textContent = '';
        append(t);
        ended = ['passed', 'failed', 'timed_out', 'cancelled', 'error', 'skipped'].includes(seen[step]);
        setState(t ? '' : '(empty)');
      } else {
        logEl.innerHTML = '<span class="muted">No log yet.</span>';
        setState('');
      }
    } catch (e) { setState('cannot load the log'); }
  }
  function pick(e) {
    const row = e.target.closest('.g-row');
    if (row && (e.type === 'click' || e.key === 'Enter' || e.key === ' ')) {
      e.preventDefault();
      openLog(row.dataset.step);
    }
  }
  $('timeline').addEventListener('click', pick);
  $('timeline').addEventListener('keydown', pick);

  // --- live parts ----------------------------------------------------------------------
  function buttons() {
    $('cancel').hidden = done;
    $('rerun').hidden = !done;
    $('rerun-failed').hidden = !['failure', 'error', 'cancelled'].includes(status);
    $('live').style.visibility = done ? 'hidden' : 'visible';
  }
  function apply(j) {
    $('head').innerHTML = j.head;
    $('timeline').innerHTML = j.timeline;
    $('artifacts').innerHTML = j.artifacts;
    $('gates').innerHTML = j.gates;
    $('gates-card').hidden = !j.gates;
    status = j.status; done = j.done;
    runEl.dataset.status = status; runEl.dataset.done = String(done);
    document.title = document.title.replace(/^#(\d+) \S+/, '#$1 ' + status.replace('_', ' '));
    buttons(); highlight();
    for (const s of j.steps) {
      const before = seen[s.name];
      seen[s.name] = s.status;
      // The selected step started (or ended) while its log was not streaming: open it.
      if (s.name === selected && before && before !== s.status && !es && !ended) openLog(selected);
    }
    if (!selected) {
      const r = j.steps.find((s) => s.status === 'running');
      if (r) openLog(r.name);
    }
  }
  async function poll() {
    try {
      const r = await fetch('/ui/runs/' + id, { cache: 'no-store' });
      // A private server's session ended: the page reloads into the sign-in form.
      if (r.status === 401) { location.reload(); return; }
      if (!r.ok) throw new Error(r.status);
      apply(await r.json());
      dot.classList.remove('off');
    } catch (e) { dot.classList.add('off'); }
    if (!done) setTimeout(poll, 2000);
  }

  // --- actions -------------------------------------------------------------------------
  const msg = (t, err) => { const m = $('msg'); m.textContent = t; m.className = err ? 'err' : 'ok'; };
  function token(ask) {
    let t = localStorage.getItem('orch.token');
    if (!t || ask) {
      t = prompt('API token of this orch server (kept in this browser):', t || '');
      if (t === null) return null;
      t = t.trim();
      if (t) localStorage.setItem('orch.token', t); else localStorage.removeItem('orch.token');
    }
    return t;
  }
  async function act(path, what) {
    const t = token(false);
    if (t === null) return;
    msg(what + '…');
    try {
      const r = await fetch(path, { method: 'POST', headers: t ? { Authorization: 'Bearer ' + t } : {} });
      let j = {};
      try { j = await r.json(); } catch (e) { /* not JSON */ }
      if (!r.ok) {
        if (r.status === 401 || r.status === 403) localStorage.removeItem('orch.token');
        msg(j.error || j.message || 'HTTP ' + r.status, true);
        return;
      }
      const nid = j.run && typeof j.run === 'object' ? j.run.id : j.run || j.id;
      if (what !== 'Cancel' && nid && String(nid) !== id) { location.href = '/runs/' + nid; return; }
      msg(what === 'Cancel' ? 'Cancelling…' : 'Queued');
      if (done) { done = false; poll(); }
    } catch (e) { msg('cannot reach the server: ' + e, true); }
  }
  $('cancel').onclick = () => act('/api/runs/' + id + '/cancel', 'Cancel');
  $('rerun').onclick = () => act('/api/runs/' + id + '/rerun', 'Re-run');
  $('rerun-failed').onclick = () => act('/api/runs/' + id + '/rerun?failed=true', 'Re-run failed');
  $('token').onclick = () => { if (token(true) !== null) msg('Token saved in this browser'); };
  // A vote on a deployment gate: with the token kept in this browser, a person's named one.
  $('gates').addEventListener('click', async (ev) => {
    const b = ev.target.closest('.gate-vote');
    if (!b) return;
    const t = token(false);
    if (t === null) return;
    const what = b.dataset.vote === 'approve' ? 'Approve' : 'Reject';
    msg(what + '…');
    try {
      const r = await fetch('/api/runs/' + id + '/' + b.dataset.vote, {
        method: 'POST',
        headers: Object.assign({ 'Content-Type': 'application/json' }, t ? { Authorization: 'Bearer ' + t } : {}),
        body: JSON.stringify({ environment: b.dataset.env }),
      });
      let j = {};
      try { j = await r.json(); } catch (e) { /* not JSON */ }
      if (!r.ok) { msg(j.error || 'HTTP ' + r.status, true); return; }
      msg(what === 'Approve' ? 'Approved' : 'Rejected');
      poll();
    } catch (e) { msg('cannot reach the server: ' + e, true); }
  });

  // --- start ---------------------------------------------------------------------------
  document.querySelectorAll('.g-row').forEach((r) => { seen[r.dataset.step] = r.dataset.status; });
  const fromHash = decodeURIComponent((location.hash.match(/^#step=(.+)$/) || [])[1] || '');
  const first = fromHash || runEl.dataset.defaultStep;
  if (first) openLog(first);
  buttons();
  if (!done) setTimeout(poll, 2000);
})();
