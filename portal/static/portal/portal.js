// The portal's few behaviours, as a file: the Content-Security-Policy allows no inline script or handler.
// Every page works without it (forms have submit buttons in <noscript>); this only saves clicks.
"use strict";

document.addEventListener("change", (event) => {
  const select = event.target.closest("select[data-autosubmit]");
  if (select) select.form.requestSubmit();
});

function selectText(element) {
  const range = document.createRange();
  range.selectNodeContents(element);
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
}

document.addEventListener("click", async (event) => {
  const copy = event.target.closest("button[data-copy]");
  if (copy) {
    const source = document.getElementById(copy.dataset.copy);
    const text = source.textContent.trim();
    selectText(source); // without clipboard access the key is at least selected for Ctrl+C
    try {
      await navigator.clipboard.writeText(text);
      copy.textContent = "Copied";
    } catch {
      copy.textContent = "Press Ctrl+C to copy";
    }
    return;
  }
  if (event.target.closest("button[data-print]")) window.print();
});

for (const button of document.querySelectorAll("button[data-copy], button[data-print]")) {
  button.hidden = false; // shown only where this script runs
}
