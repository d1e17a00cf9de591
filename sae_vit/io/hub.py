"""Push SAE checkpoints to the Hugging Face Hub and pull them back (``hf://owner/repo[/path][@revision]``).

Everything goes through ``huggingface_hub``'s own API, cache and token handling (``HF_TOKEN``, ``hf auth
login``), so a pulled SAE loads again with ``HF_HUB_OFFLINE=1``. Foreign layouts found on the Hub (the
paper's ViT-Prisma releases, SAELens, sparsify) are converted once into our format under
``$HF_HOME/sae_vit/converted/<owner>--<repo>@<commit>/<path>/sae.safetensors`` (see docs/hub.md).

Nothing waits on the network for long: huggingface_hub's HTTP client gets connect and read timeouts
(:data:`CONNECT_TIMEOUT`, :data:`READ_TIMEOUT`), and before the first Hub call one request of at most
:data:`PROBE_SECONDS` asks whether the Hub answers at all; when it does not, every call uses the local Hub cache
only (as ``HF_HUB_OFFLINE=1`` does), so an unreachable or silent network fails in seconds with one line, or is
not needed when the cache holds the answer. huggingface_hub's own retry warnings are silenced during our calls.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from sae_vit import __version__
from sae_vit.core import backbone as _backbone
from sae_vit.core.atomic import atomic_copy
from sae_vit.core.defaults import REAL_CLIP, default_sae_path
from sae_vit.core.errors import SaeVitError

#: Our model names -> Hugging Face Hub ids for the model card's ``base_model``.
BASE_MODELS = {REAL_CLIP: "laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K"}
CARD_TAGS = ["sae-vit", "sparse-autoencoder", "sae", "interpretability", "vision-transformer", "clip"]
_SAE_FILES = ("sae.safetensors", "cfg.json", "config.json", "sae_weights.safetensors")
_LAYOUT_RE = re.compile(r"^layer_(\d+)/(?:(resid_post|mlp_out|mlp_hidden)/)?(cls|patches|all)$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


# -- references --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HubRef:
    """A location on the Hub: ``repo_id`` (owner/name), ``path`` inside it ('' = root), ``revision`` (None = main)."""

    repo_id: str
    path: str = ""
    revision: str | None = None

    def uri(self) -> str:
        """The ``hf://`` form of this reference."""
        return f"hf://{self.repo_id}{'/' + self.path if self.path else ''}{'@' + self.revision if self.revision else ''}"


def parse_ref(text: str) -> HubRef:
    """Parse ``[hf://]owner/repo[/path][@revision]`` (also huggingface_hub's ``owner/repo@revision/path``)."""
    body = text[len("hf://"):] if text.startswith("hf://") else text
    if body.startswith("models/"):
        body = body[len("models/"):]
    parts = body.strip("/").split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise SaeVitError(f"{text!r} is not a Hub reference; write owner/repo[/path][@revision].")
    owner, name, rest = parts[0], parts[1], "/".join(parts[2:])
    revision = None
    if "@" in name:  # huggingface_hub's canonical form: owner/repo@revision/path
        name, after = name.split("@", 1)
        after = "/".join([after, rest]) if rest else after
        m = re.match(r"^(refs/(?:pr/\d+|convert/[\w.-]+)|[^/]+)(?:/(.*))?$", after)
        revision, rest = (m.group(1), m.group(2) or "") if m else ("", rest)
    elif "@" in rest:
        rest, revision = rest.rsplit("@", 1)
    if not re.fullmatch(r"[\w.-]+", owner) or not re.fullmatch(r"[\w.-]+", name) or revision == "":
        raise SaeVitError(f"{text!r} is not a valid Hub reference; write owner/repo[/path][@revision].")
    return HubRef(f"{owner}/{name}", rest.strip("/"), revision)


