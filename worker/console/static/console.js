// edge-worker console: reload the page every few seconds (the server refreshes its
// snapshot that often), unless the reader paused it or is typing in a form.
(function () {
  "use strict";
  var seconds = parseInt(document.body.getAttribute("data-refresh"), 10) || 5;
  var key = "edge-worker-autorefresh";
  var paused = false;
  try { paused = window.localStorage.getItem(key) === "off"; } catch (e) { paused = false; }
  var auto = document.getElementById("auto");
  var toggle = document.getElementById("toggle");
  if (!auto || !toggle) { return; }
  auto.hidden = false;
  function label() { toggle.textContent = paused ? "resume" : "pause"; }
  label();
  toggle.addEventListener("click", function () {
    paused = !paused;
    try { window.localStorage.setItem(key, paused ? "off" : "on"); } catch (e) { /* private mode */ }
    label();
  });
  window.setInterval(function () {
    var active = document.activeElement;
    var typing = active && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName);
    if (!paused && !typing && document.visibilityState !== "hidden") {
      window.location.replace(window.location.pathname + window.location.search);
    }
  }, seconds * 1000);
}());
