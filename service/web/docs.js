// Starts Swagger UI on /docs (service/web/docs.html) from a file rather than an inline script, so
// that the page's Content-Security-Policy can forbid inline scripts (service/api/dashboard.py).
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