# -- environment ---------------------------------------------------------------------------------------
def _seconds(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


#: Seconds to wait for a connection to the Hub, and for each read from it (``SAEVIT_HUB_CONNECT_TIMEOUT``,
#: ``SAEVIT_HUB_READ_TIMEOUT``).
CONNECT_TIMEOUT = _seconds("SAEVIT_HUB_CONNECT_TIMEOUT", 5.0)
READ_TIMEOUT = _seconds("SAEVIT_HUB_READ_TIMEOUT", 10.0)
#: The most the reachability check may take, name resolution included (``SAEVIT_HUB_PROBE_SECONDS``).
PROBE_SECONDS = _seconds("SAEVIT_HUB_PROBE_SECONDS", 3.0)
_REACHABLE: dict[str, bool] = {}
_TIMEOUTS_SET: list[bool] = []


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def _probe(url: str, seconds: float) -> bool:
    """Whether anything answers an HTTP request to ``url`` within ``seconds`` (an error status is an answer). Runs
    in a daemon thread, so that a hanging name lookup is bounded too."""
    import urllib.error
    import urllib.request

    answer: list[bool] = []

    def ask() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=seconds).close()
            answer.append(True)
        except urllib.error.HTTPError:
            answer.append(True)
        except Exception:  # noqa: BLE001 - any failure to get an answer means "unreachable"
            answer.append(False)

    thread = threading.Thread(target=ask, daemon=True, name="saevit-hub-probe")
    thread.start()
    thread.join(seconds)
    return bool(answer and answer[0])


def _hub_reachable() -> bool:
    """Whether the Hub answers (asked once per process and endpoint; False when ``HF_HUB_OFFLINE`` is set)."""
    if _offline():
        return False
    url = _endpoint()
    if url not in _REACHABLE:
        _REACHABLE[url] = _probe(url, PROBE_SECONDS)
    return _REACHABLE[url]


def _local_only() -> bool:
    """Whether Hub calls must use the local cache only: offline by choice, or because the Hub does not answer."""
    return _offline() or not _hub_reachable()


def _set_timeouts() -> None:
    """Give huggingface_hub's shared HTTP client connect and read timeouts (its default client has none, so a
    server that accepts a connection and never answers would hang a command for ever)."""
    if _TIMEOUTS_SET:
        return
    _TIMEOUTS_SET.append(True)
    from huggingface_hub import set_client_factory

    try:
        from huggingface_hub.utils._http import default_client_factory
    except ImportError:  # another huggingface_hub layout: its own defaults stay
        return

    def bound(request) -> None:
        # huggingface_hub passes timeout=None on some requests (repo_info, paginated listings), which overrides a
        # client default: fill in every missing limit on the request itself.
        limits = request.extensions.get("timeout") or {}
        ours = {"connect": CONNECT_TIMEOUT, "read": READ_TIMEOUT, "write": READ_TIMEOUT, "pool": CONNECT_TIMEOUT}
        request.extensions["timeout"] = {k: limits.get(k) if limits.get(k) is not None else v for k, v in ours.items()}

    def factory():
        client = default_client_factory()
        client.timeout = type(client.timeout)(READ_TIMEOUT, connect=CONNECT_TIMEOUT)
        client.event_hooks["request"] = [*client.event_hooks.get("request", []), bound]
        return client

    set_client_factory(factory)


@contextlib.contextmanager
def _hub_call():
    """Around every Hub call: timeouts set, huggingface_hub's retry warnings silenced (the outcome is reported as
    one line), and when the Hub does not answer, huggingface_hub itself told it is offline (so that none of its
    own side requests, such as the user-agent registry, waits on the network either)."""
    from huggingface_hub import constants

    _set_timeouts()
    log = logging.getLogger("huggingface_hub")
    level, offline = log.level, constants.HF_HUB_OFFLINE
    log.setLevel(logging.ERROR)
    constants.HF_HUB_OFFLINE = offline or _local_only()
    try:
        yield
    finally:
        log.setLevel(level)
        constants.HF_HUB_OFFLINE = offline


