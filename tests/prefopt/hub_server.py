"""A loopback stand-in for the Hugging Face Hub's upload endpoints (create repo, card metadata check, preupload, commit), so
``huggingface_hub.HfApi.upload_folder`` runs for real against 127.0.0.1. Every file is declared
"regular" (sent inline, base64) so no LFS/xet storage is involved; received files land in ``store``."""
from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    store: dict[str, dict[str, bytes]] = {}

    def log_message(self, *args):  # keep test output clean
        pass

    def _reply(self, obj: dict, code: int = 200) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802 - http.server naming
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[:3] == ["api", "repos", "create"]:
            req = json.loads(data)
            repo = f"{req.get('organization') or req.get('namespace') or 'user'}/{req['name']}" \
                if "/" not in req["name"] else req["name"]
            self.store.setdefault(repo, {})
            return self._reply({"url": f"http://{self.headers['Host']}/{repo}", "name": repo})
        if parts == ["api", "validate-yaml"]:  # model card metadata check before a README upload
            return self._reply({"errors": [], "warnings": []})
        if parts[:2] == ["api", "models"] and "preupload" in parts:
            req = json.loads(data)
            return self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                          for f in req["files"]]})
        if parts[:2] == ["api", "models"] and "commit" in parts:
            repo = "/".join(parts[2:4])
            for line in data.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.store.setdefault(repo, {})[item["value"]["path"]] = base64.b64decode(
                        item["value"]["content"])
            return self._reply({"commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{'0' * 40}",
                                "commitOid": "0" * 40, "success": True})
        return self._reply({"error": f"not emulated: POST {self.path}"}, 404)

    def do_GET(self):  # noqa: N802
        return self._reply({"error": f"not emulated: GET {self.path}"}, 404)


class HubServer:
    """``with HubServer() as hub:`` -> ``hub.endpoint`` and ``hub.store[repo_id][path] -> bytes``."""

    def __enter__(self) -> "HubServer":
        _Handler.store = {}
        self.store = _Handler.store
        self._srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.endpoint = f"http://127.0.0.1:{self._srv.server_address[1]}"
        self._thread = threading.Thread(target=self._srv.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._srv.shutdown()
        self._srv.server_close()
