// A WebSocket client written as users of the original herder wrote theirs in
// Go: golang.org/x/net/websocket, an Origin of its own, reads into a 512-byte
// buffer (the package's example). Built in GOPATH mode against Debian's
// golang-golang-x-net-dev (tests/compat/conftest.py).
//
//	client <url> <origin>
//
// Driven by tests/compat over stdin and stdout, one JSON object a line.
// In:  {"text": "..."} | {"binary": "<base64>"} | {"close": true}
// Out: {"open": true} | {"dial_error": "..."} | {"chunk": "<base64>"} (one Read: at
// most 512 bytes of one frame) | {"end": "..."} (the read that failed: the socket closed)
package main

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"os"
	"sync"

	"golang.org/x/net/websocket"
)

var out = json.NewEncoder(os.Stdout)
var outLock sync.Mutex

func say(object map[string]interface{}) {
	outLock.Lock()
	defer outLock.Unlock()
	out.Encode(object)
}

type command struct {
	Text   *string `json:"text"`
	Binary *string `json:"binary"`
	Close  bool    `json:"close"`
}

func main() {
	config, err := websocket.NewConfig(os.Args[1], os.Args[2])
	if err != nil {
		say(map[string]interface{}{"dial_error": err.Error()})
		os.Exit(1)
	}
	ws, err := websocket.DialConfig(config)
	if err != nil {
		say(map[string]interface{}{"dial_error": err.Error()})
		os.Exit(0)
	}
	say(map[string]interface{}{"open": true})

	go func() {
		lines := bufio.NewScanner(os.Stdin)
		lines.Buffer(make([]byte, 1<<20), 1<<24)
		for lines.Scan() {
			var c command
			if err := json.Unmarshal(lines.Bytes(), &c); err != nil {
				say(map[string]interface{}{"bad_command": err.Error()})
				continue
			}
			switch {
			case c.Text != nil:
				err = websocket.Message.Send(ws, *c.Text)
			case c.Binary != nil:
				var data []byte
				if data, err = base64.StdEncoding.DecodeString(*c.Binary); err == nil {
					err = websocket.Message.Send(ws, data)
				}
			case c.Close:
				err = ws.Close()
			}
			if err != nil {
				say(map[string]interface{}{"send_error": err.Error()})
			}
		}
	}()

	var msg = make([]byte, 512)
	for {
		n, err := ws.Read(msg)
		if err != nil {
			say(map[string]interface{}{"end": err.Error()})
			os.Exit(0)
		}
		say(map[string]interface{}{"chunk": base64.StdEncoding.EncodeToString(msg[:n])})
	}
}
