"""A small in-memory model hub on 127.0.0.1, enough for the real huggingface_hub and diffusers code paths that
publishing and loading use: create_repo, upload_folder (preupload + ndjson commit, regular uploads), model_info /
revision listing, and file resolution (HEAD / GET); dataset repos (`datasets`: read-only, info, listing and
resolution, for `snapshot_download(..., repo_type="dataset")`). Requests are bounded to the test's own server."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, token: str = "hf_test_token"):
        self.token = token
        self.repos: dict[str, dict[str, bytes]] = {}
        self.datasets: dict[str, dict[str, bytes]] = {}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, obj, code=200):
                self._send(code, json.dumps(obj).encode())

            def _authorized(self) -> bool:
                return self.headers.get("Authorization") == f"Bearer {hub.token}"

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_POST(self):
                path = urlparse(self.path).path
                hub.requests.append(f"POST {path}")
                body = self._body()
                if not self._authorized():
                    return self._json({"error": "Invalid credentials"}, 401)
                if path == "/api/validate-yaml":  # model card metadata check before a README upload
                    return self._json({"errors": [], "warnings": []})
                if path == "/api/repos/create":
                    req = json.loads(body)
                    repo = f"{req.get('organization') or 'user'}/{req['name']}"
                    hub.repos.setdefault(repo, {})
                    return self._json({"url": f"http://{self.headers['Host']}/{repo}", "name": repo})
                parts = path.split("/")
                if len(parts) >= 6 and parts[1] == "api" and parts[2] == "models":
                    repo = f"{parts[3]}/{parts[4]}"
                    action = parts[5]
                    if repo not in hub.repos:
                        return self._json({"error": "Repository not found"}, 404)
                    if action == "preupload":
                        files = json.loads(body)["files"]
                        return self._json({"files": [{"path": f["path"], "uploadMode": "regular",
                                                      "shouldIgnore": False} for f in files]})
                    if action == "commit":
                        for line in body.decode().splitlines():
                            item = json.loads(line)
                            if item.get("key") == "file":
                                value = item["value"]
                                hub.repos[repo][value["path"]] = base64.b64decode(value["content"])
                        return self._json({"commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{COMMIT}",
                                           "commitOid": COMMIT, "success": True})
                    if action == "paths-info":
                        return self._json([])
                return self._json({"error": f"unsupported {path}"}, 404)

            def do_GET(self):
                self._get()

            def do_HEAD(self):
                self._get()

            def _get(self):
                path = unquote(urlparse(self.path).path)
                hub.requests.append(f"{self.command} {path}")
                parts = path.strip("/").split("/")
                if parts[:1] == ["datasets"]:  # /datasets/<owner>/<name>/resolve/<rev>/<file>
                    store, parts = hub.datasets, parts[1:]
                else:
                    store = hub.repos
                if parts[:1] == ["api"] and parts[1:2] in (["models"], ["datasets"]) and len(parts) >= 4:
                    store = hub.datasets if parts[1] == "datasets" else hub.repos
                    repo = f"{parts[2]}/{parts[3]}"
                    if repo not in store:
                        return self._json({"error": "Repository not found"}, 404)
                    files = store[repo]
                    if len(parts) >= 6 and parts[4] == "tree":  # recursive file listing (snapshot_download)
                        return self._json([{"type": "file", "path": name, "size": len(data),
                                            "oid": hashlib.sha1(data).hexdigest()}
                                           for name, data in sorted(files.items())])
                    return self._json({"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                                       "siblings": [{"rfilename": f} for f in sorted(files)], "tags": []})
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, name = f"{parts[0]}/{parts[1]}", "/".join(parts[4:])
                    data = store.get(repo, {}).get(name)
                    if data is None:
                        return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"})
                    return self._send(200, data, {"X-Repo-Commit": COMMIT,
                                                  "ETag": f'"{hashlib.sha1(data).hexdigest()}"'},
                                      content_type="application/octet-stream")
                return self._json({"error": f"unsupported {path}"}, 404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
