/* Yushan web app: SQL highlighting, dataset browser, inline policy check, live job state.
   No inline scripts (the CSP forbids them); server values are only ever set as text. */
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

  /* Tokenise into comments, strings, numbers, words and the rest; wrap known kinds. */
  function highlight(sql) {
    var re = /(--[^\n]*|\/\*[\s\S]*?\*\/)|('(?:[^'\\]|\\.)*'?|"(?:[^"\\]|\\.)*"?)|(`[^`]*`?)|(\b\d+(?:\.\d+)?\b)|([A-Za-z_][A-Za-z0-9_]*)|([\s\S])/g;
    var out = "", m;
    while ((m = re.exec(sql)) !== null) {
      var t = escapeHtml(m[0]);
      if (m[1]) out += '<span class="tk-comment">' + t + "</span>";
      else if (m[2]) out += '<span class="tk-string">' + t + "</span>";
      else if (m[3]) out += '<span class="tk-ident">' + t + "</span>";
      else if (m[4]) out += '<span class="tk-number">' + t + "</span>";
      else if (m[5] && KW[m[5].toLowerCase()]) out += '<span class="tk-keyword">' + t + "</span>";
      else out += t;
    }
    return out + "\n";
  }

  function setupEditor() {
    var area = document.getElementById("sql");
    var code = document.getElementById("sql-highlight");
    if (!area || !code) return;
    var pre = code.parentNode;
    function sync() {
      code.innerHTML = highlight(area.value);
      pre.scrollTop = area.scrollTop;
      pre.scrollLeft = area.scrollLeft;
    }
    area.addEventListener("input", sync);
    area.addEventListener("scroll", sync);
    sync();
    document.querySelectorAll("a.insert").forEach(function (link) {
      link.addEventListener("click", function (ev) {
        ev.preventDefault();
        var text = link.getAttribute("data-text");
        var start = area.selectionStart, end = area.selectionEnd;
        area.value = area.value.slice(0, start) + text + area.value.slice(end);
        area.selectionStart = area.selectionEnd = start + text.length;
        area.focus();
        sync();
      });
    });
    var merchant = document.getElementById("merchant");
    if (merchant) {
      merchant.addEventListener("change", function () {
        document.querySelectorAll(".merchant-datasets").forEach(function (el) {
          el.hidden = el.getAttribute("data-merchant") !== merchant.value;
        });
      });
    }
  }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function renderDecision(box, decision) {
    box.textContent = "";
    var allowed = decision.decision === "allow";
    box.className = "decision " + (allowed ? "allow" : "deny");
    box.appendChild(el("p", "verdict", box.getAttribute(allowed ? "data-allow" : "data-deny")));
    var list = el("ul", "violations");
    (decision.violations || []).forEach(function (v) {
      var item = el("li", "violation");
      item.appendChild(el("strong", "rule", v.rule));
      if (v.column) {
        item.appendChild(document.createTextNode(" · " + box.getAttribute("data-column") + " "));
        item.appendChild(el("code", "", v.column));
      }
      item.appendChild(el("div", "message", v.message));
      if (v.sources && v.sources.length) {
        var src = el("div", "sources", box.getAttribute("data-sources") + ": ");
        v.sources.forEach(function (s) {
          src.appendChild(el("code", "", s.dataset + "." + s.column));
          src.appendChild(document.createTextNode(" "));
          src.appendChild(el("span", "badge c-" + s["class"], s["class"]));
          src.appendChild(document.createTextNode(" "));
        });
        item.appendChild(src);
      }
      if (v.suggestion) item.appendChild(el("div", "suggestion", box.getAttribute("data-suggestion") + ": " + v.suggestion));
      list.appendChild(item);
    });
    if (list.children.length) box.appendChild(list);
    if (decision.release === "dp" && allowed) renderCost(box, decision);
  }

  // A dp job's cost, the merchant's budget left and the expected accuracy (the check itself
  // costs nothing).
  function renderCost(box, decision) {
    var b = decision.budget || {};
    box.appendChild(el("p", "cost", box.getAttribute("data-cost") + ": ε " + decision.epsilon +
      " · " + box.getAttribute("data-left") + ": ε " + b.epsilon_left + ", δ " + b.delta_left +
      " " + box.getAttribute("data-until") + " " + String(b.period_end || "").slice(0, 10)));
    var columns = Object.keys(decision.accuracy || {});
    if (!columns.length) return;
    var acc = el("ul", "accuracy");
    columns.forEach(function (name) {
      var item = el("li", "", box.getAttribute("data-accuracy") + " ");
      item.appendChild(el("code", "", name));
      item.appendChild(document.createTextNode(" ± " + decision.accuracy[name].ci95));
      acc.appendChild(item);
    });
    box.appendChild(acc);
  }

  function setupCheck() {
    var form = document.getElementById("job-form");
    var button = document.getElementById("check");
    if (!form || !button) return;
    var box = document.getElementById("decision");
    button.addEventListener("click", function () {
      box.className = "decision pending";
      box.textContent = "…";
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
          renderDecision(box, res.js);
        } else {
          box.className = "decision error";
          box.textContent = box.getAttribute("data-error") +
            (res.js && res.js.error ? ": " + res.js.error.message : "");
        }
      }).catch(function () {
        box.className = "decision error";
        box.textContent = box.getAttribute("data-error");
      });
    });
  }

  function setupLiveJob() {
    var live = document.getElementById("job-live");
    if (!live || live.getAttribute("data-active") !== "1") return;
    var url = live.getAttribute("data-status-url");
    var active = {queued: true, running: true};
    function poll() {
      fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (doc) {
          if (!doc) { setTimeout(poll, 3000); return; }
          var state = document.querySelector("#job-state .state");
          if (state) { state.textContent = doc.state; state.className = "state s-" + doc.state; state.setAttribute("data-state", doc.state); }
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

  document.addEventListener("DOMContentLoaded", function () {
    setupEditor();
    setupCheck();
    setupLiveJob();
  });
})();

/* Upload progress: send the form with XMLHttpRequest so the merchant sees how much of a
   large file has been sent, then that it is being validated; the server's page replaces
   this one when it answers. Without JavaScript the form posts as usual. */
(function () {
  "use strict";
  function setupUpload() {
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
        var doc = new DOMParser().parseFromString(xhr.responseText, "text/html");
        document.title = doc.title;
        document.body.replaceWith(doc.body);
      });
      xhr.addEventListener("error", function () {
        button.disabled = false;
        text.textContent = "Network error";
      });
      xhr.send(new FormData(form));
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setupUpload);
  else setupUpload();
})();
