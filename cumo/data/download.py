"""From nothing on disk to CuMo's raw data tree: fetch, verify, extract and convert every source, training data,
benchmarks and the base models pretrain starts from (CLIP, Mistral, Mixtral) alike.

The sources are declared in `cumo/data/sources.yaml` (repo ids, revisions, allow-patterns, URLs, digests,
target folders); a source that needs code (a conversion to LLaVA's conversation schema, images named by
URL in a metadata file) has a module in `cumo/data/sources/`. This module is the machinery they share:

- Hub repos, dataset or model, through huggingface_hub's `snapshot_download`, at the commit the declared
  revision resolves to (or the one the lock file pins, below); every file is then checked against the sha256
  (LFS) or git hash the Hub lists for it at that commit. A model repo lands as a plain directory that
  `from_pretrained` reads without network, so a training job on a compute node only needs `source_folder`
  (its marker must exist).
- HTTPS files with resume (`Range`), retries with exponential back-off and a sha256 check where the
  digest is declared. A file is taken only when known whole: its length as the server gave it
  (Content-Length, Content-Range, a chunked body's end), or its declared digest; a body that just stops
  with the connection, with neither, is refused (issue 17).
- An archive that cannot be read to its end loses its name: fetched, it is deleted to be fetched anew.
- Files behind a registration are placed by hand; a source missing one stops before fetching anything,
  saying where to get it, where to put it and what it will be checked against.
- Archives (zip, tar, tar.gz) are checked member by member before anything is written: a member that
  would land outside the target folder (`..`, an absolute path, a link pointing out) refuses the archive.

Pins learned on first download (cumo/data/lockfile.py): the first download of a source records the commit
each Hub revision resolved to and every file's sha256 in the lock file kept with the declarations
(`cumo/data/sources.lock.yaml`), once its files passed every check. A later download fetches the locked commits
and stops where a file's sha256 differs from the locked one, naming the file and both digests; a lock entry
that contradicts a pin declared in cumo/data/sources.yaml stops it before anything is fetched. Pins the lock
lacks (a repo or file declared since) are learned the same way; `update_lock` renews a source's on purpose.

A source is done when its marker `<data_root>/<folder>/.<name>.done` exists: a JSON record of the resolved
commits, every file's sha256, the extracted member counts and the converted entry counts, written last.
A second call with the marker present does nothing. Downloads go to `<file>.part` and are renamed only when
whole and verified, so an interrupted run resumes where it stopped.
"""

import fnmatch
import gzip
import hashlib
import http.client
import importlib
import importlib.util
import json
import lzma
import os
import posixpath
import re
import tarfile
import time
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import MISSING, dataclass, fields, replace
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import yaml
from huggingface_hub import HfApi, get_token, snapshot_download
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import filter_repo_objects
from tqdm import tqdm

from cumo.data import lockfile
from cumo.data.lockfile import COMMIT, SHA256, LockFileError, exclusive
from cumo.data.skips import SkipCounter

# The declarations, with their lock beside them (lockfile.default_path): package data (pyproject.toml), read
# wherever cumo is installed. In a checkout (an editable install) both are its files, and the lock is committed.
SOURCES = resources.files("cumo.data") / "sources.yaml"
HUB_URL = "https://huggingface.co"
# The Hub repo types a source can fetch (spaces hold apps, not data); the Hub's routes differ by type:
# /api/datasets/<id>, /datasets/<id>/resolve/... versus /api/models/<id>, /<id>/resolve/...
REPO_TYPES = ("dataset", "model")
CHUNK = 1 << 20
BAR_MIN_BYTES = 16 << 20  # smaller files get no progress bar of their own (fetch_all has one for them all)


class SourceConfigError(ValueError):
    """cumo/data/sources.yaml is malformed; the message names the source, the field and the fix."""


class DownloadError(RuntimeError):
    """A fetch, check or extraction failed; the message names the file and what to do."""


class ChecksumError(DownloadError):
    """A file's digest differs from the declared one; the message names the file and both digests."""


class ManualStepNeeded(DownloadError):
    """A file behind a registration or a gated repo is missing: where to get it, where to put it."""


class UnsafeArchiveError(DownloadError):
    """An archive member would be written outside the target folder; nothing was extracted."""


class CorruptArchive(DownloadError):
    """An archive that cannot be read to its end (cut short, or not an archive at all)."""


# -- Declarations --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubRepo:
    repo: str  # a repo id, owner/name
    revision: str  # a 40-hex commit pins it; a branch is resolved and the commit recorded
    allow: tuple[str, ...]  # fnmatch patterns over repo paths, as snapshot_download's allow_patterns
    into: str = "."  # sub-folder of the source's folder
    gated: bool = False  # the repo asks its users to accept terms: a token is needed
    repo_type: str = "dataset"  # one of REPO_TYPES: "model" for base weights (config.json, shards, tokenizer)

    @property
    def page(self) -> str:
        """The repo's page on the Hub, where a gated repo's terms are accepted (models have no prefix)."""
        return f"{HUB_URL}/{self.repo}" if self.repo_type == "model" else f"{HUB_URL}/datasets/{self.repo}"


