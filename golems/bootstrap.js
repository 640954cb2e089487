/*
  herder bootstrap: include this script in a webstrate.

  In a normal browser it asks the herder to spawn the page's golem (one per
  webstrate; repeated requests change nothing). Inside the golem's headless
  browser it runs the code of the page's `.golem,#emet` element.

  The golem's code finds the herder in `window.herder`:
    herder.url           the herder's public URL (http or https)
    herder.ws            the same for WebSockets (ws or wss)
    herder.webstrateId() this page's webstrate id

    reload the golem:  curl __URL__/golem/v1/reset/<webstrate-id>
    kill the golem:    curl __URL__/golem/v1/kill/<webstrate-id>
*/
(function () {
  var config = __CONFIG__;

  function webstrateId() {
    if (window.webstrate && window.webstrate.webstrateId) {
      return window.webstrate.webstrateId;
    }
    var first = window.location.pathname.split("/").filter(Boolean)[0];
    return first ? decodeURIComponent(first) : null;
  }

  window.herder = { url: config.url, ws: config.ws, webstrateId: webstrateId };

  if (!/headless/i.test(navigator.userAgent)) {
    // A person's browser: ask for the golem.
    var id = webstrateId();
    if (!id) {
      console.warn("herder: no webstrate id on this page; no golem spawned");
      return;
    }
    var request = new XMLHttpRequest();
    request.onreadystatechange = function () {
      if (request.readyState !== XMLHttpRequest.DONE) return;
      if (request.status === 200) {
        console.log("herder: golem spawned for " + id);
      } else {
        console.warn("herder: golem could not be spawned - " + request.responseText);
      }
    };
    request.open("GET", config.url + "/golem/v1/spawn/" + encodeURIComponent(id), true);
    request.send();
    return;
  }

  // The golem's own browser: rise.
  var started = false;
  function rise() {
    if (started) return;
    var element = document.querySelector(".golem,#emet");
    if (!element) {
      console.warn("herder: no .golem or #emet element on this page");
      return;
    }
    started = true;
    new Function(element.textContent)();
  }
  if (window.webstrate && typeof window.webstrate.on === "function") {
    window.webstrate.on("loaded", rise);
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", rise);
  } else {
    rise();
  }
})();