def hub_cache_dir() -> Path:
    """The huggingface_hub cache in use: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else the library default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def converted_dir() -> Path:
    """Where foreign SAEs pulled from the Hub are kept after conversion (``$SAEVIT_CONVERTED`` overrides)."""
    if os.environ.get("SAEVIT_CONVERTED"):
        return Path(os.environ["SAEVIT_CONVERTED"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home).expanduser() / "sae_vit" / "converted"


def _hub_error(exc: Exception, ref: HubRef, action: str = "download") -> SaeVitError:
    """One clear sentence for a huggingface_hub failure."""
    from huggingface_hub import errors

    where = ref.uri()
    if isinstance(exc, errors.RevisionNotFoundError):
        return SaeVitError(f"Revision {ref.revision!r} does not exist in {ref.repo_id}; check the name after '@'.")
    if isinstance(exc, errors.GatedRepoError):
        return SaeVitError(f"{ref.repo_id} is gated; accept its terms on huggingface.co and log in with "
                           "`hf auth login` (or set HF_TOKEN).")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return SaeVitError(f"Repository {ref.repo_id} was not found on the Hub (or is private); check the name, or "
                           "log in with `hf auth login` / set HF_TOKEN if it is private.")
    if isinstance(exc, errors.EntryNotFoundError) and not isinstance(exc, errors.LocalEntryNotFoundError):
        return SaeVitError(f"{where} has no SAE file there; list what the repo holds with `saevit list {ref.repo_id}`.")
    if isinstance(exc, errors.LocalTokenNotFoundError) or (
        isinstance(exc, errors.HfHubHTTPError) and getattr(exc.response, "status_code", None) in (401, 403)
    ):
        return SaeVitError(f"The Hub refused to {action} {ref.repo_id} without valid credentials; log in with "
                           "`hf auth login` or set HF_TOKEN to a token with write access.")
    if isinstance(exc, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)) or _local_only():
        if _offline():
            return SaeVitError(f"{where} is not in the local Hugging Face cache ({hub_cache_dir()}) and "
                               f"HF_HUB_OFFLINE=1 forbids network access; unset HF_HUB_OFFLINE to {action} it.")
        return SaeVitError(f"Could not reach the Hugging Face Hub to {action} {where}, and it is not in the local "
                           f"cache ({hub_cache_dir()}); check the network, or pull it where there is one and set "
                           "HF_HUB_OFFLINE=1 here.")
    if isinstance(exc, errors.HfHubHTTPError):
        return SaeVitError(f"The Hub answered an error for {where} ({exc}); try again later.")
    return SaeVitError(f"Could not reach the Hugging Face Hub to {action} {where} ({type(exc).__name__}); check the "
                       f"network, or set HF_HUB_OFFLINE=1 to use only the local cache ({hub_cache_dir()}).")


def _hub_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean "the Hub or the cache could not answer" (network errors of whichever HTTP client
    this huggingface_hub uses included)."""
    import importlib

    from huggingface_hub import errors

    found: list[type[Exception]] = [errors.HfHubHTTPError, errors.LocalEntryNotFoundError,
                                    errors.OfflineModeIsEnabled, errors.LocalTokenNotFoundError, OSError]
    for client in ("httpx2", "httpx", "requests"):
        try:
            module = importlib.import_module(client)
        except ImportError:
            continue
        found.append(module.RequestException if client == "requests" else module.HTTPError)
    return tuple(found)


