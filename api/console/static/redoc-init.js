// ReDoc over this app's OpenAPI document (a file of its own: the page's CSP runs no inline script)
"use strict";
window.addEventListener("load", () => {
  const root = document.getElementById("redoc");
  Redoc.init(root.dataset.openapi, { hideDownloadButton: false }, root);
});
