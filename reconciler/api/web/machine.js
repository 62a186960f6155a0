// The machine page: its phase and message follow the API's watch.
"use strict";
const name = JSON.parse(document.getElementById("machine").textContent);
const es = new EventSource("/api/v1/watch");
es.addEventListener("machine", (e) => {
  const c = JSON.parse(e.data);
  if (c.name !== name || !c.machine) return;
  const phase = document.getElementById("phase");
  phase.textContent = c.machine.phase || "";
  phase.className = "phase p-" + (c.machine.phase || "");
  document.getElementById("message").textContent = c.machine.message || "";
});
