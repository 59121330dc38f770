// Asks before an invoice operation (finalize, void, retry the Stripe sync): a file, not an inline
// onsubmit, because the Content-Security-Policy allows no inline script.
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-confirm]");
  if (form && !window.confirm(form.dataset.confirm)) event.preventDefault();
});
