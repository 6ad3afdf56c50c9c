/* Result charts (templates and plain SQL results): take the Vega-Lite spec and draw it.
   No inline script and no eval (CSP): Vega runs its expressions through vega-interpreter. */
(function () {
  "use strict";

  /* The spec is in the element (data-spec: results shown on the page already) or at a
     JSON endpoint (data-spec-url). */
  function spec(el) {
    var inline = el.getAttribute("data-spec");
    if (inline) return Promise.resolve(JSON.parse(inline));
    return fetch(el.getAttribute("data-spec-url"), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); });
  }

  function draw(el) {
    spec(el)
      .then(function (spec) {
        return vegaEmbed(el, spec, {
          actions: false,
          renderer: "canvas",
          defaultStyle: false,
          // vega-tooltip would inject a <style> element; its rules are in tmpl_chart.css.
          tooltip: { disableDefaultStyle: true },
          ast: true,
          expr: vega.expressionInterpreter
        });
      })
      .then(function () { el.setAttribute("data-rendered", "true"); })
      .catch(function () {
        el.setAttribute("data-rendered", "error");
        el.textContent = el.getAttribute("data-error-text") || "The chart is not available.";
      });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var charts = document.querySelectorAll("[data-spec-url], [data-spec]");
    for (var i = 0; i < charts.length; i++) { draw(charts[i]); }
  });
})();