def _download_file(ref: HubRef, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        with _hub_call():
            return Path(hf_hub_download(ref.repo_id, filename, revision=ref.revision, cache_dir=hub_cache_dir(),
                                        local_files_only=_local_only(), library_name="sae-vit",
                                        library_version=__version__))
    except _hub_errors() as exc:
        raise _hub_error(exc, HubRef(ref.repo_id, filename, ref.revision)) from exc


def _download_folder(ref: HubRef, patterns: list[str] | None) -> Path:
    """The snapshot folder of ``ref`` (only ``patterns`` are fetched; offline, the cached snapshot)."""
    from huggingface_hub import snapshot_download

    try:
        with _hub_call():
            return Path(snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=hub_cache_dir(),
                                          allow_patterns=patterns, local_files_only=_local_only(),
                                          library_name="sae-vit", library_version=__version__))
    except _hub_errors() as exc:
        raise _hub_error(exc, ref) from exc


def _commit_of(local: Path) -> str:
    """The commit hash of a file inside a huggingface_hub snapshot folder."""
    parts = local.parts
    for i, part in enumerate(parts[:-1]):
        if part == "snapshots" and _COMMIT_RE.match(parts[i + 1]):
            return parts[i + 1]
    return "local"


# -- resolve -------------------------------------------------------------------------------------------
def _folder_patterns(path: str) -> list[str]:
    prefix = f"{path}/" if path else ""
    return [prefix + name for name in _SAE_FILES] + [prefix + "*.pt", prefix + "*.pth"]


def _local_sae(ref: HubRef, folder: Path, commit: str) -> Path:
    """Our checkpoint for the SAE in ``folder`` of a snapshot: the file itself, or a converted copy (cached)."""
    from sae_vit.core.sae import is_checkpoint
    from sae_vit.io.interop import detect_format, load_any

    if is_checkpoint(folder / "sae.safetensors"):
        return folder / "sae.safetensors"
    fmt = detect_format(folder)
    target = converted_dir() / f"{ref.repo_id.replace('/', '--')}@{commit}" / ref.path / "sae.safetensors"
    if target.is_file():
        return target
    sae = load_any(folder, fmt)
    sae.cfg.training = {**sae.cfg.training, "source": ref.uri() if commit == "local"
                        else HubRef(ref.repo_id, ref.path, commit).uri()}
    # Atomic write; a concurrent converter writing the same bytes may win the rename, which is fine.
    return sae.save(target, overwrite=True)


def resolve_hf_uri(uri: str) -> Path:
    """Turn ``hf://owner/repo[/path][@revision]`` into a local sae-vit checkpoint, through the Hub cache.

    ``path`` may name a checkpoint file or a folder holding ``sae.safetensors``; a ViT-Prisma, SAELens or
    sparsify folder (or a Prisma repo root) is converted once and the converted file is returned.
    """
    from sae_vit.core.sae import is_checkpoint

    ref = parse_ref(uri)
    if ref.path.endswith(".safetensors") or ref.path.endswith((".pt", ".pth")):
        local = _download_file(ref, ref.path)
        if local.suffix == ".safetensors" and is_checkpoint(local):
            return local
        parent = "/".join(ref.path.split("/")[:-1])
        snap = _download_folder(HubRef(ref.repo_id, parent, ref.revision), _folder_patterns(parent))
        return _local_sae(HubRef(ref.repo_id, parent, ref.revision), snap / parent, _commit_of(local))
    prefix = f"{ref.path}/" if ref.path else ""
    try:
        local = _download_file(ref, prefix + "sae.safetensors")
        if is_checkpoint(local):
            return local
    except SaeVitError:
        pass  # not our layout (or not cached): look at the whole folder below
    snap = _download_folder(ref, _folder_patterns(ref.path))
    folder = snap / ref.path if ref.path else snap
    if not folder.is_dir():
        where = f"the cached snapshot ({hub_cache_dir()})" if _offline() else "the repo"
        raise SaeVitError(f"{ref.uri()} holds no SAE (no such folder in {where}); see `saevit list {ref.repo_id}`.")
    return _local_sae(ref, folder, _commit_of(snap / "x"))


# -- list / pull ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HubSAE:
    """One SAE found in a repo: its folder (``path``, '' = root), the library that wrote it, and where it sits."""

    path: str
    format: str
    layer: int | None = None
    site: str | None = None
    tokens: str | None = None


