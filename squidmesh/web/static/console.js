// squidmesh operator console: live updates and in-place actions. Hand-written, no
// dependencies, no build step. Every page works without it (forms post, pages reload);
// with it, open pages follow their runs and actions do not reload the page.
//
// Live: <body data-live="URL" data-poll="MS" [data-version="V"]> polls URL for JSON
// {"version": V, "regions": {"name": {"hash": H, "html": "..."}}} and replaces each
// element [data-region=name] whose data-hash differs. The HTML comes from the server's
// escaping templates; nothing here builds markup from data.
(function () {
  "use strict";

  var body = document.body;
  var liveUrl = body.getAttribute("data-live") || "";
  var pollMs = Math.max(500, parseInt(body.getAttribute("data-poll") || "2000", 10) || 2000);
  var version = body.getAttribute("data-version") || "";
  var statusEl = document.querySelector("[data-live-status]");
  var timer = null;
  var failures = 0;
  var inFlight = false;
  var again = false;

  function setStatus(text, offline) {
    if (!statusEl) return;
    statusEl.hidden = false;
    statusEl.textContent = text;
    statusEl.classList.toggle("offline", !!offline);
  }

  function flash(message, ok) {
    var box = document.querySelector("[data-flash]");
    if (!box) return;
    var p = document.createElement("p");
    p.className = ok ? "ok" : "bad";
    p.setAttribute(ok ? "data-flash-ok" : "data-flash-error", "");
    p.textContent = message;
    box.replaceChildren(p);
  }

  // <details> the reader opened inside a region stay open when it is redrawn.
  function detailsKey(el) {
    var owner = el.closest("[data-seq],[data-action],[data-audit],[data-trigger]");
    var summary = el.querySelector("summary");
    var text = summary ? summary.textContent : "";
    if (!owner) return "|" + text;
    var id = owner.getAttribute("data-seq") || owner.getAttribute("data-action") ||
      owner.getAttribute("data-audit") || owner.getAttribute("data-trigger") || "";
    return id + "|" + text;
  }

  function replaceRegion(el, region) {
    var open = {};
    el.querySelectorAll("details[open]").forEach(function (d) { open[detailsKey(d)] = true; });
    el.innerHTML = region.html;
    el.setAttribute("data-hash", region.hash);
    el.querySelectorAll("details").forEach(function (d) {
      if (open[detailsKey(d)]) d.open = true;
    });
    wireForms(el);
  }

  function apply(data) {
    if (data.version) {
      version = data.version;
      body.setAttribute("data-version", version);
    }
    var regions = data.regions || {};
    Object.keys(regions).forEach(function (name) {
      var el = document.querySelector('[data-region="' + name + '"]');
      if (el && el.getAttribute("data-hash") !== regions[name].hash) {
        replaceRegion(el, regions[name]);
      }
    });
  }

  function schedule(delay) {
    if (!liveUrl) return;
    if (timer) clearTimeout(timer);
    timer = setTimeout(poll, delay);
  }

  function poll(force) {
    timer = null;
    if (!liveUrl) return;
    if (inFlight) { again = again || !!force; return; }
    if (document.hidden && !force) return; // resumed by visibilitychange
    inFlight = true;
    var url = liveUrl;
    if (version && !force) url += (url.indexOf("?") < 0 ? "?" : "&") + "v=" + encodeURIComponent(version);
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (data) {
        failures = 0;
        apply(data);
        setStatus("live · " + new Date().toLocaleTimeString(), false);
      })
      .catch(function () {
        failures += 1;
        setStatus("offline, retrying", true);
      })
      .then(function () {
        inFlight = false;
        if (again) { again = false; poll(true); return; }
        schedule(Math.min(pollMs * Math.pow(2, failures), 30000));
      });
  }

  function submitInPlace(event) {
    var form = event.target;
    event.preventDefault();
    var buttons = form.querySelectorAll("button");
    buttons.forEach(function (b) { b.disabled = true; });
    fetch(form.action, {
      method: "POST",
      body: new URLSearchParams(new FormData(form)),
      headers: { Accept: "application/json" },
      credentials: "same-origin",
    })
      .then(function (response) {
        return response.json().catch(function () {
          return { ok: false, message: "The server answered " + response.status + "." };
        });
      })
      .then(function (data) {
        if (data.ok && data.location) {
          var target = new URL(data.location, window.location.href);
          if (target.pathname !== window.location.pathname) {
            window.location.assign(target.href);
            return;
          }
        }
        flash(data.message || (data.ok ? "Done." : "Refused."), !!data.ok);
        if (data.ok) {
          form.reset();
          var open = form.closest("details");
          if (open) open.open = false;
        }
        poll(true);
      })
      .catch(function () {
        flash("The console could not be reached; nothing was changed by this page.", false);
      })
      .then(function () {
        buttons.forEach(function (b) { b.disabled = false; });
      });
  }

  function wireForms(root) {
    root.querySelectorAll("form[data-fetch]").forEach(function (form) {
      if (form.getAttribute("data-wired")) return;
      form.setAttribute("data-wired", "1");
      form.addEventListener("submit", submitInPlace);
    });
  }

  wireForms(document);
  if (liveUrl) {
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) schedule(0);
    });
    schedule(pollMs);
  }
})();
