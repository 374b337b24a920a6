// The staff pages work without this file. With it: a running clearing is followed in place (elements with
// data-poll are fetched again and replaced until the server sends one without data-poll), a form cannot be sent
// twice by a double click, and receipts get a print button.
(function () {
  "use strict";

  function poll(element) {
    var url = element.getAttribute("data-poll");
    var every = parseInt(element.getAttribute("data-interval") || "1500", 10);
    window.setTimeout(function () {
      fetch(url, { headers: { "X-Fragment": "1" }, credentials: "same-origin" })
        .then(function (response) {
          if (response.redirected) { window.location.reload(); return Promise.reject("redirected"); }
          return response.ok ? response.text() : Promise.reject(response.status);
        })
        .then(function (html) {
          var holder = document.createElement("div");
          holder.innerHTML = html.trim();
          var fresh = holder.firstElementChild;
          // Only the same fragment replaces it (an error page, say, does not): else ask again later.
          if (!fresh || fresh.getAttribute("data-fragment") !== element.getAttribute("data-fragment")) {
            poll(element);
            return;
          }
          element.replaceWith(fresh);
          if (fresh.hasAttribute("data-poll")) { poll(fresh); }
        })
        .catch(function () { poll(element); });
    }, every);
  }

  function guardForms() {
    document.querySelectorAll("form[method='post']").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (form.getAttribute("data-sent")) { event.preventDefault(); return; }
        form.setAttribute("data-sent", "1");
        window.setTimeout(function () {
          form.querySelectorAll("button[type='submit']").forEach(function (b) { b.disabled = true; });
        }, 0);
      });
    });
  }

  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) { return; }
    document.querySelectorAll("form[data-sent]").forEach(function (form) {
      form.removeAttribute("data-sent");
      form.querySelectorAll("button[type='submit']").forEach(function (b) { b.disabled = false; });
    });
  });

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-poll]").forEach(poll);
    guardForms();
    document.querySelectorAll("[data-print]").forEach(function (button) {
      button.hidden = false;
      button.addEventListener("click", function () { window.print(); });
    });
  });
})();
