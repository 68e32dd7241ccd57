// Sluice console: partial page updates and the run starter. Every page works without this script (links and
// forms reload the page) except the start button, which needs the key in a header.
"use strict";

const PARTIAL = "X-Partial";

async function fill(region, url, push) {
  const response = await fetch(url, { headers: { [PARTIAL]: region.id } });
  region.innerHTML = await response.text(); // HTML the server rendered and escaped
  region.dataset.src = url;
  if (push) history.pushState({}, "", url);
}

function regionFor(element) {
  const named = element.dataset.partial;
  return (named && document.getElementById(named)) || element.closest("[data-region]");
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-partial]");
  if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
  const region = regionFor(link);
  if (!region) return;
  event.preventDefault();
  fill(region, link.href, true);
});

document.addEventListener("submit", async (event) => {
  const form = event.target;
  if (form.matches("form[data-start]")) {
    event.preventDefault();
    const field = form.elements.namedItem("api_key");
    const key = field.value;
    field.value = ""; // not kept in the page
    const result = document.getElementById("start-result");
    result.textContent = "Starting…";
    const response = await fetch(form.action, { method: "POST", headers: { "X-API-Key": key, [PARTIAL]: "start" } });
    result.innerHTML = await response.text();
    document.querySelectorAll("[data-refresh]").forEach(refresh);
  } else if (form.matches("form[data-partial]")) {
    const region = regionFor(form);
    if (!region) return;
    event.preventDefault();
    const query = new URLSearchParams();
    for (const [name, value] of new FormData(form)) if (String(value).trim() !== "") query.append(name, value);
    const url = `${form.action}?${query}`;
    fill(region, url, true);
  }
});

function refresh(region) {
  if (document.visibilityState === "visible") fill(region, region.dataset.src || location.href, false);
}

document.querySelectorAll("[data-refresh]").forEach((region) => {
  setInterval(() => refresh(region), Number(region.dataset.refresh) * 1000);
});

window.addEventListener("popstate", () => location.reload());
