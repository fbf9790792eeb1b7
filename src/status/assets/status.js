// wharf's status page: refreshes the view in place every data-refresh
// seconds (not while hidden, while the search box has focus, or after
// "Pause updates"). Reads only the page's own URL; with scripts off the
// page works the same, reloaded by hand.
"use strict";
(function () {
  const every = Number(document.body.dataset.refresh || 0) * 1000;
  const pause = document.getElementById("pause");
  if (!every || !pause) return;
  let paused = false;
  pause.hidden = false;
  pause.addEventListener("click", function () {
    paused = !paused;
    pause.textContent = paused ? "Resume updates" : "Pause updates";
  });
  async function refresh() {
    const active = document.activeElement;
    if (paused || document.hidden || (active && active.tagName === "INPUT")) return;
    try {
      const r = await fetch(location.href, { cache: "no-store", credentials: "same-origin" });
      if (!r.ok) return;
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      const fresh = doc.querySelector("main");
      const updated = doc.getElementById("updated");
      const main = document.querySelector("main");
      if (!fresh || !main) return;
      // Keep open <details> open across the swap.
      const open = Array.from(main.querySelectorAll("details[open] summary")).map(function (s) { return s.textContent; });
      main.replaceWith(document.adoptNode(fresh));
      fresh.querySelectorAll("details summary").forEach(function (s) {
        if (open.indexOf(s.textContent) >= 0) s.parentElement.open = true;
      });
      if (updated) document.getElementById("updated").textContent = updated.textContent;
    } catch (e) {
      // The server may be restarting: try again next time.
    }
  }
  setInterval(refresh, every);
})();
