// A WebSocket client written as users of the original herder wrote theirs in
// Node: the `ws` package with its defaults (permessage-deflate offered).
//
//   node client.js <url>
//
// Driven by tests/compat over stdin and stdout, one JSON object a line.
// In:  {"text": "..."} | {"binary": "<base64>"} | {"close": <code>}
// Out: {"open": {"extensions": "..."}} | {"text": "..."} | {"binary": "<base64>"}
//      | {"refused": {"status": <n>, "body": "..."}} | {"close": {"code": <n>, "reason": "..."}}
//      | {"error": "..."}
"use strict";

const readline = require("readline");
const WebSocket = require("ws");

function say(object) {
  process.stdout.write(JSON.stringify(object) + "\n");
}

const ws = new WebSocket(process.argv[2]);

ws.on("open", () => say({ open: { extensions: ws.extensions } }));
ws.on("message", (data, isBinary) => {
  if (isBinary) say({ binary: Buffer.from(data).toString("base64") });
  else say({ text: data.toString("utf8") });
});
// The handshake was answered with a status other than 101.
ws.on("unexpected-response", (request, response) => {
  const chunks = [];
  response.on("data", (chunk) => chunks.push(chunk));
  response.on("end", () => {
    say({ refused: { status: response.statusCode, body: Buffer.concat(chunks).toString("utf8") } });
    process.exit(0);
  });
});
ws.on("error", (error) => say({ error: String(error.message || error) }));
ws.on("close", (code, reason) => {
  say({ close: { code, reason: reason.toString("utf8") } });
  process.exit(0);
});

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line);
  if ("text" in command) ws.send(command.text);
  else if ("binary" in command) ws.send(Buffer.from(command.binary, "base64"));
  else if ("close" in command) ws.close(command.close);
});
