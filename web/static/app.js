/* Yushan web app: SQL editor (highlighting, inline policy check with positions, help and
   examples), live job pages, sortable paginated result tables, confirmations, the small-
   screen menu and local times. No inline scripts (the CSP forbids them); server values
   are only ever set as text. */
window.Yushan = window.Yushan || {inits: [], init: function () { this.inits.forEach(function (f) { f(); }); }};
(function () {
  "use strict";

  var KEYWORDS = ("select from where group by order having limit join left right inner outer full cross on as and or not " +
    "in is null case when then else end distinct union all with over partition count sum avg min max between like " +
    "asc desc cast exists true false rollup cube grouping sets interval").split(" ");
  var KW = {};
  KEYWORDS.forEach(function (k) { KW[k] = true; });

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function escapeHtml(s) {
    return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  /* Tokenise into comments, strings, numbers, words and the rest; wrap known kinds. The
     tokens overlapping ``err`` ({from, to}: character offsets, to inclusive) are
     underlined as the error (the token at ``from`` when it is a single point). */
  function highlight(sql, err) {
    var re = /(--[^\n]*|\/\*[\s\S]*?\*\/)|('(?:[^'\\]|\\.)*'?|"(?:[^"\\]|\\.)*"?)|(`[^`]*`?)|(\b\d+(?:\.\d+)?\b)|([A-Za-z_][A-Za-z0-9_]*)|(\s+)|([\s\S])/g;
    var out = "", m, marked = false;
    while ((m = re.exec(sql)) !== null) {
      var t = escapeHtml(m[0]);
      var cls = m[1] ? "tk-comment" : m[2] ? "tk-string" : m[3] ? "tk-ident" : m[4] ? "tk-number" :
        (m[5] && KW[m[5].toLowerCase()]) ? "tk-keyword" : "";
      var end = m.index + m[0].length;
      if (err && !m[6] && end > err.from && (m.index <= err.to || !marked)) {
        cls = (cls + " tk-error").trim();
        marked = true;
      }
      out += cls ? '<span class="' + cls + '">' + t + "</span>" : t;
    }
    if (!marked && err) out += '<span class="tk-error"> </span>';
    return out + "\n";
  }

  /* Where the check's error points, as {from, to} offsets into ``sql``, or null. The
     position is {start, stop} (offsets), {line, column} (line from 1, column from 0), or
     one offset. */
  function rangeOf(sql, position) {
    if (position === null || position === undefined) return null;
    function clamp(n) { return Math.max(0, Math.min(n, sql.length)); }
    if (typeof position === "number") return {from: clamp(position), to: clamp(position)};
    if (typeof position.start === "number") {
      return {from: clamp(position.start), to: clamp(typeof position.stop === "number" ? position.stop : position.start)};
    }
    if (typeof position.line !== "number") return null;
    var lines = sql.split("\n"), offset = 0;
    for (var i = 0; i < position.line - 1 && i < lines.length; i++) offset += lines[i].length + 1;
    var at = clamp(offset + Math.max(0, position.column || 0));
    return {from: at, to: at};
  }

  var editor = null;

  function setupEditor() {
    var area = document.getElementById("sql");
    var code = document.getElementById("sql-highlight");
    if (!area || !code) return;
    var pre = code.parentNode;
    editor = {errorAt: null, sync: null};
    function sync() {
      code.innerHTML = highlight(area.value, editor.errorAt);
      pre.scrollTop = area.scrollTop;
      pre.scrollLeft = area.scrollLeft;
    }
    editor.sync = sync;
    area.addEventListener("input", function () { editor.errorAt = null; sync(); });
    area.addEventListener("scroll", sync);
    sync();
    function insert(text) {
      var start = area.selectionStart, end = area.selectionEnd;
      area.value = area.value.slice(0, start) + text + area.value.slice(end);
      area.selectionStart = area.selectionEnd = start + text.length;
      area.focus();
      area.dispatchEvent(new Event("input"));
    }
    document.querySelectorAll("a.insert").forEach(function (link) {
      link.addEventListener("click", function (ev) {
        ev.preventDefault();
        insert(link.getAttribute("data-text"));
      });
    });
    var merchant = document.getElementById("merchant");
    var kind = document.getElementById("kind");
    function showHelp() {
      document.querySelectorAll(".kind-help").forEach(function (el) {
        el.hidden = !kind || el.getAttribute("data-kind") !== kind.value;
      });
    }
    if (merchant) {
      merchant.addEventListener("change", function () {
        /* the chosen merchant's datasets and the user's recent queries for it */
        document.querySelectorAll(".merchant-datasets, .merchant-history").forEach(function (el) {
          el.hidden = el.getAttribute("data-merchant") !== merchant.value;
        });
      });
    }
    /* Recent queries: load one (kind and SQL, and its name when none is typed) into the
       editor; a different query already there is only replaced when the user agrees. */
    var history = document.getElementById("query-history");
    document.querySelectorAll("button.load-query").forEach(function (button) {
      button.addEventListener("click", function () {
        var sql = button.getAttribute("data-sql");
        if (area.value.trim() && area.value.trim() !== sql.trim() && history &&
            !window.confirm(history.getAttribute("data-replace"))) return;
        if (kind && kind.value !== button.getAttribute("data-kind")) {
          kind.value = button.getAttribute("data-kind");
          kind.dispatchEvent(new Event("change"));
        }
        var name = document.getElementById("job-name");
        if (name && !name.value && button.getAttribute("data-name")) name.value = button.getAttribute("data-name");
        area.value = sql;
        area.focus();
        area.dispatchEvent(new Event("input"));
        area.scrollIntoView({block: "nearest"});
      });
    });
    if (kind) kind.addEventListener("change", showHelp);
    showHelp();
    document.querySelectorAll("button.insert-example").forEach(function (button) {
      button.addEventListener("click", function () {
        var text = button.getAttribute("data-example").split("{merchant}").join(merchant ? merchant.value : "");
        area.value = text;
        area.focus();
        area.dispatchEvent(new Event("input"));
      });
    });
  }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function fmt(n, digits) {
    var lang = document.documentElement.lang || "en";
    return Number(n).toLocaleString(lang, {maximumFractionDigits: digits === undefined ? 3 : digits});
  }

  function renderAllow(box, d) {
    var facts = el("dl", "facts");
    function fact(term, value, id) {
      facts.appendChild(el("dt", "", term));
      var dd = el("dd", "", value);
      if (id) dd.id = id;
      facts.appendChild(dd);
    }
    var cols = (d.columns_read || []).map(function (c) { return c.dataset + "." + c.column; });
    fact(box.dataset.columnsRead, cols.length ? cols.join(", ") : "—", "check-columns");
    var releases = {dp: box.dataset.releaseDp, threshold: box.dataset.releaseThreshold};
    var release = d.release || (d.enforcement && d.enforcement.k ? "threshold" : null);
    fact(box.dataset.release, release ? (releases[release] || release) : box.dataset.releaseNone, "check-release");
    if (d.release === "dp") {
      if (d.epsilon !== null && d.epsilon !== undefined) fact(box.dataset.cost, "ε = " + fmt(d.epsilon, 4), "check-epsilon");
      if (d.budget && d.budget.epsilon_left !== undefined) fact(box.dataset.budgetLeft, "ε = " + fmt(d.budget.epsilon_left, 4), "check-budget");
      var acc = Object.keys(d.accuracy || {}).map(function (c) {
        var a = d.accuracy[c] || {};
        return c + " ± " + fmt(a.ci95, 2);
      });
      if (acc.length) fact(box.dataset.accuracy, acc.join(", "), "check-accuracy");
    } else if (release === "threshold") {
      fact(box.dataset.threshold, "k = " + (d.k || d.enforcement.k), "check-k");
    }
    box.appendChild(facts);
  }

  /* "Apply suggestion": the check's mechanical fixes (each already passed by the policy)
     rewrite the editor's query and kind; the user then checks and submits it. */
  function applyFix(box, fix) {
    var area = document.getElementById("sql");
    var kind = document.getElementById("kind");
    var submit = document.getElementById("submit");
    if (kind && fix.kind && kind.value !== fix.kind) {
      kind.value = fix.kind;
      kind.dispatchEvent(new Event("change"));
    }
    area.value = fix.sql;
    area.dispatchEvent(new Event("input"));
    area.focus();
    box.className = "decision applied";
    box.textContent = "";
    var note = el("p", "verdict", box.dataset.fixApplied);
    note.id = "fix-applied";
    box.appendChild(note);
    /* the rewritten query is checked before it can be submitted */
    if (submit) { submit.disabled = true; submit.title = box.dataset.checkFirst; }
  }

  function renderViolations(box, violations, fixes) {
    var list = el("ul", "violations");
    var offered = {};
    (fixes || []).forEach(function (fix) {
      var first = (fix.resolves || [])[0];
      if (first !== undefined && !offered[first]) offered[first] = fix;
    });
    (violations || []).forEach(function (v, index) {
      var item = el("li", "violation");
      item.appendChild(el("strong", "rule", v.rule));
      if (v.column) {
        item.appendChild(document.createTextNode(" · " + box.dataset.column + " "));
        item.appendChild(el("code", "", v.column));
      }
      item.appendChild(el("div", "message", v.message));
      if (v.sources && v.sources.length) {
        var src = el("div", "sources", box.dataset.sources + ": ");
        v.sources.forEach(function (s) {
          src.appendChild(el("code", "", s.dataset + "." + s.column));
          src.appendChild(document.createTextNode(" "));
          src.appendChild(el("span", "badge c-" + s["class"], s.class_label || s["class"]));
          src.appendChild(document.createTextNode(" "));
        });
        item.appendChild(src);
      }
      if (v.suggestion) item.appendChild(el("div", "suggestion", box.dataset.suggestion + ": " + v.suggestion));
      var fix = offered[index];
      if (fix) {
        var row = el("div", "fix");
        var button = el("button", "apply-fix secondary", box.dataset.applyFix);
        button.type = "button";
        button.setAttribute("data-fix", fix.code);
        button.addEventListener("click", function () { applyFix(box, fix); });
        row.appendChild(button);
        row.appendChild(el("span", "fix-label", " " + fix.label +
          (fix.allowed ? " · " + box.dataset.fixAllowed : " · " + box.dataset.fixPartial)));
        item.appendChild(row);
      }
      list.appendChild(item);
    });
    if (list.children.length) box.appendChild(list);
  }

  function renderDecision(box, decision, submit) {
    box.textContent = "";
    var verdict = decision.decision;
    box.className = "decision " + (verdict === "allow" ? "allow" : verdict === "deny" ? "deny" : "syntax");
    if (verdict === "error") {
      var err = decision.error || {};
      var kinds = JSON.parse(box.dataset.errorKinds || "{}");
      var cls = String(err["class"] || "");
      /* Spark's error classes: PARSE_SYNTAX_ERROR, UNRESOLVED_COLUMN..., TABLE_OR_VIEW_NOT_FOUND. */
      var kind = kinds[cls] || (/PARSE|SYNTAX/.test(cls) ? kinds.ParseException :
        /UNRESOLVED|NOT_FOUND|ANALYSIS|CANNOT_RESOLVE/.test(cls) ? kinds.AnalysisException : null);
      var verdict = el("p", "verdict", kind || box.dataset.syntax);
      verdict.setAttribute("data-error-class", cls);
      box.appendChild(verdict);
      box.appendChild(el("pre", "error-message", err.message || ""));
      var area = document.getElementById("sql");
      editor.errorAt = rangeOf(area.value, err.position);
      if (editor.errorAt) box.appendChild(el("p", "hint", box.dataset.underlined));
      editor.sync();
    } else {
      box.appendChild(el("p", "verdict", verdict === "allow" ? box.dataset.allow : box.dataset.deny));
      if (verdict === "allow") renderAllow(box, decision);
      else renderViolations(box, decision.violations, decision.fixes);
    }
    /* A query the policy or the parser refused cannot be submitted until it changes. */
    if (submit) {
      submit.disabled = verdict !== "allow";
      submit.title = submit.disabled ? box.dataset.changeFirst : "";
    }
  }

  function setupCheck() {
    var form = document.getElementById("job-form");
    var button = document.getElementById("check");
    if (!form || !button) return;
    var box = document.getElementById("decision");
    var submit = document.getElementById("submit");
    function enableSubmit() { if (submit) { submit.disabled = false; submit.title = ""; } }
    form.elements.sql.addEventListener("input", enableSubmit);
    form.elements.kind.addEventListener("change", enableSubmit);
    form.elements.merchant.addEventListener("change", enableSubmit);
    form.elements.sql.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); button.click(); }
    });
    button.addEventListener("click", function () {
      box.className = "decision pending";
      box.textContent = box.dataset.checking;
      var body = {
        merchant: form.elements.merchant.value,
        kind: form.elements.kind.value,
        sql: form.elements.sql.value
      };
      fetch(form.getAttribute("data-check-url"), {
        method: "POST",
        credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-CSRFToken": csrfToken()},
        body: JSON.stringify(body)
      }).then(function (r) {
        return r.json().catch(function () { return null; }).then(function (js) { return {ok: r.ok, js: js}; });
      }).then(function (res) {
        if (res.ok && res.js) {
          renderDecision(box, res.js, submit);
        } else {
          box.className = "decision error";
          box.textContent = box.dataset.error +
            (res.js && res.js.error ? ": " + res.js.error.message : "");
        }
      }).catch(function () {
        box.className = "decision error";
        box.textContent = box.dataset.error;
      });
    });
  }

  /* Job pages (SQL and template jobs) refresh themselves until the job ends. */
  function setupLiveJob() {
    var live = document.getElementById("job-live");
    if (!live || live.getAttribute("data-active") !== "1") return;
    var url = live.getAttribute("data-status-url");
    var labels = JSON.parse(live.getAttribute("data-state-labels") || "{}");
    var active = {queued: true, running: true};
    function poll() {
      fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (doc) {
          if (!doc) { setTimeout(poll, 3000); return; }
          var state = document.querySelector("#job-state .state");
          if (state) { state.textContent = labels[doc.state] || doc.state; state.className = "state s-" + doc.state; state.setAttribute("data-state", doc.state); }
          var progress = document.getElementById("job-progress");
          if (progress) progress.value = doc.progress || 0;
          var text = document.getElementById("job-progress-text");
          if (text) text.textContent = Math.round((doc.progress || 0) * 100) + "%";
          if (active[doc.state]) setTimeout(poll, 1000);
          else window.location.reload();  /* show the report, summary and rows */
        })
        .catch(function () { setTimeout(poll, 3000); });
    }
    setTimeout(poll, 1000);
  }

  /* Result tables: numbers with thousands separators, sort by a header click, pages of
     25 rows. The cells keep their raw value in data-value for sorting. */
  var PAGE = 25;
  function setupTables() {
    document.querySelectorAll("table.result").forEach(function (table) {
      if (table.getAttribute("data-enhanced")) return;
      table.setAttribute("data-enhanced", "1");
      if (!table.parentNode.classList.contains("table-scroll")) {
        var wrap = el("div", "table-scroll");
        table.parentNode.insertBefore(wrap, table);
        wrap.appendChild(table);
      }
      var tbody = table.tBodies[0];
      if (!tbody) return;
      var rows = Array.prototype.slice.call(tbody.rows);
      rows.forEach(function (tr) {
        Array.prototype.forEach.call(tr.cells, function (td) {
          var raw = td.textContent.trim();
          td.setAttribute("data-value", raw);
          if (/^-?\d+(\.\d+)?(e[-+]?\d+)?$/i.test(raw)) {
            td.classList.add("num");
            td.textContent = fmt(Number(raw), raw.indexOf(".") >= 0 ? 2 : 0);
          }
        });
      });
      var page = 0, pages = Math.max(1, Math.ceil(rows.length / PAGE));
      var nav = null;
      function show() {
        rows.forEach(function (tr, i) { tr.hidden = Math.floor(i / PAGE) !== page; });
        if (nav) nav.querySelector(".page-no").textContent = (page + 1) + " / " + pages;
      }
      if (rows.length > PAGE) {
        nav = el("p", "pager");
        var prev = el("button", "secondary", "‹"), next = el("button", "secondary", "›");
        prev.type = next.type = "button";
        prev.setAttribute("aria-label", "previous page"); next.setAttribute("aria-label", "next page");
        prev.addEventListener("click", function () { if (page > 0) { page--; show(); } });
        next.addEventListener("click", function () { if (page < pages - 1) { page++; show(); } });
        nav.appendChild(prev); nav.appendChild(el("span", "page-no")); nav.appendChild(next);
        table.parentNode.parentNode.insertBefore(nav, table.parentNode.nextSibling);
      }
      var heads = table.tHead ? table.tHead.rows[0].cells : [];
      Array.prototype.forEach.call(heads, function (th, col) {
        th.classList.add("sortable");
        th.tabIndex = 0;
        function sort() {
          var asc = th.getAttribute("aria-sort") !== "ascending";
          Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
          th.setAttribute("aria-sort", asc ? "ascending" : "descending");
          rows.sort(function (a, b) {
            var x = a.cells[col].getAttribute("data-value"), y = b.cells[col].getAttribute("data-value");
            var nx = parseFloat(x), ny = parseFloat(y);
            var c = (!isNaN(nx) && !isNaN(ny) && String(nx) !== "NaN" && /^-?[\d.e+-]+$/i.test(x) && /^-?[\d.e+-]+$/i.test(y))
              ? nx - ny : String(x).localeCompare(String(y));
            return asc ? c : -c;
          });
          rows.forEach(function (tr) { tbody.appendChild(tr); });
          page = 0;
          show();
        }
        th.addEventListener("click", sort);
        th.addEventListener("keydown", function (ev) { if (ev.key === "Enter") sort(); });
      });
      show();
    });
  }

  /* Forms with data-confirm ask first (approve, reject, revoke). */
  function setupConfirm() {
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (ev) {
        if (!window.confirm(form.getAttribute("data-confirm"))) ev.preventDefault();
      });
    });
  }

  function setupMenu() {
    var toggle = document.getElementById("nav-toggle");
    var header = document.querySelector("header.top");
    if (!toggle || !header) return;
    toggle.addEventListener("click", function () {
      var open = header.classList.toggle("open");
      toggle.setAttribute("aria-expanded", open ? "true" : "false");
    });
  }

  /* <time class="local" datetime="ISO"> shows the reader's local time and its zone. */
  function setupTimes() {
    var lang = document.documentElement.lang || "en";
    document.querySelectorAll("time.local[datetime]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (isNaN(d.getTime())) return;
      t.title = t.textContent;
      t.textContent = d.toLocaleString(lang, {year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit",
        minute: "2-digit", second: "2-digit", hour12: false, timeZoneName: "short"});
    });
  }

  window.Yushan.inits.push(setupEditor, setupCheck, setupLiveJob, setupTables, setupConfirm, setupMenu, setupTimes);
})();

