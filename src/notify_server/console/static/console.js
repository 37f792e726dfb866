// The console's only script: keeps a page that shows live data current. The server sends
// the page's fingerprint whenever it changes (server-sent events); the page is then fetched
// again and its #live section swapped for the new one (rendered and escaped by the server).
(function () {
  "use strict";
  var main = document.querySelector("main[data-events]");
  if (!main || !window.EventSource || !window.fetch) {
    return;
  }
  var stamp = main.getAttribute("data-stamp");
  var loading = false;
  var again = false;

  function refresh() {
    if (loading) {
      again = true;
      return;
    }
    loading = true;
    fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.redirected) {
          window.location.reload(); // signed out meanwhile: show the sign-in page
        }
        if (response.redirected || !response.ok) {
          throw new Error("console: reload failed with " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        var current = document.getElementById("live");
        if (fresh && current) {
          current.replaceWith(document.adoptNode(fresh));
          document.dispatchEvent(new CustomEvent("console:updated"));
        }
      })
      .catch(function (error) {
        window.console.warn(error);
      })
      .finally(function () {
        loading = false;
        if (again) {
          again = false;
          refresh();
        }
      });
  }

  var source = new EventSource(main.getAttribute("data-events"));
  source.addEventListener("change", function (event) {
    if (event.data !== stamp) {
      stamp = event.data;
      refresh();
    }
  });
  source.addEventListener("gone", function () {
    source.close();
  });
  source.addEventListener("open", function () {
    document.documentElement.setAttribute("data-live", "open");
  });
  source.addEventListener("error", function () {
    document.documentElement.setAttribute("data-live", "reconnecting");
  });
})();