@dataclass(frozen=True)
class WebFile:
    url: str
    sha256: str | None
    file: str = ""  # name in the source's folder; default: the URL's last path component


@dataclass(frozen=True)
class ManualFile:
    file: str  # name in the source's folder, where the user puts it
    get: str  # where and how to get it
    sha256: str | None


@dataclass(frozen=True)
class Extract:
    archive: str  # glob relative to the source's folder
    into: str = "."
    expect: tuple[str, ...] = ()  # paths (relative to the source's folder) the extraction must produce
    flatten: bool = False  # drop the members' folders, as `unzip -j`
    only: tuple[str, ...] = ()  # fnmatch patterns over member paths: extract just those (one file of many)


@dataclass(frozen=True)
class Source:
    name: str
    page: str
    folder: str
    requires: tuple[str, ...] = ()
    hub: tuple[HubRepo, ...] = ()
    web: tuple[WebFile, ...] = ()
    manual: tuple[ManualFile, ...] = ()
    extract: tuple[Extract, ...] = ()


def _build(cls, raw, where: str, **given):
    """`cls(**raw)` with the fields checked: unknown and missing ones are errors that name `where`."""
    if not isinstance(raw, dict):
        raise SourceConfigError(f"{where}: expected a mapping of fields, got {raw!r}")
    known = {f.name for f in fields(cls)} - set(given)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SourceConfigError(f"{where}: unknown field(s) {unknown}; the known ones are {sorted(known)}")
    required = {f.name for f in fields(cls) if f.default is MISSING} - set(given)
    missing = sorted(required - set(raw))
    if missing:
        raise SourceConfigError(f"{where}: missing field(s) {missing}")
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in raw.items()}
    return cls(**values, **given)


def _relative(path: str, where: str) -> str:
    if not isinstance(path, str) or not path or path.startswith("/") or ".." in PurePosixPath(path).parts:
        raise SourceConfigError(
            f"{where}: {path!r} must be a relative path inside the data root, without '..'"
        )
    return path


def _digest(value, where: str) -> str | None:
    if value is not None and not (isinstance(value, str) and SHA256.fullmatch(value)):
        raise SourceConfigError(
            f"{where}: sha256 {value!r} is not 64 lowercase hex digits (use null if unknown)"
        )
    return value


def _parse_source(name: str, raw, where: str) -> Source:
    if not isinstance(raw, dict):
        raise SourceConfigError(f"{where}: expected a mapping of fields, got {raw!r}")
    parts = {}
    for key, cls in (("hub", HubRepo), ("web", WebFile), ("manual", ManualFile), ("extract", Extract)):
        items = raw.get(key, [])
        if not isinstance(items, list):
            raise SourceConfigError(f"{where}: {key} must be a list, got {items!r}")
        parts[key] = tuple(_build(cls, item, f"{where}, {key}[{i}]") for i, item in enumerate(items))
    source = _build(Source, {k: v for k, v in raw.items() if k not in parts}, where, name=name, **parts)
    _relative(source.folder, f"{where}, folder")
    for i, repo in enumerate(source.hub):
        _relative(repo.into, f"{where}, hub[{i}].into")
        if repo.repo_type not in REPO_TYPES:
            raise SourceConfigError(
                f"{where}, hub[{i}]: repo_type {repo.repo_type!r} is not one of {list(REPO_TYPES)}; "
                "use model for weights (huggingface.co/<id>), dataset for data (huggingface.co/datasets/<id>)"
            )
        if not repo.allow:
            raise SourceConfigError(
                f"{where}, hub[{i}]: allow needs at least one pattern (never the whole repo)"
            )
    web = []
    for i, item in enumerate(source.web):
        _digest(item.sha256, f"{where}, web[{i}]")
        file = item.file or unquote(PurePosixPath(urlsplit(item.url).path).name)
        web.append(WebFile(item.url, item.sha256, _relative(file, f"{where}, web[{i}].file")))
    for i, item in enumerate(source.manual):
        _digest(item.sha256, f"{where}, manual[{i}]")
        _relative(item.file, f"{where}, manual[{i}].file")
    for i, step in enumerate(source.extract):
        for path in (step.archive, step.into, *step.expect):
            _relative(path, f"{where}, extract[{i}]")
    return replace(source, web=tuple(web))


def load_sources(path: str | Path = SOURCES) -> dict[str, Source]:
    """Read and check the source declarations (cumo/data/sources.yaml): every error names the source and field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SourceConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(raw, dict) or not raw:
        raise SourceConfigError(f"{path}: expected a mapping from source name to its declaration")
    sources = {name: _parse_source(name, body, f"{path}: source {name!r}") for name, body in raw.items()}
    for source in sources.values():
        unknown = sorted(set(source.requires) - set(sources))
        if unknown:
            raise SourceConfigError(f"{path}: source {source.name!r} requires unknown source(s) {unknown}")
    return sources


def _declared(name: str, sources: dict[str, Source]) -> Source:
    if name not in sources:
        raise SourceConfigError(f"unknown source {name!r}; the declared ones are {sorted(sources)}")
    return sources[name]


def plan(names: Iterable[str], sources: dict[str, Source]) -> list[Source]:
    """The named sources and what they require, each once, requirements first."""
    order: list[Source] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        _declared(name, sources)
        if name in visiting:
            raise SourceConfigError(
                f"sources require each other in a cycle: {' -> '.join([*visiting, name])}"
            )
        if sources[name] in order:
            return
        visiting.append(name)
        for required in sources[name].requires:
            visit(required)
        visiting.pop()
        order.append(sources[name])

    for name in names:
        visit(name)
    return order


def default_data_root() -> Path:
    """`$CuMo_DIR/data` when that variable is set, as in CuMo's own instructions; `data` otherwise."""
    return Path(os.environ["CuMo_DIR"]) / "data" if "CuMo_DIR" in os.environ else Path("data")