def sae_entries(files: list[str]) -> list[HubSAE]:
    """The SAEs a repo holds, read from its file list alone (folder layout and file names)."""
    by_dir: dict[str, set[str]] = {}
    for f in files:
        d, _, name = f.rpartition("/")
        by_dir.setdefault(d, set()).add(name)
    found = []
    for d, names in sorted(by_dir.items()):
        if "cfg.json" in names and "sae_weights.safetensors" in names:
            fmt = "saelens"
        elif "cfg.json" in names and "sae.safetensors" in names:
            fmt = "sparsify"
        elif "sae.safetensors" in names:
            fmt = "sae_vit"
        elif "config.json" in names and any(n.endswith((".pt", ".pth")) for n in names):
            fmt = "prisma"
        else:
            continue
        m = _LAYOUT_RE.match(d)
        found.append(HubSAE(d, fmt, int(m.group(1)), m.group(2) or "resid_post", m.group(3)) if m
                     else HubSAE(d, fmt))
    return found


def _cached_files(ref: HubRef) -> list[str] | None:
    """Files of ``ref``'s revision in the local cache (None when that revision was never downloaded)."""
    storage = hub_cache_dir() / f"models--{ref.repo_id.replace('/', '--')}"
    rev = ref.revision or "main"
    commit = rev if _COMMIT_RE.match(rev) else None
    if commit is None and (storage / "refs" / rev).is_file():
        commit = (storage / "refs" / rev).read_text().strip()
    snap = storage / "snapshots" / commit if commit else None
    if snap is None or not snap.is_dir():
        return None
    return sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file() or p.is_symlink())


def list_repo(spec: str) -> tuple[list[HubSAE], bool]:
    """The SAEs in ``owner/repo[@revision]`` and whether the listing came from the local cache (offline)."""
    from huggingface_hub import HfApi

    ref = parse_ref(spec)
    if not _local_only():
        try:
            with _hub_call():
                files = HfApi().list_repo_files(ref.repo_id, revision=ref.revision)
            return sae_entries(files), False
        except _hub_errors() as exc:
            from huggingface_hub import errors

            if isinstance(exc, (errors.RepositoryNotFoundError, errors.RevisionNotFoundError)):
                raise _hub_error(exc, ref, "list") from exc
            cached = _cached_files(ref)
            if cached is None:
                raise _hub_error(exc, ref, "list") from exc
            return sae_entries(cached), True
    cached = _cached_files(ref)
    if cached is None and _offline():
        raise SaeVitError(f"{ref.repo_id} (revision {ref.revision or 'main'}) is not in the local Hugging Face cache "
                          f"({hub_cache_dir()}) and HF_HUB_OFFLINE=1 forbids listing it on the Hub; unset "
                          "HF_HUB_OFFLINE or pull it first.")
    if cached is None:
        raise SaeVitError(f"Could not reach the Hugging Face Hub ({_endpoint()}) to list {ref.repo_id}, and it is not "
                          f"in the local cache ({hub_cache_dir()}); check the network, or pull it where there is one.")
    return sae_entries(cached), True


@dataclass(frozen=True)
class Pulled:
    """One pulled SAE: its folder in the repo and the local sae-vit checkpoint to load."""

    path: str
    local: Path


