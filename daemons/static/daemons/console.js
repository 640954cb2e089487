// The daemon console (daemons/console.py): xterm.js over the attach socket.
// The daemon has no terminal: a line is edited here and sent on Enter.
(function () {
  "use strict";
  var root = document.getElementById("console");
  var status = document.getElementById("console-status");
  var term = new Terminal({convertEol: true, cursorBlink: true, fontSize: 14, scrollback: 5000});
  var fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  // Only the terminal's size follows the window: the attach protocol carries none.
  window.addEventListener("resize", function () { fit.fit(); });
  window.herderTerminal = term;
  var socket = null, line = "";

  function say(text) { status.textContent = text; }

  function connect(token) {
    var url = new URL(root.dataset.socket, window.location.href);
    url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
    if (token) { url.searchParams.set("token", token); }
    socket = new WebSocket(url.href);
    socket.binaryType = "arraybuffer";
    socket.onopen = function () { say("connected"); term.focus(); };
    socket.onmessage = function (event) {
      term.write(typeof event.data === "string" ? event.data : new Uint8Array(event.data));
    };
    socket.onclose = function (event) { say("closed (" + event.code + ")"); socket = null; };
  }

  term.onData(function (data) {
    for (var i = 0; i < data.length; i++) {
      var c = data[i];
      if (c === "\r") {
        term.write("\r\n");
        if (socket && socket.readyState === WebSocket.OPEN) { socket.send(line + "\n"); }
        line = "";
      } else if (c === "\x7f" || c === "\b") {
        if (line) { line = line.slice(0, -1); term.write("\b \b"); }
      } else if (c >= " ") {
        line += c;
        term.write(c);
      }
    }
  });

  if (!root.dataset.tokenMode) { connect(""); return; }
  // Token holders: from the fragment (never sent to a server), else typed.
  var form = document.getElementById("console-token");
  var match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
  if (match) {
    history.replaceState(null, "", window.location.pathname + window.location.search);
    form.hidden = true;
    connect(decodeURIComponent(match[1]));
  }
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var input = document.getElementById("console-token-input");
    var token = input.value.trim();
    input.value = "";
    form.hidden = true;
    connect(token);
  });
}());