# -- Digests -------------------------------------------------------------------------------------------------


def file_digests(path: Path) -> tuple[str, str]:
    """(sha256, git blob sha1) of a file in one read: the Hub identifies a file by the first when it is
    stored in LFS and by the second otherwise (https://git-scm.com/book/en/v2/Git-Internals-Git-Objects)."""
    size = path.stat().st_size
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    with (
        open(path, "rb") as handle,
        tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"sha256 {path.name}",
            leave=False,
            disable=size < BAR_MIN_BYTES,
        ) as bar,
    ):
        while chunk := handle.read(CHUNK):
            sha256.update(chunk)
            sha1.update(chunk)
            bar.update(len(chunk))
    return sha256.hexdigest(), sha1.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".part")
    partial.write_text(text)
    partial.replace(path)


# -- HTTPS ---------------------------------------------------------------------------------------------------

# Worth another try: the connection failed or dropped, the server timed out or is overloaded (408, 429, 5xx
# arrive as HTTPError, a URLError).
_TRANSIENT = (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException)


CONTENT_RANGE = re.compile(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)")


class _Restart(ConnectionError):
    """The server answered a resumed request with other bytes than those asked for: the part already fetched
    is deleted and the file fetched from its start (a transient error, so it counts as a try)."""


def _content_range(response_headers) -> tuple[int | None, int | None]:
    """(first byte, whole size) of a Content-Range header ("bytes 100-199/1000", "bytes */1000"); None
    where it does not say."""
    match = CONTENT_RANGE.fullmatch((response_headers.get("Content-Range") or "").strip())
    if match is None:
        return None, None
    first, _, size = match.groups()
    return (int(first) if first else None), (int(size) if size != "*" else None)