def pull(spec: str, out: str | os.PathLike | None = None, overwrite: bool = False) -> list[Pulled]:
    """Download the SAE(s) at ``owner/repo[/path][@revision]`` into the Hub cache (converting foreign layouts).

    With ``out``, also copy each as ``out/<path>/sae.safetensors`` (atomic; no overwrite without ``overwrite``).
    """
    ref = parse_ref(spec)
    if ref.path.endswith((".safetensors", ".pt", ".pth")):
        parent = "/".join(ref.path.split("/")[:-1])
        pulled = [Pulled(parent, resolve_hf_uri(ref.uri()))]
    else:
        snap = _download_folder(ref, [f"{ref.path}/*"] if ref.path else None)
        base = snap / ref.path if ref.path else snap
        if not base.is_dir():
            raise SaeVitError(f"{ref.uri()} is not a folder of the repo; see `saevit list {ref.repo_id}`.")
        files = [p.relative_to(snap).as_posix() for p in base.rglob("*") if p.is_file()]
        entries = sae_entries(files)
        if not entries:
            raise SaeVitError(f"{ref.uri()} holds no SAE files sae-vit can read; see `saevit list {ref.repo_id}`.")
        commit = _commit_of(snap / "x")
        pulled = [Pulled(e.path, _local_sae(HubRef(ref.repo_id, e.path, ref.revision), snap / e.path, commit))
                  for e in entries]
    if out is not None:
        out = Path(out)
        targets = [(p, out / p.path[len(ref.path):].strip("/") / "sae.safetensors") for p in pulled]
        clash = [t for _, t in targets if t.exists()]
        if clash and not overwrite:
            raise SaeVitError(f"{clash[0]} already exists; pass --overwrite to replace it or choose another --out.")
        pulled = [Pulled(p.path, atomic_copy(p.local, target)) for p, target in targets]
    return pulled


# -- push ----------------------------------------------------------------------------------------------
def base_model_id(model: str) -> str | None:
    """The Hub id of a backbone for the card's ``base_model`` (None for the built-in toy model)."""
    if model in ("", "toy"):
        return None
    return BASE_MODELS.get(model, model if "/" in model else f"timm/{model}")


def collect_checkpoints(src: str | os.PathLike) -> dict[str, Path]:
    """Our checkpoints under ``src`` (a file or a folder), keyed by their path in the Hub layout."""
    from sae_vit.core.sae import is_checkpoint, read_checkpoint

    src = Path(src)
    if src.is_file():
        files = [src]
    elif src.is_dir():
        files = sorted(p for p in src.rglob("*.safetensors") if is_checkpoint(p))
    else:
        raise SaeVitError(f"{src} does not exist; pass an SAE checkpoint or a folder of them.")
    if not files:
        raise SaeVitError(f"{src} holds no sae-vit checkpoints; train some with `saevit train` first.")
    layout: dict[str, Path] = {}
    for f in files:
        cfg, _ = read_checkpoint(f)
        if cfg.layer is None:
            raise SaeVitError(f"{f} records no layer, so it has no place in the Hub layout; re-save it with a layer.")
        key = default_sae_path(cfg.layer, cfg.tokens, cfg.site, root=Path(".")).as_posix()
        if key in layout:
            raise SaeVitError(f"{layout[key]} and {f} both belong at {key}; push them to separate repos or revisions.")
        layout[key] = f
    return layout


