"""TextHead: unit text embeddings in a model's image-embedding space, for zero-shot classification.

Three sources, one interface: the toy CLIP's text tower (:func:`sae_vit.world.toyclip.toy_text_head`), open_clip's text
tower for real CLIP (:meth:`TextHead.from_open_clip`, optional dependency) and a precomputed embeddings
file (:meth:`TextHead.from_file`: safetensors tensor ``embeddings`` [n, d], ``__metadata__["names"]`` a
JSON list of n names). Zero-shot logits are 100 · cos(image embedding, text embedding).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from sae_vit.core.atomic import atomic_write
from sae_vit.core.errors import SaeVitError

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)

#: Entry-point group of text heads for named backbones (``name = "module:factory"``, ``factory(weights)``).
TEXT_HEAD_GROUP = "sae_vit.text_heads"


class TextHead:
    """Embeds class names or concept words as unit vectors [n, d] in the image embedding space.

    ``encode`` maps a list of full prompts to (not necessarily unit) embeddings [n, d]; ``table`` (for
    files) maps a name to a fixed embedding, in which case templates do not apply.
    """

    def __init__(self, encode: Callable[[list[str]], Tensor] | None = None,
                 table: dict[str, Tensor] | None = None, source: str = "", vocab: Sequence[str] | None = None,
                 concept_prompts: Callable[[str], list[str]] | None = None):
        if (encode is None) == (table is None):
            raise ValueError("give exactly one of encode or table")
        self._encode = encode
        self._table = table
        self.source = source
        #: Words the text tower can embed (the toy's word-level vocabulary); None when any text works.
        self.vocab = set(vocab) if vocab is not None else None
        #: Prompts that name a concept word, for towers on which a bare word means something else (the toy).
        self._concept_prompts = concept_prompts

    @property
    def names(self) -> list[str] | None:
        """The names an embeddings file holds, in file order (None for a text tower)."""
        return list(self._table) if self._table is not None else None

    # ----------------------------------------------------------------------------------- constructors

    @classmethod
    def for_model(cls, model: str, weights: str | os.PathLike | None = None,
                  text_embeddings: str | os.PathLike | None = None) -> TextHead:
        """The text head that goes with a backbone: an embeddings file when given; for a registered model name
        its own text head (``toy``: the toy text tower, :func:`sae_vit.world.toyclip.toy_text_head`); otherwise
        open_clip's."""
        if text_embeddings is not None:
            return cls.from_file(text_embeddings)
        from importlib.metadata import entry_points

        heads = {ep.name: ep for ep in entry_points(group=TEXT_HEAD_GROUP)}
        if model in heads:
            return heads[model].load()(weights)
        return cls.from_open_clip()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TextHead:
        """Precomputed embeddings: safetensors with ``embeddings`` [n, d] and a JSON ``names`` list in the
        metadata. Names are looked up as given (templates are ignored)."""
        from safetensors import SafetensorError, safe_open

        p = Path(path)
        if not p.is_file():
            raise SaeVitError(f"Text embeddings file {p} does not exist; check the --text-embeddings path.")
        needs = "needs a tensor 'embeddings' [n, d] and a 'names' JSON list in its metadata; write it with " \
                "TextHead.save_embeddings."
        try:
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
                if "embeddings" not in f.keys() or "names" not in meta:
                    raise SaeVitError(f"{p} {needs}")
                emb = f.get_tensor("embeddings").float()
            names = json.loads(meta["names"])
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise SaeVitError(f"{p} is not a readable text-embeddings file ({type(exc).__name__}); it {needs}") from exc
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SaeVitError(f"{p}: 'names' is not a JSON list of strings; it {needs}")
        if emb.ndim != 2 or len(names) != emb.shape[0]:
            raise SaeVitError(f"{p} has {len(names)} names for embeddings of shape {tuple(emb.shape)}; "
                              "they must match one name per row.")
        if not torch.isfinite(emb).all():
            raise SaeVitError(f"{p}: the embeddings hold NaN or infinite values; re-create the file.")
        emb = F.normalize(emb, dim=-1)
        return cls(table={n: emb[i] for i, n in enumerate(names)}, source=f"file:{p}")

    @classmethod
    def from_open_clip(cls, model_name: str = "ViT-B-32", pretrained: str = "datacomp_xl_s13b_b90k"
                       ) -> TextHead:
        """open_clip's text tower for a real CLIP (needs ``pip install 'sae-vit[openclip]'`` and the weights,
        downloaded by open_clip on first use)."""
        try:
            import open_clip
        except ImportError as e:
            raise SaeVitError("open_clip is not installed; run `pip install 'sae-vit[openclip]'` or pass "
                              "--text-embeddings FILE.") from e
        try:
            model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
        except Exception as e:  # network, unknown name: a user-fixable problem
            raise SaeVitError(f"open_clip could not load {model_name} ({pretrained}): {e}; check the names "
                              "and the network.") from e
        tokenizer = open_clip.get_tokenizer(model_name)
        model.eval()

        @torch.no_grad()
        def encode(prompts: list[str]) -> Tensor:
            return model.encode_text(tokenizer(prompts)).float()

        return cls(encode=encode, source=f"open_clip:{model_name}:{pretrained}")

    # ----------------------------------------------------------------------------------- use

    @torch.no_grad()
    def embed(self, names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> Tensor:
        """Unit text embeddings [n, d]: each name put in every template, embedded, averaged over templates
        and renormalised (CLIP's prompt ensembling)."""
        names = list(names)
        if self._table is not None:
            missing = [n for n in names if n not in self._table]
            if missing:
                raise SaeVitError(f"{missing[0]!r} is not in the text embeddings file ({self.source}); add "
                                  "it or use names the file holds.")
            return torch.stack([self._table[n] for n in names])
        if not templates:
            raise SaeVitError("No prompt templates given; pass at least one, e.g. 'a photo of a {}.'.")
        return self._embed_sets([[t.format(n) for t in templates] for n in names])

    def embed_concepts(self, words: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> Tensor:
        """Unit embeddings [n, d] of concept words (steer-score's vocabulary, inspect's and suppress's labels):
        on the toy tower, where a bare word is the caption of that word *written* on an image, each word's
        :func:`sae_vit.world.concept_prompts` averaged; elsewhere :meth:`embed` with ``templates``."""
        if self._concept_prompts is None or self._table is not None:
            return self.embed(words, templates)
        return self._embed_sets([self._concept_prompts(w) for w in words])

    def _embed_sets(self, prompt_sets: Sequence[Sequence[str]]) -> Tensor:
        """One unit embedding per set of prompts: the set's unit embeddings averaged and renormalised."""
        emb = F.normalize(self._encode([p for ps in prompt_sets for p in ps]).float(), dim=-1)
        parts = emb.split([len(ps) for ps in prompt_sets])
        return torch.stack([F.normalize(part.mean(0), dim=-1) for part in parts])

    def zero_shot_logits(self, image_emb: Tensor, names: Sequence[str],
                         templates: Sequence[str] = DEFAULT_TEMPLATES) -> Tensor:
        """100 · cos(image embedding, text embedding): image_emb [b, d] → logits [b, n]."""
        text = self.embed(names, templates).to(image_emb.device)
        return 100 * F.normalize(image_emb.float(), dim=-1) @ text.T

    @staticmethod
    def save_embeddings(path: str | os.PathLike, names: Sequence[str], embeddings: Tensor) -> Path:
        """Write an embeddings file that :meth:`from_file` reads (atomic)."""
        from safetensors.torch import save_file

        tensors, meta = {"embeddings": embeddings.detach().float().contiguous()}, {"names": json.dumps(list(names))}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