def _get(url: str, partial: Path, timeout_s: float) -> int | None:
    """One request: append to `partial` from where it stops (Range), raise if the body comes short. Returns
    the whole file's size where the server said it (Content-Length, Content-Range, or a chunked body, which
    ends with a chunk of its own), else None: a body that ends when the connection closes may be cut."""
    offset = partial.stat().st_size if partial.exists() else 0
    headers = {"User-Agent": "cumo-download", **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the range starts at the end: whole, if the size says so
            _, size = _content_range(error.headers)
            if size == offset:
                return size
            partial.unlink()
            raise _Restart(
                f"{partial.name} holds {offset} bytes, but the server's file has {size if size is not None else 'an unknown number of'}"
            ) from error
        if error.code in (408, 429) or error.code >= 500:
            raise
        raise DownloadError(
            f"{url}: HTTP {error.code} {error.reason}, not retried: the file is gone or needs a login "
            "(for a declared source, check its URL in cumo/data/sources.yaml against the dataset's page)"
        ) from error
    with response:
        resumed = offset > 0 and response.status == 206  # a 200 means the server ignored the range
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        size = expected
        if resumed:
            # RFC 9110 14.4: the 206 says which bytes it holds; others than those asked for restart the file.
            first, size = _content_range(response.headers)
            if first != offset:
                partial.unlink()
                raise _Restart(
                    f"asked for bytes from {offset}, the server sent "
                    f"{'Content-Range ' + repr(response.headers.get('Content-Range')) if first is not None else 'no Content-Range'}"
                )
        elif response.status == 206:
            first, size = _content_range(response.headers)
        if size is None and "chunked" in (response.headers.get("Transfer-Encoding") or "").lower():
            size = -1  # known once read: http.client raises on a chunked body cut short
        received = 0
        with (
            open(partial, "ab" if resumed else "wb") as out,
            tqdm(
                total=(offset if resumed else 0) + expected if expected is not None else None,
                initial=offset if resumed else 0,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=partial.name.removesuffix(".part"),
                leave=False,
                disable=expected is not None and expected < BAR_MIN_BYTES,
            ) as bar,
        ):
            while chunk := response.read(CHUNK):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        # http.client returns what it got when the peer closes early instead of raising.
        if expected is not None and received < expected:
            raise ConnectionError(f"connection closed after {received} of {expected} bytes")
    return partial.stat().st_size if size == -1 else size


def fetch_url(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    *,
    attempts: int = 5,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
) -> str:
    """Download `url` to `dest` and return its sha256.

    The bytes go to `dest.part`, resumed with a Range request after a dropped connection (up to `attempts`
    tries, waiting `backoff_s`, 2x, 4x ... in between), and `dest` appears only when whole: its length is
    the one the server said (Content-Length, Content-Range), or it matches `sha256`. A body that ends when the
    connection closes, with no length, is taken only with a declared `sha256` (issue 17: a cut one looked
    whole); a resumed answer whose Content-Range does not start where the part stops restarts the file. A
    `dest` already there is kept when it matches (or when no digest is known: it got its name only whole).
    """
    dest = Path(dest)
    if dest.is_file():
        digest = file_digests(dest)[0]
        if sha256 is None or digest == sha256:
            return digest
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    for attempt in range(1, attempts + 1):
        try:
            size = _get(url, partial, timeout_s)
            break
        except _TRANSIENT as error:
            if attempt == attempts:
                raise DownloadError(
                    f"{url}: failed {attempts} times, last with {error}. The part already fetched is kept in "
                    f"{partial}: run again to resume."
                ) from error
            delay = backoff_s * 2 ** (attempt - 1)
            tqdm.write(f"{url}: {error}; try {attempt + 1} of {attempts} in {delay:.0f} s")
            time.sleep(delay)
    got = partial.stat().st_size
    if size is not None and got != size:
        partial.unlink()
        raise DownloadError(
            f"{url}: {got} bytes arrived, but the server gave the file's size as {size}; the download was deleted. "
            "Run again."
        )
    if size is None and sha256 is None:
        raise DownloadError(
            f"{url}: the server sent {got} bytes with no length (no Content-Length, not chunked), so a body cut "
            f"short cannot be told from a whole one, and cumo/data/sources.yaml declares no sha256 for {dest.name}. "
            f"The bytes are kept in {partial}, not taken: declare the file's sha256 (from the dataset's page) and "
            "run again, or run again for a server that gives the size this time (its answer to the resume)."
        )
    digest = file_digests(partial)[0]
    if sha256 is not None and digest != sha256:
        partial.unlink()
        raise ChecksumError(
            f"{dest}: downloaded from {url} with sha256 {digest}, but cumo/data/sources.yaml declares {sha256}. "
            "The download was deleted. Run again; if the digest stays the same, the upstream file changed: "
            "check the dataset's page and update sha256 in cumo/data/sources.yaml."
        )
    partial.replace(dest)
    return digest


def fetch_all(pairs: Iterable[tuple[str, Path]], counter: SkipCounter, workers: int = 16) -> SkipCounter:
    """Fetch many small files (images named by URL in a metadata file), `workers` at a time.

    Files already there are kept. A file that cannot be fetched (dead links are common in web-crawled
    datasets) is counted in `counter`, not fatal, until more than its `max_share` of them fail.
    """
    pairs = list(pairs)
    counter.see(len(pairs))
    todo = [(url, dest) for url, dest in pairs if not dest.is_file()]
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(todo), desc=counter.what, unit="file") as bar:
        futures = {pool.submit(fetch_url, url, dest, attempts=3): (url, dest) for url, dest in todo}
        for future in as_completed(futures):
            url, dest = futures[future]
            try:
                future.result()
            except (DownloadError, OSError, ValueError) as error:  # ValueError: a malformed URL
                counter.skip("not fetched", dest.name, f"{url}: {error}")
            bar.update()
    counter.check()
    return counter


# -- Hugging Face Hub ----------------------------------------------------------------------------------------


def _gated_message(repo: HubRepo, local_dir: Path) -> str:
    return (
        f"{repo.repo} is gated on the Hugging Face Hub. Log in, accept its terms at "
        f"{repo.page}, create a read token at "
        "https://huggingface.co/settings/tokens and export HF_TOKEN=<token> (or run `hf auth login`), then run "
        f"again. Its files go to {local_dir}, each checked against the sha256 (LFS) or git hash the Hub lists "
        "for it at the resolved commit. The source is not marked done before they all are."
    )


def check_tokens(source: Source, folder: Path) -> None:
    """Stop before anything is fetched when a gated repo of the source has no token to reach it with."""
    for repo in source.hub:
        if repo.gated and get_token() is None:
            raise ManualStepNeeded(_gated_message(repo, folder / repo.into))


def _select(repo: HubRepo, commit: str, tree: list[RepoFile]) -> dict[str, RepoFile]:
    """The repo's files that `repo.allow` selects, by path; a pattern that selects nothing is an error
    (the repo's layout changed)."""
    paths = [entry.path for entry in tree]
    for pattern in repo.allow:
        if not list(filter_repo_objects(paths, allow_patterns=[pattern])):
            raise DownloadError(
                f"{repo.repo}@{commit}: no file matches the allow pattern {pattern!r}; the repo holds "
                f"{sorted(paths)[:20]}{' ...' if len(paths) > 20 else ''}. Fix allow in cumo/data/sources.yaml."
            )
    selected = set(filter_repo_objects(paths, allow_patterns=list(repo.allow)))
    return {entry.path: entry for entry in tree if entry.path in selected}


