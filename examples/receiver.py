"""A tiny webhook receiver for trying cdc: prints every batch it gets and whether its Standard
Webhooks signature is valid, then answers 204. Standard library only, so docker-compose.yml runs
it on the stock python image; run it by hand with `python3 examples/receiver.py` (port 8080, or
RECEIVER_PORT), with CDC_WEBHOOK_SECRET set to the secret cdc signs with.

Not for production: a real receiver also rejects old timestamps and dedupes by webhook-id."""

import base64
import hashlib
import hmac
import http.server
import json
import os

SECRET = os.environ.get("CDC_WEBHOOK_SECRET", "")
PORT = int(os.environ.get("RECEIVER_PORT", "8080"))


def signature_ok(headers, body):
    """Standard Webhooks: HMAC-SHA256 over "{id}.{timestamp}.{body}", key = base64 after whsec_."""
    if not SECRET.startswith("whsec_"):
        return False
    key = base64.b64decode(SECRET[len("whsec_"):])
    signed = f"{headers.get('webhook-id')}.{headers.get('webhook-timestamp')}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = [s.split(",", 1)[1] for s in headers.get("webhook-signature", "").split() if s.startswith("v1,")]
    return any(hmac.compare_digest(expected, g) for g in given)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        verdict = "signature ok" if signature_ok(self.headers, body) else "BAD SIGNATURE"
        print(f"{self.path} {self.headers.get('webhook-id')} ({verdict})", flush=True)
        try:
            print(json.dumps(json.loads(body), indent=2), flush=True)
        except ValueError:
            print(body.decode(errors="replace"), flush=True)
        self.send_response(204)
        self.end_headers()

    def do_OPTIONS(self):  # `cdc check` asks whether the endpoint answers
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):  # the lines above say it all
        pass


if __name__ == "__main__":
    print(f"receiver: listening on :{PORT}", flush=True)
    http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
