// medmesh console: live transfer progress. Served from the binary; the
// pages work without it (a reload shows the same figures).
"use strict";
(function () {
  const live = document.querySelector("[data-live]");
  if (!live) return;
  const url = live.getAttribute("data-live");
  async function tick() {
    try {
      const r = await fetch(url, { credentials: "same-origin", headers: { accept: "application/json" } });
      if (!r.ok) return;
      const list = await r.json();
      for (const t of list) {
        const row = live.querySelector(`tr[data-id="${t.id}"]`);
        if (!row) continue;
        const state = row.querySelector(".state");
        if (state) state.textContent = t.state;
        const cell = row.querySelector(".progress");
        if (cell) {
          const bar = document.createElement("progress");
          bar.max = Math.max(1, t.bytes);
          bar.value = t.done_bytes;
          cell.replaceChildren(bar, ` ${t.done_bytes} / ${t.bytes} bytes`);
        }
      }
      if (list.some((t) => !live.querySelector(`tr[data-id="${t.id}"]`))) location.reload();
    } catch (e) {
      // The next tick tries again.
    }
  }
  setInterval(tick, 2000);
})();