def fetch_hub(repo: HubRepo, local_dir: Path, commit: str | None = None) -> dict:
    """Download the files of a Hub repo (dataset or model) that `repo.allow` selects into `local_dir` and
    verify them.

    Everything is fetched at one commit, so the files are one consistent snapshot: `commit` where given (the
    one the lock file pins), else the one the revision resolves to now. Returns the record for the marker:
    repo, revision, commit and every file's sha256.
    """
    locked = commit is not None
    # huggingface_hub reads HF_ENDPOINT once, when it is imported, and builds file URLs from that constant;
    # passing the endpoint explicitly makes a value set later (a mirror, the tests' server) count everywhere.
    endpoint = os.environ.get("HF_ENDPOINT") or None
    api = HfApi(endpoint=endpoint)
    try:
        commit = commit or api.repo_info(repo.repo, repo_type=repo.repo_type, revision=repo.revision).sha
        tree = [
            entry
            for entry in api.list_repo_tree(
                repo.repo, repo_type=repo.repo_type, revision=commit, recursive=True
            )
            if isinstance(entry, RepoFile)
        ]
        wanted = _select(repo, commit, tree)
        snapshot_download(
            repo.repo,
            repo_type=repo.repo_type,
            revision=commit,
            allow_patterns=list(repo.allow),
            local_dir=local_dir,
            endpoint=endpoint,
        )
    except GatedRepoError as error:  # the Hub lists a gated repo to anyone but serves its files with a token
        raise ManualStepNeeded(_gated_message(repo, local_dir)) from error
    except HfHubHTTPError as error:
        if locked:
            raise DownloadError(
                f"{repo.repo}@{commit}, the commit the lock file pins for revision {repo.revision!r}: {error}. "
                "If the Hub no longer has that commit, renew the source's pins: `cumo download SOURCE --update-lock`."
            ) from error
        raise DownloadError(
            f"{repo.repo}@{repo.revision}: {error}. Check repo and revision in cumo/data/sources.yaml."
        ) from error
    if not locked and commit != repo.revision:
        tqdm.write(f"{repo.repo}: revision {repo.revision!r} resolved to commit {commit}")
    digests = {}
    for path, entry in sorted(wanted.items()):
        local = local_dir / path
        if not local.is_file():
            raise DownloadError(f"{repo.repo}@{commit}: {path} did not arrive in {local}; run again")
        sha256, git_sha1 = file_digests(local)
        kind, expected, actual = (
            ("sha256", entry.lfs.sha256, sha256) if entry.lfs else ("git sha1", entry.blob_id, git_sha1)
        )
        if actual != expected:
            local.unlink()
            raise ChecksumError(
                f"{local}: {kind} {actual}, but the Hub lists {expected} for {path} of {repo.repo}@{commit}. "
                "The file was deleted: run again to fetch it anew."
            )
        digests[path] = sha256
    return {
        "repo": repo.repo,
        "repo_type": repo.repo_type,
        "revision": repo.revision,
        "commit": commit,
        "sha256": digests,
    }


# -- Files placed by hand ------------------------------------------------------------------------------------


def check_manual(source: Source, folder: Path) -> dict[str, str]:
    """Check the files a source needs placed by hand; return their sha256 by name.

    Every missing file is listed at once, with where to get it, where to put it and its checksum, before
    anything of the source is fetched, so that a source is never half downloaded for want of one file.
    """
    missing = [item for item in source.manual if not (folder / item.file).is_file()]
    if missing:
        steps = "\n".join(
            f"  - {item.get}\n    put it at {folder / item.file}\n    "
            + (
                f"it will be checked against sha256 {item.sha256}"
                if item.sha256
                else "no sha256 is declared yet: its digest will be printed and recorded in the marker"
            )
            for item in missing
        )
        raise ManualStepNeeded(
            f"{source.name} ({source.page}) needs {len(missing)} file(s) that cannot be downloaded "
            f"automatically:\n{steps}\nThen run again. Nothing of {source.name} was downloaded."
        )
    digests = {}
    for item in source.manual:
        path = folder / item.file
        digest = file_digests(path)[0]
        if item.sha256 is not None and digest != item.sha256:
            raise ChecksumError(
                f"{path}: sha256 {digest}, but cumo/data/sources.yaml declares {item.sha256}. The file is "
                f"incomplete or another release: get it again ({item.get}) and replace it."
            )
        digests[item.file] = digest
    return digests


# -- Archives ------------------------------------------------------------------------------------------------


def _outside(name: str) -> bool:
    """Whether an archive path, taken relative to the target folder, would leave it."""
    normal = posixpath.normpath(name.replace("\\", "/"))
    return name.startswith(("/", "\\")) or bool(re.match(r"[A-Za-z]:", name)) or normal.split("/")[0] == ".."


def _check_member(archive: Path, name: str, link: str | None = None, hard: bool = False) -> None:
    """Refuse a member outside the target folder, or a link to outside it (a symbolic link's target is
    relative to the link's folder, a hard link's to the archive's root)."""
    if _outside(name):
        problem = "has a path outside the target folder"
    elif link is not None and _outside(link if hard else posixpath.join(posixpath.dirname(name), link)):
        problem = f"is a {'hard' if hard else 'symbolic'} link to {link!r}, outside the target folder"
    else:
        return
    raise UnsafeArchiveError(
        f"{archive}: member {name!r} {problem}; the archive is refused and nothing was extracted from it. "
        "Delete it and download it again; if the member is still there, the archive is not the expected one."
    )


