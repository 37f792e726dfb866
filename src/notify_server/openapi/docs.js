// A file, not an inline script: the page's Content-Security-Policy allows scripts from 'self' only.
window.ui = SwaggerUIBundle({
  // Relative: the page also works behind a proxy that serves it under a path prefix.
  url: "openapi.json",
  // Swagger UI would otherwise send the description to validator.swagger.io.
  validatorUrl: null,
  dom_id: "#swagger-ui",
  deepLinking: true,
  // Basic credentials typed into "Authorize" are kept by this page only, never stored.
  persistAuthorization: false,
});
