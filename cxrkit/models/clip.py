"""CLIP models (open_clip) from local folders: the image tower as a backbone, the text tower
for zero-shot classes.

``biomedclip``: Microsoft's BiomedCLIP (ViT-B/16 image tower, PubMedBERT text tower, MIT
licence), published on Hugging Face in open_clip's layout: ``open_clip_config.json``
(``model_cfg`` + ``preprocess_cfg``) and ``open_clip_pytorch_model.bin`` (or
``open_clip_model.safetensors``). Any open_clip checkpoint in that layout works (the
architecture comes from ``backbone_kwargs``, BiomedCLIP's by default, and must agree with
the folder's config). Weights are read with safetensors or ``torch.load(weights_only=True)``
(open_clip's own loader, never unpickling objects).

The backbone's features are open_clip's ``encode_image(x, normalize=True)``: the projected,
L2-normalised image embedding, so that a zero-shot class is an exact linear row on them
(:func:`zero_shot_rows`). ``normalize: false`` gives the raw projection.

A Hugging Face text tower (BiomedCLIP's) needs its tokenizer and model config offline: put
the text model's ``config.json`` and tokenizer files (``vocab.txt``,
``tokenizer_config.json``...) in the same folder, as open_clip's ``local-dir:`` schema
expects; cxrkit then points the text config at the folder instead of the Hub.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

#: the weight files open_clip looks for in a folder, in its order of preference
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")

#: BiomedCLIP's published image tower (microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224,
#: open_clip_config.json: model_cfg.embed_dim and model_cfg.vision_cfg)
BIOMEDCLIP_ARCH: dict[str, Any] = {
    "embed_dim": 512,
    "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
                   "timm_proj": "linear", "image_size": 224},
    "quick_gelu": False,
}
#: and its preprocessing (preprocess_cfg: OpenAI CLIP's mean / std; open_clip's evaluation
#: transform: shorter side resized to 224 with bicubic interpolation, centre crop)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

_ARCH_KEYS = ("embed_dim", "vision_cfg", "quick_gelu")


def _need_open_clip() -> Any:
    try:
        import open_clip
    except ImportError:
        from ..extras import install_hint

        raise ConfigError(f"CLIP backbones need open_clip: {install_hint('clip')}") from None
    return open_clip


def read_clip_folder(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """(``model_cfg``, ``preprocess_cfg``, weight file) of an open_clip folder; one line
    saying what was expected for anything else."""
    f = Path(folder).expanduser()
    cfg_file = f / "open_clip_config.json"
    weights = next((f / n for n in WEIGHT_FILES if (f / n).is_file()), None)
    if not f.is_dir() or not cfg_file.is_file() or weights is None:
        raise ConfigError(f"{folder}: expected an open_clip folder (open_clip_config.json and "
                          f"{' or '.join(WEIGHT_FILES[::2])}, as published for "
                          "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{cfg_file}: not readable JSON ({e})") from None
    model_cfg = cfg.get("model_cfg") if isinstance(cfg, dict) else None
    if not isinstance(model_cfg, dict) or "vision_cfg" not in model_cfg or "embed_dim" not in model_cfg:
        raise ConfigError(f"{cfg_file}: no model_cfg with embed_dim and vision_cfg; expected open_clip's "
                          "open_clip_config.json")
    return model_cfg, dict(cfg.get("preprocess_cfg") or {}), weights


def clip_preprocessing(folder: str | Path | None = None, arch: dict[str, Any] | None = None) -> dict[str, Any]:
    """cxrkit preprocessing for a CLIP image tower: its image size, open_clip's mean / std
    (the folder's ``preprocess_cfg`` wins), shorter side resized then centre-cropped."""
    arch = arch or BIOMEDCLIP_ARCH
    size = arch["vision_cfg"].get("image_size", 224)
    mean, std = list(CLIP_MEAN), list(CLIP_STD)
    if folder is not None:
        model_cfg, pre, _ = read_clip_folder(folder)
        size = model_cfg["vision_cfg"].get("image_size", size)
        mean = [float(v) for v in pre.get("mean", mean)]
        std = [float(v) for v in pre.get("std", std)]
    if isinstance(size, (list, tuple)):
        size = size[0]
    return {"size": int(size), "channels": 3, "mean": mean, "std": std, "resize": "center-crop"}


def _arch_of(model_cfg: dict[str, Any]) -> dict[str, Any]:
    return {"embed_dim": model_cfg["embed_dim"], "vision_cfg": model_cfg["vision_cfg"],
            "quick_gelu": bool(model_cfg.get("quick_gelu", False))}


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


class ClipImageFeatures(nn.Module):
    """open_clip's image tower; forward = ``encode_image(x, normalize=normalize)``."""

    def __init__(self, embed_dim: int, vision_cfg: dict[str, Any], quick_gelu: bool = False,
                 normalize: bool = True) -> None:
        super().__init__()
        _need_open_clip()
        from open_clip.model import _build_vision_tower

        self.visual = _build_vision_tower(int(embed_dim), dict(vision_cfg), quick_gelu=bool(quick_gelu))
        self.normalize = bool(normalize)
        self.num_features = int(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.visual(x)
        return nn.functional.normalize(f, dim=-1) if self.normalize else f


def load_clip_state_dict(weights: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (safetensors, or torch's weights-only unpickler)."""
    from .weights import load_state_dict_file

    try:
        sd = load_state_dict_file(weights)
    except Exception as e:  # noqa: BLE001 - a broken or foreign file
        raise ConfigError(f"{weights}: not a readable open_clip checkpoint ({str(e).splitlines()[0][:120]})") \
            from None
    if sd and next(iter(sd)).startswith("module."):
        sd = {k[7:]: v for k, v in sd.items()}
    return sd


def build_clip_backbone(spec: Any) -> tuple[nn.Module, int]:
    """The ``biomedclip`` backbone: image tower from the kwargs (default BiomedCLIP's),
    weights from a local open_clip folder (``model.weights``)."""
    kw = dict(spec.kwargs)
    normalize = kw.pop("normalize", True)
    unknown = set(kw) - set(_ARCH_KEYS)
    if unknown:
        raise ConfigError(f"biomedclip backbone_kwargs: unknown {sorted(unknown)}; allowed: normalize, "
                          f"{', '.join(_ARCH_KEYS)}")
    arch = {**BIOMEDCLIP_ARCH, **kw}
    if spec.in_chans != 3:
        raise ConfigError("biomedclip: the CLIP image tower takes 3 channels (model.in_chans: 3; grey films are "
                          "repeated)")
    if spec.pretrained and spec.weights is None:
        raise ConfigError("biomedclip: pretrained weights come from a local folder (model.weights: the folder "
                          "holding open_clip_config.json and open_clip_pytorch_model.bin, downloaded from "
                          "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224)")
    weights = None
    if spec.weights is not None:
        model_cfg, _, weights = read_clip_folder(spec.weights)
        theirs = _arch_of(model_cfg)
        if not _same(theirs, {k: arch[k] for k in _ARCH_KEYS}):
            raise ConfigError(f"{spec.weights}: its open_clip_config.json describes another image tower than the "
                              f"backbone's; set model.backbone_kwargs: {json.dumps(theirs)}")
    net = ClipImageFeatures(arch["embed_dim"], arch["vision_cfg"], arch["quick_gelu"], normalize)
    if weights is not None:
        sd = load_clip_state_dict(weights)
        visual = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
        if not visual:
            raise ConfigError(f"{weights}: no image tower (visual.*) weights; expected an open_clip CLIP checkpoint")
        try:
            net.visual.load_state_dict(visual, strict=True)
        except RuntimeError as e:
            lines = str(e).splitlines()
            raise ConfigError(f"{weights}: weights do not fit the image tower "
                              f"({(lines[1] if len(lines) > 1 else lines[0]).strip()[:160]})") from None
    return net, net.num_features


# ---------------------------------------------------------------------------------------
# zero-shot rows from text prompts
# ---------------------------------------------------------------------------------------

#: prompts used for a class given without its own (CheXzero-style positive / negative pairs)
POSITIVE_TEMPLATES = ("{}", "a chest x-ray showing {}", "findings consistent with {}")
NEGATIVE_TEMPLATES = ("no {}", "a chest x-ray with no {}", "no evidence of {}")


def class_prompts(name: str, given: Any = None) -> dict[str, list[str]]:
    """``{"positive": [...], "negative": [...]}`` for a class: ``given`` (a dict with either
    or both lists, or a list of positive prompts) completed from the templates with the
    class name (underscores as spaces, lower case)."""
    phrase = str(name).replace("_", " ").strip().lower()
    pos: list[str] = [t.format(phrase) for t in POSITIVE_TEMPLATES]
    neg: list[str] = [t.format(phrase) for t in NEGATIVE_TEMPLATES]
    if isinstance(given, (list, tuple)):
        pos = [str(p) for p in given]
    elif isinstance(given, dict):
        unknown = set(given) - {"positive", "negative"}
        if unknown:
            raise ConfigError(f"prompts for {name!r}: unknown keys {sorted(unknown)} (positive, negative)")
        if given.get("positive") is not None:
            pos = [str(p) for p in given["positive"]]
        if given.get("negative") is not None:
            neg = [str(p) for p in given["negative"]]
    elif given is not None:
        raise ConfigError(f"prompts for {name!r}: a list of positive prompts or a mapping with positive / negative")
    if not pos or not neg or any(not p.strip() for p in pos + neg):
        raise ConfigError(f"prompts for {name!r}: positive and negative prompts must be non-empty text")
    return {"positive": pos, "negative": neg}


def read_prompts(path: str | Path) -> dict[str, dict[str, list[str]]]:
    """A prompts file (YAML or JSON): class -> list of positive prompts, or -> mapping with
    ``positive`` / ``negative`` lists, or -> nothing (the templates)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: prompts file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not readable YAML / JSON ({str(e).splitlines()[0]})") from None
    if isinstance(data, list):
        data = {str(c): None for c in data}
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: expected a mapping of class names to prompts (or a list of class names)")
    return {str(c): class_prompts(str(c), v) for c, v in data.items()}


def build_clip(folder: str | Path) -> tuple[Any, Any]:
    """(open_clip model, tokenizer) from a local folder, offline: a Hugging Face text tower's
    config and tokenizer are read from the folder itself."""
    open_clip = _need_open_clip()
    from open_clip.factory import load_checkpoint

    model_cfg, _, weights = read_clip_folder(folder)
    model_cfg = json.loads(json.dumps(model_cfg))
    text_cfg = model_cfg.get("text_cfg") or {}
    f = Path(folder).expanduser().resolve()
    hf = "hf_model_name" in text_cfg or "hf_tokenizer_name" in text_cfg
    if hf:
        if not (f / "config.json").is_file():
            raise ConfigError(f"{folder}: its text tower is the Hugging Face model {text_cfg.get('hf_model_name')!r}: "
                              "put that model's config.json and tokenizer files (vocab.txt, tokenizer_config.json) "
                              "in the folder (nothing is downloaded)")
        text_cfg["hf_model_name"] = str(f)
        text_cfg["hf_tokenizer_name"] = str(f)
        text_cfg["hf_model_pretrained"] = False
        model_cfg["text_cfg"] = text_cfg
    cls = open_clip.CustomTextCLIP if (hf or model_cfg.get("custom_text")) else open_clip.CLIP
    model_cfg.pop("custom_text", None)
    try:
        model = cls(**model_cfg)
    except (TypeError, ValueError, OSError) as e:
        raise ConfigError(f"{folder}: open_clip cannot build this model ({str(e).splitlines()[0][:160]})") from None
    try:
        load_checkpoint(model, str(weights), weights_only=True)
    except RuntimeError as e:
        raise ConfigError(f"{weights}: weights do not fit the model ({str(e).splitlines()[0][:160]})") from None
    model.eval()
    ctx = int(text_cfg.get("context_length", 77))
    if hf:
        tokenizer = open_clip.tokenizer.HFTokenizer(str(f), context_length=ctx)
    else:
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=ctx)
    return model, tokenizer


@torch.no_grad()
def zero_shot_rows(folder: str | Path, prompts: dict[str, dict[str, list[str]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Head rows (W: classes x embed_dim, b: classes) that score each class on the
    normalised image embedding: logit = scale * cos(image, mean positive prompt) - scale *
    cos(image, mean negative prompt), i.e. the log-odds of the softmax over the pair
    (CheXzero's positive / negative prompts); each side is the normalised mean of its
    prompts' normalised text embeddings (CLIP's prompt ensembling)."""
    model, tokenizer = build_clip(folder)
    scale = float(model.logit_scale.exp())

    def side(texts: list[str]) -> torch.Tensor:
        t = model.encode_text(tokenizer(texts), normalize=True)
        return nn.functional.normalize(t.mean(0), dim=-1)

    w = torch.stack([scale * (side(p["positive"]) - side(p["negative"])) for p in prompts.values()])
    return w.float(), torch.zeros(len(prompts))