/* Upload page: read the chosen CSV's header and first rows in the browser (UTF-8, else
   GB18030, which covers GBK), offer an editable schema table with a preview, and keep the
   schema JSON the upload takes in step with it. Then send the form with XMLHttpRequest so
   the merchant sees how much of a large file has been sent; with "Prefer: respond-async"
   the server answers 202 once it has the file, and its status (phase, progress) is polled
   until the upload's page shows how it ended. A server that answers at once instead
   (its pool full) sends the page, which replaces this one. Without script the form
   posts normally and is answered when validated. */
(function () {
  "use strict";
  var SAMPLE_BYTES = 256 * 1024;
  var PREVIEW_ROWS = 20;
  var NAME_OK = /^[A-Za-z][A-Za-z0-9_]{0,127}$/;
  var HEX64 = "^[0-9a-f]{64}$";

  /* RFC 4180 records of ``text`` (quotes, doubled quotes, line breaks inside quotes). */
  function parseCsv(text, maxRecords) {
    var records = [], record = [], field = "", quoted = false, i = 0, c;
    while (i < text.length && records.length < maxRecords) {
      c = text[i];
      if (quoted) {
        if (c === '"') {
          if (text[i + 1] === '"') { field += '"'; i += 1; } else { quoted = false; }
        } else { field += c; }
      } else if (c === '"' && field === "") { quoted = true; }
      else if (c === ",") { record.push(field); field = ""; }
      else if (c === "\n" || c === "\r") {
        if (c === "\r" && text[i + 1] === "\n") i += 1;
        record.push(field); field = "";
        records.push(record); record = [];
      } else { field += c; }
      i += 1;
    }
    if ((field !== "" || record.length) && records.length < maxRecords) { record.push(field); records.push(record); }
    return records;
  }

  /* Decode as UTF-8 when valid, else GB18030; cut at the last line end so that a
     character split by the sample's end does not count as invalid. */
  function decode(buffer, declared) {
    var bytes = new Uint8Array(buffer);
    var end = bytes.length;
    for (var j = bytes.length - 1; j >= 0 && bytes.length === SAMPLE_BYTES; j--) { if (bytes[j] === 10) { end = j + 1; break; } }
    bytes = bytes.subarray(0, end);
    var order = declared === "utf-8" ? ["utf-8"] : declared === "gbk" ? ["gb18030"] : ["utf-8", "gb18030"];
    for (var k = 0; k < order.length; k++) {
      try {
        var text = new TextDecoder(order[k], {fatal: true}).decode(bytes);
        return {encoding: order[k], text: text.replace(/^\ufeff/, "")};
      } catch (e) { /* try the next */ }
    }
    return null;
  }

  function guessType(values) {
    var seen = values.filter(function (v) { return v !== ""; });
    if (!seen.length) return "string";
    function all(re) { return seen.every(function (v) { return re.test(v); }); }
    if (all(/^-?\d{1,18}$/)) {
      return seen.every(function (v) { return Math.abs(Number(v)) < 2147483648; }) ? "int" : "bigint";
    }
    if (all(/^-?\d+\.\d{1,2}$/) || all(/^-?\d+(\.\d{1,2})?$/) && seen.some(function (v) { return v.indexOf(".") >= 0; })) return "decimal(12,2)";
    if (all(/^-?\d*\.?\d+(e[-+]?\d+)?$/i)) return "double";
    if (all(/^\d{4}-\d{2}-\d{2}$/)) return "date";
    if (all(/^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$/)) return "timestamp";
    if (all(/^(true|false)$/i)) return "boolean";
    return "string";
  }

  function setupUploadEditor() {
    var form = document.getElementById("upload-form");
    if (!form) return;
    var fileInput = document.getElementById("upload-file");
    var encoding = document.getElementById("upload-encoding");
    var detected = document.getElementById("encoding-detected");
    var tbody = document.querySelector("#schema-table tbody");
    var empty = document.getElementById("schema-empty");
    var json = document.getElementById("schema-json");
    var preview = document.getElementById("upload-preview");
    var typeOptions = document.getElementById("type-options");
    var nameInput = document.getElementById("upload-name");

    function rowsOfTable() {
      return Array.prototype.map.call(tbody.querySelectorAll("tr"), function (tr) {
        return {
          name: tr.querySelector(".col-name").value.trim(),
          type: tr.querySelector(".col-type").value,
          key: tr.querySelector(".col-key").checked,
          link: tr.querySelector(".col-link").checked
        };
      });
    }

    function writeJson() {
      var cols = rowsOfTable();
      if (!cols.length) return;
      var key = cols.filter(function (c) { return c.key; })[0];
      var schema = {member_key: key ? key.name : cols[0].name, columns: cols.map(function (c) {
        var col = {name: c.name, type: c.link ? "string" : c.type};
        if (c.link) col.expect = {regex: HEX64};
        return col;
      })};
      json.value = JSON.stringify(schema, null, 1);
      tbody.querySelectorAll("tr").forEach(function (tr) {
        var input = tr.querySelector(".col-name");
        var bad = !NAME_OK.test(input.value.trim());
        input.setCustomValidity(bad ? form.dataset.badName : "");
        tr.querySelector(".col-problem").textContent = bad ? form.dataset.badName : "";
        tr.classList.toggle("invalid", bad);
      });
    }

    function addRow(col, sample) {
      var tr = document.createElement("tr");
      var name = document.createElement("input");
      name.className = "col-name"; name.value = col.name; name.setAttribute("aria-label", col.name);
      var problem = document.createElement("div"); problem.className = "col-problem";
      var type = document.createElement("select");
      type.className = "col-type";
      type.appendChild(typeOptions.content.cloneNode(true));
      if (!Array.prototype.some.call(type.options, function (o) { return o.value === col.type; })) {
        var extra = document.createElement("option"); extra.value = col.type; extra.textContent = col.type; type.appendChild(extra);
      }
      type.value = col.type;
      var key = document.createElement("input");
      key.type = "radio"; key.name = "ui-member-key"; key.className = "col-key"; key.checked = !!col.key;
      var link = document.createElement("input");
      link.type = "checkbox"; link.className = "col-link"; link.checked = !!col.link;
      var cells = [[name, problem], [type], [key], [link]];
      cells.forEach(function (nodes) {
        var td = document.createElement("td");
        nodes.forEach(function (n) { td.appendChild(n); });
        tr.appendChild(td);
      });
      var ex = document.createElement("td"); ex.className = "sample"; ex.textContent = sample || ""; tr.appendChild(ex);
      [name, type, key, link].forEach(function (n) { n.addEventListener("input", writeJson); n.addEventListener("change", writeJson); });
      tbody.appendChild(tr);
    }

    function showPreview(records) {
      preview.textContent = "";
      var caption = document.createElement("caption"); caption.textContent = form.dataset.previewRows; preview.appendChild(caption);
      var thead = document.createElement("thead"), tb = document.createElement("tbody");
      records.forEach(function (rec, i) {
        var tr = document.createElement("tr");
        rec.forEach(function (v) { var cell = document.createElement(i ? "td" : "th"); cell.textContent = v; tr.appendChild(cell); });
        (i ? tb : thead).appendChild(tr);
      });
      preview.appendChild(thead); preview.appendChild(tb);
    }

    function readFile() {
      var file = fileInput.files && fileInput.files[0];
      if (!file) return;
      if (!nameInput.value) {
        var base = file.name.replace(/\.[^.]*$/, "").toLowerCase().replace(/[^a-z0-9_]+/g, "_").replace(/^[^a-z]+/, "");
        if (base) nameInput.value = base.slice(0, 63);
      }
      if (/\.(parquet|pq)$/i.test(file.name)) { detected.textContent = form.dataset.parquet; return; }
      file.slice(0, SAMPLE_BYTES).arrayBuffer().then(function (buffer) {
        var decoded = decode(buffer, encoding.value);
        if (!decoded) { detected.textContent = form.dataset.undecodable; detected.className = "meta deny"; return; }
        detected.className = "meta";
        detected.textContent = form.dataset.detected + ": " + (decoded.encoding === "utf-8" ? "UTF-8" : "GBK / GB18030");
        detected.setAttribute("data-encoding", decoded.encoding);
        var records = parseCsv(decoded.text, PREVIEW_ROWS + 1);
        if (!records.length) return;
        var header = records[0], data = records.slice(1);
        tbody.textContent = "";
        var keyIndex = Math.max(0, header.findIndex(function (h) { return /member_id|^id$|_id$/i.test(h); }));
        header.forEach(function (h, i) {
          var values = data.map(function (r) { return r[i] === undefined ? "" : r[i]; });
          var link = /phone_hash/i.test(h);
          addRow({name: h.trim(), type: link ? "string" : guessType(values), key: i === keyIndex, link: link},
                 values.filter(function (v) { return v !== ""; }).slice(0, 3).join(" · "));
        });
        empty.hidden = true;
        writeJson();
        showPreview(records);
      });
    }

    /* After a refusal the page comes back with the schema JSON: rebuild the table from it. */
    function restore() {
      var schema;
      try { schema = JSON.parse(json.value); } catch (e) { return; }
      if (!schema || !Array.isArray(schema.columns)) return;
      schema.columns.forEach(function (c) {
        addRow({name: String(c.name || ""), type: String(c.type || "string"), key: c.name === schema.member_key,
                link: !!(c.expect && c.expect.regex === HEX64)}, "");
      });
      empty.hidden = tbody.children.length > 0;
      writeJson();
    }

    fileInput.addEventListener("change", readFile);
    encoding.addEventListener("change", readFile);
    restore();
  }

  function setupUploadSend() {
    var form = document.getElementById("upload-form");
    if (!form || !window.XMLHttpRequest || !window.FormData) return;
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var status = document.getElementById("upload-status");
      var bar = document.getElementById("upload-progress");
      var text = document.getElementById("upload-status-text");
      var button = form.querySelector("button[type=submit]");
      button.disabled = true;
      status.hidden = false;
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.getAttribute("action"));
      xhr.upload.addEventListener("progress", function (e) {
        if (!e.lengthComputable) return;
        var pct = Math.floor((e.loaded / e.total) * 100);
        bar.value = pct;
        text.textContent = form.dataset.sending + " " + (e.loaded / 1048576).toFixed(1) +
          " / " + (e.total / 1048576).toFixed(1) + " MB (" + pct + "%)";
      });
      xhr.upload.addEventListener("load", function () {
        bar.removeAttribute("value");  /* indeterminate while the server validates */
        text.textContent = form.dataset.validating;
      });
      xhr.addEventListener("load", function () {
        if (xhr.status === 202) {  /* received: the server validates it in the background */
          var accepted = JSON.parse(xhr.responseText);
          bar.value = 0;
          text.textContent = form.dataset.phaseQueued;
          pollUpload(form, accepted.status_url, accepted.page_url, bar, text, button);
          return;
        }
        var doc = new DOMParser().parseFromString(xhr.responseText, "text/html");
        document.title = doc.title;
        document.body.replaceWith(doc.body);
        window.Yushan.init();  /* the new body's table, editor and menu */
      });
      xhr.addEventListener("error", function () {
        button.disabled = false;
        text.textContent = form.dataset.networkError;
      });
      xhr.setRequestHeader("Prefer", "respond-async");
      xhr.send(new FormData(form));
    });
  }

  /* Ask the upload's status until it is decided, showing its phase and progress; then
     open its page (the accepted dataset, or the refusal with the entries kept). */
  function pollUpload(form, statusUrl, pageUrl, bar, text, button) {
    var phases = {queued: form.dataset.phaseQueued, reading: form.dataset.phaseReading,
                  validating: form.dataset.phaseValidating, storing: form.dataset.phaseStoring};
    var failures = 0;
    function again(seconds) { window.setTimeout(ask, Math.max(0.5, Math.min(seconds, 5)) * 1000); }
    function ask() {
      var xhr = new XMLHttpRequest();
      xhr.open("GET", statusUrl);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.addEventListener("load", function () {
        var doc = null;
        try { doc = JSON.parse(xhr.responseText); } catch (e) { doc = null; }
        if (xhr.status !== 200 || !doc) { fail(); return; }
        failures = 0;
        if (doc.state === "validating") {
          var pct = Math.floor((doc.progress || 0) * 100);
          bar.value = pct;
          text.textContent = (phases[doc.phase] || form.dataset.validating) + " (" + pct + "%)";
          again(parseFloat(xhr.getResponseHeader("Retry-After")) || 1);
          return;
        }
        bar.value = 100;
        window.location.assign(pageUrl);
      });
      xhr.addEventListener("error", fail);
      xhr.send();
    }
    function fail() {
      failures += 1;
      if (failures < 5) { again(2); return; }
      button.disabled = false;
      text.textContent = form.dataset.statusError;
    }
    again(0.5);
  }

  window.Yushan.inits.push(setupUploadEditor, setupUploadSend);
})();

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", function () { window.Yushan.init(); });
else window.Yushan.init();