def extract_archive(archive: Path, into: Path, *, flatten: bool = False, only: tuple[str, ...] = ()) -> int:
    """Extract a zip or tar (.tar, .tar.gz, ...) archive into `into` and return the number of files.

    Every member is checked before the first is written. `flatten` keeps only the members' file names;
    `only` (fnmatch patterns over member paths) extracts just the members that match one. An archive that
    cannot be read to its end raises `CorruptArchive`.
    """
    try:
        return _extract(archive, into, flatten, only)
    except (
        zipfile.BadZipFile,
        tarfile.ReadError,
        EOFError,
        zlib.error,
        lzma.LZMAError,
        gzip.BadGzipFile,
    ) as error:
        raise CorruptArchive(
            f"{archive} cannot be read to its end ({type(error).__name__}: {error})"
        ) from error


def _extract(archive: Path, into: Path, flatten: bool, only: tuple[str, ...]) -> int:

    def wanted(name: str) -> bool:
        return not only or any(fnmatch.fnmatch(name, pattern) for pattern in only)

    into.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zipped:
            members = zipped.infolist()
            for member in members:
                _check_member(archive, member.filename)
            files = [member for member in members if not member.is_dir() and wanted(member.filename)]
            for member in tqdm(files, desc=f"extract {archive.name}", unit="file", leave=False):
                target = into / (PurePosixPath(member.filename).name if flatten else member.filename)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(member) as source, open(target, "wb") as out:
                    while chunk := source.read(CHUNK):
                        out.write(chunk)
        return len(files)
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tarred:
            members = tarred.getmembers()
            for member in members:
                link = member.linkname if member.issym() or member.islnk() else None
                _check_member(archive, member.name, link, hard=member.islnk())
                if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                    raise UnsafeArchiveError(
                        f"{archive}: member {member.name!r} is a device or pipe; the archive is refused and "
                        "nothing was extracted from it. An image archive holds files only: download it again."
                    )
            members = [member for member in members if wanted(member.name)]
            if flatten:
                members = [
                    member.replace(name=PurePosixPath(member.name).name)
                    for member in members
                    if member.isfile()
                ]
            files = [member for member in members if member.isfile()]
            # The "data" filter (PEP 706) refuses the same members again, as a second line of defence.
            tarred.extractall(
                into,
                members=tqdm(members, desc=f"extract {archive.name}", unit="member", leave=False),
                filter="data",
            )
        return len(files)
    raise CorruptArchive(
        f"{archive} is neither a zip nor a tar archive (cut short, or an error page saved as a file?)"
    )


# -- Converted entries ---------------------------------------------------------------------------------------


def write_entries(path: Path, entries: Iterable[dict]) -> int:
    """Stream `entries` into a JSON array at `path` (written whole, then renamed); return how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    count = 0
    try:
        with open(partial, "w") as out:
            out.write("[")
            for entry in entries:
                out.write(("," if count else "") + "\n" + json.dumps(entry, ensure_ascii=False))
                count += 1
            out.write("\n]\n")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(path)
    return count


def converted_path(data_root: Path, output: str) -> Path:
    """Where a source's conversion `output` goes: data/jsons/sources/<output>.json."""
    return data_root / "jsons" / "sources" / f"{output}.json"


# -- Pins learned on first download (the lock file) ----------------------------------------------------------


def lock_entry(source: Source, hub: list[dict], files: dict[str, str]) -> dict:
    """A source's pins for the lock file (cumo/data/lockfile.py), from the records of its download: its Hub
    repos' (`hub`, as `fetch_hub` returns them) and the sha256 of its web and hand-placed files by name
    (`files`). What the records lack (declared after a marker was written) is left out, to be learned by the
    next download."""
    declared = {repo.repo for repo in source.hub}
    entry = {
        "hub": [
            {
                "repo": record["repo"],
                "revision": record["revision"],
                "commit": record["commit"],
                "files": dict(sorted(record["sha256"].items())),
            }
            for record in hub
            if record["repo"] in declared
        ],
        "web": [{"url": item.url, "sha256": files[item.file]} for item in source.web if item.file in files],
        "manual": [
            {"file": item.file, "sha256": files[item.file]} for item in source.manual if item.file in files
        ],
    }
    return {kind: pins for kind, pins in entry.items() if pins}


def _pinned_files(source: Source, entry: dict) -> dict[str, str]:
    """The sha256 a lock entry pins for each file the source declares, by its path in the source's folder
    (pins of repos and URLs no longer declared are left out)."""
    into = {repo.repo: repo.into for repo in source.hub}
    names = {item.url: item.file for item in source.web}
    pins = {
        posixpath.normpath(posixpath.join(into[pin["repo"]], path)): digest
        for pin in entry.get("hub", [])
        if pin["repo"] in into
        for path, digest in pin["files"].items()
    }
    pins |= {names[pin["url"]]: pin["sha256"] for pin in entry.get("web", []) if pin["url"] in names}
    pins |= {pin["file"]: pin["sha256"] for pin in entry.get("manual", [])}
    return pins


