// Starts Swagger UI on the docs page (a file, not an inline script: the page's CSP allows scripts
// from 'self' only). The OpenAPI document's URL is the container's data-spec-url.
"use strict";
(function () {
  var container = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: container.dataset.specUrl,
    domNode: container,
    deepLinking: true,
    // No validator badge: it would send the document's URL to a third party (the CSP blocks it anyway).
    validatorUrl: null,
  });
})();
