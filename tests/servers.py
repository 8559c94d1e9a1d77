"""Servers on 127.0.0.1 for the download tests, each in a thread on an ephemeral port, stopped on exit.

- `FileServer`: plain HTTP with Range; a path can first answer error statuses, or lose its connection
  halfway through the body once (so a client must resume), or be served as a hostile server does (`modes`):
  without a length, cut, chunked, or a resume answered with other bytes than those asked for.
- `HubServer`: the part of the Hugging Face Hub that `snapshot_download` talks to, reached through
  HF_ENDPOINT: revision info (`/api/datasets/<repo>/revision/<rev>`), the recursive tree listing with git
  and LFS hashes (`/api/datasets/<repo>/tree/<commit>`), and `resolve` URLs
  (`/datasets/<repo>/resolve/<commit>/<path>`) answering HEAD and GET with the headers huggingface_hub reads
  (X-Repo-Commit, ETag, Content-Length); a model repo answers the same under `/api/models/<repo>/...` and
  `/<repo>/resolve/...`. A repo's `main` can move to a new commit (`push`); its earlier commits stay
  reachable by id, as on the Hub. See huggingface_hub's `hf_api.HfApi.repo_info`, `list_repo_tree` and
  `file_download.get_hf_file_metadata`.

Both record every request as (method, path, headers), so a test can assert what was asked.
"""

import hashlib
import json
import re
import socket
from http.server import BaseHTTPRequestHandler
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

import pytest

from cumo.eval.judge_server import LoopbackServer