def _locked_commits(source: Source, locked: dict) -> dict[str, str]:
    """The commit the lock pins for each Hub repo of the source at its declared revision, by repo. A repo
    declared since, or at another branch or tag, has none: it is resolved anew and its pins learned."""
    revisions = {repo.repo: repo.revision for repo in source.hub}
    return {
        pin["repo"]: pin["commit"]
        for pin in locked.get("hub", [])
        if revisions.get(pin["repo"]) in (pin["revision"], pin["commit"])
    }


def _check_declared(source: Source, locked: dict, lock: Path) -> None:
    """Stop before anything is fetched where the lock pins other bytes than cumo/data/sources.yaml declares:
    another commit for a repo declared at a commit, another sha256 for a file declared with one."""
    commits = {pin["repo"]: pin["commit"] for pin in locked.get("hub", [])}
    digests = _pinned_files(source, locked)
    contradictions = [
        f"{repo.repo} at commit {repo.revision}, the lock at {commits[repo.repo]}"
        for repo in source.hub
        if COMMIT.fullmatch(repo.revision) and commits.get(repo.repo, repo.revision) != repo.revision
    ] + [
        f"{item.file} with sha256 {item.sha256}, the lock with {digests[item.file]}"
        for item in (*source.web, *source.manual)
        if item.sha256 is not None and digests.get(item.file, item.sha256) != item.sha256
    ]
    if contradictions:
        raise LockFileError(
            f"{source.name}: cumo/data/sources.yaml declares {'; '.join(contradictions)} ({lock}). If the "
            f"declaration is the one intended, renew the lock: `cumo download {source.name} --update-lock`; "
            "if not, fix cumo/data/sources.yaml."
        )


def _check_pinned(source: Source, folder: Path, pins: dict, locked: dict, lock: Path) -> None:
    """Stop where a file's sha256 (in `pins`, this download's) differs from the one the lock pins. A fetched
    file that differs is deleted, so it does not pass for checked (issue 17); one placed by hand is kept."""
    fetched_at = {(pin["repo"], pin["commit"]) for pin in pins.get("hub", [])}
    locked = locked | {
        "hub": [pin for pin in locked.get("hub", []) if (pin["repo"], pin["commit"]) in fetched_at]
    }
    pinned = _pinned_files(source, locked)
    differ = {
        path: digest
        for path, digest in _pinned_files(source, pins).items()
        if pinned.get(path, digest) != digest
    }
    if not differ:
        return
    placed = {item.file for item in source.manual}
    for path in differ.keys() - placed:
        (folder / path).unlink()
    raise ChecksumError(
        f"{source.name}: "
        + "; ".join(
            f"{folder / path} has sha256 {digest}, but {lock} pins {pinned[path]}"
            for path, digest in differ.items()
        )
        + ". Fetched files that differ were deleted, files placed by hand kept. If the change upstream is the "
        f"one intended (a new release), renew the pins: `cumo download {source.name} --update-lock`, and commit "
        f"{lock}; if not, the source serves other bytes than its first download got: check {source.page}."
    )


# -- One source, end to end ----------------------------------------------------------------------------------


def marker_path(source: Source, data_root: Path) -> Path:
    return data_root / source.folder / f".{source.name}.done"


def source_module(name: str):
    """`cumo.data.sources.<name>` when the source needs code (conversion, extra fetching), else None."""
    module = f"cumo.data.sources.{name}"
    return importlib.import_module(module) if importlib.util.find_spec(module) else None


def _done(source: Source, marker: Path, lock: Path) -> dict:
    """The record of a source done already. One the lock does not know yet (downloaded before the lock
    existed) has its pins learned from the record, which holds every digest its download checked."""
    tqdm.write(f"{source.name}: done already ({marker})")
    record = json.loads(marker.read_text())
    if source.name not in lockfile.read(lock):
        lockfile.record(lock, source.name, lock_entry(source, record["hub"], record["sha256"]))
        tqdm.write(f"{source.name}: pins learned from {marker}, recorded in {lock}")
    return record