def model_card(repo_id: str, checkpoints: dict[str, Path]) -> str:
    """README.md for a repo of SAEs: YAML header (library, tags, base model) and a table read from the metadata."""
    from sae_vit.core.sae import read_checkpoint

    rows, models = [], []
    for key, f in sorted(checkpoints.items()):
        cfg, _ = read_checkpoint(f)
        t = cfg.training or {}

        def num(name, fmt, t=t):
            return format(t[name], fmt) if isinstance(t.get(name), (int, float)) else "–"

        rows.append(f"| `{key.rsplit('/', 1)[0]}` | {cfg.layer} | {cfg.tokens} | {cfg.site} | {cfg.architecture} | "
                    f"{cfg.d_sae} | {cfg.k if cfg.k is not None else '–'} | {num('l0', '.1f')} | {num('fvu', '.4f')} |")
        if cfg.model not in models:
            models.append(cfg.model)
    bases = [b for b in (base_model_id(m) for m in models) if b]
    header = ["---", "library_name: sae-vit", "tags:"] + [f"- {t}" for t in CARD_TAGS]
    if len(bases) == 1:
        header.append(f"base_model: {bases[0]}")
    elif bases:
        header += ["base_model:"] + [f"- {b}" for b in bases]
    header += ["# license: set the license of these weights here (e.g. apache-2.0, mit)", "---", ""]
    names = ", ".join("sae-vit toy CLIP" if m in ("", "toy") else f"`{m}`" for m in models)
    example = sorted(checkpoints)[0].rsplit("/", 1)[0]
    body = [
        f"# Sparse autoencoders for {names}",
        "",
        f"{len(checkpoints)} sparse autoencoder(s) trained with sae-vit on the vision "
        "transformer's activations. Each `sae.safetensors` is one SAE in sae-vit's checkpoint format "
        "(tensors `W_enc`, `b_enc`, `W_dec`, `b_dec`; metadata under the key `sae_vit`).",
        "",
        "| path | layer | tokens | site | architecture | d_sae | k | L0 | FVU |",
        "| --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        "L0 and FVU are the held-out values recorded at the end of training.",
        "",
        "## Use",
        "",
        "```bash",
        f"saevit pull {repo_id}                       # all SAEs, into the Hugging Face cache",
        f"saevit sparsity hf://{repo_id}/{example}    # any command takes hf:// paths",
        "```",
        "",
        "```python",
        "from sae_vit.sae import SAE",
        f'sae = SAE.load("hf://{repo_id}/{example}")',
        "```",
        "",
    ]
    return "\n".join(header + body)


@dataclass(frozen=True)
class PushResult:
    """What :func:`push` uploaded: the repo URL, the revision, and the files in the commit."""

    url: str
    revision: str | None
    files: list[str]


def push(src: str | os.PathLike, repo_id: str, private: bool = False, revision: str | None = None,
         message: str | None = None) -> PushResult:
    """Upload the checkpoint(s) at ``src`` to ``repo_id`` in the Hub layout, with a generated model card."""
    from huggingface_hub import HfApi

    ref = parse_ref(repo_id)
    if ref.path:
        raise SaeVitError(f"{repo_id!r} has a path; push takes owner/repo (the layout inside it is automatic).")
    revision = revision or ref.revision
    checkpoints = collect_checkpoints(src)
    with tempfile.TemporaryDirectory(prefix="saevit-push-") as tmp:
        tmp = Path(tmp)
        for key, f in checkpoints.items():
            (tmp / key).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, tmp / key)
        (tmp / "README.md").write_text(model_card(ref.repo_id, checkpoints))
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        api = HfApi(library_name="sae-vit", library_version=__version__)
        if not _offline() and not _hub_reachable():
            raise SaeVitError(f"Cannot push to {ref.repo_id}: the Hugging Face Hub ({_endpoint()}) does not answer; "
                              "check the network and try again.")
        try:
            with _hub_call():
                url = api.create_repo(ref.repo_id, private=private, exist_ok=True, repo_type="model")
                if revision:
                    api.create_branch(ref.repo_id, branch=revision, exist_ok=True, repo_type="model")
                api.upload_folder(repo_id=ref.repo_id, folder_path=str(tmp), revision=revision, repo_type="model",
                                  commit_message=message or f"Upload {len(checkpoints)} SAE(s) with sae-vit "
                                  f"{__version__}")
        except _hub_errors() as exc:
            raise _hub_error(exc, ref, "push to") from exc
    return PushResult(str(url), revision, files)


__all__ = ["HubRef", "HubSAE", "Pulled", "PushResult", "base_model_id", "collect_checkpoints", "converted_dir",
           "hub_cache_dir", "list_repo", "model_card", "parse_ref", "pull", "push", "resolve_hf_uri", "sae_entries"]


# timm's Hub weights (``load_backbone(name)`` without ``weights``) are fetched under the same guard as our own calls.
_backbone.HUB_GUARD[:] = [_hub_call]