class _Server(LoopbackServer):
    """Start `handler` on 127.0.0.1:<ephemeral> in a thread; `url` is its address while in `with`; every
    request is recorded as (method, path, headers)."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        super().__init__(handler)
        self.requests: list[tuple[str, str, dict]] = []

    def requested(self, method: str, path: str) -> list[dict]:
        """Headers of every request with this method and (unquoted) path."""
        return [
            headers for m, p, headers in self.requests if m == method and unquote(urlsplit(p).path) == path
        ]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep the test output clean
        pass

    def _record(self):
        self.server.owner.requests.append((self.command, self.path, dict(self.headers)))

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _send_file(self, body: bytes, headers: dict, head: bool, drop: bool = False):
        """Answer with `body`, honouring a `Range: bytes=N-` header; `drop` closes halfway through it."""
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            if start >= len(body):
                return self._send(416, headers={"Content-Range": f"bytes */{len(body)}"})
        part = body[start:]
        headers = {"Accept-Ranges": "bytes", **headers}
        if match:
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        self.send_response(206 if match else 200)
        for key, value in {"Content-Length": str(len(part)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        if head:
            return
        if drop:
            self.wfile.write(part[: len(part) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(part)


class _FileHandler(_Handler):
    def do_GET(self):
        self._record()
        owner = self.server.owner
        path = unquote(urlsplit(self.path).path)
        if owner.errors.get(path):
            return self._send(owner.errors[path].pop(0), b"error")
        if path not in owner.files:
            return self._send(404, b"not found")
        drop = path in owner.drop
        owner.drop.discard(path)
        modes = owner.modes.get(path)
        mode = modes.pop(0) if modes else "normal"
        if mode != "normal":
            return self._send_as(mode, owner.files[path])
        self._send_file(
            owner.files[path], {"Content-Type": "application/octet-stream"}, head=False, drop=drop
        )

    def _send_as(self, mode: str, body: bytes):
        """`body` answered as a hostile or unusual server does (FileServer `modes`)."""
        if mode in ("no-length", "cut"):  # HTTP/1.0-style: the body ends when the connection closes
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body if mode == "no-length" else body[: len(body) // 2])
            self.close_connection = True
            return
        if mode == "chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(body), 4096):
                chunk = body[start : start + 4096]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
            return
        if mode in ("206-whole", "206-no-range"):  # a resume answered with the whole file
            headers = {"Content-Range": f"bytes 0-{len(body) - 1}/{len(body)}"} if mode == "206-whole" else {}
            return self._send(206, body, headers)
        raise ValueError(f"unknown mode {mode!r}")


class FileServer(_Server):
    """Serve `files` (URL path -> bytes) with Range support.

    `drop`: paths whose first response closes the connection halfway through the body.
    `errors`: path -> HTTP statuses answered (one per request, in order) before the file is served.
    `modes`: path -> how its first requests are answered, one per request, in order: "normal", "no-length" (the whole
    body, no Content-Length, closed after), "cut" (the same, cut halfway), "chunked", "206-whole" (206 with
    the whole file and its Content-Range, whatever was asked), "206-no-range" (the same, no Content-Range).
    """

    def __init__(
        self,
        files: dict[str, bytes],
        drop=(),
        errors: dict[str, list[int]] | None = None,
        modes: dict[str, list[str]] | None = None,
    ):
        super().__init__(_FileHandler)
        self.files = files
        self.drop = set(drop)
        self.errors = {path: list(statuses) for path, statuses in (errors or {}).items()}
        self.modes = {path: list(answers) for path, answers in (modes or {}).items()}


def git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class _HubHandler(_Handler):
    def _error(self, status: int, code: str, message: str, head: bool = False):
        body = json.dumps({"error": message}).encode()
        headers = {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message}
        self._send(status, body, headers, head=head)

    def _json(self, data):
        self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def _route(self, head: bool):
        self._record()
        hub = self.server.owner
        path = unquote(urlsplit(self.path).path)
        match = re.fullmatch(
            r"/api/(datasets|models)/([^/]+/[^/]+)/(revision|tree)/([^/]+)(/.*)?", path
        ) or re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)/(resolve)/([^/]+)/(.+)", path)
        if not match:
            return self._error(404, "EntryNotFound", f"no route for {path}", head)
        prefix, repo, kind, revision, rest = match.groups()
        repo_type = "model" if prefix in (None, "models") else "dataset"
        # As on the Hub, a model and a dataset are separate namespaces: asked as the other type, a repo is absent.
        if repo not in hub.history or hub.repo_type(repo) != repo_type:
            return self._error(404, "RepoNotFound", f"Repository {repo} not found", head)
        commits = hub.history[repo]
        commit = list(commits)[-1] if revision == "main" else revision
        if commit not in commits:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
        files = commits[commit]
        if kind == "revision":
            return self._json(
                {"id": repo, "sha": commit, "private": False, "siblings": [{"rfilename": p} for p in files]}
            )
        if kind == "tree":
            folders = sorted(
                {str(parent) for p in files for parent in PurePosixPath(p).parents if str(parent) != "."}
            )
            entries = [{"type": "directory", "oid": "0" * 40, "path": folder} for folder in folders]
            entries += [hub.tree_entry(p, content) for p, content in files.items()]
            return self._json(entries)
        # As on the Hub, a gated repo's info and listing are public; its files need a token.
        if repo in hub.gated and "authorization" not in {key.lower() for key in self.headers}:
            return self._error(401, "GatedRepo", f"Access to {repo_type} {repo} is restricted", head)
        if rest not in files:
            return self._error(404, "EntryNotFound", f"{rest} does not exist in {repo}", head)
        content = hub.corrupt.get((repo, rest), files[rest])
        headers = {"X-Repo-Commit": commit, "ETag": f'"{hub.etag(rest, files[rest])}"'}
        self._send_file(content, headers, head=head)

    def do_GET(self):
        self._route(head=False)

    def do_HEAD(self):
        self._route(head=True)


class HubServer(_Server):
    """Repos (repo id -> {path: bytes}), each at its first commit, `commit(repo)`, which `main` names until
    `push` gives the repo another: datasets, except the ids in `models`, which are model repos.

    Files ending in .zip, .parquet, .safetensors or .bin are stored in LFS (identified by sha256), the others
    in git (by their blob sha1), as on the Hub. `gated` repos answer 401 GatedRepo to file requests without a
    token; `corrupt` maps (repo, path) to bytes served in place of the file's own (the listing keeps the true
    hashes).
    """

    LFS_SUFFIXES = (".zip", ".parquet", ".safetensors", ".bin")

    def __init__(self, repos: dict[str, dict[str, bytes]], gated=(), corrupt: dict | None = None, models=()):
        super().__init__(_HubHandler)
        self.history = {repo: {self.commit(repo): files} for repo, files in repos.items()}  # commits in order
        self.gated = set(gated)
        self.corrupt = corrupt or {}
        self.models = set(models)

    def repo_type(self, repo: str) -> str:
        return "model" if repo in self.models else "dataset"

    @staticmethod
    def commit(repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    def push(self, repo: str, files: dict[str, bytes]) -> str:
        """Commit `files` as the repo's new tree, which `main` names from now on; return the new commit."""
        commit = hashlib.sha1(f"{repo} {len(self.history[repo])}".encode()).hexdigest()
        self.history[repo][commit] = files
        return commit

    def is_lfs(self, path: str) -> bool:
        return path.endswith(self.LFS_SUFFIXES)

    def etag(self, path: str, content: bytes) -> str:
        return hashlib.sha256(content).hexdigest() if self.is_lfs(path) else git_blob_sha1(content)

    def tree_entry(self, path: str, content: bytes) -> dict:
        entry = {"type": "file", "path": path, "size": len(content), "oid": git_blob_sha1(content)}
        if self.is_lfs(path):
            entry["lfs"] = {
                "oid": hashlib.sha256(content).hexdigest(),
                "size": len(content),
                "pointerSize": 134,
            }
        return entry


def local_only(monkeypatch) -> None:
    """Fail the test at once if anything connects anywhere but this machine (no test may reach the network)."""
    connect = socket.socket.connect

    def guarded(sock, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            pytest.fail(f"a test tried to connect to {address}: only servers on 127.0.0.1 may be used")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
