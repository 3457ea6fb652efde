"""JSON HTTP APIs on loopback for the tests of clients of outside services (an OpenAI-compatible chat endpoint,
the hub's API): every request is recorded; `reply(method, path, body)` gives the JSON answer, or None for an
HTTP error (`error_status`)."""
import http.server
import json
import threading


class LoopbackAPI:
    def __init__(self, reply, error_status: int = 500):
        self.requests = []
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self, method):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                ndjson = self.headers.get("Content-Type") == "application/x-ndjson"  # the hub's commit payload
                body = [json.loads(line) for line in raw.splitlines()] if ndjson else json.loads(raw) if raw else None
                api.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                data = reply(method, self.path.split("?")[0], body)
                if data is None:
                    self.send_error(error_status)
                    return
                encoded = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(encoded)))
                self.end_headers()
                self.wfile.write(encoded)

            def do_GET(self):
                self.answer("GET")

            def do_POST(self):
                self.answer("POST")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"


class ChatEndpoint(LoopbackAPI):
    """An OpenAI-compatible chat-completions endpoint: `answer(body)` gives the assistant's reply (and optionally
    its logprobs); a reply of None answers HTTP 500."""

    def __init__(self, answer):
        def reply(method, path, body):
            content, logprobs = answer(body)
            if content is None:
                return None
            return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": logprobs,
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}}

        super().__init__(reply)
        self.url += "/v1"