def download_source(
    source: Source,
    data_root: str | Path,
    lock: str | Path,
    update_lock: bool = False,
) -> dict:
    """Fetch, verify, extract and convert one source into the data tree; return its marker's record.

    Order: the lock's pins are checked against the declared ones, files placed by hand and tokens for gated
    repos are checked (stop with instructions before anything is fetched); then Hub repos (at the locked
    commits), web files, their digests against the locked ones, extraction (checking `expect`), the source
    module's `fetch` and `convert`; the pins the lock lacks are recorded in it, and the marker is written last.
    With the marker present, nothing is fetched.

    `update_lock` renews the source's pins on purpose, marker or not: its Hub revisions are resolved anew,
    files already in place are kept where they pass the declared checks (delete one to fetch it anew), and
    every digest is recorded in the lock again.
    """
    data_root = Path(data_root)
    lock = Path(lock)
    folder = data_root / source.folder
    marker = marker_path(source, data_root)
    if marker.is_file() and not update_lock:
        return _done(source, marker, lock)
    folder.mkdir(parents=True, exist_ok=True)
    # One process at a time per source: two runs (two Snakemake jobs, a user and a job) never share a .part.
    with exclusive(folder / f".{source.name}.lock"):
        if marker.is_file() and not update_lock:  # another process finished it while this one waited
            return _done(source, marker, lock)
        marker.unlink(missing_ok=True)  # renewed: not done until its new pins are recorded
        locked = {} if update_lock else lockfile.read(lock).get(source.name, {})
        _check_declared(source, locked, lock)
        commits = _locked_commits(source, locked)
        files = check_manual(source, folder)
        check_tokens(source, folder)
        for repo in source.hub:
            if repo.repo not in commits and not COMMIT.fullmatch(repo.revision):
                warnings.warn(
                    f"{repo.repo}: revision {repo.revision!r} is not a commit: this download pins the commit it "
                    f"resolves to now in {lock}, for every later download; commit that file (or put the commit "
                    "in cumo/data/sources.yaml)",
                    stacklevel=2,
                )
        hub = [fetch_hub(repo, folder / repo.into, commits.get(repo.repo)) for repo in source.hub]
        for item in source.web:
            files[item.file] = fetch_url(item.url, folder / item.file, item.sha256)
        pins = lock_entry(source, hub, files)
        _check_pinned(source, folder, pins, locked, lock)
        extracted = {}
        for step in source.extract:
            archives = sorted(folder.glob(step.archive))
            if not archives:
                raise DownloadError(
                    f"{source.name}: no file matches extract archive {step.archive!r} in {folder}; "
                    "fix extract in cumo/data/sources.yaml"
                )
            for archive in archives:
                name = archive.relative_to(folder).as_posix()
                try:
                    extracted[name] = extract_archive(
                        archive, folder / step.into, flatten=step.flatten, only=step.only
                    )
                except CorruptArchive as error:
                    # A file that fails a check does not keep its final name (issue 17): a fetched one is
                    # fetched again by the next run; one placed by hand is the user's to replace.
                    if name in {item.file for item in source.web}:
                        archive.unlink()
                        raise CorruptArchive(
                            f"{error}; it was deleted: run again to fetch it anew"
                        ) from error
                    raise CorruptArchive(f"{error}; replace it with a whole copy and run again") from error
            for path in step.expect:
                if not (folder / path).exists():
                    raise DownloadError(
                        f"{source.name}: extracting {step.archive} did not produce {folder / path}, the folder "
                        "CuMo's JSONs refer to: the archive's layout differs. Look inside it and fix extract "
                        f"of {source.name} in cumo/data/sources.yaml."
                    )
        # Digests learned are shown once the files passed every check, extraction included.
        known = _pinned_files(source, locked)
        for item in (*source.web, *source.manual):
            if item.sha256 is None and item.file not in known:
                tqdm.write(
                    f"{folder / item.file}: sha256 {files[item.file]} (not declared: pinned in {lock})"
                )
        record = {
            "source": source.name,
            "page": source.page,
            "hub": hub,
            "sha256": files,
            "extracted": extracted,
        }
        module = source_module(source.name)
        if hasattr(module, "fetch"):
            record["fetched"] = module.fetch(folder).to_dict()
        if hasattr(module, "convert"):
            record["converted"] = {
                output: write_entries(converted_path(data_root, output), entries)
                for output, entries in module.convert(data_root, source.folder).items()
            }
        record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if pins != locked:
            lockfile.record(lock, source.name, pins)
            tqdm.write(f"{source.name}: pins recorded in {lock}: commit it")
        _write_atomic(marker, json.dumps(record, indent=2) + "\n")
    tqdm.write(f"{source.name}: done ({marker})")
    return record


def source_folder(name: str, data_root: str | Path, config: str | Path = SOURCES) -> Path:
    """The folder of a downloaded source: for a base model, the directory to give `from_pretrained`.

    Only a finished download counts (its marker exists; a folder without one may hold half a shard). This
    reads no network, so a training job on a compute node can call it; the download itself runs where the
    network is (`cumo download`, the workflow's download rule).
    """
    source = _declared(name, load_sources(config))
    data_root = Path(data_root)
    marker = marker_path(source, data_root)
    if not marker.is_file():
        raise FileNotFoundError(
            f"source {name!r} is not downloaded: {marker} does not exist. Run `cumo download {name} "
            f"--data-root {data_root}` first, on a machine with network (the login node, not a compute node)."
        )
    return data_root / source.folder


def download(
    names: Iterable[str],
    data_root: str | Path,
    config: str | Path = SOURCES,
    lock: str | Path | None = None,
    update_lock: bool = False,
) -> list[dict]:
    """Download the named sources and the sources they require (requirements first) into `data_root`.

    `config` declares the sources (by default cumo's, cumo/data/sources.yaml); sources already done are skipped.
    `lock` holds the pins learned on first download, by default the lock kept with `config`; `update_lock` renews the named sources' pins (not those of the sources they require, which are checked
    as always). Returns every source's marker record.
    """
    names = list(names)
    sources = load_sources(config)
    lock = lockfile.default_path(config) if lock is None else lock
    return [
        download_source(source, data_root, lock, update_lock and source.name in names)
        for source in plan(names, sources)
    ]
